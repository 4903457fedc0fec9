//! The "no signal" picture: what watchers see, once a second, while the source is not
//! delivering (a camera not yet connected, unplugged, rebooting, a file that ended), so that a
//! viewer stays alive and a person sees why and since when.

use crate::frame::{PixelFormat, RawFrame};
use crate::sources::test_pattern::draw::{clock_text, ycbcr, Canvas};

const BACKGROUND: [u8; 3] = ycbcr(40, 40, 48);
const BAND: [u8; 3] = ycbcr(150, 20, 20);

/// Draws the picture into `frame` (I420, `width × height` rounded down to even, at least
/// 16×16): "NO SIGNAL" on a red band, then each of `lines` (cut to fit; non-ASCII shown as `?`),
/// then the wall clock at `unix_us`.
pub fn render(width: u32, height: u32, lines: &[&str], unix_us: u64, frame: &mut RawFrame) {
    let (width, height) = ((width & !1).max(16), (height & !1).max(16));
    let (w, h) = (width as usize, height as usize);
    let len = PixelFormat::I420
        .frame_bytes(width, height)
        .expect("an 8K frame fits in memory");
    frame.data.resize(len, 0);
    frame.width = width;
    frame.height = height;
    frame.format = PixelFormat::I420;
    frame.capture_unix_us = unix_us;
    let mut canvas = Canvas::i420(&mut frame.data, w, h);
    canvas.fill(0, 0, w, h, BACKGROUND);

    let title = "NO SIGNAL";
    // The title spans about 60 % of the width; the small lines a third of that scale.
    let big = (w * 6 / 10 / (8 * title.len())).max(1);
    let small = (big / 3).max(1);
    let band_h = 8 * big * 2;
    let band_y = (h / 3).saturating_sub(band_h / 2);
    canvas.fill(0, band_y, w, band_h, BAND);
    let title_x = w.saturating_sub(8 * big * title.len()) / 2;
    canvas.text(title_x, band_y + big * 4, big, title);

    let columns = (w / (8 * small)).saturating_sub(2).max(1);
    let mut y = band_y + band_h + 8 * small;
    let clock = clock_text(unix_us);
    for line in lines.iter().copied().chain([clock.as_str()]) {
        let shown: String = line
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .take(columns)
            .collect();
        canvas.text(8 * small, y, small, &shown);
        y += 12 * small;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_at_every_size_without_panicking() {
        let mut frame = RawFrame::new();
        for (w, h) in [
            (16, 16),
            (17, 15),
            (0, 0),
            (160, 90),
            (640, 480),
            (1921, 1081),
        ] {
            render(
                w,
                h,
                &["camera gone: connection reset", "é→"],
                0,
                &mut frame,
            );
            assert_eq!(frame.width % 2, 0);
            assert!(frame.width >= 16 && frame.height >= 16);
            assert_eq!(
                Some(frame.data.len()),
                PixelFormat::I420.frame_bytes(frame.width, frame.height)
            );
        }
    }

    #[test]
    fn shows_the_title_band_and_text() {
        let mut frame = RawFrame::new();
        render(320, 240, &["why"], 0, &mut frame);
        let y = &frame.data[..320 * 240];
        let red_band_row = 240 / 3;
        let background = y[5 * 320 + 5];
        assert_ne!(y[red_band_row * 320 + 2], background, "the band is drawn");
        assert!(y.contains(&255), "white text is drawn");
    }
}
