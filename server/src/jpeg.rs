//! JPEG frames as the server receives them: what makes a JPEG a picture ([`check`]), and a
//! turbojpeg decompressor that one bad frame cannot break ([`JpegReader`]).
//!
//! Cameras send corrupt JPEGs routinely (an ESP32-CAM's brown-outs, a Wi-Fi burst cut short):
//! one must cost one frame, never the stream. Two things made that false before:
//!
//! * turbojpeg's `tj3DecompressHeader` leaves its decompressor mid-header when the header is
//!   bad (it returns on the error without aborting), so every later frame, good or not, failed
//!   ("two SOI markers", "bogus Huffman table"). [`JpegReader`] renews the decompressor after
//!   any error.
//! * For a stream with tables but no frame (`FF D8 FF D9`, or tables then EOI) it reports
//!   success and the *previous* frame's size: such a "frame" was published as a picture.
//!   [`check`] walks the marker segments itself and asks for a frame header (SOF) with a size
//!   and a start of scan (SOS) with scan data after it, before turbojpeg sees the bytes.
//!
//! [`check`] reads only the segments before the first scan (some hundred bytes), not the
//! entropy-coded data: a frame whose scan data is damaged still passes, and shows damaged, as
//! it would from any camera server; deciding that would cost a full decode per frame.

use turbojpeg::Decompressor;

/// What the segments before a JPEG's first scan say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JpegInfo {
    pub width: u32,
    pub height: u32,
    /// Colour components (1 grey, 3 YCbCr or RGB, 4 CMYK).
    pub components: u8,
    /// The bytes from SOI to the end of the first scan header: all a header reader reads.
    pub head_bytes: usize,
}

/// Why bytes are not a JPEG picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotAPicture {
    NoSoi,
    NoEoi,
    Truncated,
    NoMarker,
    NoFrame,
    NoScan,
    EmptyScan,
    BadFrameHeader,
    ZeroSize,
    BadScanHeader,
    TwoFrames,
}

impl std::fmt::Display for NotAPicture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for NotAPicture {}

impl NotAPicture {
    /// The reason as a static string, for counters and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            NotAPicture::NoSoi => "not a JPEG (no SOI marker)",
            NotAPicture::NoEoi => "truncated JPEG (no EOI marker)",
            NotAPicture::Truncated => "JPEG segment cut short",
            NotAPicture::NoMarker => "JPEG marker expected, found other bytes",
            NotAPicture::NoFrame => "JPEG with no image (no frame header before the end)",
            NotAPicture::NoScan => "JPEG with no scan (no start-of-scan before the end)",
            NotAPicture::EmptyScan => "JPEG with an empty scan",
            NotAPicture::BadFrameHeader => "malformed JPEG frame header",
            NotAPicture::ZeroSize => "JPEG frame header with a zero width or height",
            NotAPicture::BadScanHeader => "malformed JPEG scan header",
            NotAPicture::TwoFrames => "JPEG with two frame headers",
        }
    }
}

const SOI: u8 = 0xD8;
const EOI: u8 = 0xD9;
const SOS: u8 = 0xDA;

/// Whether `marker` starts a frame (SOF0–SOF15; C4, C8 and CC are DHT, JPG and DAC).
fn is_sof(marker: u8) -> bool {
    (0xC0..=0xCF).contains(&marker) && !matches!(marker, 0xC4 | 0xC8 | 0xCC)
}

/// Checks that `jpeg` is one whole JPEG picture: SOI first, EOI last, and before the first
/// scan well-formed segments including one frame header with a size, then a scan header with
/// at least one byte of scan data after it. Reads only the segments before the first scan.
pub fn check(jpeg: &[u8]) -> Result<JpegInfo, NotAPicture> {
    if !jpeg.starts_with(&[0xFF, SOI]) {
        return Err(NotAPicture::NoSoi);
    }
    if jpeg.len() < 4 || !jpeg.ends_with(&[0xFF, EOI]) {
        return Err(NotAPicture::NoEoi);
    }
    // Everything before the final EOI: a segment reaching into it is cut short.
    let body = &jpeg[..jpeg.len() - 2];
    let mut at = 2;
    let mut frame: Option<JpegInfo> = None;
    loop {
        // A marker: 0xFF, any number of 0xFF fill bytes, then the marker code.
        if body.get(at) != Some(&0xFF) {
            return Err(if at >= body.len() {
                if frame.is_some() {
                    NotAPicture::NoScan
                } else {
                    NotAPicture::NoFrame
                }
            } else {
                NotAPicture::NoMarker
            });
        }
        while body.get(at) == Some(&0xFF) {
            at += 1;
        }
        let Some(&marker) = body.get(at) else {
            return Err(NotAPicture::Truncated);
        };
        at += 1;
        match marker {
            // Markers without a length: TEM, RST0–7 (stray before a scan; libjpeg skips them).
            0x01 | 0xD0..=0xD7 => continue,
            SOI => return Err(NotAPicture::NoMarker),
            EOI => {
                return Err(if frame.is_some() {
                    NotAPicture::NoScan
                } else {
                    NotAPicture::NoFrame
                })
            }
            0x00 => return Err(NotAPicture::NoMarker),
            _ => {}
        }
        let len = match body.get(at..at + 2) {
            Some(b) => usize::from(u16::from_be_bytes([b[0], b[1]])),
            None => return Err(NotAPicture::Truncated),
        };
        if len < 2 {
            return Err(NotAPicture::Truncated);
        }
        let Some(segment) = body.get(at + 2..at + len) else {
            return Err(NotAPicture::Truncated);
        };
        at += len;
        if is_sof(marker) {
            if frame.is_some() {
                return Err(NotAPicture::TwoFrames);
            }
            frame = Some(frame_header(segment)?);
        } else if marker == SOS {
            let Some(info) = frame else {
                return Err(NotAPicture::NoFrame);
            };
            scan_header(segment, info.components)?;
            // The scan's entropy-coded data runs to the final EOI (or the next scan).
            return if at < body.len() {
                Ok(JpegInfo {
                    head_bytes: at,
                    ..info
                })
            } else {
                Err(NotAPicture::EmptyScan)
            };
        }
    }
}

/// SOFn after its length: precision, height, width, components and 3 bytes for each.
fn frame_header(segment: &[u8]) -> Result<JpegInfo, NotAPicture> {
    let [_precision, h0, h1, w0, w1, n, ref rest @ ..] = *segment else {
        return Err(NotAPicture::BadFrameHeader);
    };
    if !(1..=4).contains(&n) || rest.len() != 3 * usize::from(n) {
        return Err(NotAPicture::BadFrameHeader);
    }
    let (height, width) = (u16::from_be_bytes([h0, h1]), u16::from_be_bytes([w0, w1]));
    // A zero height would come later in a DNL segment, which nothing surv reads from makes.
    if height == 0 || width == 0 {
        return Err(NotAPicture::ZeroSize);
    }
    Ok(JpegInfo {
        width: u32::from(width),
        height: u32::from(height),
        components: n,
        head_bytes: 0,
    })
}

/// SOS after its length: components in the scan, 2 bytes for each, then 3 bytes.
fn scan_header(segment: &[u8], frame_components: u8) -> Result<(), NotAPicture> {
    let Some((&n, _)) = segment.split_first() else {
        return Err(NotAPicture::BadScanHeader);
    };
    if n == 0 || n > frame_components || segment.len() != 1 + 2 * usize::from(n) + 3 {
        return Err(NotAPicture::BadScanHeader);
    }
    Ok(())
}

/// A turbojpeg decompressor kept across frames, renewed after any frame it failed on.
///
/// Creating one costs more than reading a header, so it is kept; but after an error turbojpeg
/// may leave it mid-stream, refusing every later frame. [`JpegReader::run`] is the only way to
/// use it, and replaces it when the call fails, so the next frame starts clean.
#[derive(Default)]
pub struct JpegReader {
    decompressor: Option<Decompressor>,
}

impl JpegReader {
    pub fn new() -> JpegReader {
        JpegReader::default()
    }

    /// Runs `f` with the decompressor (created on first use); if `f` fails, the decompressor
    /// is dropped and the next call gets a new one.
    pub fn run<T, E: From<turbojpeg::Error>>(
        &mut self,
        f: impl FnOnce(&mut Decompressor) -> Result<T, E>,
    ) -> Result<T, E> {
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            none => none.insert(Decompressor::new()?),
        };
        let result = f(decompressor);
        if result.is_err() {
            self.decompressor = None;
        }
        result
    }

    /// [`JpegReader::run`] for code whose errors are reasons (strings for logs and counters).
    pub fn run_for_reason<T>(
        &mut self,
        f: impl FnOnce(&mut Decompressor) -> Result<T, String>,
    ) -> Result<T, String> {
        self.run(|d| f(d).map_err(Reason)).map_err(|Reason(r)| r)
    }

    /// The frame header turbojpeg reads: its size, subsampling and colour space.
    pub fn header(&mut self, jpeg: &[u8]) -> Result<turbojpeg::DecompressHeader, turbojpeg::Error> {
        self.run(|d| d.read_header(jpeg))
    }
}

/// A failure's reason, as [`JpegReader::run`] wants it.
struct Reason(String);

impl From<turbojpeg::Error> for Reason {
    fn from(e: turbojpeg::Error) -> Reason {
        Reason(e.to_string())
    }
}

#[cfg(test)]
mod tests;
