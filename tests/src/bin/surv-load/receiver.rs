//! The receiving thread: every viewer's frames arrive on one UDP socket, are counted per viewer
//! and timed (capture → receipt), and are acked from the viewer's own address as that viewer's
//! form does.

use std::collections::HashMap;
use std::net::{SocketAddrV4, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use surv_proto::chunk::CHUNK_HEADER_BYTES;
use surv_proto::{Ack, ChunkHeader, Form, FrameTag};
use surv_server::sys;

use crate::cameras::{camera_in, CameraBook};
use crate::delay::{self, DelayLine, Jitter};
use crate::mmsg;
use crate::viewers::{form_of, viewer_index, viewer_ip, MAX_VIEWER_INDEX};

/// Datagrams per recvmmsg call.
const RECV_BATCH: usize = 256;

fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the receiving thread shares with the rest.
#[derive(Default)]
pub struct Shared {
    pub stop: AtomicBool,
    /// Newest frame number seen.
    pub max_seq: AtomicU64,
    /// Frames `lo..=hi` are the measured ones (hi = 0: not measuring yet).
    pub lo: AtomicU64,
    pub hi: AtomicU64,
    pub datagrams: AtomicU64,
    /// Bytes of the measured frames, all viewers.
    pub bytes: AtomicU64,
    /// Baseline mode: untagged datagrams (GStreamer's) are counted while this is set.
    pub count_untagged: AtomicBool,
    /// SURV/1 viewers' session keys, which their acks carry.
    pub keys: SessionKeys,
    /// Frames per viewer in consecutive phases of a run (the chaos run); empty otherwise.
    pub phases: Phases,
    /// The server UDP ports that frames came from, as found.
    pub server_ports: std::sync::Mutex<std::collections::BTreeSet<u16>>,
    /// A many-cameras run: each viewer's camera, the frames it counts, those that strayed.
    pub cameras: CameraBook,
    /// Chunked viewers report this path rate in every `continue` (`p=`, kbit/s), as
    /// surv-client reports the one it measures, so that the server paces their frames.
    pub path_kbps: Option<u32>,
}

/// Phases of a run cut by frame number: phase k holds frames `bounds[k]..bounds[k + 1]`. Each
/// viewer's frames and longest wait between two frames are counted per phase, so that what
/// happened before, during and after something is read exactly, frame by frame.
pub struct Phases {
    /// Start frame of each phase; `u64::MAX`: not started.
    bounds: Vec<AtomicU64>,
    /// `[phase * viewers + viewer]`.
    frames: Vec<AtomicU64>,
    max_gap_ns: Vec<AtomicU64>,
    last_rx_ns: Vec<AtomicU64>,
    viewers: usize,
}

impl Default for Phases {
    fn default() -> Phases {
        Phases::new(0, 0)
    }
}

impl Phases {
    pub fn new(phases: usize, viewers: usize) -> Phases {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        Phases {
            bounds: (0..phases).map(|_| AtomicU64::new(u64::MAX)).collect(),
            frames: zeros(phases * viewers),
            max_gap_ns: zeros(phases * viewers),
            last_rx_ns: zeros(viewers),
            viewers,
        }
    }

    /// Starts phase `k` at frame `first` (phases start in order, each after the last).
    pub fn start(&self, k: usize, first: u64) {
        self.bounds[k].store(first, Relaxed);
    }

    /// The frames of phase `k` (none until the next phase has started).
    pub fn span(&self, k: usize) -> Option<(u64, u64)> {
        let lo = self.bounds.get(k)?.load(Relaxed);
        let hi = self.bounds.get(k + 1)?.load(Relaxed);
        (lo != u64::MAX && hi != u64::MAX).then_some((lo, hi))
    }

    /// Viewer `viewer`'s frames and longest gap (ns) in phase `k`.
    pub fn of(&self, k: usize, viewer: usize) -> (u64, u64) {
        let i = k * self.viewers + viewer;
        (
            self.frames[i].load(Relaxed),
            self.max_gap_ns[i].load(Relaxed),
        )
    }

    fn record(&self, viewer: usize, seq: u64, now_ns: u64) {
        if viewer >= self.viewers {
            return;
        }
        let Some(k) = self.bounds.iter().rposition(|b| b.load(Relaxed) <= seq) else {
            return;
        };
        let i = k * self.viewers + viewer;
        self.frames[i].fetch_add(1, Relaxed);
        let last = self.last_rx_ns[viewer].swap(now_ns, Relaxed);
        if last != 0 {
            self.max_gap_ns[i].fetch_max(now_ns.saturating_sub(last), Relaxed);
        }
    }
}

/// Each SURV/1 viewer's session key from its `OK` line, and where its `hello` goes, by viewer
/// index.
pub struct SessionKeys {
    /// SURV/1 viewers ask for chunks of at most this many bytes (`hello mtu=`); 0: whole
    /// datagrams.
    pub mtu: std::sync::atomic::AtomicU16,
    known: Vec<AtomicBool>,
    key: Vec<AtomicU64>,
    /// The server's session address (IPv4 << 16 | port); 0: none.
    hello_to: Vec<AtomicU64>,
}

impl Default for SessionKeys {
    fn default() -> SessionKeys {
        SessionKeys {
            mtu: std::sync::atomic::AtomicU16::new(0),
            known: (0..MAX_VIEWER_INDEX)
                .map(|_| AtomicBool::new(false))
                .collect(),
            key: (0..MAX_VIEWER_INDEX).map(|_| AtomicU64::new(0)).collect(),
            hello_to: (0..MAX_VIEWER_INDEX).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl SessionKeys {
    pub fn set(&self, index: usize, key: Option<u64>, hello_to: Option<SocketAddrV4>) {
        self.key[index].store(key.unwrap_or(0), Relaxed);
        let packed = hello_to.map_or(0, |a| {
            (u64::from(a.ip().to_bits()) << 16) | u64::from(a.port())
        });
        self.hello_to[index].store(packed, Relaxed);
        self.known[index].store(key.is_some(), Relaxed);
    }

    pub fn get(&self, index: usize) -> Option<u64> {
        self.known[index]
            .load(Relaxed)
            .then(|| self.key[index].load(Relaxed))
    }

    /// Viewer `index`'s hello: asking for chunks when `mtu` is set.
    pub fn hello(&self, index: usize) -> Vec<u8> {
        let hello = match self.mtu.load(Relaxed) {
            0 => Ack::Hello,
            mtu => Ack::HelloChunks { mtu },
        };
        hello.encode_keyed(self.get(index))
    }

    /// Where viewer `index` says hello, if it has a key.
    pub fn hello_to(&self, index: usize) -> Option<SocketAddrV4> {
        self.get(index)?;
        let packed = self.hello_to[index].load(Relaxed);
        (packed != 0).then(|| {
            SocketAddrV4::new(
                std::net::Ipv4Addr::from_bits((packed >> 16) as u32),
                packed as u16,
            )
        })
    }
}

/// Until its first frame, a SURV/1 viewer says hello again this often (a lost hello costs it).
const HELLO_EVERY: Duration = Duration::from_millis(100);

/// The longest the loop waits for a datagram before looking at `stop` again.
const POLL_WAIT: Duration = Duration::from_millis(20);

/// What the receiving thread found.
pub struct Tallies {
    /// Measured frames received, per viewer index.
    pub per_viewer: Vec<u32>,
    /// Capture → kernel receipt, µs, measured frames only.
    pub latency_us: Histogram<u64>,
    /// Capture → the generator reading it, µs.
    pub app_latency_us: Histogram<u64>,
    pub untagged: u64,
    pub ack_errors: u64,
    /// Per viewer: when its first and last measured frames came (ns since the epoch; 0 = none
    /// yet), and the longest wait between two of its measured frames, ns.
    pub first_rx_ns: Vec<u64>,
    pub last_rx_ns: Vec<u64>,
    pub max_gap_ns: Vec<u64>,
}

impl Tallies {
    /// Viewer `index`'s longest wait for a frame within the measured window, ns: between two
    /// of its frames, and also from the window's first frame (at any viewer) to its own first,
    /// and from its own last to the window's last; the whole window if it got none.
    pub fn longest_wait_ns(&self, index: usize) -> u64 {
        let start = self.first_rx_ns.iter().copied().filter(|&t| t != 0).min();
        let end = self.last_rx_ns.iter().copied().max();
        let (Some(start), Some(end)) = (start, end) else {
            return 0;
        };
        if self.first_rx_ns[index] == 0 {
            return end.saturating_sub(start);
        }
        self.max_gap_ns[index]
            .max(self.first_rx_ns[index].saturating_sub(start))
            .max(end.saturating_sub(self.last_rx_ns[index]))
    }
}

/// A frame as its viewer receives it: what the receiving thread reads of it.
#[derive(Debug, Clone, Copy)]
struct Arrival {
    index: usize,
    seq: u64,
    capture_unix_us: u64,
    len: usize,
    from: SocketAddrV4,
    /// When the frame reached the viewer: the kernel's receive time, plus the delay it was held
    /// for (`--delay-ms`).
    rx_unix_ns: Option<u64>,
    /// In a many-cameras run, the camera whose marker the frame carries.
    mark: Option<usize>,
    /// A chunked viewer's payload bytes received so far (its ack's `r=`); `None`: whole
    /// datagrams.
    rx_bytes: Option<u64>,
}

/// A chunked viewer's frame in assembly: surv-load counts chunks, it does not copy them (only
/// each datagram's first bytes are read). A frame missing a chunk is a frame lost: no `nack`.
#[derive(Debug, Clone, Copy, Default)]
struct Assembly {
    seq: Option<u64>,
    got: u8,
    capture_unix_us: Option<u64>,
    mark: Option<usize>,
    rx_bytes: u64,
}

impl Assembly {
    /// Counts chunk `h` (`len` bytes on the wire, `prefix` its first bytes): the frame, once
    /// its last chunk is in.
    fn chunk(
        &mut self,
        h: &ChunkHeader,
        len: usize,
        prefix: &[u8],
    ) -> Option<(u64, u64, Option<usize>)> {
        self.rx_bytes += len.saturating_sub(CHUNK_HEADER_BYTES) as u64;
        match self.seq {
            Some(seq) if h.seq < seq => return None,
            Some(seq) if h.seq == seq => {}
            _ => {
                *self = Assembly {
                    seq: Some(h.seq),
                    rx_bytes: self.rx_bytes,
                    ..Assembly::default()
                };
            }
        }
        self.got = self.got.saturating_add(1);
        if h.index == 0 {
            let jpeg = prefix.get(CHUNK_HEADER_BYTES..).unwrap_or_default();
            self.capture_unix_us = FrameTag::decode(jpeg).ok().map(|t| t.capture_unix_us);
            self.mark = camera_in(jpeg);
        }
        if self.got != h.data_chunks {
            return None;
        }
        self.got = u8::MAX; // counted once
        Some((h.seq, self.capture_unix_us?, self.mark))
    }
}

/// The viewers as the receiving thread plays them: what they counted, and where each one's
/// frames come from.
struct Viewers<'a> {
    shared: &'a Shared,
    seed_percent: usize,
    t: Tallies,
    senders: HashMap<usize, SocketAddrV4>,
    ack_text: String,
}

impl Viewers<'_> {
    /// Viewer `f.index` receives frame `f` at `now_ns`: counts and times it, and returns the
    /// ack it sends back (to `f.from`, from the viewer's own address).
    fn receive(&mut self, f: &Arrival, now_ns: u64) -> &[u8] {
        let (shared, t) = (self.shared, &mut self.t);
        let index = f.index;
        // A many-cameras run counts each viewer's frames of its own camera, in that camera's
        // window of frame numbers.
        let (own, (lo, hi)) = match shared.cameras.of_viewer(index) {
            Some(c) => (
                shared.cameras.check(c, f.mark, f.seq),
                shared.cameras.window(c),
            ),
            None => (true, (shared.lo.load(Relaxed), shared.hi.load(Relaxed))),
        };
        if self.senders.insert(index, f.from) != Some(f.from) {
            if let Ok(mut ports) = shared.server_ports.lock() {
                ports.insert(f.from.port());
            }
        }
        shared.phases.record(index, f.seq, now_ns);
        shared.datagrams.fetch_add(1, Relaxed);
        if f.seq > shared.max_seq.load(Relaxed) {
            shared.max_seq.store(f.seq, Relaxed);
        }
        if own && hi != 0 && (lo..=hi).contains(&f.seq) {
            t.per_viewer[index] += 1;
            shared.bytes.fetch_add(f.len as u64, Relaxed);
            let last = std::mem::replace(&mut t.last_rx_ns[index], now_ns);
            if last == 0 {
                t.first_rx_ns[index] = now_ns;
            } else {
                let gap = now_ns.saturating_sub(last);
                t.max_gap_ns[index] = t.max_gap_ns[index].max(gap);
            }
            let cap_ns = f.capture_unix_us * 1000;
            if let Some(rx) = f.rx_unix_ns {
                let _ = t.latency_us.record(rx.saturating_sub(cap_ns) / 1000 + 1);
            }
            let _ = t
                .app_latency_us
                .record(now_ns.saturating_sub(cap_ns) / 1000 + 1);
        }
        self.ack_text.clear();
        match form_of(index, self.seed_percent) {
            Form::Seed => self.ack_text.push_str("continue"),
            Form::V1 => {
                use std::fmt::Write as _;
                let _ = write!(self.ack_text, "continue {}", f.seq);
                if let Some(rx) = f.rx_bytes {
                    let _ = write!(self.ack_text, " r={}", rx as u32);
                    if let Some(kbps) = self.shared.path_kbps {
                        let _ = write!(self.ack_text, " p={kbps}");
                    }
                }
                if let Some(key) = shared.keys.get(index) {
                    let _ = write!(self.ack_text, " k={key:016x}");
                }
            }
        }
        self.ack_text.as_bytes()
    }
}

/// Where the viewers' own datagrams go: straight into the send batch, or held on the delay
/// line first.
fn send_or_hold(
    line: &mut Option<DelayLine<Arrival>>,
    sb: &mut mmsg::SendBatch,
    payload: &[u8],
    to: SocketAddrV4,
    from_ip: std::net::Ipv4Addr,
) {
    match line {
        None => sb.push(payload, to, from_ip),
        Some(line) => line.hold_outbound(payload, to, from_ip, Instant::now()),
    }
}

/// Delivers the held frames that are due to their viewers (holding their acks in turn), and
/// queues the held acks that are due.
fn release_due(line: &mut DelayLine<Arrival>, v: &mut Viewers<'_>, sb: &mut mmsg::SendBatch) {
    let (now, now_ns) = (Instant::now(), unix_ns());
    while let Some((f, _)) = line.inbound.pop_due(now) {
        let ack = v.receive(&f, now_ns);
        line.hold_outbound(ack, f.from, viewer_ip(f.index), now);
    }
    while let Some((out, _)) = line.outbound.pop_due(now) {
        sb.push(out.payload(), out.to, out.from_ip);
    }
}

/// Receives every viewer's frames on `sock` until `shared.stop`, counting, timing and acking
/// them; with `delay`, each frame reaches its viewer, and each of the viewer's datagrams leaves,
/// only after its own random delay (see `delay.rs`).
pub fn receive_loop(
    sock: &UdpSocket,
    shared: &Shared,
    seed_percent: usize,
    ends: &mpsc::Receiver<usize>,
    delay: Option<Jitter>,
) -> Tallies {
    let mut v = Viewers {
        shared,
        seed_percent,
        t: Tallies {
            per_viewer: vec![0; MAX_VIEWER_INDEX],
            latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            app_latency_us: Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds"),
            untagged: 0,
            ack_errors: 0,
            first_rx_ns: vec![0; MAX_VIEWER_INDEX],
            last_rx_ns: vec![0; MAX_VIEWER_INDEX],
            max_gap_ns: vec![0; MAX_VIEWER_INDEX],
        },
        senders: HashMap::new(),
        ack_text: String::with_capacity(64),
    };
    let mut line: Option<DelayLine<Arrival>> = delay.map(DelayLine::new);
    let mut assembly: Vec<Assembly> = match shared.keys.mtu.load(Relaxed) {
        0 => Vec::new(),
        _ => vec![Assembly::default(); MAX_VIEWER_INDEX],
    };
    let mut rb = mmsg::RecvBatch::new(RECV_BATCH);
    let mut sb = mmsg::SendBatch::default();
    let fd = std::os::fd::AsRawFd::as_raw_fd(sock);
    let mut next_hello = Instant::now() + HELLO_EVERY;
    while !shared.stop.load(Relaxed) {
        if Instant::now() >= next_hello {
            next_hello = Instant::now() + HELLO_EVERY;
            for index in 0..MAX_VIEWER_INDEX {
                if v.senders.contains_key(&index) {
                    continue;
                }
                if let Some(to) = shared.keys.hello_to(index) {
                    let hello = shared.keys.hello(index);
                    send_or_hold(&mut line, &mut sb, &hello, to, viewer_ip(index));
                }
            }
            if sb.len() > 0 && sb.flush(sock).is_err() {
                v.t.ack_errors += 1;
            }
        }
        while let Ok(index) = ends.try_recv() {
            if let Some(to) = v.senders.remove(&index) {
                let end = Ack::End.encode_keyed(shared.keys.get(index));
                send_or_hold(&mut line, &mut sb, &end, to, viewer_ip(index));
            }
            // Gone: no more hellos for it.
            shared.keys.set(index, None, None);
        }
        // Bounded so that `stop` is seen; with a delay, until the next datagram is due.
        let wait = match &line {
            None => POLL_WAIT,
            Some(l) => delay::wait_for(l.next_release(), Instant::now(), POLL_WAIT),
        };
        sys::wait_readable(fd, wait);
        // Drain what is queued, a bounded number of batches before looking at `stop` again.
        for _ in 0..64 {
            let now_ns = unix_ns();
            let now = Instant::now();
            let got = rb.recv(sock, |d| {
                let Some(index) = viewer_index(d.to) else {
                    return;
                };
                if d.prefix.first() == Some(&b'S') {
                    // A chunk: counted into its viewer's frame, which arrives with its last.
                    let h = match ChunkHeader::decode_head(d.prefix) {
                        Ok(h) if shared.keys.get(index) == Some(h.key) => h,
                        _ => {
                            v.t.untagged += 1;
                            return;
                        }
                    };
                    let a = &mut assembly[index];
                    let Some((seq, capture_unix_us, mark)) = a.chunk(&h, d.len, d.prefix) else {
                        return;
                    };
                    let f = Arrival {
                        index,
                        seq,
                        capture_unix_us,
                        len: h.frame_bytes as usize,
                        from: d.from,
                        rx_unix_ns: d.rx_unix_ns,
                        mark,
                        rx_bytes: Some(a.rx_bytes),
                    };
                    match &mut line {
                        None => sb.push(v.receive(&f, now_ns), d.from, d.to),
                        Some(line) => line.hold_inbound(now, |held| Arrival {
                            rx_unix_ns: f.rx_unix_ns.map(|rx| rx + held.as_nanos() as u64),
                            ..f
                        }),
                    }
                    return;
                }
                let Ok(tag) = FrameTag::decode(d.prefix) else {
                    v.t.untagged += 1;
                    if shared.count_untagged.load(Relaxed) {
                        v.t.per_viewer[index] += 1;
                        shared.bytes.fetch_add(d.len as u64, Relaxed);
                    }
                    return;
                };
                let f = Arrival {
                    index,
                    seq: tag.seq,
                    capture_unix_us: tag.capture_unix_us,
                    len: d.len,
                    from: d.from,
                    rx_unix_ns: d.rx_unix_ns,
                    mark: if shared.cameras.active() {
                        camera_in(d.prefix)
                    } else {
                        None
                    },
                    rx_bytes: None,
                };
                match &mut line {
                    None => sb.push(v.receive(&f, now_ns), d.from, d.to),
                    Some(line) => line.hold_inbound(now, |held| Arrival {
                        rx_unix_ns: f.rx_unix_ns.map(|rx| rx + held.as_nanos() as u64),
                        ..f
                    }),
                }
            });
            if let Some(line) = &mut line {
                release_due(line, &mut v, &mut sb);
            }
            if sb.len() > 0 && sb.flush(sock).is_err() {
                v.t.ack_errors += 1;
            }
            match got {
                Ok(n) if n == RECV_BATCH => continue,
                _ => break,
            }
        }
        if let Some(line) = &mut line {
            release_due(line, &mut v, &mut sb);
        }
        if sb.len() > 0 && sb.flush(sock).is_err() {
            v.t.ack_errors += 1;
        }
    }
    if let Some(line) = &line {
        println!("{}", line.summary());
    }
    v.t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tallies(first: &[u64], last: &[u64], gaps: &[u64]) -> Tallies {
        Tallies {
            per_viewer: vec![0; first.len()],
            latency_us: Histogram::new(3).unwrap(),
            app_latency_us: Histogram::new(3).unwrap(),
            untagged: 0,
            ack_errors: 0,
            first_rx_ns: first.to_vec(),
            last_rx_ns: last.to_vec(),
            max_gap_ns: gaps.to_vec(),
        }
    }

    /// Chunks of a tagged frame as the server cuts them, each datagram's first 64 bytes and
    /// its length: what the receiving thread reads.
    fn chunk_prefixes(seq: u64, key: u64, frame_len: usize) -> Vec<(ChunkHeader, Vec<u8>, usize)> {
        let mut jpeg = vec![0xFF, 0xD8];
        jpeg.extend_from_slice(&[0; 100]);
        jpeg.extend_from_slice(&[0xFF, 0xD9]);
        let tag = FrameTag {
            seq,
            capture_unix_us: 1_234_567,
            motion: false,
            objects: false,
        };
        let mut frame = Vec::new();
        tag.encode_into(&jpeg, &mut frame).unwrap();
        frame.resize(frame_len, 0);
        ChunkHeader::for_frame(seq, key, frame.len(), 1_172)
            .unwrap()
            .map(|h| {
                let mut d = h.encode().to_vec();
                d.extend_from_slice(&frame[h.data_range().unwrap()]);
                let len = d.len();
                d.truncate(crate::mmsg::PREFIX_BYTES);
                (h, d, len)
            })
            .collect()
    }

    #[test]
    fn a_chunked_frame_arrives_with_its_last_chunk_once_and_older_chunks_are_dropped() {
        let mut a = Assembly::default();
        let f7 = chunk_prefixes(7, 9, 3_000);
        let f8 = chunk_prefixes(8, 9, 3_000);
        assert_eq!(f7.len(), 3);
        // Frame 8's first chunk, then frame 7's (late: dropped), then the rest of 8.
        assert_eq!(a.chunk(&f8[0].0, f8[0].2, &f8[0].1), None);
        assert_eq!(a.chunk(&f7[1].0, f7[1].2, &f7[1].1), None);
        assert_eq!(a.chunk(&f8[2].0, f8[2].2, &f8[2].1), None);
        assert_eq!(
            a.chunk(&f8[1].0, f8[1].2, &f8[1].1),
            Some((8, 1_234_567, None))
        );
        // A repeated chunk completes nothing again.
        assert_eq!(a.chunk(&f8[1].0, f8[1].2, &f8[1].1), None);
        // Every chunk's payload counted (r=), the late and repeated ones too: they arrived.
        assert_eq!(a.rx_bytes, 4 * 1_172 + (3_000 - 2 * 1_172));
    }

    #[test]
    fn the_longest_wait_counts_a_late_start_an_early_end_and_no_frames_at_all() {
        // The window runs from 1,000 (viewer 0's first frame) to 9,000 (viewer 0's last).
        let t = tallies(
            &[1_000, 4_000, 1_100, 0],
            &[9_000, 8_000, 8_900, 0],
            &[50, 60, 2_000, 0],
        );
        assert_eq!(t.longest_wait_ns(0), 50, "between two frames");
        assert_eq!(t.longest_wait_ns(1), 3_000, "waited for its first frame");
        assert_eq!(t.longest_wait_ns(2), 2_000, "a gap in the middle");
        assert_eq!(
            t.longest_wait_ns(3),
            8_000,
            "nothing at all: the whole window"
        );
        assert_eq!(tallies(&[0], &[0], &[0]).longest_wait_ns(0), 0, "no window");
        let ends_early = tallies(&[1_000, 1_000], &[9_000, 5_000], &[10, 10]);
        assert_eq!(ends_early.longest_wait_ns(1), 4_000, "nothing after 5,000");
    }
}
