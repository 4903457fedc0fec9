//! What the viewer measures about its stream: frames, loss from sequence gaps, latency from the
//! capture time carried in each frame, and the one-line summary printed at exit.

use std::fmt;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies above this are clamped into the top bucket (an hour, in µs).
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// The largest sequence gap, forward or back, read as frames lost or reordered: 2^20 frames,
/// over 9 hours at 30 fps, where the server drops a viewer that stops acking within seconds. A
/// bigger jump is the numbering starting over (or a datagram lying about its number), not a loss
/// of up to 2^64 frames: counting restarts from the new number.
pub const MAX_SEQ_GAP: u64 = 1 << 20;

/// Counts for one stream, kept by the receiving loop.
#[derive(Debug)]
pub struct StreamStats {
    started: Instant,
    /// The newest sequence number seen, `None` before the first frame.
    newest_seq: Option<u64>,
    /// Frames the stream carried from the first one seen to the newest, summed over every
    /// restart of the numbering: what `received` would be with no loss.
    carried: u64,
    /// Datagrams with a readable frame tag.
    pub received: u64,
    /// Tagged frames that arrived after a newer one (still counted as received).
    pub reordered: u64,
    /// Datagrams ignored: not from the server, or not a tagged JPEG.
    pub ignored: u64,
    /// Frames whose capture time lay in the future by our clock (clocks disagree): no latency.
    pub clock_skewed: u64,
    /// Jumps of the sequence number by more than [`MAX_SEQ_GAP`]: counting started over there.
    pub seq_restarts: u64,
    latency_us: Histogram<u64>,
    /// When the first and the latest frame arrived, for the frame rate.
    first_at: Option<Instant>,
    last_at: Option<Instant>,
    /// The longest wait between two frames.
    longest_gap: Duration,
    /// Latency p99 (µs) of each whole [`WINDOW`] since the first frame, oldest first (at most
    /// [`MAX_WINDOWS`]), and the histogram of the window in progress: whether latency grows.
    window_p99_us: Vec<u64>,
    window_latency_us: Histogram<u64>,
    window_started: Option<Instant>,
}

/// The span of each latency window in the summary.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Windows kept (a day of 10 s windows); later ones are not listed.
const MAX_WINDOWS: usize = 8_640;

impl Default for StreamStats {
    fn default() -> Self {
        StreamStats::new()
    }
}

impl StreamStats {
    pub fn new() -> StreamStats {
        StreamStats {
            started: Instant::now(),
            newest_seq: None,
            carried: 0,
            received: 0,
            reordered: 0,
            ignored: 0,
            clock_skewed: 0,
            seq_restarts: 0,
            // 3 significant digits over 1 µs ..= 1 h: a few tens of KiB, fixed.
            latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            first_at: None,
            last_at: None,
            longest_gap: Duration::ZERO,
            window_p99_us: Vec::new(),
            window_latency_us: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("static histogram bounds are valid"),
            window_started: None,
        }
    }

    /// A tagged frame arrived at `now_unix_us` (our clock).
    pub fn on_frame(&mut self, seq: u64, capture_unix_us: u64, now_unix_us: u64) {
        self.on_frame_at(seq, capture_unix_us, now_unix_us, Instant::now());
    }

    /// [`StreamStats::on_frame`], at a given monotonic time.
    fn on_frame_at(&mut self, seq: u64, capture_unix_us: u64, now_unix_us: u64, now: Instant) {
        self.first_at.get_or_insert(now);
        if let Some(last) = self.last_at.replace(now) {
            self.longest_gap = self.longest_gap.max(now.saturating_duration_since(last));
        }
        self.received += 1;
        self.on_seq(seq);
        let started = *self.window_started.get_or_insert(now);
        if now.saturating_duration_since(started) >= WINDOW {
            if self.window_p99_us.len() < MAX_WINDOWS {
                self.window_p99_us
                    .push(self.window_latency_us.value_at_percentile(99.0));
            }
            self.window_latency_us.reset();
            self.window_started = Some(started + WINDOW);
        }
        match now_unix_us.checked_sub(capture_unix_us) {
            Some(us) => {
                let us = us.clamp(1, MAX_LATENCY_US);
                self.latency_us.saturating_record(us);
                self.window_latency_us.saturating_record(us);
            }
            None => self.clock_skewed += 1,
        }
    }

    /// The longest wait between two frames (zero before the second).
    pub fn longest_gap(&self) -> Duration {
        self.longest_gap
    }

    /// Latency p99, ms, of each whole 10 s window since the first frame, oldest first.
    pub fn window_p99_ms(&self) -> Vec<f64> {
        self.window_p99_us
            .iter()
            .map(|&us| us as f64 / 1000.0)
            .collect()
    }

    /// Places `seq` against the newest number seen. The numbers come from the network, so the
    /// distance is taken modulo 2^64 and judged against [`MAX_SEQ_GAP`], as RTP receivers judge
    /// theirs (RFC 3550 appendix A.1): no arithmetic on them can overflow, `u64::MAX` followed
    /// by 0 is one step forward, and a number far from the newest either way restarts counting.
    fn on_seq(&mut self, seq: u64) {
        let Some(newest) = self.newest_seq else {
            self.newest_seq = Some(seq);
            self.carried = 1;
            return;
        };
        let ahead = seq.wrapping_sub(newest);
        let behind = newest.wrapping_sub(seq);
        if (1..=MAX_SEQ_GAP).contains(&ahead) {
            self.newest_seq = Some(seq);
            self.carried = self.carried.saturating_add(ahead);
        } else if behind <= MAX_SEQ_GAP {
            // Older than the newest (or a duplicate): already counted as carried.
            self.reordered += 1;
        } else {
            self.seq_restarts += 1;
            self.newest_seq = Some(seq);
            self.carried = self.carried.saturating_add(1);
        }
    }

    /// Frames between the first and newest sequence number that never arrived: lost on the
    /// network or skipped by the server because this viewer was behind.
    pub fn lost(&self) -> u64 {
        self.carried.saturating_sub(self.received)
    }

    /// Lost frames as a share of the frames the stream carried while we watched.
    pub fn loss_ratio(&self) -> f64 {
        let expected = self.received + self.lost();
        if expected == 0 {
            0.0
        } else {
            self.lost() as f64 / expected as f64
        }
    }

    /// Frames per second between the first and the latest frame.
    pub fn fps(&self) -> f64 {
        match (self.first_at, self.last_at) {
            (Some(a), Some(b)) if self.received > 1 && b > a => {
                (self.received - 1) as f64 / (b - a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Latency percentile (0–100) in milliseconds, if any frame had one.
    pub fn latency_ms(&self, percentile: f64) -> Option<f64> {
        (!self.latency_us.is_empty())
            .then(|| self.latency_us.value_at_percentile(percentile) as f64 / 1000.0)
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// Everything the viewer reports at exit.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub received: u64,
    pub decoded: u64,
    /// Frames received but not decoded: corrupt, or the decoder was behind.
    pub decode_failed: u64,
    pub decode_skipped: u64,
    pub lost: u64,
    pub loss_ratio: f64,
    pub fps: f64,
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// The longest wait between two frames, ms.
    pub longest_gap_ms: f64,
    /// Latency p99 of each whole 10 s window, ms, oldest first: flat when latency does not
    /// grow.
    pub window_p99_ms: Vec<f64>,
    pub ignored: u64,
    pub recorded: u64,
    pub record_dropped: u64,
    /// Frames not recorded by choice (`--record-on motion` or labels: outside every pre- and
    /// post-roll).
    pub record_idle: u64,
    pub segments: Vec<std::path::PathBuf>,
    /// Frames the server flagged as inside a motion event.
    pub motion_frames: u64,
    /// Frames that listed objects the server's detector sees.
    pub object_frames: u64,
    /// With `--pipe`: frames written to the output, and frames not written.
    pub piped: Option<crate::pipe::PipeCounts>,
    pub seconds: f64,
    /// Why the stream ended.
    pub ended_by: String,
    /// A chunked session's reassembly and repair counts; `None` for whole datagrams.
    pub chunks: Option<ChunkCounts>,
}

/// What a chunked session's reassembly saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkCounts {
    pub stored: u64,
    pub completed: u64,
    pub given_up: u64,
    pub duplicate: u64,
    pub late: u64,
    pub refused: u64,
    pub nacks: u64,
    /// Parity chunks stored, frames restored from them, and the loss last measured (‰).
    pub parity: u64,
    pub restored: u64,
    pub loss_permille: Option<u16>,
    /// The path's rate last measured (kbit/s, what `p=` reports to a server that paces).
    pub path_kbps: Option<u32>,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |v: Option<f64>| v.map_or("n/a".to_string(), |v| format!("{v:.1}"));
        write!(
            f,
            "surv-client: {:.1} s, frames received={} decoded={} lost={} ({:.1}%) fps={:.1} latency_ms p50={} p99={} motion={} recorded={} segments={} ended_by={}",
            self.seconds,
            self.received,
            self.decoded,
            self.lost,
            self.loss_ratio * 100.0,
            self.fps,
            ms(self.latency_p50_ms),
            ms(self.latency_p99_ms),
            self.motion_frames,
            self.recorded,
            self.segments.len(),
            self.ended_by,
        )?;
        write!(f, " longest_gap_ms={:.0}", self.longest_gap_ms)?;
        if self.window_p99_ms.len() > 1 {
            let list: Vec<String> = self
                .window_p99_ms
                .iter()
                .map(|v| format!("{v:.0}"))
                .collect();
            write!(f, " latency_p99_ms_per_10s={}", list.join(","))?;
        }
        if self.decode_failed + self.decode_skipped + self.record_dropped + self.ignored > 0 {
            write!(
                f,
                " (decode_failed={} decode_skipped={} record_dropped={} ignored_datagrams={})",
                self.decode_failed, self.decode_skipped, self.record_dropped, self.ignored
            )?;
        }
        if self.object_frames > 0 {
            write!(f, " objects={}", self.object_frames)?;
        }
        if self.record_idle > 0 {
            write!(f, " not_recorded_idle={}", self.record_idle)?;
        }
        if let Some(p) = self.piped {
            write!(f, " piped={} pipe_dropped={}", p.written, p.dropped)?;
        }
        if let Some(c) = self.chunks {
            write!(
                f,
                " chunks: stored={} frames_completed={} frames_given_up={} nacks={} duplicate={} late={} refused={} parity={} restored={} loss_permille={} path_kbit_s={}",
                c.stored, c.completed, c.given_up, c.nacks, c.duplicate, c.late, c.refused,
                c.parity, c.restored, c.loss_permille.map_or("n/a".to_string(), |l| l.to_string()),
                c.path_kbps.map_or("n/a".to_string(), |k| k.to_string())
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_counts_gaps_and_not_reordering() {
        let mut s = StreamStats::new();
        for seq in [10, 11, 13, 12, 16] {
            s.on_frame(seq, 1_000, 3_000);
        }
        assert_eq!(s.received, 5);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.lost(), 2, "14 and 15 never came");
        assert!((s.loss_ratio() - 2.0 / 7.0).abs() < 1e-9);
    }

    /// Latency 10 ms for 25 s, then 50 ms: the windows show the step, the gap the pause.
    #[test]
    fn the_longest_gap_and_each_windows_p99_are_kept() {
        let mut s = StreamStats::new();
        let t0 = Instant::now();
        let mut seq = 0;
        for ms in (0..40_000u64).step_by(100) {
            if (20_000..21_500).contains(&ms) {
                continue; // 1.5 s without frames
            }
            let latency_us = if ms < 25_000 { 10_000 } else { 50_000 };
            s.on_frame_at(
                seq,
                1_000_000,
                1_000_000 + latency_us,
                t0 + Duration::from_millis(ms),
            );
            seq += 1;
        }
        assert_eq!(s.longest_gap(), Duration::from_millis(1_600));
        let w = s.window_p99_ms();
        assert_eq!(
            w.len(),
            3,
            "0–10, 10–20, 20–30 s whole; 30–40 in progress: {w:?}"
        );
        assert!(
            (w[0] - 10.0).abs() < 0.1 && (w[1] - 10.0).abs() < 0.1,
            "{w:?}"
        );
        assert!(
            (w[2] - 50.0).abs() < 0.1,
            "20–30 s holds 25–30 s at 50 ms: {w:?}"
        );
    }

    #[test]
    fn sequence_wrapping_past_u64_max_is_one_step() {
        let mut s = StreamStats::new();
        for seq in [u64::MAX - 2, u64::MAX, 0, 2] {
            s.on_frame(seq, 1_000, 3_000);
        }
        assert_eq!(s.received, 4);
        assert_eq!(s.reordered, 0);
        assert_eq!(s.seq_restarts, 0);
        assert_eq!(s.lost(), 2, "u64::MAX - 1 and 1 never came");
    }

    #[test]
    fn a_first_seq_of_zero_then_u64_max_neither_overflows_nor_loses_2_pow_64() {
        let mut s = StreamStats::new();
        for seq in [0, 1, u64::MAX, 2] {
            s.on_frame(seq, 1_000, 3_000);
        }
        // u64::MAX is two steps behind 1: an old frame, not a new one 2^64 ahead.
        assert_eq!(s.reordered, 1);
        assert_eq!(s.seq_restarts, 0);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn a_jump_back_to_zero_restarts_counting() {
        let mut s = StreamStats::new();
        for seq in [5_000_000, 5_000_001, 0, 1, 3] {
            s.on_frame(seq, 1_000, 3_000);
        }
        assert_eq!(s.received, 5);
        assert_eq!(s.seq_restarts, 1);
        assert_eq!(s.lost(), 1, "2 never came; the jump itself lost nothing");
        assert!((s.loss_ratio() - 1.0 / 6.0).abs() < 1e-9);
    }

    #[test]
    fn a_huge_jump_forward_restarts_counting() {
        let mut s = StreamStats::new();
        for seq in [10, 11, 1 << 40, (1 << 40) + 2] {
            s.on_frame(seq, 1_000, 3_000);
        }
        assert_eq!(s.received, 4);
        assert_eq!(s.reordered, 0);
        assert_eq!(s.seq_restarts, 1);
        assert_eq!(s.lost(), 1, "2^40 + 1 never came");
    }

    #[test]
    fn the_largest_gap_is_still_a_loss() {
        let mut s = StreamStats::new();
        s.on_frame(7, 1_000, 3_000);
        s.on_frame(7 + MAX_SEQ_GAP, 1_000, 3_000);
        assert_eq!(s.seq_restarts, 0);
        assert_eq!(s.lost(), MAX_SEQ_GAP - 1);
        s.on_frame(7 + 2 * MAX_SEQ_GAP + 1, 1_000, 3_000);
        assert_eq!(s.seq_restarts, 1);
        assert_eq!(s.lost(), MAX_SEQ_GAP - 1);
    }

    #[test]
    fn latency_percentiles_and_skewed_clocks() {
        let mut s = StreamStats::new();
        for i in 0..100u64 {
            s.on_frame(i, 1_000_000, 1_000_000 + (i + 1) * 1000); // 1..=100 ms
        }
        s.on_frame(100, 2_000_000, 1_000_000); // captured "in the future"
        assert_eq!(s.clock_skewed, 1);
        let p50 = s.latency_ms(50.0).unwrap();
        let p99 = s.latency_ms(99.0).unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((98.9..=99.1).contains(&p99), "{p99}");
    }

    #[test]
    fn empty_stream_reports_nothing_rather_than_nonsense() {
        let s = StreamStats::new();
        assert_eq!(s.lost(), 0);
        assert_eq!(s.loss_ratio(), 0.0);
        assert_eq!(s.fps(), 0.0);
        assert_eq!(s.latency_ms(50.0), None);
    }
}
