//! Cuts a camera's H.264 access units into LL-HLS parts (one fMP4 fragment of about
//! [`PART_TARGET_90K`]) and segments (from a keyframe to the next), and keeps the newest few
//! in a bounded [`Window`]. Sans-IO: units in, the window out; the muxer task feeds it and the
//! HTTP handlers read it.
//!
//! ```text
//! unit ──▶ pending (its duration is known when the next one comes) ──▶ part's samples
//!            keyframe: the part and the segment close, a new segment starts
//!            part ≥ target − half a frame, or the next sample would pass it: the part closes
//! ```
//!
//! A sample's duration is the gap to the next unit's decode time, so a part closes one frame
//! interval after its last picture was captured (33 ms at 30 fps): the price of exact
//! durations in `EXTINF` and `EXT-X-PART`.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use surv_codec::fmp4::{self, Sample};

/// LL-HLS part target: 200 ms of 90 kHz media time.
pub const PART_TARGET_90K: u64 = 18_000;
/// Complete segments the playlist lists (and the server keeps): enough for a player that
/// starts three segments from the end (ffmpeg, Safari) to find them.
pub const WINDOW_SEGMENTS: usize = 6;
/// The newest segments whose parts are listed and kept (the one in progress included): the
/// spec wants parts listed for at least the last three target durations... of 1 s segments.
pub const PART_SEGMENTS: usize = 4;
/// A segment is cut without a keyframe once this long (a camera with keyframes far apart)...
pub const MAX_SEGMENT_90K: u64 = 6 * 90_000;
/// ...or this big: what the window holds stays bounded whatever the camera sends.
pub const MAX_SEGMENT_BYTES: usize = 8 << 20;
/// The longest duration one sample is given: a longer gap (the source stalled, a reader
/// skipped) stays a gap on the timeline (each part's `tfdt`), not a picture shown for seconds.
pub const MAX_SAMPLE_90K: u64 = 45_000;

/// One access unit, in the form MP4 stores it.
#[derive(Clone, PartialEq, Eq)]
pub struct Unit {
    /// Length-prefixed NAL units, parameter sets excluded.
    pub avc: Vec<u8>,
    pub dts_90k: u64,
    /// An IDR picture.
    pub sync: bool,
    /// When its picture was captured (µs since the Unix epoch): `EXT-X-PROGRAM-DATE-TIME`.
    pub capture_unix_us: u64,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("bytes", &self.avc.len())
            .field("dts_90k", &self.dts_90k)
            .field("sync", &self.sync)
            .finish()
    }
}

/// One part: a `moof` + `mdat`.
pub struct Part {
    pub bytes: Bytes,
    pub duration_90k: u64,
    /// It starts with an IDR picture (`INDEPENDENT=YES`).
    pub independent: bool,
    /// When its first picture was captured.
    pub capture_unix_us: u64,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part")
            .field("bytes", &self.bytes.len())
            .field("duration_90k", &self.duration_90k)
            .field("independent", &self.independent)
            .finish()
    }
}

/// A segment: complete (`bytes` set, its parts concatenated) or the one in progress.
#[derive(Debug, Default)]
pub struct Segment {
    /// Media sequence number.
    pub msn: u64,
    /// Its parts, while it is among the newest [`PART_SEGMENTS`]; emptied after.
    pub parts: Vec<Arc<Part>>,
    /// Parts it had (they stay counted once dropped).
    pub part_count: usize,
    pub duration_90k: u64,
    /// When its first picture was captured.
    pub capture_unix_us: u64,
    /// The whole segment, once complete.
    pub bytes: Option<Bytes>,
    byte_len: usize,
}

/// Where the stream's live edge is: the segment in progress and how many of its parts exist.
/// Part `(msn, i)` exists when `msn < edge.msn`, or `msn == edge.msn && i < edge.parts`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Edge {
    pub msn: u64,
    pub parts: usize,
}

impl Edge {
    /// Whether part `part` of segment `msn` exists (or, the segment having ended with fewer
    /// parts, a later segment does), or with `part` `None`, segment `msn` is complete.
    pub fn reached(self, msn: u64, part: Option<usize>) -> bool {
        match part {
            None => msn < self.msn,
            Some(part) => msn < self.msn || (msn == self.msn && part < self.parts),
        }
    }
}

/// The newest segments and parts.
#[derive(Debug, Default)]
pub struct Window {
    /// Complete segments, oldest first, then the one in progress (always last).
    pub segments: VecDeque<Segment>,
    /// The longest segment it has held, in 90 kHz units (`EXT-X-TARGETDURATION`).
    pub longest_segment_90k: u64,
}

impl Window {
    pub fn edge(&self) -> Edge {
        self.segments.back().map_or(Edge::default(), |s| Edge {
            msn: s.msn,
            parts: s.parts.len(),
        })
    }

    /// `EXT-X-TARGETDURATION`: the longest segment's duration rounded to the nearest second
    /// (what the spec compares `EXTINF` with), at least 1.
    pub fn target_duration_s(&self) -> u64 {
        (self.longest_segment_90k + 45_000)
            .div_euclid(90_000)
            .max(1)
    }

    pub fn segment(&self, msn: u64) -> Option<&Segment> {
        let first = self.segments.front()?.msn;
        self.segments
            .get(usize::try_from(msn.checked_sub(first)?).ok()?)
    }

    pub fn part(&self, msn: u64, index: usize) -> Option<&Arc<Part>> {
        self.segment(msn)?.parts.get(index)
    }

    /// Complete segments held.
    pub fn complete(&self) -> usize {
        self.segments.iter().filter(|s| s.bytes.is_some()).count()
    }

    /// Bytes held (parts and whole segments), for the bound's test and `/status`.
    pub fn bytes(&self) -> usize {
        self.segments
            .iter()
            .map(|s| {
                s.bytes.as_ref().map_or(0, Bytes::len)
                    + s.parts.iter().map(|p| p.bytes.len()).sum::<usize>()
            })
            .sum()
    }
}

/// What pushing a unit made.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Made {
    pub parts: u64,
    pub segments: u64,
}

/// The cutter (see the module's doc).
#[derive(Debug, Default)]
pub struct Segmenter {
    window: Window,
    pending: Option<Unit>,
    /// The samples of the part in progress.
    samples: Vec<Sample>,
    samples_capture_us: u64,
    /// `mfhd` sequence numbers: every part's fragment has its own.
    sequence: u32,
    /// The last duration given a sample: what one after a gap gets.
    last_duration_90k: u64,
    /// Whether a segment has started (at the first keyframe).
    started: bool,
    first_msn: u64,
}

impl Segmenter {
    pub fn new() -> Segmenter {
        Segmenter::default()
    }

    /// A segmenter whose first segment is number `msn`.
    pub fn starting_at(msn: u64) -> Segmenter {
        Segmenter {
            first_msn: msn,
            ..Segmenter::default()
        }
    }

    pub fn window(&self) -> &Window {
        &self.window
    }

    /// Takes one unit (in decode order). Units before the first keyframe are dropped: a
    /// segment starts at a keyframe.
    pub fn push(&mut self, unit: Unit) -> Made {
        let mut made = Made::default();
        if !self.started {
            if !unit.sync {
                return made;
            }
            self.started = true;
            self.window.segments.push_back(Segment {
                msn: self.first_msn,
                capture_unix_us: unit.capture_unix_us,
                ..Segment::default()
            });
        }
        let Some(prev) = self.pending.replace(unit) else {
            return made;
        };
        let next_dts = self.pending.as_ref().map_or(prev.dts_90k, |u| u.dts_90k);
        let duration = match next_dts.checked_sub(prev.dts_90k) {
            Some(d) if d > 0 && d <= MAX_SAMPLE_90K => d,
            _ => self.last_duration_90k.clamp(1, MAX_SAMPLE_90K),
        };
        self.last_duration_90k = duration;
        self.place(prev, duration, &mut made);
        made
    }

    fn place(&mut self, unit: Unit, duration: u64, made: &mut Made) {
        let in_segment = self.window.segments.back().map_or(0, |s| s.duration_90k);
        let bytes = self.window.segments.back().map_or(0, |s| s.byte_len);
        let part_90k: u64 = self.samples.iter().map(|s| u64::from(s.duration)).sum();
        let has_any = !self.samples.is_empty() || self.window.edge().parts > 0;
        let cut_segment = has_any
            && (unit.sync
                || in_segment + part_90k >= MAX_SEGMENT_90K
                || bytes >= MAX_SEGMENT_BYTES);
        if cut_segment {
            self.close_part(made);
            self.close_segment(unit.capture_unix_us, made);
        } else if !self.samples.is_empty() && part_90k + duration > PART_TARGET_90K {
            self.close_part(made);
        }
        if self.samples.is_empty() {
            self.samples_capture_us = unit.capture_unix_us;
        }
        self.samples.push(Sample {
            data: unit.avc,
            dts: unit.dts_90k,
            // At most MAX_SAMPLE_90K.
            duration: u32::try_from(duration).unwrap_or(u32::MAX),
            sync: unit.sync,
        });
        let part_90k: u64 = self.samples.iter().map(|s| u64::from(s.duration)).sum();
        if part_90k + duration / 2 >= PART_TARGET_90K {
            self.close_part(made);
        }
    }

    fn close_part(&mut self, made: &mut Made) {
        if self.samples.is_empty() {
            return;
        }
        self.sequence = self.sequence.wrapping_add(1);
        let fragment = match fmp4::fragment(self.sequence, &self.samples) {
            Ok(Some(f)) => f,
            Ok(None) => return,
            Err(e) => {
                // Only a fragment over 4 GiB fails, which MAX_SEGMENT_BYTES rules out.
                tracing::warn!(error = %e, "LL-HLS part not made");
                self.samples.clear();
                return;
            }
        };
        self.samples.clear();
        let Some(segment) = self.window.segments.back_mut() else {
            return;
        };
        segment.duration_90k += fragment.duration;
        segment.byte_len += fragment.bytes.len();
        segment.part_count += 1;
        segment.parts.push(Arc::new(Part {
            bytes: Bytes::from(fragment.bytes),
            duration_90k: fragment.duration,
            independent: fragment.independent,
            capture_unix_us: self.samples_capture_us,
        }));
        made.parts += 1;
    }

    fn close_segment(&mut self, next_capture_unix_us: u64, made: &mut Made) {
        let window = &mut self.window;
        let Some(segment) = window.segments.back_mut() else {
            return;
        };
        if segment.parts.is_empty() {
            return;
        }
        let mut whole = Vec::with_capacity(segment.byte_len);
        for p in &segment.parts {
            whole.extend_from_slice(&p.bytes);
        }
        segment.bytes = Some(Bytes::from(whole));
        window.longest_segment_90k = window.longest_segment_90k.max(segment.duration_90k);
        let msn = segment.msn.wrapping_add(1);
        made.segments += 1;
        window.segments.push_back(Segment {
            msn,
            capture_unix_us: next_capture_unix_us,
            ..Segment::default()
        });
        while window.segments.len() > WINDOW_SEGMENTS + 1 {
            window.segments.pop_front();
        }
        let keep_parts_from = window.segments.len().saturating_sub(PART_SEGMENTS);
        for s in window.segments.iter_mut().take(keep_parts_from) {
            s.parts = Vec::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` units at 30 fps from `start` (frame numbers), a keyframe every `gop` frames.
    fn feed(seg: &mut Segmenter, start: u64, n: u64, gop: u64) -> Made {
        let mut made = Made::default();
        for i in start..start + n {
            let m = seg.push(Unit {
                avc: vec![0, 0, 0, 1, if i % gop == 0 { 0x65 } else { 0x41 }],
                dts_90k: 1_000_000 + i * 3000,
                sync: i % gop == 0,
                capture_unix_us: 1_700_000_000_000_000 + i * 33_333,
            });
            made.parts += m.parts;
            made.segments += m.segments;
        }
        made
    }

    #[test]
    fn one_second_gops_make_one_second_segments_of_five_200ms_parts() {
        let mut seg = Segmenter::new();
        // 4 s and two frames: a keyframe closes a segment when it is placed, which is when
        // the frame after it shows its duration.
        let made = feed(&mut seg, 0, 122, 30);
        assert_eq!(made.segments, 4);
        assert_eq!(made.parts, 20);
        let w = seg.window();
        assert_eq!(w.target_duration_s(), 1);
        assert_eq!(w.edge(), Edge { msn: 4, parts: 0 });
        for s in w.segments.iter().take(4) {
            assert_eq!(s.duration_90k, 90_000);
            assert_eq!(s.part_count, 5);
            let bytes = s.bytes.as_ref().unwrap();
            // The oldest segment's parts are dropped: only the newest PART_SEGMENTS keep them.
            assert_eq!(s.parts.is_empty(), s.msn == 0, "{s:?}");
            if s.parts.is_empty() {
                continue;
            }
            // The segment is its parts, in order.
            let parts: Vec<u8> = s.parts.iter().flat_map(|p| p.bytes.to_vec()).collect();
            assert_eq!(&bytes[..], &parts[..]);
            assert!(s.parts.iter().all(|p| p.duration_90k == PART_TARGET_90K));
            let independent: Vec<bool> = s.parts.iter().map(|p| p.independent).collect();
            assert_eq!(independent, [true, false, false, false, false]);
        }
        // A part of the segment in progress: 6 frames, closed when the 7th shows its length.
        let made = feed(&mut seg, 122, 6, 30);
        assert_eq!(made.parts, 1);
        assert_eq!(seg.window().edge(), Edge { msn: 4, parts: 1 });
        assert!(seg.window().edge().reached(4, Some(0)));
        assert!(!seg.window().edge().reached(4, Some(1)));
        assert!(seg.window().edge().reached(3, None));
        assert!(!seg.window().edge().reached(4, None));
    }

    #[test]
    fn nothing_before_the_first_keyframe_and_the_window_stays_bounded() {
        let mut seg = Segmenter::new();
        assert_eq!(feed(&mut seg, 1, 29, 30), Made::default());
        assert!(seg.window().segments.is_empty());
        feed(&mut seg, 30, 30 * 40 + 1, 30);
        let w = seg.window();
        assert_eq!(w.complete(), WINDOW_SEGMENTS);
        assert_eq!(w.segments.len(), WINDOW_SEGMENTS + 1);
        assert_eq!(w.segments.front().unwrap().msn, 39 - WINDOW_SEGMENTS as u64);
        // Parts only for the newest segments.
        let with_parts = w.segments.iter().filter(|s| !s.parts.is_empty()).count();
        assert_eq!(with_parts, PART_SEGMENTS);
        assert!(w
            .segments
            .iter()
            .rev()
            .take(PART_SEGMENTS)
            .all(|s| !s.parts.is_empty()));
        assert!(w.segment(0).is_none());
        assert!(w.part(u64::MAX, usize::MAX).is_none());
    }

    #[test]
    fn long_gops_are_cut_and_parts_never_pass_the_target() {
        let mut seg = Segmenter::new();
        // One keyframe, then 10 s without one.
        feed(&mut seg, 0, 301, 1_000);
        let w = seg.window();
        assert!(w.longest_segment_90k <= MAX_SEGMENT_90K);
        assert_eq!(w.target_duration_s(), 6);
        let first = &w.segments[0];
        assert!(first.parts[0].independent);
        let second = &w.segments[1];
        assert!(!second.parts[0].independent, "cut without a keyframe");
        // 25 fps: a part is 5 frames, 200 ms.
        let mut seg = Segmenter::new();
        for i in 0..60u64 {
            seg.push(Unit {
                avc: vec![0, 0, 0, 1, 0x41],
                dts_90k: i * 3600,
                sync: i % 25 == 0,
                capture_unix_us: i * 40_000,
            });
        }
        for s in &seg.window().segments {
            assert!(s.parts.iter().all(|p| p.duration_90k <= PART_TARGET_90K));
        }
        assert_eq!(seg.window().segments[0].part_count, 5);
    }

    #[test]
    fn gaps_and_time_going_back_do_not_make_long_or_empty_samples() {
        let mut seg = Segmenter::new();
        for (dts, sync) in [
            (0, true),
            (3000, false),
            (900_000, false),
            (10, true),
            (3010, false),
        ] {
            seg.push(Unit {
                avc: vec![0, 0, 0, 1, 0x41],
                dts_90k: dts,
                sync,
                capture_unix_us: 0,
            });
        }
        let w = seg.window();
        assert!(
            w.segments[0].duration_90k <= 3 * 3000,
            "{:?}",
            w.segments[0]
        );
    }
}
