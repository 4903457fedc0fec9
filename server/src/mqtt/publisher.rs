//! The two tasks behind [`super::spawn`]: `drive` polls rumqttc's event loop without pause
//! (connecting, reconnecting with backoff, writing, reading acks) and reports what happened;
//! `run` turns journal events into messages, keeps the [`Outbox`], and hands messages to
//! rumqttc with `try_publish` only while it is connected. Neither ever waits on the broker
//! with no bound: the event loop bounds its connect and flushes ([`super::CONNECT_TIMEOUT_S`])
//! and notices a silent broker by its keep-alive.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectionError, Event as Polled, EventLoop, Incoming, LastWill, MqttOptions,
    NetworkOptions, Outgoing, QoS,
};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::outbox::Outbox;
use super::payload::{camera_of, motion_state, stats_json, EventJson};
use super::{MqttConfig, MqttStats, CONNECT_TIMEOUT_S, RETRY_MAX, RETRY_MIN, STOP_GRACE};
use crate::capture::backoff::Backoff;
use crate::http::status::Status;
use crate::journal::Event;
use crate::Server;

/// Messages handed to rumqttc and not yet acknowledged, at most; the rest wait in the outbox.
const MAX_IN_FLIGHT: usize = 64;
/// rumqttc's request channel: room for every message in flight, so `try_publish` finds room.
const REQUEST_CAP: usize = 2 * MAX_IN_FLIGHT;
/// Largest message either way (a stats message is about 1.5 KiB, an event under 3 KiB).
const MAX_PACKET_BYTES: usize = 256 * 1024;
/// At a stop, the time `offline` and the DISCONNECT get even when the queue used up the grace.
const GOODBYE: Duration = Duration::from_millis(500);
/// Reports from the event loop not yet read by the publisher.
const NOTE_CAP: usize = 256;

/// What the event loop tells the publisher.
#[derive(Debug)]
enum Note {
    Connected,
    Lost,
    /// rumqttc wrote a publish (packet id; 0 at QoS 0).
    Written(u16),
    /// The broker acknowledged one.
    Acked(u16),
    /// The DISCONNECT asked for at stop is written.
    Ended,
}

struct Topics {
    prefix: String,
    available: String,
    events: String,
    motion: String,
    stats: String,
}

impl Topics {
    fn new(prefix: &str) -> Topics {
        Topics {
            prefix: prefix.to_string(),
            available: format!("{prefix}/available"),
            events: format!("{prefix}/events"),
            motion: format!("{prefix}/motion"),
            stats: format!("{prefix}/stats"),
        }
    }

    /// `PREFIX/CAMERA/events`.
    fn camera_events(&self, camera: &str) -> String {
        format!("{}/{camera}/events", self.prefix)
    }

    /// `PREFIX/CAMERA/motion`.
    fn camera_motion(&self, camera: &str) -> String {
        format!("{}/{camera}/motion", self.prefix)
    }

    /// `PREFIX/CAMERA/objects`: the camera's OBJECT-START and OBJECT-END events.
    fn camera_objects(&self, camera: &str) -> String {
        format!("{}/{camera}/objects", self.prefix)
    }

    /// `PREFIX/CAMERA/objects/LABEL`: how many of `label` it sees now (retained).
    fn camera_count(&self, camera: &str, label: &str) -> String {
        format!("{}/{camera}/objects/{label}", self.prefix)
    }
}

/// A retained ON/OFF state: its value, and whether it is still to be sent (latest value only).
#[derive(Debug, Clone, Copy, Default)]
struct Retained {
    on: bool,
    due: bool,
}

fn options(config: &MqttConfig, available: &str) -> MqttOptions {
    let mut options = MqttOptions::new(
        config.client_id.clone(),
        config.broker.host.clone(),
        config.broker.port,
    );
    options
        // rumqttc refuses (panics on) keep-alives under a second.
        .set_keep_alive(config.keep_alive.max(Duration::from_secs(1)))
        .set_clean_session(true)
        .set_max_packet_size(MAX_PACKET_BYTES, MAX_PACKET_BYTES)
        .set_last_will(LastWill::new(available, "offline", QoS::AtLeastOnce, true));
    if let Some((user, pass)) = &config.broker.login {
        options.set_credentials(user.clone(), pass.clone());
    }
    options
}

/// The publisher: until `stop`, then a bounded goodbye.
pub(super) async fn run(
    server: Arc<Server>,
    config: MqttConfig,
    mut events: broadcast::Receiver<Event>,
    stop: CancellationToken,
) {
    let topics = Topics::new(&config.prefix);
    let (client, mut eventloop) =
        AsyncClient::new(options(&config, &topics.available), REQUEST_CAP);
    let mut network = NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_S);
    eventloop.set_network_options(network);
    let (notes_tx, mut notes) = mpsc::channel(NOTE_CAP);
    let link = Arc::new(AtomicBool::new(false));
    let end_loop = CancellationToken::new();
    let driver = tokio::spawn(drive(
        eventloop,
        notes_tx,
        link.clone(),
        server.mqtt.clone(),
        config.broker.to_string(),
        end_loop.clone(),
    ));
    let mut p = Publisher {
        client,
        topics,
        outbox: Outbox::new(config.queue_cap),
        stats: server.mqtt.clone(),
        link,
        connected: false,
        online_due: false,
        motion: Retained::default(),
        camera_motion: BTreeMap::new(),
        counts: BTreeMap::new(),
    };
    let mut tick = tokio::time::interval(config.stats_every.max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut journal_open = true;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            Some(note) = notes.recv() => p.note(note),
            event = events.recv(), if journal_open => match event {
                Ok(event) => p.event(&event),
                Err(broadcast::error::RecvError::Lagged(n)) => p.stats.dropped(n),
                Err(broadcast::error::RecvError::Closed) => journal_open = false,
            },
            _ = tick.tick() => p.publish_stats(&server),
        }
        p.pump();
    }

    // Stopping: what the journal said until now (the LEAVEs of shutdown), then `offline`.
    loop {
        match events.try_recv() {
            Ok(event) => p.event(&event),
            Err(broadcast::error::TryRecvError::Lagged(n)) => p.stats.dropped(n),
            Err(_) => break,
        }
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    p.pump();
    while p.connected && (p.outbox.queued() > 0 || p.outbox.in_flight() > 0) {
        match tokio::time::timeout_at(deadline, notes.recv()).await {
            Ok(Some(note)) => {
                p.note(note);
                p.pump();
            }
            _ => break,
        }
    }
    if p.connected {
        let said = p
            .client
            .try_publish(&p.topics.available, QoS::AtLeastOnce, true, "offline")
            .and_then(|()| p.client.try_disconnect());
        if said.is_ok() {
            // The event loop ends once the DISCONNECT is written; the broker then drops the will.
            // (Cut short, the connection just closes and the will says `offline` instead.)
            let goodbye = deadline.max(tokio::time::Instant::now() + GOODBYE);
            let _ = tokio::time::timeout_at(goodbye, async {
                while let Some(note) = notes.recv().await {
                    if matches!(note, Note::Ended) {
                        break;
                    }
                }
            })
            .await;
        }
    }
    end_loop.cancel();
    let _ = driver.await;
    p.stats.connected.store(false, Relaxed);
    let (queued, in_flight) = (p.outbox.queued(), p.outbox.in_flight());
    if queued + in_flight > 0 {
        tracing::warn!(
            queued,
            in_flight,
            "MQTT: stopped with messages the broker did not take"
        );
    }
}

struct Publisher {
    client: AsyncClient,
    topics: Topics,
    /// Events with their topics.
    outbox: Outbox<(String, String)>,
    stats: Arc<MqttStats>,
    /// Connected as the event loop sees it now (it clears this the moment the link fails).
    link: Arc<AtomicBool>,
    /// Connected as the notes read so far say.
    connected: bool,
    /// `online` is to be sent (after each CONNACK).
    online_due: bool,
    /// `PREFIX/motion`: ON while any camera is in motion.
    motion: Retained,
    /// `PREFIX/CAMERA/motion`, per camera that has reported motion.
    camera_motion: BTreeMap<String, Retained>,
    /// `PREFIX/CAMERA/objects/LABEL`, per camera and label the detector has counted: the
    /// latest count, and whether it is still to be sent.
    counts: BTreeMap<(String, &'static str), (usize, bool)>,
}

impl Publisher {
    fn note(&mut self, note: Note) {
        match note {
            Note::Connected => {
                self.connected = true;
                self.online_due = true;
                self.motion.due = true;
                for state in self.camera_motion.values_mut() {
                    state.due = true;
                }
                for (_, due) in self.counts.values_mut() {
                    *due = true;
                }
            }
            Note::Lost => {
                self.connected = false;
                let dropped = self.outbox.connection_lost();
                self.stats.dropped(dropped);
            }
            Note::Written(pkid) => {
                if self.outbox.written(pkid) {
                    self.stats.published.fetch_add(1, Relaxed);
                }
            }
            Note::Acked(pkid) => {
                if self.outbox.acked(pkid) {
                    self.stats.published.fetch_add(1, Relaxed);
                }
            }
            Note::Ended => {}
        }
        self.stats
            .queued
            .store(self.outbox.queued() as u64, Relaxed);
    }

    /// Queues `event` for `PREFIX/events` and, when it names its camera, for
    /// `PREFIX/CAMERA/events`; notes what it does to the motion states.
    fn event(&mut self, event: &Event) {
        let camera = camera_of(event);
        if let Event::ObjectCount { label, count, .. } = event {
            // A retained state, the latest value only; not an event message.
            let key = (camera.unwrap_or_default().to_string(), *label);
            self.counts.insert(key, (*count, true));
            return;
        }
        if let Some(on) = motion_state(event) {
            let name = camera.unwrap_or_default().to_string();
            self.camera_motion.insert(name, Retained { on, due: true });
            let any = self.camera_motion.values().any(|m| m.on);
            if any != self.motion.on {
                self.motion = Retained { on: any, due: true };
            }
        }
        let json = EventJson::of(event).to_json();
        let mut dropped = 0;
        if let (Some(camera), Event::ObjectStart { .. } | Event::ObjectEnd { .. }) = (camera, event)
        {
            dropped += self
                .outbox
                .push((self.topics.camera_objects(camera), json.clone()));
        }
        if let Some(camera) = camera {
            dropped += self
                .outbox
                .push((self.topics.camera_events(camera), json.clone()));
        }
        dropped += self.outbox.push((self.topics.events.clone(), json));
        self.stats.dropped(dropped);
        self.stats
            .queued
            .store(self.outbox.queued() as u64, Relaxed);
    }

    fn can_send(&self) -> bool {
        self.connected && self.link.load(Relaxed) && self.outbox.in_flight() < MAX_IN_FLIGHT
    }

    /// Hands rumqttc what is due, as far as the in-flight limit allows.
    fn pump(&mut self) {
        if self.online_due {
            let topic = self.topics.available.clone();
            if !self.send_other(topic, "online", QoS::AtLeastOnce) {
                return;
            }
            self.online_due = false;
        }
        let on_off = |on: bool| if on { "ON" } else { "OFF" };
        if self.motion.due {
            let topic = self.topics.motion.clone();
            if self.send_other(topic, on_off(self.motion.on), QoS::AtLeastOnce) {
                self.motion.due = false;
            }
        }
        let due: Vec<(String, bool)> = self
            .camera_motion
            .iter()
            .filter(|(name, m)| m.due && !name.is_empty())
            .map(|(name, m)| (name.clone(), m.on))
            .collect();
        for (name, on) in due {
            let topic = self.topics.camera_motion(&name);
            if !self.send_other(topic, on_off(on), QoS::AtLeastOnce) {
                break;
            }
            if let Some(m) = self.camera_motion.get_mut(&name) {
                m.due = false;
            }
        }
        let due: Vec<((String, &'static str), usize)> = self
            .counts
            .iter()
            .filter(|((name, _), (_, due))| *due && !name.is_empty())
            .map(|(key, (count, _))| (key.clone(), *count))
            .collect();
        for (key, count) in due {
            let topic = self.topics.camera_count(&key.0, key.1);
            if !self.send_other(topic, &count.to_string(), QoS::AtLeastOnce) {
                break;
            }
            if let Some((_, due)) = self.counts.get_mut(&key) {
                *due = false;
            }
        }
        while self.can_send() {
            let Some((topic, event)) = self.outbox.next() else {
                break;
            };
            let handed = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, event.as_bytes());
            if handed.is_err() {
                break;
            }
            self.outbox.handed_next();
        }
        self.stats
            .queued
            .store(self.outbox.queued() as u64, Relaxed);
    }

    /// A retained state (QoS 1) or stats (QoS 0): not queued while the broker is away, sent
    /// afresh instead.
    fn send_other(&mut self, topic: String, payload: &str, qos: QoS) -> bool {
        if !self.can_send() {
            return false;
        }
        let retain = qos == QoS::AtLeastOnce;
        let handed = self
            .client
            .try_publish(topic, qos, retain, payload.as_bytes())
            .is_ok();
        if handed {
            self.outbox.handed_other();
        }
        handed
    }

    fn publish_stats(&mut self, server: &Server) {
        if !self.can_send() {
            return;
        }
        let json = stats_json(&Status::of(server), surv_proto::unix_micros_now());
        let topic = self.topics.stats.clone();
        self.send_other(topic, &json, QoS::AtMostOnce);
    }
}

/// Polls the event loop until `end` (or the DISCONNECT at stop is written), reconnecting after
/// each failure with backoff.
async fn drive(
    mut eventloop: EventLoop,
    notes: mpsc::Sender<Note>,
    link: Arc<AtomicBool>,
    stats: Arc<MqttStats>,
    broker: String,
    end: CancellationToken,
) {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    let mut ever_connected = false;
    // One warning per outage; the attempts after it are at debug level.
    let mut warned = false;
    loop {
        let polled = tokio::select! {
            () = end.cancelled() => return,
            polled = eventloop.poll() => polled,
        };
        let note = match polled {
            Ok(Polled::Incoming(Incoming::ConnAck(_))) => {
                backoff.reset();
                link.store(true, Relaxed);
                stats.connected.store(true, Relaxed);
                if ever_connected {
                    stats.reconnects.fetch_add(1, Relaxed);
                }
                ever_connected = true;
                warned = false;
                stats.set_last_error(None);
                tracing::info!(%broker, "MQTT: connected");
                Note::Connected
            }
            Ok(Polled::Outgoing(Outgoing::Publish(pkid))) => Note::Written(pkid),
            Ok(Polled::Incoming(Incoming::PubAck(ack))) => Note::Acked(ack.pkid),
            Ok(Polled::Outgoing(Outgoing::Disconnect)) => {
                link.store(false, Relaxed);
                tell(&notes, Note::Ended, &end).await;
                return;
            }
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(e) => {
                link.store(false, Relaxed);
                stats.connected.store(false, Relaxed);
                let why = e.to_string();
                let wait = backoff.next_wait();
                match (warned, ever_connected) {
                    (true, _) => tracing::debug!(%broker, error = %why, "MQTT: still no broker"),
                    (false, false) => tracing::warn!(
                        %broker, error = %why,
                        "MQTT: cannot reach the broker; the server runs on, retries, and queues events meanwhile"
                    ),
                    (false, true) => tracing::warn!(
                        %broker, error = %why,
                        "MQTT: lost the broker; retrying, events are queued meanwhile"
                    ),
                }
                warned = true;
                stats.set_last_error(Some(why));
                tell(&notes, Note::Lost, &end).await;
                tokio::select! {
                    () = end.cancelled() => return,
                    () = tokio::time::sleep(wait) => continue,
                }
            }
        };
        tell(&notes, note, &end).await;
    }
}

/// Reports to the publisher; it reads its notes at all times, but `end` bounds the wait.
async fn tell(notes: &mpsc::Sender<Note>, note: Note, end: &CancellationToken) {
    tokio::select! {
        () = end.cancelled() => {},
        _ = notes.send(note) => {},
    }
}
