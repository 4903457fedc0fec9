//! Drawing on I420 planes: JFIF colours, filled rectangles and 8×8 text (the test pattern and
//! the "no signal" frame).

use chrono::{DateTime, Local};
use font8x8::legacy::BASIC_LEGACY;

/// Full-range (JFIF) BT.601 YCbCr of an RGB colour, as JPEG stores it.
pub(crate) const fn ycbcr(r: u8, g: u8, b: u8) -> [u8; 3] {
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
pub(super) const BARS: [[u8; 3]; 8] = [
    ycbcr(191, 191, 191),
    ycbcr(191, 191, 0),
    ycbcr(0, 191, 191),
    ycbcr(0, 191, 0),
    ycbcr(191, 0, 191),
    ycbcr(191, 0, 0),
    ycbcr(0, 0, 191),
    ycbcr(0, 0, 0),
];
pub(super) const BOX_COLOUR: [u8; 3] = ycbcr(255, 140, 0);
pub(super) const BLACK: [u8; 3] = ycbcr(0, 0, 0);
pub(super) const WHITE_Y: u8 = 255;
pub(super) const WHITE: [u8; 3] = ycbcr(255, 255, 255);
/// Characters in the longest counter line at 30 fps for 9 hours ("F 999999").
pub(super) const COUNTER_CHARS: u32 = 8;
/// "HH:MM:SS.mmm".
pub(super) const CLOCK_CHARS: u32 = 12;

/// Local wall-clock time, "HH:MM:SS.mmm".
pub(crate) fn clock_text(unix_us: u64) -> String {
    let local = i64::try_from(unix_us)
        .ok()
        .and_then(DateTime::from_timestamp_micros)
        .map(|t| t.with_timezone(&Local));
    match local {
        Some(t) => t.format("%H:%M:%S%.3f").to_string(),
        None => "--:--:--.---".to_string(),
    }
}

/// The capture time in the picture, for measuring glass to glass: the wall clock's milliseconds
/// (modulo 2³²: about 49 days) as 32 cells along the bottom of the frame, most significant bit
/// first, white for 1 and black for 0, so that a player that draws the frame can read it back
/// and compare it with the same clock (`surv-load --glass` does, in Chromium).
///
/// ```text
///  |<- x0 ->|<-cell->|<-cell->| ... 32 cells ... |
///  +--------+--------+--------+------------------+  y0 = height - strip
///  |        | bit 31 | bit 30 |      ...  bit 0  |  strip = max(8, height / 24), even
///  +--------+--------+--------+------------------+  height
///  cell = (width / 32) rounded down to even; x0 = (width - 32 cell) / 2 rounded down to even
/// ```
///
/// Frames narrower than 64 pixels carry no code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeCode {
    pub x0: usize,
    pub cell: usize,
    pub y0: usize,
    pub strip: usize,
}

/// Cells in a [`TimeCode`].
pub const TIME_CODE_BITS: usize = 32;

impl TimeCode {
    pub fn layout(width: usize, height: usize) -> Option<TimeCode> {
        let cell = (width / TIME_CODE_BITS) & !1;
        let strip = (height / 24).max(8) & !1;
        if cell < 2 || strip * 4 > height {
            return None;
        }
        Some(TimeCode {
            x0: ((width - TIME_CODE_BITS * cell) / 2) & !1,
            cell,
            y0: height - strip,
            strip,
        })
    }

    /// Draws `unix_ms` (modulo 2³²).
    pub(crate) fn draw(&self, canvas: &mut Canvas<'_>, unix_ms: u64) {
        for i in 0..TIME_CODE_BITS {
            let one = (unix_ms >> (TIME_CODE_BITS - 1 - i)) & 1 == 1;
            let colour = if one { WHITE } else { BLACK };
            canvas.fill(
                self.x0 + i * self.cell,
                self.y0,
                self.cell,
                self.strip,
                colour,
            );
        }
    }

    /// Reads the code back from a luma plane (`width` bytes a row): the middle of each cell,
    /// white above half.
    pub fn read(&self, y_plane: &[u8], width: usize) -> Option<u32> {
        let row = self.y0 + self.strip / 2;
        let mut value = 0u32;
        for i in 0..TIME_CODE_BITS {
            let x = self.x0 + i * self.cell + self.cell / 2;
            let luma = *y_plane.get(row * width + x)?;
            value = (value << 1) | u32::from(luma >= 128);
        }
        Some(value)
    }
}

/// Drawing on I420 planes (even width and height); everything is clipped to the frame.
pub(crate) struct Canvas<'a> {
    pub y: &'a mut [u8],
    pub u: &'a mut [u8],
    pub v: &'a mut [u8],
    pub width: usize,
    pub height: usize,
}

impl<'a> Canvas<'a> {
    /// The canvas over one I420 frame of `width × height` (even): Y, then U, then V, unpadded.
    pub fn i420(data: &'a mut [u8], width: usize, height: usize) -> Canvas<'a> {
        let (y, chroma) = data.split_at_mut(width * height);
        let (u, v) = chroma.split_at_mut((width / 2) * (height / 2));
        Canvas {
            y,
            u,
            v,
            width,
            height,
        }
    }

    /// Fills a rectangle in one colour; chroma covers every 2×2 block the rectangle touches.
    pub fn fill(&mut self, x: usize, y: usize, w: usize, h: usize, [cy, cu, cv]: [u8; 3]) {
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
    pub fn text(&mut self, x: usize, y: usize, scale: usize, text: &str) {
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
