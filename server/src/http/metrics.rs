//! `/metrics`: the server's counters in the Prometheus (OpenMetrics) text format, read from
//! the counters the server keeps anyway, at scrape time (a prometheus-client `Collector`), so
//! nothing is counted twice.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use super::HttpState;
use crate::capture::{CaptureStats, SourceState};
use crate::watchers::forward::{ForwardStats, Forwarding};
use crate::watchers::RefusalCause;
use crate::{Camera, Server};

/// The OpenMetrics text format, as prometheus-client writes it.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The registry `/metrics` encodes: one collector over the server's counters.
pub(crate) struct Metrics {
    registry: Registry,
}

impl Metrics {
    pub(crate) fn new(server: Arc<Server>) -> Metrics {
        let mut registry = Registry::with_prefix("surv");
        registry.register_collector(Box::new(ServerCollector(server)));
        Metrics { registry }
    }

    /// The text a scrape gets.
    pub(crate) fn encode(&self) -> Result<String, std::fmt::Error> {
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &self.registry)?;
        Ok(text)
    }
}

/// `GET /metrics`.
pub(crate) async fn metrics(State(http): State<Arc<HttpState>>) -> Response {
    match http.metrics.encode() {
        Ok(text) => ([(header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics encoding failed\n",
        )
            .into_response(),
    }
}

struct ServerCollector(Arc<Server>);

impl std::fmt::Debug for ServerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerCollector")
    }
}

fn counter(e: &mut DescriptorEncoder, name: &str, help: &str, v: u64) -> std::fmt::Result {
    let c = ConstCounter::new(v);
    c.encode(e.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    v: f64,
) -> std::fmt::Result {
    let g = ConstGauge::new(v);
    g.encode(e.encode_descriptor(name, help, unit, g.metric_type())?)
}

/// A metric with one label, one sample per value of it.
fn family<'a, M: EncodeMetric>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    samples: impl IntoIterator<Item = (&'a str, M)>,
    metric_type: MetricType,
) -> std::fmt::Result {
    let mut m = e.encode_descriptor(name, help, None, metric_type)?;
    for (value, metric) in samples {
        metric.encode(m.encode_family(&[(label, value)])?)?;
    }
    Ok(())
}

impl Collector for ServerCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let server = &self.0;
        let s = &server.stats;
        let e = &mut e;
        let list = server.cameras.list();
        let cams: Vec<&Camera> = list.iter().map(|c| &**c).collect();
        let per_camera_counter =
            |e: &mut DescriptorEncoder, name: &str, help: &str, f: fn(&CaptureStats) -> u64| {
                family(
                    e,
                    name,
                    help,
                    "camera",
                    cams.iter()
                        .map(|c| (c.name.as_str(), ConstCounter::new(f(&c.capture.stats)))),
                    MetricType::Counter,
                )
            };
        per_camera_counter(e, "frames_captured", "Frames the source delivered.", |c| {
            c.captured.load(Relaxed)
        })?;
        per_camera_counter(
            e,
            "frames_published",
            "Frames published to watchers (encoded, or passed through).",
            |c| c.published.load(Relaxed),
        )?;
        // The same series under its old name, for dashboards built on it: one release more.
        per_camera_counter(
            e,
            "frames_encoded",
            "Deprecated: surv_frames_published_total under its old name.",
            |c| c.published.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "frames_passed_through",
            "Of the frames published, JPEGs from the source sent as they came.",
            |c| c.passed_through.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "frames_rejected",
            "Unusable frames from the source.",
            |c| c.rejected.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "frames_no_signal",
            "\"No signal\" frames published while the source was not delivering.",
            |c| c.no_signal.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "encode_errors",
            "Frames that could not be encoded under the datagram cap.",
            |c| c.errors.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "h264_passed_through",
            "H.264 access units from the source published as they came (no decode, no encode).",
            |c| c.h264_passed_through.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "decodes",
            "H.264 access units from the source decoded to pictures (only while pictures are wanted).",
            |c| c.decodes.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "h264_encodes",
            "Frames coded as H.264 by the camera's encoder (only while H.264 is watched).",
            |c| c.h264_encodes.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "h264_encode_microseconds",
            "Time the H.264 encoder spent decoding JPEG and coding H.264, microseconds.",
            |c| c.h264_encode_us.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "h264_skipped",
            "Frames the H.264 encoder never saw: a newer one replaced them while it was busy.",
            |c| c.h264_skipped.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "h264_errors",
            "Frames the H.264 encoder could not code.",
            |c| c.h264_errors.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "keyframes_forced",
            "IDR pictures forced for H.264 watchers that joined or fell behind.",
            |c| c.keyframes_forced.load(Relaxed),
        )?;
        // Every `--forward` destination of each camera, labelled with both.
        let forwarding: Vec<(&str, String, Arc<Forwarding>)> = cams
            .iter()
            .flat_map(|c| {
                c.forwards
                    .get()
                    .into_iter()
                    .flatten()
                    .map(|f| (c.name.as_str(), f.dest.to_string(), f.clone()))
            })
            .collect();
        let forward_counter = |e: &mut DescriptorEncoder,
                               name: &str,
                               help: &str,
                               f: fn(&ForwardStats) -> u64|
         -> std::fmt::Result {
            let mut m = e.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (camera, dest, fw) in &forwarding {
                ConstCounter::new(f(&fw.stats)).encode(
                    m.encode_family(&[("camera", *camera), ("destination", dest.as_str())])?,
                )?;
            }
            Ok(())
        };
        forward_counter(
            e,
            "forward_frames",
            "Access units sent by --forward.",
            |s| s.frames.load(Relaxed),
        )?;
        forward_counter(
            e,
            "forward_packets",
            "RTP packets sent by --forward.",
            |s| s.packets.load(Relaxed),
        )?;
        forward_counter(
            e,
            "forward_bytes",
            "Bytes sent by --forward, RTP headers included.",
            |s| s.bytes.load(Relaxed),
        )?;
        forward_counter(
            e,
            "forward_frames_skipped",
            "Access units --forward skipped for falling behind (it resumes at a keyframe).",
            |s| s.frames_skipped.load(Relaxed),
        )?;
        forward_counter(
            e,
            "forward_send_errors",
            "Sends by --forward the socket refused (lost).",
            |s| s.send_errors.load(Relaxed),
        )?;
        family(
            e,
            "rtp_frames_packetized",
            "Frames made into RTP packets for RTSP sessions and --forward: once per frame, \
             whatever the number of sessions.",
            "camera",
            cams.iter().map(|c| {
                let made = c.rtp.h264.made() + c.rtp.jpeg.made();
                (c.name.as_str(), ConstCounter::new(made))
            }),
            MetricType::Counter,
        )?;
        let unit = Unit::Seconds;
        let mut histogram = e.encode_descriptor(
            "encode",
            "Time to encode one frame.",
            Some(&unit),
            MetricType::Histogram,
        )?;
        for c in &cams {
            let times = c.capture.stats.encode_times.snapshot();
            histogram
                .encode_family(&[("camera", c.name.as_str())])?
                .encode_histogram::<NoLabelSet>(times.sum_s, times.count, &times.buckets, None)?;
        }
        family(
            e,
            "jpeg_quality",
            "JPEG quality of the last encoded frame (0 while frames pass through).",
            "camera",
            cams.iter().map(|c| {
                let q = f64::from(c.capture.stats.quality.load(Relaxed));
                (c.name.as_str(), ConstGauge::new(q))
            }),
            MetricType::Gauge,
        )?;
        family(
            e,
            "motion_active",
            "1 while a motion event is under way.",
            "camera",
            cams.iter().map(|c| {
                let on = i64::from(c.motion.active.load(Relaxed));
                (c.name.as_str(), ConstGauge::new(on))
            }),
            MetricType::Gauge,
        )?;
        family(
            e,
            "motion_events",
            "Motion events started (MOTION-START).",
            "camera",
            cams.iter().map(|c| {
                (
                    c.name.as_str(),
                    ConstCounter::new(c.motion.events.load(Relaxed)),
                )
            }),
            MetricType::Counter,
        )?;
        let mut objects = e.encode_descriptor(
            "objects",
            "Objects of each label the detector sees now, per camera and label it reports \
             (--detect).",
            None,
            MetricType::Gauge,
        )?;
        for c in &cams {
            let present = c.detect.present_now();
            let labels = c
                .detect
                .labels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            for label in labels.split(',').filter(|l| !l.is_empty()) {
                let count = present
                    .iter()
                    .find(|p| crate::detect::LABELS[p.class] == label)
                    .map_or(0, |p| p.count);
                ConstGauge::new(count as i64).encode(
                    objects.encode_family(&[("camera", c.name.as_str()), ("label", label)])?,
                )?;
            }
        }
        family(
            e,
            "detect_analysed",
            "Frames the object detector analysed.",
            "camera",
            cams.iter().map(|c| {
                let n = c.detect.analysed.load(Relaxed);
                (c.name.as_str(), ConstCounter::new(n))
            }),
            MetricType::Counter,
        )?;
        family(
            e,
            "detect_skipped",
            "Published frames the object detector never saw (busy with an earlier one).",
            "camera",
            cams.iter().map(|c| {
                let n = c.detect.skipped.load(Relaxed);
                (c.name.as_str(), ConstCounter::new(n))
            }),
            MetricType::Counter,
        )?;
        let mut states = e.encode_descriptor(
            "source_state",
            "The source's state: 1 for the current one.",
            None,
            MetricType::Gauge,
        )?;
        for c in &cams {
            let state = c.capture.state();
            for (name, now) in [
                ("starting", matches!(state, SourceState::Starting)),
                ("live", matches!(state, SourceState::Live)),
                ("lost", matches!(state, SourceState::Lost(_))),
            ] {
                ConstGauge::new(i64::from(now)).encode(
                    states.encode_family(&[("camera", c.name.as_str()), ("state", name)])?,
                )?;
            }
        }
        per_camera_counter(
            e,
            "source_lost",
            "Outages: times the source went from delivering to lost.",
            |c| c.source_lost.load(Relaxed),
        )?;
        per_camera_counter(
            e,
            "source_failures",
            "Failed attempts to run the source (reconnects that failed included).",
            |c| c.source_failures.load(Relaxed),
        )?;

        family(
            e,
            "watchers",
            "Live watchers by kind.",
            "kind",
            server
                .watchers
                .count_by_kind()
                .map(|(k, n)| (k.as_str(), ConstGauge::new(n as i64))),
            MetricType::Gauge,
        )?;
        gauge(
            e,
            "watchers_max",
            "The most watchers at once (--max-viewers).",
            None,
            server.watchers.max() as f64,
        )?;
        counter(e, "joins", "Watchers that joined.", s.joins.load(Relaxed))?;
        counter(e, "leaves", "Watchers that left.", s.leaves.load(Relaxed))?;
        family(
            e,
            "refusals",
            "Watchers turned away, by reason.",
            "reason",
            RefusalCause::ALL.map(|r| (r.as_str(), ConstCounter::new(s.refusals.get(r)))),
            MetricType::Counter,
        )?;
        counter(
            e,
            "auth_failures",
            "Watchers refused for a missing or wrong access token (--token).",
            s.auth_failures.load(Relaxed),
        )?;
        counter(
            e,
            "auth_throttled",
            "Watchers refused without checking their token: their address presented too many wrong ones lately.",
            s.auth_throttled.load(Relaxed),
        )?;
        counter(
            e,
            "frames_sent",
            "Frames sent to watchers (one datagram each to a UDP viewer, one part to an HTTP one).",
            s.frames_sent.load(Relaxed),
        )?;
        counter(
            e,
            "sent_bytes",
            "Bytes of frames sent to watchers.",
            s.bytes_sent.load(Relaxed),
        )?;
        counter(
            e,
            "frames_skipped",
            "Frames watchers did not get because they were behind (counted when they leave).",
            s.frames_skipped.load(Relaxed),
        )?;
        counter(e, "acks", "Acks from UDP viewers.", s.acks.load(Relaxed))?;
        counter(
            e,
            "bad_acks",
            "Datagrams from a viewer's address that are not acks.",
            s.bad_acks.load(Relaxed),
        )?;
        counter(
            e,
            "foreign_datagrams",
            "Datagrams at the session sockets from no viewer's address (junk, spoofed acks): ignored.",
            s.foreign_datagrams.load(Relaxed),
        )?;
        counter(
            e,
            "probes",
            "Registration connections closed without sending a byte (port checks); not refusals.",
            s.probes.load(Relaxed),
        )?;
        counter(
            e,
            "gone_before_accepted",
            "SURV/1 viewers admitted whose connection failed before their acceptance was written.",
            s.gone_before_accepted.load(Relaxed),
        )?;
        counter(
            e,
            "keyless_acks",
            "Acks from a SURV/1 viewer's address without its session key (forged): ignored.",
            s.keyless_acks.load(Relaxed),
        )?;
        counter(
            e,
            "send_errors",
            "Datagrams that could not be sent.",
            s.send_errors.load(Relaxed),
        )?;
        let rtsp = &s.rtsp;
        for (name, help, v) in [
            ("rtsp_connections", "RTSP connections accepted.", &rtsp.connections),
            ("rtsp_requests", "RTSP requests answered.", &rtsp.requests),
            (
                "rtsp_error_replies",
                "RTSP requests answered with an error status (401 challenges included).",
                &rtsp.errors,
            ),
            (
                "rtsp_bad_requests",
                "RTSP connections closed for bytes that are no RTSP request, or too long a one.",
                &rtsp.bad_requests,
            ),
            ("rtp_packets_sent", "RTP packets sent to RTSP sessions.", &rtsp.rtp_packets),
            (
                "rtsp_udp_heard",
                "RTCP and punch datagrams from RTSP players over UDP.",
                &rtsp.udp_heard,
            ),
            (
                "rtsp_udp_foreign",
                "Datagrams at the RTSP UDP ports from no playing session: dropped.",
                &rtsp.udp_foreign,
            ),
            (
                "rtp_jpeg_unfit",
                "JPEG frames an RTSP /mjpeg session skipped: RTP/JPEG (RFC 2435) cannot carry them.",
                &rtsp.jpeg_unfit,
            ),
            (
                "rtsp_writer_frames",
                "Frames a camera's one writer sent to its caught-up H.264 RTSP sessions (TCP and UDP).",
                &rtsp.writer_frames,
            ),
        ] {
            counter(e, name, help, v.load(Relaxed))?;
        }
        let webrtc = &s.webrtc;
        for (name, help, v) in [
            ("webrtc_offers", "WHEP offers POSTed.", &webrtc.offers),
            (
                "webrtc_offers_refused",
                "WHEP offers refused (not SDP, no H.264 video, unknown camera, full, WebRTC off).",
                &webrtc.offers_refused,
            ),
            (
                "webrtc_sessions",
                "WHEP offers answered (201).",
                &webrtc.sessions,
            ),
            (
                "webrtc_connected",
                "WebRTC peers whose ICE and DTLS went through (they joined).",
                &webrtc.connected,
            ),
            (
                "webrtc_connect_timeouts",
                "WebRTC peers dropped for not connecting in time.",
                &webrtc.connect_timeouts,
            ),
            (
                "webrtc_packets_sent",
                "Datagrams sent to WebRTC peers (STUN, DTLS, SRTP, SRTCP).",
                &webrtc.packets_sent,
            ),
            (
                "webrtc_bytes_sent",
                "Bytes of those datagrams.",
                &webrtc.bytes_sent,
            ),
            (
                "webrtc_send_errors",
                "Datagrams to WebRTC peers the socket (or a TCP link's queue) did not take: dropped.",
                &webrtc.send_errors,
            ),
            (
                "webrtc_datagrams_received",
                "Datagrams received on the WebRTC port.",
                &webrtc.datagrams_received,
            ),
            (
                "webrtc_datagrams_foreign",
                "Datagrams on the WebRTC port no peer accepted: dropped.",
                &webrtc.datagrams_foreign,
            ),
            (
                "webrtc_tcp_links",
                "TCP connections of WebRTC players taken (ICE-TCP, where UDP is blocked).",
                &webrtc.tcp_links,
            ),
            (
                "webrtc_tcp_links_refused",
                "TCP connections to the WebRTC port closed at once: too many open.",
                &webrtc.tcp_links_refused,
            ),
            (
                "webrtc_keyframe_requests",
                "PLI and FIR from WebRTC peers (each a keyframe wish to the camera).",
                &webrtc.keyframe_requests,
            ),
            (
                "webrtc_nacks",
                "NACKs from WebRTC peers (answered from the peer's packet history).",
                &webrtc.nacks,
            ),
            (
                "webrtc_frames_thinned",
                "Frames left out for WebRTC peers whose links carry less than the stream.",
                &webrtc.frames_thinned,
            ),
            (
                "webrtc_probes",
                "Probes asked of WebRTC peers' estimators while held below the whole stream.",
                &webrtc.probes,
            ),
        ] {
            counter(e, name, help, v.load(Relaxed))?;
        }
        let hls = &s.hls;
        for (name, help, v) in [
            (
                "hls_muxers_started",
                "LL-HLS muxers started (one per camera at a time).",
                &hls.muxers_started,
            ),
            (
                "hls_playlists_served",
                "LL-HLS playlists answered 200 or 304.",
                &hls.playlists_served,
            ),
            (
                "hls_blocked_reloads",
                "LL-HLS requests that waited: blocking playlist reloads and hinted parts.",
                &hls.blocked_reloads,
            ),
            (
                "hls_wait_timeouts",
                "LL-HLS waits that ran out (three target durations): answered 503.",
                &hls.wait_timeouts,
            ),
            ("hls_parts_made", "LL-HLS parts cut.", &hls.parts_made),
            (
                "hls_segments_made",
                "LL-HLS segments completed.",
                &hls.segments_made,
            ),
            (
                "hls_parts_served",
                "LL-HLS parts answered 200.",
                &hls.parts_served,
            ),
            (
                "hls_segments_served",
                "LL-HLS segments answered 200.",
                &hls.segments_served,
            ),
            (
                "hls_inits_served",
                "LL-HLS init segments answered 200.",
                &hls.inits_served,
            ),
            (
                "hls_not_modified",
                "LL-HLS requests answered 304 (If-None-Match).",
                &hls.not_modified,
            ),
            (
                "hls_refused_bad_request",
                "LL-HLS requests answered 400: a bad query, or one too far past the live edge.",
                &hls.refused_bad_request,
            ),
            (
                "hls_refused_busy",
                "LL-HLS requests answered 503 at once: too many waiting already.",
                &hls.refused_busy,
            ),
            (
                "hls_refused_not_found",
                "LL-HLS requests answered 404: an ended stream, a part gone, a bad name.",
                &hls.refused_not_found,
            ),
        ] {
            counter(e, name, help, v.load(Relaxed))?;
        }
        gauge(
            e,
            "hls_muxers",
            "LL-HLS muxers running now.",
            None,
            hls.muxers.load(Relaxed) as f64,
        )?;
        gauge(
            e,
            "hls_waiting",
            "LL-HLS requests waiting now.",
            None,
            hls.waiting.load(Relaxed) as f64,
        )?;
        let mqtt = &server.mqtt;
        if mqtt.enabled.load(Relaxed) {
            gauge(
                e,
                "mqtt_connected",
                "1 while connected to the MQTT broker (--mqtt).",
                None,
                f64::from(u8::from(mqtt.connected.load(Relaxed))),
            )?;
            counter(
                e,
                "mqtt_published",
                "MQTT messages the broker took.",
                mqtt.published.load(Relaxed),
            )?;
            counter(
                e,
                "mqtt_dropped",
                "Events lost because the MQTT queue was full while the broker was away.",
                mqtt.dropped.load(Relaxed),
            )?;
            counter(
                e,
                "mqtt_reconnects",
                "Connections to the MQTT broker after the first.",
                mqtt.reconnects.load(Relaxed),
            )?;
            gauge(
                e,
                "mqtt_queued",
                "Events waiting for the MQTT broker.",
                None,
                mqtt.queued.load(Relaxed) as f64,
            )?;
        }
        let unit = Unit::Seconds;
        gauge(
            e,
            "uptime",
            "Time since the server started.",
            Some(&unit),
            server.started.elapsed().as_secs_f64(),
        )?;
        Ok(())
    }
}
