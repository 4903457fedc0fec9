//! The frame tag: sequence number, capture time and flags, carried inside each JPEG datagram.
//!
//! A frame datagram is one whole JPEG file, so that any JPEG decoder (seed 003's `cv2.imdecode`)
//! reads it. The tag is a COM (comment) segment placed right after SOI; decoders skip COM.
//!
//! ```text
//!  0      2      4      6                  10   11                 19                      27      28
//!  +------+------+------+------------------+----+------------------+-----------------------+-------+----
//!  | FFD8 | FFFE | 0018 | 'S' 'U' 'R' 'V'  | 02 | seq (u64 BE)     | capture_unix_us (u64) | flags | rest of the JPEG
//!  +------+------+------+------------------+----+------------------+-----------------------+-------+----
//!   SOI    COM    length  magic             ver  frame number       capture time, µs since  bit 0:
//!                 (24 =                          from the source,   1970-01-01 UTC, server  motion
//!                 itself + 22)                   0, 1, 2, …         clock
//! ```
//!
//! `seq` counts captured frames, so a gap tells the viewer that frames were lost on the way or
//! skipped by the server for that viewer; `capture_unix_us` gives capture → receipt latency when
//! both clocks agree (same host, or NTP). [`unix_micros_now`] is the clock both ends read for it.
//! `flags` bit 0 ([`FLAG_MOTION`]) is set on frames published while a motion event is under way;
//! bit 1 ([`FLAG_OBJECTS`]) says that a second COM segment follows the tag, listing the objects
//! the server's detector sees ([`crate::objects`]); the other bits are 0 and readers ignore
//! them.
//!
//! Version 1 (length 23, no flags byte) is what surv wrote before motion detection; it is still
//! read, as flags 0.

use std::time::{SystemTime, UNIX_EPOCH};

use thiserror::Error;

const SOI: [u8; 2] = [0xFF, 0xD8];
const COM: [u8; 2] = [0xFF, 0xFE];
const MAGIC: &[u8; 4] = b"SURV";
const VERSION: u8 = 2;
/// COM length field: counts itself (2) + magic (4) + version (1) + seq (8) + time (8) + flags (1).
const COM_LEN: u16 = 2 + 4 + 1 + 8 + 8 + 1;
/// Version 1's length: no flags byte.
const COM_LEN_V1: u16 = COM_LEN - 1;

/// Bytes the tag adds to a JPEG: the COM marker and its payload.
pub const TAG_BYTES: usize = 2 + COM_LEN as usize;

/// `flags` bit: the frame was published while a motion event was under way.
pub const FLAG_MOTION: u8 = 1;
/// `flags` bit: an objects segment ([`crate::objects`]) follows the tag.
pub const FLAG_OBJECTS: u8 = 2;

/// What a frame datagram says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameTag {
    /// Frame number at the source, from 0.
    pub seq: u64,
    /// Capture time, microseconds since the Unix epoch, server clock.
    pub capture_unix_us: u64,
    /// Inside a motion event ([`FLAG_MOTION`]).
    pub motion: bool,
    /// An objects segment follows the tag ([`FLAG_OBJECTS`]).
    pub objects: bool,
}

/// Why a datagram carries no readable tag.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TagError {
    #[error("not a JPEG (no SOI marker)")]
    NotJpeg,
    #[error("JPEG carries no surv tag")]
    Untagged,
    #[error("surv tag version {0} is not understood")]
    Version(u8),
}

impl FrameTag {
    /// Builds the datagram: `jpeg` (a whole JPEG starting with SOI) with the tag after SOI,
    /// its flags as this tag's fields say.
    pub fn encode_into(&self, jpeg: &[u8], out: &mut Vec<u8>) -> Result<(), TagError> {
        self.encode_segments(jpeg, &[], out)
    }

    /// [`encode_into`](Self::encode_into), with `objects` (a segment made by
    /// [`crate::objects::encode`], or nothing) after the tag, and [`FLAG_OBJECTS`] set when
    /// there is one.
    pub fn encode_with(
        &self,
        jpeg: &[u8],
        objects: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TagError> {
        FrameTag {
            objects: !objects.is_empty(),
            ..*self
        }
        .encode_segments(jpeg, objects, out)
    }

    fn encode_segments(
        &self,
        jpeg: &[u8],
        extra: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TagError> {
        let body = jpeg.strip_prefix(&SOI).ok_or(TagError::NotJpeg)?;
        out.clear();
        out.reserve(SOI.len() + TAG_BYTES + extra.len() + body.len());
        out.extend_from_slice(&SOI);
        out.extend_from_slice(&COM);
        out.extend_from_slice(&COM_LEN.to_be_bytes());
        out.extend_from_slice(MAGIC);
        out.push(VERSION);
        out.extend_from_slice(&self.seq.to_be_bytes());
        out.extend_from_slice(&self.capture_unix_us.to_be_bytes());
        let flag = |on: bool, bit: u8| if on { bit } else { 0 };
        out.push(flag(self.motion, FLAG_MOTION) | flag(self.objects, FLAG_OBJECTS));
        out.extend_from_slice(extra);
        out.extend_from_slice(body);
        Ok(())
    }

    /// Reads the tag from a datagram, if it has one where surv puts it.
    pub fn decode(datagram: &[u8]) -> Result<FrameTag, TagError> {
        let rest = datagram.strip_prefix(&SOI).ok_or(TagError::NotJpeg)?;
        // Marker, length, magic and version decide which layout follows.
        let head = rest.get(..9).ok_or(TagError::Untagged)?;
        if head[..2] != COM || &head[4..8] != MAGIC {
            return Err(TagError::Untagged);
        }
        let len = u16::from_be_bytes([head[2], head[3]]);
        let version = head[8];
        let expected = match version {
            1 => COM_LEN_V1,
            VERSION => COM_LEN,
            _ if len == COM_LEN || len == COM_LEN_V1 => return Err(TagError::Version(version)),
            _ => return Err(TagError::Untagged),
        };
        if len != expected {
            return Err(TagError::Untagged);
        }
        let seg = rest.get(..2 + usize::from(len)).ok_or(TagError::Untagged)?;
        let word = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&seg[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let flags = if version == 1 { 0 } else { seg[25] };
        Ok(FrameTag {
            seq: word(9),
            capture_unix_us: word(17),
            motion: flags & FLAG_MOTION != 0,
            objects: flags & FLAG_OBJECTS != 0,
        })
    }
}

/// Microseconds since the Unix epoch from the system clock, as `capture_unix_us` counts them
/// (0 if the clock is before 1970). A clock read, no I/O.
pub fn unix_micros_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02, 0xFF, 0xD9];

    #[test]
    fn round_trip_keeps_the_jpeg_intact() {
        for motion in [false, true] {
            let tag = FrameTag {
                seq: 7,
                capture_unix_us: 1_700_000_000_123_456,
                motion,
                objects: false,
            };
            let mut out = Vec::new();
            tag.encode_into(JPEG, &mut out).unwrap();
            assert_eq!(out.len(), JPEG.len() + TAG_BYTES);
            assert_eq!(FrameTag::decode(&out), Ok(tag));
            assert_eq!(out[2 + TAG_BYTES - 1], u8::from(motion));
            // Removing the COM segment gives back the original bytes.
            let mut stripped = out[..2].to_vec();
            stripped.extend_from_slice(&out[2 + TAG_BYTES..]);
            assert_eq!(stripped, JPEG);
        }
    }

    #[test]
    fn version_1_tags_still_read_as_no_motion() {
        // What surv wrote before the flags byte: length 23, version 1.
        let mut v1 = vec![
            0xFF, 0xD8, 0xFF, 0xFE, 0x00, 0x17, b'S', b'U', b'R', b'V', 1,
        ];
        v1.extend_from_slice(&42u64.to_be_bytes());
        v1.extend_from_slice(&1_700_000_000_000_000u64.to_be_bytes());
        v1.extend_from_slice(&JPEG[2..]);
        assert_eq!(
            FrameTag::decode(&v1),
            Ok(FrameTag {
                seq: 42,
                capture_unix_us: 1_700_000_000_000_000,
                motion: false,
                objects: false,
            })
        );
        // Unknown flag bits are ignored.
        let mut out = Vec::new();
        FrameTag {
            seq: 1,
            capture_unix_us: 2,
            motion: false,
            objects: false,
        }
        .encode_into(JPEG, &mut out)
        .unwrap();
        out[2 + TAG_BYTES - 1] = 0xFC;
        let tag = FrameTag::decode(&out).unwrap();
        assert!(!tag.motion && !tag.objects);
        // A version's length must match it.
        v1[10] = 2;
        assert_eq!(FrameTag::decode(&v1), Err(TagError::Untagged));
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut out = Vec::new();
        FrameTag {
            seq: u64::MAX,
            capture_unix_us: 1,
            motion: true,
            objects: false,
        }
        .encode_into(JPEG, &mut out)
        .unwrap();
        for n in 0..2 + TAG_BYTES {
            assert!(FrameTag::decode(&out[..n]).is_err(), "prefix {n}");
        }
        assert!(FrameTag::decode(&out[..2 + TAG_BYTES]).is_ok());
    }

    #[test]
    fn untagged_and_foreign_input() {
        assert_eq!(FrameTag::decode(JPEG), Err(TagError::Untagged));
        assert_eq!(FrameTag::decode(b"continue"), Err(TagError::NotJpeg));
        assert_eq!(
            FrameTag {
                seq: 0,
                capture_unix_us: 0,
                motion: false,
                objects: false,
            }
            .encode_into(b"GIF8", &mut Vec::new()),
            Err(TagError::NotJpeg)
        );
        let mut out = Vec::new();
        FrameTag {
            seq: 1,
            capture_unix_us: 2,
            motion: false,
            objects: false,
        }
        .encode_into(JPEG, &mut out)
        .unwrap();
        out[10] = 9;
        assert_eq!(FrameTag::decode(&out), Err(TagError::Version(9)));
    }

    #[test]
    fn the_clock_reads_microseconds_since_1970() {
        let now = unix_micros_now();
        // After 2020-01-01 and before 2100-01-01: microseconds, not ms or ns.
        assert!(
            (1_577_836_800_000_000..4_102_444_800_000_000).contains(&now),
            "{now}"
        );
    }
}
