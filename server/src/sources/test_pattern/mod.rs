//! The built-in source: moving colour bars, a bouncing box, and a frame counter and wall clock
//! burnt in, so that a viewer can see at a glance that frames arrive, in order, and how late;
//! along the bottom, the capture time as a code a program reads ([`TimeCode`]). Needs no
//! camera.

pub(crate) mod draw;
#[cfg(test)]
mod tests;

use std::fmt::Write as _;
use std::time::Instant;

use super::pacer::Pacer;
use super::{unix_micros_now, FrameReader, SourceError};
use crate::frame::{PixelFormat, RawFrame};
use draw::{clock_text, Canvas, BARS, BLACK, BOX_COLOUR, CLOCK_CHARS, COUNTER_CHARS};
pub use draw::{TimeCode, TIME_CODE_BITS};

/// Smallest width and height a test pattern accepts: room for one 8×8 glyph and a margin.
pub const MIN_SIDE_PX: u32 = 16;
/// Largest frame a test pattern produces: 8K UHD.
pub const MAX_WIDTH_PX: u32 = 7680;
/// Largest frame a test pattern produces: 8K UHD.
pub const MAX_HEIGHT_PX: u32 = 4320;
/// Highest frame rate a test pattern accepts.
pub const MAX_FPS: u32 = 240;

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
        let cw = w / 2;
        let mut canvas = Canvas::i420(data, w, h);

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
        for row in canvas.y.chunks_exact_mut(w) {
            row.copy_from_slice(y_row);
        }
        for (u, v) in canvas
            .u
            .chunks_exact_mut(cw)
            .zip(canvas.v.chunks_exact_mut(cw))
        {
            u.copy_from_slice(u_row);
            v.copy_from_slice(v_row);
        }

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

        // Last, over whatever bounced there: the capture time for programs.
        if let Some(code) = TimeCode::layout(w, h) {
            code.draw(&mut canvas, unix_us / 1000);
        }
    }
}

impl FrameReader for TestPattern {
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
