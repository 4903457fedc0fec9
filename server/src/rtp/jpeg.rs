//! RFC 2435 packetizing of JPEGs (RTP payload type 26), and the check of which JPEGs can be sent
//! as they are.
//!
//! RTP/JPEG sends no JPEG header: the receiver rebuilds one from the 8-byte main header and the
//! quantisation tables, with fixed assumptions (baseline, 8-bit, Y/Cb/Cr, Y 2x1 or 2x2 and chroma
//! 1x1, the standard Huffman tables). [`rtp_jpeg_info`] accepts a JPEG only when its own header
//! says exactly that, so that the rebuilt header decodes the same scan; any other JPEG is
//! [`Unfit`] and must be re-encoded first. Restart intervals (types 64-127) are refused too:
//! ffmpeg cannot read them.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! | Type-specific |              Fragment Offset                  |  main header,
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  every packet
//! |      Type     |     Q=255     |   Width / 8   |  Height / 8   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |      MBZ      |  Precision=0  |         Length = 128          |  first packet only
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+  (offset 0)
//! |    luma table, 64 bytes, then chroma table, 64 bytes (zigzag)  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |  scan data from `Fragment Offset` on (no EOI)                  |
//! ```

use std::fmt;
use std::ops::Range;

use bytes::BytesMut;
use thiserror::Error;

use super::{split_packets, RtpFrame, RtpHeader, MAX_PAYLOAD_BYTES, RTP_HEADER_BYTES};

/// RTP/JPEG's static payload type (RFC 3551).
pub const PAYLOAD_TYPE: u8 = 26;

/// The largest width or height RTP/JPEG can say (255 × 8).
pub const MAX_DIMENSION: u16 = 2040;

/// The main header's size.
const MAIN_HEADER_BYTES: usize = 8;
/// The quantisation table header (MBZ, precision, length) and both 64-byte tables.
const QUANT_HEADER_BYTES: usize = 4 + 128;
/// Q values 128-255 say "the tables are in the packet"; 255 is the usual one.
const Q_IN_BAND: u8 = 255;
/// The fragment offset is 24 bits.
const MAX_SCAN_BYTES: usize = 1 << 24;

/// What [`JpegPacketizer`] needs of a JPEG that fits RTP/JPEG as it is.
#[derive(Clone, PartialEq, Eq)]
pub struct JpegRtpInfo {
    /// RFC 2435 type: 0 for 4:2:2 (Y 2x1), 1 for 4:2:0 (Y 2x2).
    pub rtp_type: u8,
    /// Pixels, a multiple of 8, at most [`MAX_DIMENSION`].
    pub width: u16,
    pub height: u16,
    /// The luma table (0), then the chroma table (1), 64 bytes each in zigzag order, as the DQT
    /// stores them.
    pub tables: [u8; 128],
    /// Where the entropy-coded scan lies in the JPEG: after the SOS header, up to EOI.
    pub scan: Range<usize>,
}

impl fmt::Debug for JpegRtpInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JpegRtpInfo")
            .field("rtp_type", &self.rtp_type)
            .field("width", &self.width)
            .field("height", &self.height)
            .field("scan", &self.scan)
            .finish()
    }
}

/// One component's sampling factors (a SOF byte, `H << 4 | V`), shown as `HxV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Factors(pub u8);

impl fmt::Display for Factors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.0 >> 4, self.0 & 0x0F)
    }
}

/// Why a JPEG cannot be sent as RTP/JPEG as it is (it can be re-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum Unfit {
    #[error("not a whole JPEG: {0}")]
    Malformed(&'static str),
    #[error("frame type {0:#04x} is not baseline (SOF0)")]
    NotBaseline(u8),
    #[error("{0}-bit samples, RTP/JPEG carries 8-bit")]
    Precision(u8),
    #[error("{0} components, RTP/JPEG carries 3 (Y, Cb, Cr)")]
    Components(u8),
    #[error("sampling Y {y}, Cb {cb}, Cr {cr}: RTP/JPEG carries Y 2x1 or 2x2 with Cb and Cr 1x1")]
    Sampling {
        y: Factors,
        cb: Factors,
        cr: Factors,
    },
    #[error("quantisation tables: {0}")]
    QuantTables(&'static str),
    #[error("Huffman tables: {0}")]
    HuffmanTables(&'static str),
    #[error("restart interval (DRI): ffmpeg cannot read RTP/JPEG with restart markers")]
    RestartInterval,
    #[error("size {width}x{height}: RTP/JPEG needs multiples of 8, at most 2040")]
    Size { width: u16, height: u16 },
    #[error("scan: {0}")]
    Scan(&'static str),
    #[error("marker {0:#04x} before the scan")]
    Marker(u8),
    #[error("{0} bytes of scan data: RTP/JPEG's fragment offset ends at 16 MiB")]
    TooLarge(usize),
}

impl Unfit {
    /// A short fixed label for counters and logs (`not_baseline`, `sampling`, …).
    pub fn cause(&self) -> &'static str {
        match self {
            Unfit::Malformed(_) => "malformed",
            Unfit::NotBaseline(_) => "not_baseline",
            Unfit::Precision(_) => "precision",
            Unfit::Components(_) => "components",
            Unfit::Sampling { .. } => "sampling",
            Unfit::QuantTables(_) => "quant_tables",
            Unfit::HuffmanTables(_) => "huffman_tables",
            Unfit::RestartInterval => "restart_interval",
            Unfit::Size { .. } => "size",
            Unfit::Scan(_) => "scan",
            Unfit::Marker(_) => "marker",
            Unfit::TooLarge(_) => "too_large",
        }
    }
}

/// Reads `jpeg`'s header up to the scan and says whether RTP/JPEG can carry it as it is
/// (see the module doc). APPn and COM segments (surv's tag among them) are skipped: RTP/JPEG
/// does not carry them.
pub fn rtp_jpeg_info(jpeg: &[u8]) -> Result<JpegRtpInfo, Unfit> {
    if !jpeg.starts_with(&[0xFF, 0xD8]) {
        return Err(Unfit::Malformed("no SOI"));
    }
    let mut pos = 2;
    let mut frame: Option<Frame> = None;
    let mut tables = [0u8; 128];
    let mut defined = [false; 2];
    loop {
        if jpeg.get(pos) != Some(&0xFF) {
            return Err(Unfit::Malformed("no marker where a segment should start"));
        }
        // Any number of 0xFF fill bytes may precede a marker.
        while jpeg.get(pos) == Some(&0xFF) {
            pos += 1;
        }
        let marker = *jpeg
            .get(pos)
            .ok_or(Unfit::Malformed("ends before the scan"))?;
        pos += 1;
        if matches!(marker, 0x00 | 0x01 | 0xD0..=0xD9) {
            return Err(Unfit::Marker(marker));
        }
        let len_bytes = jpeg
            .get(pos..pos + 2)
            .ok_or(Unfit::Malformed("ends in a segment length"))?;
        let len = usize::from(u16::from_be_bytes([len_bytes[0], len_bytes[1]]));
        let end = pos
            .checked_add(len)
            .filter(|_| len >= 2)
            .ok_or(Unfit::Malformed("bad segment length"))?;
        let segment = jpeg
            .get(pos + 2..end)
            .ok_or(Unfit::Malformed("ends inside a segment"))?;
        pos = end;
        match marker {
            0xC0 => {
                if frame.is_some() {
                    return Err(Unfit::Malformed("two frame headers"));
                }
                frame = Some(Frame::parse(segment)?);
            }
            0xC4 => check_huffman(segment)?,
            0xDB => read_quant_tables(segment, &mut tables, &mut defined)?,
            0xDD => {
                // An interval of 0 turns restart markers off; any other puts them in the scan.
                if segment != [0, 0] {
                    return Err(Unfit::RestartInterval);
                }
            }
            0xDA => {
                let frame = frame.ok_or(Unfit::Malformed("a scan before the frame header"))?;
                check_scan_header(segment, &frame)?;
                if defined != [true, true] {
                    return Err(Unfit::QuantTables("tables 0 and 1 are needed"));
                }
                let scan = pos..scan_end(jpeg, pos)?;
                if scan.len() > MAX_SCAN_BYTES {
                    return Err(Unfit::TooLarge(scan.len()));
                }
                return Ok(JpegRtpInfo {
                    rtp_type: frame.rtp_type,
                    width: frame.width,
                    height: frame.height,
                    tables,
                    scan,
                });
            }
            0xE0..=0xEF | 0xFE => {}
            0xC1..=0xCF => return Err(Unfit::NotBaseline(marker)),
            other => return Err(Unfit::Marker(other)),
        }
    }
}

/// What the frame header (SOF0) says, once checked.
struct Frame {
    rtp_type: u8,
    width: u16,
    height: u16,
    /// Component ids in order: Y, Cb, Cr.
    ids: [u8; 3],
}

impl Frame {
    /// `P | Y (2) | X (2) | Nf | Nf × (C, H<<4|V, Tq)`.
    fn parse(segment: &[u8]) -> Result<Frame, Unfit> {
        let [precision, h0, h1, w0, w1, count, components @ ..] = segment else {
            return Err(Unfit::Malformed("short frame header"));
        };
        if *precision != 8 {
            return Err(Unfit::Precision(*precision));
        }
        if *count != 3 {
            return Err(Unfit::Components(*count));
        }
        let [y_id, y_sampling, y_table, cb_id, cb_sampling, cb_table, cr_id, cr_sampling, cr_table] =
            components
        else {
            return Err(Unfit::Malformed("frame header length"));
        };
        let rtp_type = match (y_sampling, cb_sampling, cr_sampling) {
            (0x21, 0x11, 0x11) => 0,
            (0x22, 0x11, 0x11) => 1,
            _ => {
                return Err(Unfit::Sampling {
                    y: Factors(*y_sampling),
                    cb: Factors(*cb_sampling),
                    cr: Factors(*cr_sampling),
                })
            }
        };
        if (y_table, cb_table, cr_table) != (&0, &1, &1) {
            return Err(Unfit::QuantTables("Y must use table 0, Cb and Cr table 1"));
        }
        let width = u16::from_be_bytes([*w0, *w1]);
        let height = u16::from_be_bytes([*h0, *h1]);
        let fits = |d: u16| d > 0 && d.is_multiple_of(8) && d <= MAX_DIMENSION;
        if !fits(width) || !fits(height) {
            return Err(Unfit::Size { width, height });
        }
        Ok(Frame {
            rtp_type,
            width,
            height,
            ids: [*y_id, *cb_id, *cr_id],
        })
    }
}

/// `Ns | Ns × (Cs, Td<<4|Ta) | Ss | Se | Ah<<4|Al`: one scan of all three components in frame
/// order, Y on Huffman tables 0 and Cb, Cr on tables 1 (what the receiver's rebuilt header
/// says), all coefficients at once.
fn check_scan_header(segment: &[u8], frame: &Frame) -> Result<(), Unfit> {
    let [3, y_id, y_tables, cb_id, cb_tables, cr_id, cr_tables, ss, se, approx] = segment else {
        return Err(match segment.first() {
            Some(3) | None => Unfit::Malformed("scan header length"),
            Some(_) => Unfit::Scan("not one scan of all three components"),
        });
    };
    if [*y_id, *cb_id, *cr_id] != frame.ids {
        return Err(Unfit::Scan("components not in frame order"));
    }
    if (y_tables, cb_tables, cr_tables) != (&0x00, &0x11, &0x11) {
        return Err(Unfit::HuffmanTables(
            "Y must use tables 0, Cb and Cr tables 1",
        ));
    }
    if (ss, se, approx) != (&0, &63, &0) {
        return Err(Unfit::Scan("not a sequential scan"));
    }
    Ok(())
}

/// Where the scan data starting at `start` ends: at the EOI marker. Inside entropy-coded data
/// 0xFF is followed by 0x00 (a stuffed byte) or by a marker.
fn scan_end(jpeg: &[u8], start: usize) -> Result<usize, Unfit> {
    let data = jpeg
        .get(start..)
        .ok_or(Unfit::Malformed("ends before the scan"))?;
    for at in memchr::memchr_iter(0xFF, data) {
        match data.get(at + 1) {
            Some(0x00 | 0xFF) => continue,
            Some(0xD9) => return Ok(start + at),
            Some(0xD0..=0xD7) => return Err(Unfit::Scan("restart marker in the scan")),
            Some(_) => return Err(Unfit::Scan("more than one scan")),
            None => break,
        }
    }
    Err(Unfit::Malformed("no EOI after the scan"))
}

/// Reads a DQT segment's tables into `tables` (table `n` at `n * 64`): 8-bit tables 0 and 1
/// only, each defined once.
fn read_quant_tables(
    mut segment: &[u8],
    tables: &mut [u8; 128],
    defined: &mut [bool; 2],
) -> Result<(), Unfit> {
    while let Some((&pq_tq, rest)) = segment.split_first() {
        if pq_tq >> 4 != 0 {
            return Err(Unfit::QuantTables("16-bit table"));
        }
        let id = usize::from(pq_tq & 0x0F);
        if id > 1 {
            return Err(Unfit::QuantTables("more than two tables"));
        }
        if defined[id] {
            return Err(Unfit::QuantTables("a table defined twice"));
        }
        let table = rest
            .get(..64)
            .ok_or(Unfit::Malformed("short quantisation table"))?;
        tables[id * 64..id * 64 + 64].copy_from_slice(table);
        defined[id] = true;
        segment = &rest[64..];
    }
    Ok(())
}

/// The standard Huffman tables (JPEG Annex K.3, RFC 2435 Appendix B): what an RTP/JPEG
/// receiver decodes with. Code lengths (16 counts), then the symbols.
const LUMA_DC: (&[u8; 16], &[u8]) = (
    &[0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
);
const CHROMA_DC: (&[u8; 16], &[u8]) = (
    &[0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
    &[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11],
);
#[rustfmt::skip]
const LUMA_AC: (&[u8; 16], &[u8]) = (
    &[0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
    &[
        0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51, 0x61,
        0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1, 0x15, 0x52,
        0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x25,
        0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44, 0x45,
        0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63, 0x64,
        0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x83,
        0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99,
        0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6,
        0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3,
        0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8,
        0xe9, 0xea, 0xf1, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
);
#[rustfmt::skip]
const CHROMA_AC: (&[u8; 16], &[u8]) = (
    &[0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
    &[
        0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07, 0x61,
        0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09, 0x23, 0x33,
        0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25, 0xf1, 0x17, 0x18,
        0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38, 0x39, 0x3a, 0x43, 0x44,
        0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5a, 0x63,
        0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75, 0x76, 0x77, 0x78, 0x79, 0x7a,
        0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97,
        0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4,
        0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca,
        0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7,
        0xe8, 0xe9, 0xea, 0xf2, 0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
    ],
);

/// Checks that every table a DHT segment defines is the standard one for its place (class and
/// id); a table it leaves out is the standard one for decoders that read motion JPEG.
fn check_huffman(mut segment: &[u8]) -> Result<(), Unfit> {
    while let Some((&tc_th, rest)) = segment.split_first() {
        let counts = rest
            .get(..16)
            .ok_or(Unfit::Malformed("short Huffman table"))?;
        let symbols: usize = counts.iter().map(|&c| usize::from(c)).sum();
        let values = rest
            .get(16..16 + symbols)
            .ok_or(Unfit::Malformed("short Huffman table"))?;
        let standard = match tc_th {
            0x00 => LUMA_DC,
            0x10 => LUMA_AC,
            0x01 => CHROMA_DC,
            0x11 => CHROMA_AC,
            _ => return Err(Unfit::HuffmanTables("a table other than DC/AC 0 and 1")),
        };
        if counts != standard.0 || values != standard.1 {
            return Err(Unfit::HuffmanTables("not the standard ones (JPEG Annex K)"));
        }
        segment = &rest[16 + symbols..];
    }
    Ok(())
}

/// Makes the RTP packets of one RTP/JPEG stream: one SSRC, one run of sequence numbers.
#[derive(Debug)]
pub struct JpegPacketizer {
    ssrc: u32,
    next_seq: u16,
}

impl JpegPacketizer {
    /// A packetizer whose first packet will have sequence number `first_seq`.
    pub fn new(ssrc: u32, first_seq: u16) -> JpegPacketizer {
        JpegPacketizer {
            ssrc,
            next_seq: first_seq,
        }
    }

    /// The sequence number the next packet will have.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// The packets of one JPEG, all with timestamp `rtp_ts`; `Unfit` (and no sequence number
    /// used) when RTP/JPEG cannot carry it as it is.
    pub fn packetize(&mut self, jpeg: &[u8], rtp_ts: u32) -> Result<RtpFrame, Unfit> {
        let info = rtp_jpeg_info(jpeg)?;
        Ok(self.packetize_info(jpeg, &info, rtp_ts))
    }

    /// [`packetize`](Self::packetize) for a JPEG already checked by [`rtp_jpeg_info`] (`info`
    /// must be `jpeg`'s).
    pub fn packetize_info(&mut self, jpeg: &[u8], info: &JpegRtpInfo, rtp_ts: u32) -> RtpFrame {
        let scan = jpeg.get(info.scan.clone()).unwrap_or_default();
        let first_chunk = MAX_PAYLOAD_BYTES - MAIN_HEADER_BYTES - QUANT_HEADER_BYTES;
        let later_chunk = MAX_PAYLOAD_BYTES - MAIN_HEADER_BYTES;
        let packets = 1 + scan.len().saturating_sub(first_chunk).div_ceil(later_chunk);
        let total =
            packets * (RTP_HEADER_BYTES + MAIN_HEADER_BYTES) + QUANT_HEADER_BYTES + scan.len();
        let mut buf = BytesMut::with_capacity(total);
        let mut ends = Vec::with_capacity(packets);
        let first_seq = self.next_seq;
        let mut offset = 0;
        while ends.is_empty() || offset < scan.len() {
            let first = ends.is_empty();
            let room = if first { first_chunk } else { later_chunk };
            let chunk = &scan[offset..scan.len().min(offset + room)];
            let last = offset + chunk.len() == scan.len();
            let seq = self.next_seq;
            self.next_seq = seq.wrapping_add(1);
            RtpHeader {
                payload_type: PAYLOAD_TYPE,
                marker: last,
                seq,
                timestamp: rtp_ts,
                ssrc: self.ssrc,
            }
            .write(&mut buf);
            // The offset fits 24 bits: rtp_jpeg_info caps the scan at MAX_SCAN_BYTES.
            let offset_be = u32::try_from(offset).unwrap_or(u32::MAX).to_be_bytes();
            buf.extend_from_slice(&[0, offset_be[1], offset_be[2], offset_be[3]]);
            buf.extend_from_slice(&[
                info.rtp_type,
                Q_IN_BAND,
                u8::try_from(info.width / 8).unwrap_or(u8::MAX),
                u8::try_from(info.height / 8).unwrap_or(u8::MAX),
            ]);
            if first {
                buf.extend_from_slice(&[0, 0, 0, 128]);
                buf.extend_from_slice(&info.tables);
            }
            buf.extend_from_slice(chunk);
            ends.push(buf.len());
            offset += chunk.len();
        }
        debug_assert_eq!(buf.len(), total);
        RtpFrame {
            first_seq,
            rtp_ts,
            keyframe: true,
            packets: split_packets(buf.freeze(), &ends),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::tests::{check_run, rtp};
    use surv_tests::fixtures::{test_jpeg, Picture, Subsamp};

    const SSRC: u32 = 0x0BAD_CAFE;

    fn jpeg(width: usize, height: usize, subsamp: Subsamp) -> Vec<u8> {
        test_jpeg(width, height, Picture::Gradient(3), 85, subsamp)
    }

    /// Finds the first segment with `marker` the plain way (a test's own walk, not the
    /// module's): the segment's payload range.
    fn segment(jpeg: &[u8], marker: u8) -> Range<usize> {
        let at = jpeg
            .windows(2)
            .position(|w| w == [0xFF, marker])
            .expect("the marker");
        let len = usize::from(u16::from_be_bytes([jpeg[at + 2], jpeg[at + 3]]));
        at + 4..at + 2 + len
    }

    /// The quantisation tables as turbojpeg wrote them: table 0 then table 1, whether in one
    /// DQT segment or two.
    fn dqt_tables(jpeg: &[u8]) -> Vec<u8> {
        let mut tables = vec![0; 128];
        let mut rest = jpeg;
        while let Some(at) = rest.windows(2).position(|w| w == [0xFF, 0xDB]) {
            let len = usize::from(u16::from_be_bytes([rest[at + 2], rest[at + 3]]));
            for table in rest[at + 4..at + 2 + len].chunks(65) {
                let id = usize::from(table[0]);
                tables[id * 64..id * 64 + 64].copy_from_slice(&table[1..]);
            }
            rest = &rest[at + 2 + len..];
        }
        tables
    }

    /// A receiver's side of RFC 2435 (its Appendix A/B): a whole JPEG rebuilt from the packets
    /// alone, with the standard Huffman tables, to be decoded by turbojpeg.
    fn rebuild(frame: &RtpFrame) -> Vec<u8> {
        let mut scan = Vec::new();
        let mut header = None;
        for packet in &frame.packets {
            let (_, payload) = rtp(packet);
            let offset = u32::from_be_bytes([0, payload[1], payload[2], payload[3]]);
            assert_eq!(offset as usize, scan.len(), "fragment offset");
            let main: [u8; 4] = payload[4..8].try_into().expect("main header");
            let mut data = &payload[8..];
            if offset == 0 {
                assert_eq!(&data[..4], &[0, 0, 0, 128], "quantisation table header");
                header = Some((main, data[4..132].to_vec()));
                data = &data[132..];
            }
            assert_eq!(header.as_ref().map(|h| h.0), Some(main), "same main header");
            scan.extend_from_slice(data);
        }
        let ([rtp_type, q, w8, h8], tables) = header.expect("a first packet");
        assert_eq!(q, 255);
        let (width, height) = (u16::from(w8) * 8, u16::from(h8) * 8);
        let mut out = vec![0xFF, 0xD8];
        for (id, table) in tables.chunks(64).enumerate() {
            out.extend_from_slice(&[0xFF, 0xDB, 0, 67, id as u8]);
            out.extend_from_slice(table);
        }
        out.extend_from_slice(&[0xFF, 0xC0, 0, 17, 8]);
        out.extend_from_slice(&height.to_be_bytes());
        out.extend_from_slice(&width.to_be_bytes());
        let y_sampling = if rtp_type == 0 { 0x21 } else { 0x22 };
        out.extend_from_slice(&[3, 0, y_sampling, 0, 1, 0x11, 1, 2, 0x11, 1]);
        for (class_id, (counts, symbols)) in [
            (0x00, LUMA_DC),
            (0x10, LUMA_AC),
            (0x01, CHROMA_DC),
            (0x11, CHROMA_AC),
        ] {
            let len = (2 + 1 + 16 + symbols.len()) as u16;
            out.extend_from_slice(&[0xFF, 0xC4]);
            out.extend_from_slice(&len.to_be_bytes());
            out.push(class_id);
            out.extend_from_slice(counts);
            out.extend_from_slice(symbols);
        }
        out.extend_from_slice(&[0xFF, 0xDA, 0, 12, 3, 0, 0x00, 1, 0x11, 2, 0x11, 0, 63, 0]);
        out.extend_from_slice(&scan);
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }

    fn rgb_of(jpeg: &[u8]) -> turbojpeg::Image<Vec<u8>> {
        turbojpeg::decompress(jpeg, turbojpeg::PixelFormat::RGB).expect("turbojpeg decodes it")
    }

    #[test]
    fn turbojpeg_420_and_422_fit_and_survive_the_trip() {
        for (subsamp, rtp_type) in [(Subsamp::Sub2x2, 1), (Subsamp::Sub2x1, 0)] {
            // Noise: hundreds of packets, and 0xFF bytes stuffed in the scan.
            let original = test_jpeg(640, 480, Picture::Noise(5), 90, subsamp);
            let info = rtp_jpeg_info(&original).expect("fits");
            assert_eq!(
                (info.rtp_type, info.width, info.height),
                (rtp_type, 640, 480)
            );
            assert_eq!(info.tables.to_vec(), dqt_tables(&original));
            // The scan: after the SOS header, up to the final EOI.
            assert_eq!(info.scan.start, segment(&original, 0xDA).end);
            assert_eq!(info.scan.end, original.len() - 2);

            let mut packetizer = JpegPacketizer::new(SSRC, 40_000);
            let frame = packetizer.packetize(&original, 3000).expect("fits");
            assert!(frame.keyframe && frame.packets.len() > 50, "{frame:?}");
            check_run(&frame, SSRC, PAYLOAD_TYPE);
            assert_eq!(packetizer.next_seq(), frame.next_seq());
            let mut offset = 0;
            let mut scan = Vec::new();
            for (i, packet) in frame.packets.iter().enumerate() {
                let (_, payload) = rtp(packet);
                let mut expected = vec![0];
                expected.extend_from_slice(&(offset as u32).to_be_bytes()[1..]);
                expected.extend_from_slice(&[rtp_type, 255, 80, 60]);
                assert_eq!(&payload[..8], &expected[..], "packet {i}: main header");
                let data = if i == 0 {
                    assert_eq!(&payload[8..12], &[0, 0, 0, 128]);
                    assert_eq!(&payload[12..140], &info.tables[..]);
                    &payload[140..]
                } else {
                    &payload[8..]
                };
                // Full packets but the last.
                if i + 1 < frame.packets.len() {
                    assert_eq!(payload.len(), MAX_PAYLOAD_BYTES, "packet {i}");
                }
                offset += data.len();
                scan.extend_from_slice(data);
            }
            assert_eq!(scan, &original[info.scan.clone()]);

            // A receiver's rebuilt JPEG decodes to the very same pixels.
            let rebuilt = rebuild(&frame);
            assert_eq!(
                rgb_of(&rebuilt).pixels,
                rgb_of(&original).pixels,
                "{subsamp:?}"
            );
        }
    }

    #[test]
    fn a_surv_tagged_jpeg_fits_and_sends_the_same_scan() {
        let plain = jpeg(160, 120, Subsamp::Sub2x2);
        let tag = surv_proto::FrameTag {
            seq: 12,
            capture_unix_us: 1_733_370_000_000_000,
            motion: true,
            objects: false,
        };
        let mut tagged = Vec::new();
        tag.encode_into(&plain, &mut tagged).expect("a JPEG");
        let a = rtp_jpeg_info(&plain).expect("fits");
        let b = rtp_jpeg_info(&tagged).expect("the tag is skipped");
        assert_eq!(&plain[a.scan.clone()], &tagged[b.scan.clone()]);
        assert_eq!(b.scan.start - a.scan.start, surv_proto::TAG_BYTES);
        let p = JpegPacketizer::new(1, 0)
            .packetize(&plain, 0)
            .expect("fits");
        let t = JpegPacketizer::new(1, 0)
            .packetize(&tagged, 0)
            .expect("fits");
        assert_eq!(p.packets, t.packets, "the tag is not sent");
    }

    #[test]
    fn jpegs_rtp_jpeg_cannot_carry_are_unfit_with_the_reason() {
        let sub444 = jpeg(64, 48, Subsamp::None);
        assert_eq!(
            rtp_jpeg_info(&sub444),
            Err(Unfit::Sampling {
                y: Factors(0x11),
                cb: Factors(0x11),
                cr: Factors(0x11)
            })
        );
        assert_eq!(
            rtp_jpeg_info(&sub444).expect_err("unfit").to_string(),
            "sampling Y 1x1, Cb 1x1, Cr 1x1: RTP/JPEG carries Y 2x1 or 2x2 with Cb and Cr 1x1"
        );
        assert_eq!(
            rtp_jpeg_info(&jpeg(64, 48, Subsamp::Gray)),
            Err(Unfit::Components(1))
        );
        // 4:4:0 (Y 1x2) is not a type RTP/JPEG has.
        assert!(matches!(
            rtp_jpeg_info(&jpeg(64, 48, Subsamp::Sub1x2)),
            Err(Unfit::Sampling { .. })
        ));
        assert_eq!(
            rtp_jpeg_info(&jpeg(100, 75, Subsamp::Sub2x2)),
            Err(Unfit::Size {
                width: 100,
                height: 75
            })
        );
        assert_eq!(
            rtp_jpeg_info(&jpeg(2048, 16, Subsamp::Sub2x2)),
            Err(Unfit::Size {
                width: 2048,
                height: 16
            })
        );
        assert!(rtp_jpeg_info(&jpeg(2040, 16, Subsamp::Sub2x2)).is_ok());

        let compress = |configure: &dyn Fn(&mut turbojpeg::Compressor)| {
            let pixels = Picture::Gradient(1).rgb(64, 48);
            let mut c = turbojpeg::Compressor::new().expect("compressor");
            c.set_quality(85).expect("quality");
            c.set_subsamp(Subsamp::Sub2x2).expect("subsamp");
            configure(&mut c);
            c.compress_to_vec(turbojpeg::Image {
                pixels: &pixels[..],
                width: 64,
                pitch: 64 * 3,
                height: 48,
                format: turbojpeg::PixelFormat::RGB,
            })
            .expect("compresses")
        };
        assert!(rtp_jpeg_info(&compress(&|_| {})).is_ok());
        assert_eq!(
            rtp_jpeg_info(&compress(&|c| c
                .set_progressive(true)
                .expect("progressive"))),
            Err(Unfit::NotBaseline(0xC2))
        );
        assert_eq!(
            rtp_jpeg_info(&compress(&|c| c.set_optimize(true).expect("optimize"))),
            Err(Unfit::HuffmanTables("not the standard ones (JPEG Annex K)"))
        );
        assert_eq!(
            rtp_jpeg_info(&compress(&|c| c.set_arithmetic(true).expect("arithmetic"))),
            Err(Unfit::NotBaseline(0xC9))
        );

        // turbojpeg cannot set a restart interval: insert a DRI segment after SOI.
        let good = jpeg(64, 48, Subsamp::Sub2x2);
        let with_dri = |interval: u16| {
            let mut out = vec![0xFF, 0xD8, 0xFF, 0xDD, 0, 4];
            out.extend_from_slice(&interval.to_be_bytes());
            out.extend_from_slice(&good[2..]);
            out
        };
        assert_eq!(rtp_jpeg_info(&with_dri(4)), Err(Unfit::RestartInterval));
        assert!(
            rtp_jpeg_info(&with_dri(0)).is_ok(),
            "interval 0: no restarts"
        );

        // A 12-bit frame header, and a 16-bit quantisation table.
        let mut twelve = good.clone();
        twelve[segment(&good, 0xC0).start] = 12;
        assert_eq!(rtp_jpeg_info(&twelve), Err(Unfit::Precision(12)));
        let mut sixteen = good.clone();
        sixteen[segment(&good, 0xDB).start] |= 0x10;
        assert_eq!(
            rtp_jpeg_info(&sixteen),
            Err(Unfit::QuantTables("16-bit table"))
        );
        // Chroma on the luma table.
        let mut shared = good.clone();
        let sof = segment(&good, 0xC0);
        shared[sof.start + 6 + 3 + 2] = 0;
        assert!(matches!(rtp_jpeg_info(&shared), Err(Unfit::QuantTables(_))));
        // Two scans (the scan data is followed by another SOS, not EOI).
        let mut two_scans = good[..good.len() - 2].to_vec();
        two_scans.extend_from_slice(&good[segment(&good, 0xDA).start - 4..]);
        assert_eq!(
            rtp_jpeg_info(&two_scans),
            Err(Unfit::Scan("more than one scan"))
        );

        // Nothing was sent for an unfit JPEG: no sequence number was used.
        let mut packetizer = JpegPacketizer::new(SSRC, 5);
        assert!(packetizer.packetize(&sub444, 0).is_err());
        assert_eq!(packetizer.next_seq(), 5);
        assert_eq!(Unfit::RestartInterval.cause(), "restart_interval");
    }

    #[test]
    fn every_truncated_prefix_is_unfit_without_a_panic() {
        let good = jpeg(32, 16, Subsamp::Sub2x2);
        for len in 0..good.len() {
            assert!(
                rtp_jpeg_info(&good[..len]).is_err(),
                "prefix of {len} bytes"
            );
        }
        assert!(rtp_jpeg_info(&good).is_ok());
        // Bytes after EOI are ignored.
        let trailing = [&good[..], &[0, 0, 0xFF]].concat();
        assert_eq!(rtp_jpeg_info(&trailing), rtp_jpeg_info(&good));
    }

    #[test]
    fn a_small_jpeg_is_one_packet_with_the_marker() {
        let small = test_jpeg(16, 16, Picture::Solid([9, 9, 9]), 50, Subsamp::Sub2x2);
        let frame = JpegPacketizer::new(SSRC, 65535)
            .packetize(&small, 7)
            .expect("fits");
        assert_eq!(frame.packets.len(), 1);
        check_run(&frame, SSRC, PAYLOAD_TYPE);
        assert_eq!(frame.next_seq(), 0);
        let (header, payload) = rtp(&frame.packets[0]);
        assert!(header.marker);
        assert_eq!(&payload[..8], &[0, 0, 0, 0, 1, 255, 2, 2]);
    }
}
