//! Frame sources: the Source trait and the built-in moving test pattern.
//!
//! The capture loop owns one [`Source`] and calls [`Source::next_frame`] once per frame, with
//! the same [`RawFrame`] each time so that the pixel buffer is reused. Whatever the number of
//! viewers, each frame is captured and encoded once. Tests feed synthetic frames through the
//! same trait (moonfire's "a trait for test injection").
//!
//! [`TestPattern`] needs no camera: colour bars scrolling sideways, a bouncing box, and a frame
//! counter and wall clock burnt in, so that a viewer can see at a glance that frames arrive, in
//! order, and how late.

use std::fmt::{self, Write as _};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::{DateTime, Local};
use font8x8::legacy::BASIC_LEGACY;

/// Smallest width and height a test pattern accepts: room for one 8×8 glyph and a margin.
pub const MIN_SIDE_PX: u32 = 16;
/// Largest frame a test pattern produces: 8K UHD.
pub const MAX_WIDTH_PX: u32 = 7680;
/// Largest frame a test pattern produces: 8K UHD.
pub const MAX_HEIGHT_PX: u32 = 4320;
/// Highest frame rate a test pattern accepts.
pub const MAX_FPS: u32 = 240;

/// How the bytes of a [`RawFrame`] are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// Planar YCbCr 4:2:0, full range (as JPEG stores it): the Y plane (`width × height`), then
    /// U (Cb), then V (Cr), each `ceil(width / 2) × ceil(height / 2)`. Rows are not padded.
    I420,
    /// Packed R, G, B bytes, rows of `3 × width` bytes, not padded.
    Rgb24,
}

impl PixelFormat {
    /// Bytes in one `width × height` frame of this format; `None` if that overflows `usize`.
    pub fn frame_bytes(self, width: u32, height: u32) -> Option<usize> {
        let (w, h) = (usize::try_from(width).ok()?, usize::try_from(height).ok()?);
        match self {
            PixelFormat::I420 => {
                let chroma = w.div_ceil(2).checked_mul(h.div_ceil(2))?;
                w.checked_mul(h)?.checked_add(chroma.checked_mul(2)?)
            }
            PixelFormat::Rgb24 => w.checked_mul(h)?.checked_mul(3),
        }
    }
}

/// One uncompressed frame, as a source produced it.
pub struct RawFrame {
    pub width: u32,
    pub height: u32,
    pub format: PixelFormat,
    /// Exactly `format.frame_bytes(width, height)` bytes once a source has filled the frame.
    pub data: Vec<u8>,
    /// Capture time, microseconds since the Unix epoch, server clock.
    pub capture_unix_us: u64,
}

impl RawFrame {
    /// An empty frame for [`Source::next_frame`] to fill; its buffer grows on first use.
    pub fn new() -> Self {
        RawFrame {
            width: 0,
            height: 0,
            format: PixelFormat::I420,
            data: Vec::new(),
            capture_unix_us: 0,
        }
    }
}

impl Default for RawFrame {
    fn default() -> Self {
        RawFrame::new()
    }
}

impl fmt::Debug for RawFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawFrame")
            .field("width", &self.width)
            .field("height", &self.height)
            .field("format", &self.format)
            .field("data_bytes", &self.data.len())
            .field("capture_unix_us", &self.capture_unix_us)
            .finish()
    }
}

/// Why a source could not be created or could not deliver a frame.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "unsupported frame size {width}x{height}: width and height must be even, \
         from {min}x{min} to {max_w}x{max_h}",
        min = MIN_SIDE_PX,
        max_w = MAX_WIDTH_PX,
        max_h = MAX_HEIGHT_PX
    )]
    Size { width: u32, height: u32 },
    #[error("unsupported frame rate {fps}: must be 1 to {max} frames per second", max = MAX_FPS)]
    Fps { fps: u32 },
    #[error("cannot open {device}: {reason}")]
    Open { device: String, reason: String },
    /// The source stopped delivering frames; later calls will fail too.
    #[error("reading a frame from {device}: {reason}")]
    Read { device: String, reason: String },
    /// This one frame was unusable (e.g. a corrupt MJPEG frame); the next call may succeed.
    #[error("unusable frame from {device}: {reason}")]
    BadFrame { device: String, reason: String },
}

/// Where frames come from: a camera, the test pattern, or a test's synthetic frames.
pub trait Source: Send + 'static {
    /// What the source is, for logs and the viewer's banner, e.g. "test pattern 640x480@30".
    fn describe(&self) -> String;
    /// Frame size in pixels, as negotiated.
    fn size(&self) -> (u32, u32);
    /// Frames per second, as negotiated.
    fn fps(&self) -> u32;
    /// Blocks until the next frame is due/available and fills `frame` (reusing its buffer).
    /// Sets `capture_unix_us` (microseconds since the Unix epoch, from `SystemTime`) at capture.
    fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError>;
}

/// Microseconds since the Unix epoch, from the system clock (0 if the clock is before 1970).
pub fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// A fixed-rate schedule: tick `n` is due `n / fps` seconds after the start.
///
/// Kept apart from the clock so that its decisions are tested with made-up elapsed times.
#[derive(Debug)]
struct Pacer {
    fps: u32,
    next_tick: u64,
    skipped_ticks: u64,
}

impl Pacer {
    fn new(fps: u32) -> Self {
        Pacer {
            fps,
            next_tick: 0,
            skipped_ticks: 0,
        }
    }

    fn due(&self, tick: u64) -> Duration {
        let nanos = u128::from(tick) * 1_000_000_000 / u128::from(self.fps);
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    /// How long to wait, `elapsed` after the start, before producing the frame of the next tick.
    /// More than one frame late, it skips ahead to the current tick rather than bursting frames
    /// to catch up.
    fn wait(&mut self, elapsed: Duration) -> Duration {
        let due = self.due(self.next_tick);
        if elapsed < due {
            return due - elapsed;
        }
        let current = elapsed.as_nanos() * u128::from(self.fps) / 1_000_000_000;
        let current = u64::try_from(current).unwrap_or(u64::MAX);
        if current > self.next_tick {
            self.skipped_ticks += current - self.next_tick;
            self.next_tick = current;
        }
        Duration::ZERO
    }

    /// The frame of the current tick was produced.
    fn advance(&mut self) {
        self.next_tick = self.next_tick.saturating_add(1);
    }
}

/// Full-range (JFIF) BT.601 YCbCr of an RGB colour, as JPEG stores it.
const fn ycbcr(r: u8, g: u8, b: u8) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let y = (19_595 * r + 38_470 * g + 7_471 * b + 32_768) >> 16;
    let cb = ((-11_059 * r - 21_709 * g + 32_768 * b + 32_768) >> 16) + 128;
    let cr = ((32_768 * r - 27_439 * g - 5_329 * b + 32_768) >> 16) + 128;
    [clamp_u8(y), clamp_u8(cb), clamp_u8(cr)]
}

const fn clamp_u8(v: i32) -> u8 {
    if v < 0 {
        0
    } else if v > 255 {
        255
    } else {
        v as u8
    }
}

/// 75% colour bars, in the usual order.
const BARS: [[u8; 3]; 8] = [
    ycbcr(191, 191, 191),
    ycbcr(191, 191, 0),
    ycbcr(0, 191, 191),
    ycbcr(0, 191, 0),
    ycbcr(191, 0, 191),
    ycbcr(191, 0, 0),
    ycbcr(0, 0, 191),
    ycbcr(0, 0, 0),
];
const BOX_COLOUR: [u8; 3] = ycbcr(255, 140, 0);
const BLACK: [u8; 3] = ycbcr(0, 0, 0);
const WHITE_Y: u8 = 255;
/// Characters in the longest counter line at 30 fps for 9 hours ("F 999999").
const COUNTER_CHARS: u32 = 8;
/// "HH:MM:SS.mmm".
const CLOCK_CHARS: u32 = 12;

/// The built-in source: moving colour bars with a frame counter and wall clock, in I420.
#[derive(Debug)]
pub struct TestPattern {
    width: u32,
    height: u32,
    fps: u32,
    start: Option<Instant>,
    pacer: Pacer,
    frames: u64,
    /// One row of bars, Y then U then V (chroma at half width), rebuilt per frame and copied
    /// to every row: memcpy is what keeps 1280×720 at 30 fps cheap.
    bar_rows: Vec<u8>,
    text: String,
}

impl TestPattern {
    /// A `width × height` pattern at `fps`; width and height even, 16×16 to 7680×4320, fps 1 to
    /// 240.
    pub fn new(width: u32, height: u32, fps: u32) -> Result<Self, SourceError> {
        let size_ok = width & 1 == 0
            && height & 1 == 0
            && (MIN_SIDE_PX..=MAX_WIDTH_PX).contains(&width)
            && (MIN_SIDE_PX..=MAX_HEIGHT_PX).contains(&height);
        if !size_ok {
            return Err(SourceError::Size { width, height });
        }
        if !(1..=MAX_FPS).contains(&fps) {
            return Err(SourceError::Fps { fps });
        }
        Ok(TestPattern {
            width,
            height,
            fps,
            start: None,
            pacer: Pacer::new(fps),
            frames: 0,
            bar_rows: Vec::new(),
            text: String::new(),
        })
    }

    /// Draws frame number `n` (which sets all the motion) with the clock at `unix_us`.
    fn render(&mut self, n: u64, unix_us: u64, data: &mut [u8]) {
        let (w, h) = (self.width as usize, self.height as usize);
        let (cw, ch) = (w / 2, h / 2);
        let (y_plane, chroma) = data.split_at_mut(w * h);
        let (u_plane, v_plane) = chroma.split_at_mut(cw * ch);

        // Bars, scrolling left by `step` pixels a frame.
        let step = (w / 160).max(1) as u64;
        let offset = (n.wrapping_mul(step) % w as u64) as usize;
        self.bar_rows.resize(w + 2 * cw, 0);
        let (y_row, uv_row) = self.bar_rows.split_at_mut(w);
        let (u_row, v_row) = uv_row.split_at_mut(cw);
        for (x, px) in y_row.iter_mut().enumerate() {
            *px = BARS[(x + offset) % w * BARS.len() / w][0];
        }
        for (cx, (u, v)) in u_row.iter_mut().zip(v_row.iter_mut()).enumerate() {
            let bar = BARS[(2 * cx + offset) % w * BARS.len() / w];
            (*u, *v) = (bar[1], bar[2]);
        }
        for row in y_plane.chunks_exact_mut(w) {
            row.copy_from_slice(y_row);
        }
        for (u, v) in u_plane
            .chunks_exact_mut(cw)
            .zip(v_plane.chunks_exact_mut(cw))
        {
            u.copy_from_slice(u_row);
            v.copy_from_slice(v_row);
        }

        let mut canvas = Canvas {
            y: y_plane,
            u: u_plane,
            v: v_plane,
            width: w,
            height: h,
        };

        // A box bouncing off the edges, with a dark core so it shows on every bar.
        let side = (w.min(h) / 5).max(4) & !1;
        let bounce = |pos: u64, range: usize| -> usize {
            let range = range as u64;
            if range == 0 {
                return 0;
            }
            let p = pos % (2 * range);
            (if p > range { 2 * range - p } else { p }) as usize & !1
        };
        let bx = bounce(n.wrapping_mul((w / 100).max(1) as u64), w - side);
        let by = bounce(n.wrapping_mul((h / 100).max(1) as u64), h - side);
        canvas.fill(bx, by, side, side, BOX_COLOUR);
        canvas.fill(bx + side / 4, by + side / 4, side / 2, side / 2, BLACK);

        // Counter and clock, white on black, top left; big enough to read on a phone, never
        // wider than the frame when it can be helped, clipped when it cannot.
        let margin = (h / 60).max(2);
        let usable_w = w.saturating_sub(2 * margin) as u32;
        let fit = |wanted: usize, chars: u32| -> usize {
            let widest = (usable_w / (chars * 8)).max(1) as usize;
            wanted.clamp(1, widest)
        };
        let big = fit(h / 80, COUNTER_CHARS);
        let small = fit(h / 120, CLOCK_CHARS);
        self.text.clear();
        let _ = write!(self.text, "F {n:06}");
        let counter_w = self.text.len() * 8 * big;
        let clock = clock_text(unix_us);
        let clock_w = clock.len() * 8 * small;
        let pad = small.max(2);
        let block_w = counter_w.max(clock_w) + 2 * pad;
        let block_h = 8 * big + pad + 8 * small + 2 * pad;
        canvas.fill(margin, margin, block_w, block_h, BLACK);
        canvas.text(margin + pad, margin + pad, big, &self.text);
        canvas.text(margin + pad, margin + pad + 8 * big + pad, small, &clock);
    }
}

/// Local wall-clock time, "HH:MM:SS.mmm".
fn clock_text(unix_us: u64) -> String {
    let local = i64::try_from(unix_us)
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| t.with_timezone(&Local));
    match local {
        Some(t) => t.format("%H:%M:%S%.3f").to_string(),
        None => "--:--:--.---".to_string(),
    }
}

/// Drawing on I420 planes (even width and height); everything is clipped to the frame.
struct Canvas<'a> {
    y: &'a mut [u8],
    u: &'a mut [u8],
    v: &'a mut [u8],
    width: usize,
    height: usize,
}

impl Canvas<'_> {
    /// Fills a rectangle in one colour; chroma covers every 2×2 block the rectangle touches.
    fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, [cy, cu, cv]: [u8; 3]) {
        fill_plane(self.y, self.width, self.height, x, y, w, h, cy);
        let (x1, y1) = (
            x.saturating_add(w).div_ceil(2),
            y.saturating_add(h).div_ceil(2),
        );
        let (cx, cyy) = (x / 2, y / 2);
        let (cw, ch) = (self.width / 2, self.height / 2);
        fill_plane(self.u, cw, ch, cx, cyy, x1 - cx, y1 - cyy, cu);
        fill_plane(self.v, cw, ch, cx, cyy, x1 - cx, y1 - cyy, cv);
    }

    /// Writes ASCII `text` in white luma, each font pixel `scale × scale`.
    fn text(&mut self, x: usize, y: usize, scale: usize, text: &str) {
        for (i, c) in text.bytes().enumerate() {
            let glyph = BASIC_LEGACY
                .get(usize::from(c))
                .copied()
                .unwrap_or_default();
            let gx = x.saturating_add(i * 8 * scale);
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..8 {
                    // Bit 0 is the leftmost pixel.
                    if bits & (1 << col) != 0 {
                        let px = gx.saturating_add(col * scale);
                        let py = y.saturating_add(row * scale);
                        fill_plane(
                            self.y,
                            self.width,
                            self.height,
                            px,
                            py,
                            scale,
                            scale,
                            WHITE_Y,
                        );
                    }
                }
            }
        }
    }
}

/// Sets a rectangle of a `width × height` plane (rows not padded) to `value`, clipped.
#[allow(clippy::too_many_arguments)]
fn fill_plane(
    plane: &mut [u8],
    width: usize,
    height: usize,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    value: u8,
) {
    let (x1, y1) = (
        x.saturating_add(w).min(width),
        y.saturating_add(h).min(height),
    );
    if x >= x1 || y >= y1 {
        return;
    }
    for row in plane.chunks_exact_mut(width).take(y1).skip(y) {
        row[x..x1].fill(value);
    }
}

impl Source for TestPattern {
    fn describe(&self) -> String {
        format!("test pattern {}x{}@{}", self.width, self.height, self.fps)
    }

    fn size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    fn fps(&self) -> u32 {
        self.fps
    }

    fn next_frame(&mut self, frame: &mut RawFrame) -> Result<(), SourceError> {
        let start = *self.start.get_or_insert_with(Instant::now);
        let skipped_before = self.pacer.skipped_ticks;
        let wait = self.pacer.wait(start.elapsed());
        if !wait.is_zero() {
            std::thread::sleep(wait);
        }
        if self.pacer.skipped_ticks != skipped_before {
            tracing::debug!(
                skipped = self.pacer.skipped_ticks - skipped_before,
                total_skipped = self.pacer.skipped_ticks,
                "test pattern fell behind its schedule; skipping ahead"
            );
        }
        self.pacer.advance();

        let capture_unix_us = unix_micros_now();
        let len = PixelFormat::I420
            .frame_bytes(self.width, self.height)
            .ok_or(SourceError::Size {
                width: self.width,
                height: self.height,
            })?;
        frame.data.resize(len, 0);
        let n = self.frames;
        self.render(n, capture_unix_us, &mut frame.data);
        self.frames += 1;
        frame.width = self.width;
        frame.height = self.height;
        frame.format = PixelFormat::I420;
        frame.capture_unix_us = capture_unix_us;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame_of(pattern: &mut TestPattern) -> RawFrame {
        let mut frame = RawFrame::new();
        pattern.next_frame(&mut frame).unwrap();
        frame
    }

    #[test]
    fn rejects_sizes_and_rates_it_cannot_draw() {
        for (w, h) in [
            (15, 16),
            (16, 15),
            (14, 16),
            (16, 14),
            (0, 0),
            (7682, 480),
            (640, 4322),
        ] {
            let err = TestPattern::new(w, h, 30).unwrap_err();
            assert!(matches!(err, SourceError::Size { .. }), "{w}x{h}: {err}");
            assert!(err.to_string().contains(&format!("{w}x{h}")), "{err}");
        }
        for fps in [0, 241] {
            let err = TestPattern::new(640, 480, fps).unwrap_err();
            assert!(matches!(err, SourceError::Fps { .. }), "{fps}: {err}");
        }
        for (w, h, fps) in [(16, 16, 1), (7680, 4320, 240), (160, 90, 30)] {
            let p = TestPattern::new(w, h, fps).unwrap();
            assert_eq!(p.size(), (w, h));
            assert_eq!(p.fps(), fps);
            assert_eq!(p.describe(), format!("test pattern {w}x{h}@{fps}"));
        }
    }

    #[test]
    fn frames_are_i420_of_the_right_size_and_timestamped() {
        let mut p = TestPattern::new(640, 480, 240).unwrap();
        let before = unix_micros_now();
        let frame = frame_of(&mut p);
        let after = unix_micros_now();
        assert_eq!((frame.width, frame.height), (640, 480));
        assert_eq!(frame.format, PixelFormat::I420);
        assert_eq!(frame.data.len(), 640 * 480 * 3 / 2);
        assert!((before..=after).contains(&frame.capture_unix_us));
        let debug = format!("{frame:?}");
        assert!(debug.contains("data_bytes: 460800"), "{debug}");
    }

    #[test]
    fn the_picture_moves_and_the_counter_counts() {
        let mut p = TestPattern::new(320, 240, 240).unwrap();
        let mut a = frame_of(&mut p);
        let b = frame_of(&mut p);
        assert_ne!(a.data, b.data, "consecutive frames are identical");

        // At 320x240 the counter "F 000000" is drawn at scale 3 from (6, 6): margin 4 + pad 2.
        // Luma of glyphs `from..to` of the counter line:
        let glyphs = |f: &RawFrame, from: usize, to: usize| -> Vec<u8> {
            (6..6 + 8 * 3)
                .flat_map(|y| f.data[y * 320 + 6 + from * 24..y * 320 + 6 + to * 24].to_vec())
                .collect()
        };
        // "F 00000" is the same in frames 0 and 1 whatever moves behind it; the last digit is not.
        assert_eq!(glyphs(&a, 0, 7), glyphs(&b, 0, 7));
        assert!(glyphs(&a, 0, 1).contains(&WHITE_Y), "no 'F' drawn");
        assert_ne!(glyphs(&a, 7, 8), glyphs(&b, 7, 8), "counter did not change");
        // Frame 10 ("F 000010") differs from frame 1 in its last two digits.
        for _ in 2..=10 {
            p.next_frame(&mut a).unwrap();
        }
        assert_ne!(glyphs(&a, 6, 7), glyphs(&b, 6, 7));
        assert_ne!(glyphs(&a, 7, 8), glyphs(&b, 7, 8));
        assert_eq!(glyphs(&a, 0, 6), glyphs(&b, 0, 6));
    }

    #[test]
    fn every_size_draws_without_panicking() {
        for (w, h) in [
            (16, 16),
            (18, 16),
            (16, 200),
            (160, 90),
            (1920, 16),
            (642, 482),
        ] {
            let mut p = TestPattern::new(w, h, 240).unwrap();
            let mut frame = RawFrame::new();
            for _ in 0..3 {
                p.next_frame(&mut frame).unwrap();
            }
            assert_eq!(frame.data.len(), (w * h * 3 / 2) as usize);
        }
        // A far-away frame number moves everything to the other end of its path.
        let mut p = TestPattern::new(160, 90, 30).unwrap();
        let mut data = vec![0; 160 * 90 * 3 / 2];
        p.render(u64::MAX, u64::MAX, &mut data);
        p.render(987_654_321, 0, &mut data);
    }

    #[test]
    fn counter_and_clock_fit_a_160_by_90_frame() {
        let mut p = TestPattern::new(160, 90, 30).unwrap();
        let frame = frame_of(&mut p);
        // Scale 1 at this height, margin 2, padding 2: the last glyph of each line must be
        // drawn, not clipped. Counter "F 000000" on rows 4..12, clock "HH:MM:SS.mmm" on 14..22.
        let has_ink = |x0: usize, y0: usize| {
            (y0..y0 + 8).any(|y| frame.data[y * 160 + x0..y * 160 + x0 + 8].contains(&WHITE_Y))
        };
        assert!(has_ink(4 + 7 * 8, 4), "last counter digit missing");
        assert!(has_ink(4 + 11 * 8, 14), "last clock digit missing");
    }

    #[test]
    fn pacer_waits_for_the_next_tick() {
        let mut pacer = Pacer::new(10);
        assert_eq!(pacer.wait(Duration::ZERO), Duration::ZERO);
        pacer.advance();
        assert_eq!(
            pacer.wait(Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        // Woken a little late: no wait, no skip.
        assert_eq!(pacer.wait(Duration::from_millis(150)), Duration::ZERO);
        assert_eq!(pacer.skipped_ticks, 0);
        pacer.advance();
        assert_eq!(
            pacer.wait(Duration::from_millis(199)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn pacer_skips_ahead_instead_of_bursting() {
        let mut pacer = Pacer::new(10);
        pacer.wait(Duration::ZERO);
        pacer.advance();
        // Tick 1 was due at 100 ms; at 450 ms it is more than a frame late: go to tick 4.
        assert_eq!(pacer.wait(Duration::from_millis(450)), Duration::ZERO);
        assert_eq!(pacer.skipped_ticks, 3);
        pacer.advance();
        // Back on schedule: tick 5 at 500 ms.
        assert_eq!(
            pacer.wait(Duration::from_millis(460)),
            Duration::from_millis(40)
        );
    }

    #[test]
    fn never_produces_more_frames_than_the_schedule_allows() {
        let fps = 100;
        let mut p = TestPattern::new(32, 32, fps).unwrap();
        let mut frame = RawFrame::new();
        let start = Instant::now();
        let mut frames = 0u64;
        while start.elapsed() < Duration::from_millis(150) {
            p.next_frame(&mut frame).unwrap();
            frames += 1;
        }
        let elapsed = start.elapsed();
        // Tick n is due at n / fps, so frames <= elapsed * fps + 1 whatever the machine's load.
        let allowed = elapsed.as_millis() as u64 * u64::from(fps) / 1000 + 1;
        assert!(frames <= allowed, "{frames} frames in {elapsed:?}");
        assert!(frames >= 1);
    }

    #[test]
    fn pixel_format_sizes() {
        assert_eq!(PixelFormat::I420.frame_bytes(640, 480), Some(460_800));
        assert_eq!(PixelFormat::I420.frame_bytes(3, 3), Some(9 + 2 * 4));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(4, 2), Some(24));
        assert_eq!(PixelFormat::Rgb24.frame_bytes(u32::MAX, u32::MAX), None);
    }

    #[test]
    fn bars_are_jfif_colours() {
        assert_eq!(ycbcr(0, 0, 0), [0, 128, 128]);
        assert_eq!(ycbcr(255, 255, 255), [255, 128, 128]);
        assert_eq!(ycbcr(255, 0, 0), [76, 85, 255]);
        assert_eq!(ycbcr(0, 0, 255), [29, 255, 107]);
    }

    /// Rough figures for the record, not a benchmark:
    /// `cargo test --release -p surv-server --lib -- --ignored --nocapture pattern_speed`
    #[test]
    #[ignore]
    fn pattern_speed() {
        for (w, h) in [(640, 480), (1280, 720), (1920, 1080)] {
            let mut p = TestPattern::new(w, h, 30).unwrap();
            let mut data = vec![0; PixelFormat::I420.frame_bytes(w, h).unwrap()];
            let start = Instant::now();
            for n in 0..100 {
                p.render(n, unix_micros_now(), &mut data);
            }
            println!("{w}x{h}: {:?}/frame", start.elapsed() / 100);
        }
    }
}
