//! The many-cameras run (`--cameras N --push tcp|udp`): N pushed cameras in one server, each
//! its own `[[camera]]` of a config file and its own port, the viewers spread over them, and
//! per camera the worst viewer's share of that camera's frames.
//!
//! Every frame a camera sends carries its camera's number in a COM segment right after SOI
//! ([`marked`]). The server passes such a JPEG through untouched and puts its own tag before
//! it, so the number sits within the head of the datagram that the receiving thread copies out
//! ([`crate::mmsg::PREFIX_BYTES`]): each viewer checks that every frame it gets is its own
//! camera's ([`Check`]), and the run counts any that is not.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::measure::{ingest_cpu_us_per_frame, wait_longer_until, wait_until, Window};
use crate::procfs::{cpu_us, rss_kib};
use crate::push::Pusher;
use crate::receiver::{receive_loop, Shared};
use crate::server::{log_field, ServerProc};
use crate::viewers::register_all_for;
use crate::Args;

/// Cameras one run plays at most (each is a thread here and a port on the server).
pub const MAX_CAMERAS: usize = 256;

/// What a camera's marker segment says before the camera's number.
const MARK_TEXT: &[u8] = b"surv-load cam ";
/// Digits of the camera's number in its marker.
const MARK_DIGITS: usize = 4;
const SOI: [u8; 2] = [0xFF, 0xD8];
const COM: u8 = 0xFE;

/// The name of camera `camera` in the config and in its viewers' `cam=`.
pub fn camera_name(camera: usize) -> String {
    format!("cam{camera}")
}

/// The config file of a run: one `[[camera]]` per source, named `cam0`, `cam1`, … in order.
pub fn config_toml(sources: &[String]) -> String {
    let mut text = String::from("# Written by surv-load --cameras: one pushed camera a table.\n");
    for (i, source) in sources.iter().enumerate() {
        text += &format!(
            "\n[[camera]]\nname = \"{}\"\nsource = \"{source}\"\n",
            camera_name(i)
        );
    }
    text
}

/// The camera viewer `viewer` watches: round robin, so `cameras` cameras get `viewers /
/// cameras` viewers each (one more for the first `viewers % cameras`).
pub fn camera_of(viewer: usize, cameras: usize) -> usize {
    viewer % cameras.max(1)
}

/// Camera `camera`'s JPEG `jpeg` with its marker, a COM segment, right after SOI.
pub fn marked(jpeg: &[u8], camera: usize) -> Vec<u8> {
    let text = format!("{camera:0MARK_DIGITS$}");
    assert!(
        text.len() == MARK_DIGITS && jpeg.starts_with(&SOI),
        "a camera number of {MARK_DIGITS} digits and a whole JPEG"
    );
    let len = (2 + MARK_TEXT.len() + MARK_DIGITS) as u16;
    let mut out = Vec::with_capacity(jpeg.len() + 2 + usize::from(len));
    out.extend_from_slice(&SOI);
    out.extend_from_slice(&[0xFF, COM]);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(MARK_TEXT);
    out.extend_from_slice(text.as_bytes());
    out.extend_from_slice(&jpeg[SOI.len()..]);
    out
}

/// The camera number in a frame datagram's head (`prefix`: its first bytes, the server's tag
/// included), if a marker segment lies whole within it. Walks the segments from SOI, so it
/// finds the marker behind the server's tag, or behind anything else put before it.
pub fn camera_in(prefix: &[u8]) -> Option<usize> {
    let mut at = SOI.len();
    if !prefix.starts_with(&SOI) {
        return None;
    }
    // Each segment: 0xFF, the marker, a 16-bit length counting itself, the payload.
    while let [0xFF, marker, hi, lo, ..] = *prefix.get(at..)? {
        let len = usize::from(u16::from_be_bytes([hi, lo]));
        let payload = prefix.get(at + 4..at + 2 + len)?;
        if marker == COM {
            if let Some(digits) = payload.strip_prefix(MARK_TEXT) {
                return (digits.len() == MARK_DIGITS && digits.iter().all(u8::is_ascii_digit))
                    .then(|| std::str::from_utf8(digits).ok()?.parse().ok())
                    .flatten();
            }
        }
        // A scan or a frame header: no marker comes after it.
        if len < 2 || matches!(marker, 0xC0..=0xCF | 0xDA) {
            return None;
        }
        at += 2 + len;
    }
    None
}

/// What a viewer finds a frame to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Its own camera's.
    Own,
    /// Camera `0`'s, which this viewer did not ask for.
    Foreign(usize),
    /// No camera's marker within the head (a frame the server made: "no signal").
    Unmarked,
}

impl Check {
    /// A frame marked `mark` at a viewer of camera `own`.
    pub fn of(own: usize, mark: Option<usize>) -> Check {
        match mark {
            Some(c) if c == own => Check::Own,
            Some(c) => Check::Foreign(c),
            None => Check::Unmarked,
        }
    }
}

/// Per camera, what the receiving thread counts and the measured window of frames.
pub struct CameraBook {
    cameras: usize,
    /// Newest frame number a viewer of the camera got from it.
    max_seq: Vec<AtomicU64>,
    /// Its measured frames are `lo..=hi` (hi = 0: not measuring yet).
    lo: Vec<AtomicU64>,
    hi: Vec<AtomicU64>,
    /// Frames its viewers got from another camera, and without any camera's marker.
    foreign: Vec<AtomicU64>,
    unmarked: Vec<AtomicU64>,
}

impl Default for CameraBook {
    /// No cameras: a one-camera run, whose frames are not checked.
    fn default() -> CameraBook {
        CameraBook::new(0)
    }
}

impl CameraBook {
    pub fn new(cameras: usize) -> CameraBook {
        let zeros = || (0..cameras).map(|_| AtomicU64::new(0)).collect();
        CameraBook {
            cameras,
            max_seq: zeros(),
            lo: zeros(),
            hi: zeros(),
            foreign: zeros(),
            unmarked: zeros(),
        }
    }

    /// Whether this is a many-cameras run (frames are checked).
    pub fn active(&self) -> bool {
        self.cameras > 0
    }

    /// The camera viewer `viewer` watches, in a many-cameras run.
    pub fn of_viewer(&self, viewer: usize) -> Option<usize> {
        self.active().then(|| camera_of(viewer, self.cameras))
    }

    /// A viewer of camera `own` got frame `seq` marked `mark`: counted as its camera's (true) or
    /// as a frame that crossed cameras or has no marker (false).
    pub fn check(&self, own: usize, mark: Option<usize>, seq: u64) -> bool {
        match Check::of(own, mark) {
            Check::Own => {
                self.max_seq[own].fetch_max(seq, Relaxed);
                true
            }
            Check::Foreign(_) => {
                self.foreign[own].fetch_add(1, Relaxed);
                false
            }
            Check::Unmarked => {
                self.unmarked[own].fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// Camera `camera`'s measured frames (`hi` = 0: none yet).
    pub fn window(&self, camera: usize) -> (u64, u64) {
        (self.lo[camera].load(Relaxed), self.hi[camera].load(Relaxed))
    }

    /// Frames that reached camera `camera`'s viewers from another camera, and without a marker.
    pub fn strays(&self, camera: usize) -> (u64, u64) {
        (
            self.foreign[camera].load(Relaxed),
            self.unmarked[camera].load(Relaxed),
        )
    }
}

/// Measures the next `--fps` × `--seconds` frames of every camera in `watched`, each from two
/// past the newest its viewers have seen: the server's CPU from when every camera's first
/// measured frame has come until every camera's last has, and the frames the cameras sent in
/// that time (`sent`).
fn measure_windows(
    args: &Args,
    pid: &str,
    book: &CameraBook,
    watched: &[usize],
    sent: impl Fn() -> u64,
) -> anyhow::Result<(Window, u64)> {
    let gen_pid = std::process::id().to_string();
    let frames = (f64::from(args.fps) * args.seconds).round().max(1.0) as u64;
    for &c in watched {
        let lo = book.max_seq[c].load(Relaxed) + 2;
        book.lo[c].store(lo, Relaxed);
        book.hi[c].store(lo + frames - 1, Relaxed);
    }
    let reached = |c: usize, past_hi: bool| {
        let (lo, hi) = book.window(c);
        let seen = book.max_seq[c].load(Relaxed);
        if past_hi {
            seen > hi
        } else {
            seen >= lo
        }
    };
    wait_until("every camera's first measured frame", || {
        watched.iter().all(|&c| reached(c, false))
    })?;
    let (srv0, gen0, sent0, t0) = (cpu_us(pid)?, cpu_us(&gen_pid)?, sent(), Instant::now());
    let window = Duration::from_secs_f64(args.seconds);
    wait_longer_until("every camera's last measured frame", window, || {
        watched.iter().all(|&c| reached(c, true))
    })?;
    let (srv1, gen1, sent1) = (cpu_us(pid)?, cpu_us(&gen_pid)?, sent());
    let secs = t0.elapsed().as_secs_f64();
    Ok((
        Window {
            frames,
            server_cpu_us: srv1.saturating_sub(srv0),
            gen_cpu_us: gen1.saturating_sub(gen0),
            secs,
            rss_kib: rss_kib(pid)?,
        },
        sent1.saturating_sub(sent0),
    ))
}

/// Runs the server with `args.cameras` pushed cameras and `args.viewers` viewers spread over
/// them, their frames arriving on `udp`, and prints a line per camera and one for the run.
pub fn run(args: &Args, udp: &UdpSocket) -> anyhow::Result<()> {
    let n = args.cameras.unwrap_or(0);
    let Some(kind) = args.push else {
        bail!("--cameras needs --push tcp or --push udp: the tool plays the cameras");
    };
    let server = ServerProc::start(args)?;
    let pid = server.pid();
    let cameras = server
        .cameras_to
        .iter()
        .enumerate()
        .map(|(i, &to)| Pusher::start_marked(kind, to.into(), args.size, args.fps, i))
        .collect::<anyhow::Result<Vec<Pusher>>>()?;
    let sent = || cameras.iter().map(|c| c.sent.load(Relaxed)).sum::<u64>();
    std::thread::sleep(Duration::from_millis(1000));
    let rss_base_kib = rss_kib(&pid)?;
    let ingest = ingest_cpu_us_per_frame(&pid, args.seconds.max(3.0), sent)?;
    if args.ingest_floor {
        let floor = crate::floor::ingest_floor_us(args.size, args.fps, args.seconds.max(3.0))?;
        println!(
            "ingest floor: a bare tokio reader of one such camera={floor:.1}us per frame; the server with {n} camera(s)={:.1}us ({:.2}x the floor)",
            ingest.us,
            ingest.us / floor
        );
    }

    let shared = Arc::new(Shared {
        cameras: CameraBook::new(n),
        ..Shared::default()
    });
    let (_end_tx, end_rx) = mpsc::channel();
    let receiver = {
        let shared = shared.clone();
        let udp = udp.try_clone()?;
        std::thread::Builder::new()
            .name("load-recv".into())
            .spawn(move || receive_loop(&udp, &shared, 0, &end_rx, None))?
    };
    let t_reg = Instant::now();
    let indices: Vec<usize> = (0..args.viewers).collect();
    // Every viewer is SURV/1: the seed form cannot name a camera.
    let (viewers, failed) = register_all_for(server.addr, &indices, udp, 0, &shared.keys, |i| {
        Some(camera_name(camera_of(i, n)))
    });
    let reg_secs = t_reg.elapsed().as_secs_f64();
    if !failed.is_empty() {
        eprintln!(
            "surv-load: {} registrations failed, e.g. {}",
            failed.len(),
            failed[0]
        );
    }
    std::thread::sleep(Duration::from_secs_f64(args.warmup_secs));
    let watched: Vec<usize> = (0..n.min(args.viewers)).collect();
    let (window, sent_in_window) = measure_windows(args, &pid, &shared.cameras, &watched, sent)?;
    // Late datagrams of the last measured frames still count.
    std::thread::sleep(Duration::from_millis(300));
    shared.stop.store(true, Relaxed);
    let tallies = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver panicked"))?;
    drop(viewers);
    let (sent_total, frame_bytes) = (
        sent(),
        cameras.iter().map(|c| c.frame_bytes).sum::<usize>() / n.max(1),
    );
    for cam in cameras {
        cam.stop()?;
    }
    let log = server.stop();

    let frames = window.frames;
    let share = |count: u32| 100.0 * f64::from(count) / frames as f64;
    let mut worst_all: Option<(f64, usize)> = None;
    let (mut foreign_all, mut unmarked_all) = (0, 0);
    for c in 0..n {
        let mut counts: Vec<u32> = (0..args.viewers)
            .filter(|&i| camera_of(i, n) == c)
            .map(|i| tallies.per_viewer[i])
            .collect();
        counts.sort_unstable();
        let (foreign, unmarked) = shared.cameras.strays(c);
        foreign_all += foreign;
        unmarked_all += unmarked;
        let (Some(&worst), Some(&median)) = (counts.first(), counts.get(counts.len() / 2)) else {
            println!("camera={}: no viewer", camera_name(c));
            continue;
        };
        if worst_all.is_none_or(|(w, _)| share(worst) < w) {
            worst_all = Some((share(worst), c));
        }
        println!(
            "camera={}: viewers={} worst share={:.2}% median={:.2}% | frames from another camera={foreign} unmarked={unmarked}",
            camera_name(c),
            counts.len(),
            share(worst),
            share(median),
        );
    }
    let delivered: u64 = (0..args.viewers)
        .map(|i| u64::from(tallies.per_viewer[i]))
        .sum();
    let captured = log_field(&log, "captured").unwrap_or(0.0);
    let passed_through = log_field(&log, "passed_through").unwrap_or(0.0);
    let (w, h) = args.size;
    let (worst_share, worst_cam) = worst_all.unwrap_or((0.0, 0));
    let ms = |us: u64| us as f64 / 1000.0;
    println!(
        "cameras={n} push={kind:?} size={w}x{h}@{} ({frame_bytes} B/frame) viewers={} measured={:.1}s | worst viewer of any camera={worst_share:.2}% ({}) | frames across cameras={foreign_all} unmarked={unmarked_all} | server cpu/delivered frame={:.2}us ({:.0}% of a core) gen cpu={:.0}% | server cpu/ingested frame, all cameras: no viewer={ingest}, with viewers={:.1}us | rss={:.1}MiB ({:.1}MiB idle) | latency p50={:.2}ms p99={:.2}ms | cameras sent {sent_total} frames, passed through {:.1}% of captured, rejected {} | registered in {reg_secs:.1}s, {} failed",
        args.fps,
        args.viewers,
        frames as f64 / f64::from(args.fps),
        camera_name(worst_cam),
        window.server_cpu_us as f64 / delivered.max(1) as f64,
        100.0 * window.server_cpu_us as f64 / 1e6 / window.secs,
        100.0 * window.gen_cpu_us as f64 / 1e6 / window.secs,
        window.server_cpu_us as f64 / sent_in_window.max(1) as f64,
        window.rss_kib as f64 / 1024.0,
        rss_base_kib as f64 / 1024.0,
        ms(tallies.latency_us.value_at_quantile(0.5)),
        ms(tallies.latency_us.value_at_quantile(0.99)),
        100.0 * passed_through / captured.max(1.0),
        log_field(&log, "rejected").unwrap_or(0.0),
        failed.len(),
    );
    if tallies.untagged + tallies.ack_errors > 0 {
        eprintln!(
            "surv-load: {} untagged datagrams, {} ack send errors",
            tallies.untagged, tallies.ack_errors
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use surv_proto::FrameTag;
    use surv_server::sources::SourceSpec;
    use surv_tests::fixtures::Subsamp;
    use surv_tests::{test_jpeg, Picture};

    use crate::mmsg::PREFIX_BYTES;
    use crate::push::PushKind;

    #[test]
    fn the_config_names_every_camera_in_order_and_the_server_reads_it() {
        let sources: Vec<String> = (0..16)
            .map(|i| PushKind::Tcp.source_arg(40_000 + i))
            .collect();
        let text = config_toml(&sources);
        let config = surv_server::config::parse(&text).expect("the server's parser takes it");
        assert!(config.settings.is_empty());
        assert_eq!(config.cameras.len(), 16);
        for (i, (entry, _line)) in config.cameras.iter().enumerate() {
            assert_eq!(entry.name, format!("cam{i}"));
            assert_eq!(
                entry.source,
                format!("tcp-listen://127.0.0.1:{}", 40_000 + i)
            );
            assert_eq!(
                SourceSpec::parse(&entry.source),
                Ok(SourceSpec::TcpListen {
                    host: "127.0.0.1".into(),
                    port: 40_000 + i as u16
                })
            );
        }
        let udp = config_toml(&[PushKind::Udp.source_arg(5000)]);
        assert_eq!(
            surv_server::config::parse(&udp).unwrap().cameras[0]
                .0
                .source,
            "udp://127.0.0.1:5000"
        );
    }

    #[test]
    fn viewers_are_spread_evenly_over_the_cameras() {
        let per_camera = |viewers: usize, cameras: usize| {
            let mut n = vec![0; cameras];
            for v in 0..viewers {
                n[camera_of(v, cameras)] += 1;
            }
            n
        };
        assert_eq!(per_camera(320, 16), vec![20; 16]);
        assert_eq!(per_camera(10, 3), vec![4, 3, 3]);
        assert_eq!(per_camera(1, 16)[0], 1, "one viewer: the first camera");
        assert_eq!(per_camera(1, 16).iter().sum::<usize>(), 1);
        assert_eq!(per_camera(5, 1), vec![5]);
    }

    /// Camera `camera`'s frame as a viewer reads it: marked, tagged by the server as it passes
    /// it through, and cut to the head the receiving thread copies out.
    fn head_at_viewer(camera: usize) -> Vec<u8> {
        let jpeg = test_jpeg(
            64,
            48,
            Picture::Gradient(camera as u64),
            80,
            Subsamp::Sub2x2,
        );
        let mut datagram = Vec::new();
        FrameTag {
            seq: 7,
            capture_unix_us: 1,
            motion: true,
            objects: false,
        }
        .encode_into(&marked(&jpeg, camera), &mut datagram)
        .unwrap();
        datagram.truncate(PREFIX_BYTES);
        datagram
    }

    #[test]
    fn a_marked_frame_says_its_camera_behind_the_servers_tag() {
        for camera in [0, 1, 15, 255, 9999] {
            let head = head_at_viewer(camera);
            assert_eq!(FrameTag::decode(&head).unwrap().seq, 7, "still tagged");
            assert_eq!(camera_in(&head), Some(camera));
        }
    }

    #[test]
    fn a_marked_frame_is_still_a_picture() {
        let jpeg = test_jpeg(64, 48, Picture::Gradient(3), 80, Subsamp::Sub2x2);
        let info = surv_server::jpeg::check(&marked(&jpeg, 3)).expect("the server takes it");
        assert_eq!((info.width, info.height), (64, 48));
        let header = turbojpeg::read_header(&marked(&jpeg, 3)).unwrap();
        assert_eq!((header.width, header.height), (64, 48));
    }

    #[test]
    fn frames_without_a_whole_marker_in_the_head_name_no_camera() {
        let jpeg = test_jpeg(64, 48, Picture::Gradient(1), 80, Subsamp::Sub2x2);
        let mut plain = Vec::new();
        FrameTag {
            seq: 1,
            capture_unix_us: 1,
            motion: false,
            objects: false,
        }
        .encode_into(&jpeg, &mut plain)
        .unwrap();
        assert_eq!(
            camera_in(&plain[..PREFIX_BYTES]),
            None,
            "a frame the server made"
        );
        assert_eq!(
            camera_in(&plain),
            None,
            "the whole of it too: stops at the frame header"
        );
        let head = head_at_viewer(12);
        for cut in 0..head.len() {
            let found = camera_in(&head[..cut]);
            assert!(
                found.is_none() || found == Some(12),
                "cut at {cut}: {found:?}"
            );
        }
        assert_eq!(camera_in(b"not a jpeg"), None);
        let mut bad_digits = head.clone();
        let at = bad_digits
            .windows(MARK_TEXT.len())
            .position(|w| w == MARK_TEXT)
            .unwrap();
        bad_digits[at + MARK_TEXT.len()] = b'x';
        assert_eq!(camera_in(&bad_digits), None);
    }

    #[test]
    fn a_viewer_counts_only_its_own_cameras_frames() {
        assert_eq!(Check::of(3, Some(3)), Check::Own);
        assert_eq!(Check::of(3, Some(4)), Check::Foreign(4));
        assert_eq!(Check::of(3, None), Check::Unmarked);

        let book = CameraBook::new(2);
        assert_eq!(book.of_viewer(5), Some(1));
        assert!(book.check(1, camera_in(&head_at_viewer(1)), 40));
        assert!(!book.check(1, camera_in(&head_at_viewer(0)), 90));
        assert!(!book.check(0, None, 90));
        assert_eq!(
            book.max_seq[1].load(Relaxed),
            40,
            "a stray frame moves nothing"
        );
        assert_eq!(book.max_seq[0].load(Relaxed), 0);
        assert_eq!(book.strays(1), (1, 0));
        assert_eq!(book.strays(0), (0, 1));
        assert!(!CameraBook::default().active());
        assert_eq!(CameraBook::default().of_viewer(5), None);
    }
}
