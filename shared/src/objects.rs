//! What the server's detector sees in the picture, carried in the frame: a second JPEG COM
//! segment right after the [tag](crate::tag), present when the tag's flags have
//! [`FLAG_OBJECTS`] set.
//!
//! ```text
//!  0      2      4                  8     9     10
//!  +------+------+------------------+-----+-----+----------------------+----------------------+--
//!  | FFFE | len  | 'S' 'V' 'O' 'B'  | 01  |  n  | object 1             | object 2             | …
//!  +------+------+------------------+-----+-----+----------------------+----------------------+--
//!   COM    u16 BE magic              ver   count (1..=8)
//!          (itself + 6 + objects)
//!
//!  object: | label length (1..=32) | label (a-z 0-9 _) | score % (0..=100) | x | y | w | h |
//!                                                                            u16 BE each: fractions
//!                                                                            of the picture × 65535
//! ```
//!
//! The objects are those present now (the server's hysteresis: a label stays present through
//! a frame or two in which the detector missed it, until its `--detect-hold` has passed): at
//! least one per label present, each with its latest box. JPEG decoders skip COM segments, and
//! viewers that do not know this one ignore the flag bit and the segment.

use thiserror::Error;

use crate::tag::{FrameTag, TAG_BYTES};

const COM: [u8; 2] = [0xFF, 0xFE];
const MAGIC: &[u8; 4] = b"SVOB";
const VERSION: u8 = 1;
/// Marker, length, magic, version and count.
const HEAD_BYTES: usize = 2 + 2 + 4 + 1 + 1;
/// Score, then the box's four u16.
const TAIL_BYTES: usize = 1 + 4 * 2;

/// The most objects a frame carries (the best-scored first; the rest are left out).
pub const MAX_OBJECTS: usize = 8;
/// The longest label (COCO's longest is 14).
pub const MAX_LABEL_BYTES: usize = 32;
/// The largest segment: what the server budgets under the datagram cap.
pub const MAX_OBJECTS_BYTES: usize = HEAD_BYTES + MAX_OBJECTS * (1 + MAX_LABEL_BYTES + TAIL_BYTES);

/// One object in the picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    /// The detector's label, COCO's name with `_` for a space (`person`, `traffic_light`).
    pub label: String,
    /// 0–1, in steps of 0.01.
    pub score: f32,
    /// x, y of the top-left corner, width, height: fractions of the picture (0–1).
    pub region: [f32; 4],
}

/// Why a frame's objects cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ObjectsError {
    #[error("the frame carries no surv tag")]
    Untagged,
    #[error("the tag says objects follow, but no objects segment does")]
    Missing,
    #[error("objects segment version {0} is not understood")]
    Version(u8),
    #[error("the objects segment is malformed: {0}")]
    Malformed(&'static str),
}

/// Whether `label` can be carried: 1–32 bytes of `a-z`, `0-9`, `_`.
pub fn is_valid_label(label: &str) -> bool {
    (1..=MAX_LABEL_BYTES).contains(&label.len())
        && label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// The segment for `objects` (at most [`MAX_OBJECTS`], the best-scored; objects whose label
/// cannot be carried are left out), or nothing when there is none to carry.
pub fn encode(objects: &[Object]) -> Vec<u8> {
    let mut chosen: Vec<&Object> = objects
        .iter()
        .filter(|o| is_valid_label(&o.label))
        .collect();
    chosen.sort_by(|a, b| b.score.total_cmp(&a.score));
    chosen.truncate(MAX_OBJECTS);
    if chosen.is_empty() {
        return Vec::new();
    }
    let body: usize = chosen.iter().map(|o| 1 + o.label.len() + TAIL_BYTES).sum();
    let mut out = Vec::with_capacity(HEAD_BYTES + body);
    out.extend_from_slice(&COM);
    // At most 10 + 8 × 42 bytes: fits the u16.
    out.extend_from_slice(&((HEAD_BYTES - 2 + body) as u16).to_be_bytes());
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    out.push(chosen.len() as u8);
    let fraction = |v: f32| (v.clamp(0.0, 1.0) * 65535.0).round() as u16;
    for o in chosen {
        out.push(o.label.len() as u8);
        out.extend_from_slice(o.label.as_bytes());
        out.push((o.score.clamp(0.0, 1.0) * 100.0).round() as u8);
        for v in o.region {
            out.extend_from_slice(&fraction(v).to_be_bytes());
        }
    }
    out
}

/// The objects a frame datagram carries: none when its tag does not say any follow.
pub fn decode(datagram: &[u8]) -> Result<Vec<Object>, ObjectsError> {
    let tag = FrameTag::decode(datagram).map_err(|_| ObjectsError::Untagged)?;
    if !tag.objects {
        return Ok(Vec::new());
    }
    let seg = datagram.get(2 + TAG_BYTES..).ok_or(ObjectsError::Missing)?;
    if seg.len() < HEAD_BYTES || seg[..2] != COM || &seg[4..8] != MAGIC {
        return Err(ObjectsError::Missing);
    }
    if seg[8] != VERSION {
        return Err(ObjectsError::Version(seg[8]));
    }
    let len = 2 + usize::from(u16::from_be_bytes([seg[2], seg[3]]));
    let count = usize::from(seg[9]);
    if !(1..=MAX_OBJECTS).contains(&count) {
        return Err(ObjectsError::Malformed("object count out of range"));
    }
    if len > MAX_OBJECTS_BYTES {
        return Err(ObjectsError::Malformed("segment too long"));
    }
    let mut rest = seg
        .get(HEAD_BYTES..len)
        .ok_or(ObjectsError::Malformed("segment cut short"))?;
    let mut objects = Vec::with_capacity(count);
    for _ in 0..count {
        let (&label_len, after) = rest
            .split_first()
            .ok_or(ObjectsError::Malformed("object cut short"))?;
        let label_len = usize::from(label_len);
        let object = after
            .get(..label_len + TAIL_BYTES)
            .ok_or(ObjectsError::Malformed("object cut short"))?;
        let label = std::str::from_utf8(&object[..label_len])
            .ok()
            .filter(|l| is_valid_label(l))
            .ok_or(ObjectsError::Malformed("bad label"))?;
        let tail = &object[label_len..];
        if tail[0] > 100 {
            return Err(ObjectsError::Malformed("score over 100"));
        }
        let word = |i: usize| f32::from(u16::from_be_bytes([tail[1 + 2 * i], tail[2 + 2 * i]]));
        objects.push(Object {
            label: label.to_string(),
            score: f32::from(tail[0]) / 100.0,
            region: [0, 1, 2, 3].map(|i| word(i) / 65535.0),
        });
        rest = &after[label_len + TAIL_BYTES..];
    }
    if !rest.is_empty() {
        return Err(ObjectsError::Malformed("bytes after the last object"));
    }
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tag::FLAG_OBJECTS;

    const JPEG: &[u8] = &[0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02, 0xFF, 0xD9];

    fn object(label: &str, score: f32, region: [f32; 4]) -> Object {
        Object {
            label: label.into(),
            score,
            region,
        }
    }

    fn tagged(objects: &[Object]) -> Vec<u8> {
        let mut out = Vec::new();
        FrameTag {
            seq: 3,
            capture_unix_us: 4,
            motion: true,
            objects: false,
        }
        .encode_with(JPEG, &encode(objects), &mut out)
        .unwrap();
        out
    }

    #[test]
    fn objects_round_trip_and_the_jpeg_stays_whole() {
        let objects = [
            object("person", 0.634, [0.1, 0.2, 0.3, 0.4]),
            object("traffic_light", 1.0, [0.0, 0.0, 1.0, 1.0]),
        ];
        let out = tagged(&objects);
        let tag = FrameTag::decode(&out).unwrap();
        assert!(tag.objects && tag.motion);
        let back = decode(&out).unwrap();
        // Best score first; scores in hundredths, boxes within 1/65535.
        assert_eq!(back[0].label, "traffic_light");
        assert_eq!(back[1].label, "person");
        assert!((back[1].score - 0.63).abs() < 1e-6);
        for (got, want) in back[1].region.iter().zip([0.1, 0.2, 0.3, 0.4]) {
            assert!((got - want).abs() < 1e-4, "{got} {want}");
        }
        // Taking both COM segments out gives back the JPEG.
        let seg = encode(&objects);
        let mut stripped = out[..2].to_vec();
        stripped.extend_from_slice(&out[2 + TAG_BYTES + seg.len()..]);
        assert_eq!(stripped, JPEG);
    }

    #[test]
    fn no_objects_is_no_segment_and_no_flag() {
        let out = tagged(&[]);
        assert_eq!(out.len(), JPEG.len() + TAG_BYTES);
        assert!(!FrameTag::decode(&out).unwrap().objects);
        assert_eq!(decode(&out), Ok(vec![]));
        // Labels that cannot be carried are left out.
        assert!(encode(&[object("Person", 0.5, [0.0; 4]), object("", 0.5, [0.0; 4])]).is_empty());
        assert!(encode(&[object(&"a".repeat(33), 0.5, [0.0; 4])]).is_empty());
    }

    #[test]
    fn at_most_eight_objects_the_best_ones() {
        let many: Vec<Object> = (0..20)
            .map(|i| object("person", i as f32 / 20.0, [0.0; 4]))
            .collect();
        let back = decode(&tagged(&many)).unwrap();
        assert_eq!(back.len(), MAX_OBJECTS);
        assert!((back[0].score - 0.95).abs() < 1e-6);
        let longest: Vec<Object> = (0..MAX_OBJECTS)
            .map(|_| object(&"z".repeat(MAX_LABEL_BYTES), 1.0, [1.0; 4]))
            .collect();
        assert_eq!(encode(&longest).len(), MAX_OBJECTS_BYTES);
        assert_eq!(decode(&tagged(&longest)).unwrap().len(), MAX_OBJECTS);
    }

    #[test]
    fn hostile_segments_are_errors_not_panics() {
        let out = tagged(&[object("dog", 0.5, [0.5; 4]), object("cat", 0.4, [0.5; 4])]);
        let start = 2 + TAG_BYTES;
        let seg_len = encode(&[object("dog", 0.5, [0.5; 4]), object("cat", 0.4, [0.5; 4])]).len();
        // Every truncation inside the segment.
        for n in 0..start + seg_len {
            assert!(decode(&out[..n]).is_err(), "prefix {n}");
        }
        // Every single-byte change of the segment: an error or other objects, never a panic.
        for i in start..start + seg_len {
            for v in [0u8, 1, 7, 0x20, 0x64, 0x65, 0x7F, 0xFF] {
                let mut bad = out.clone();
                bad[i] = v;
                let _ = decode(&bad);
            }
        }
        let mut bad = out.clone();
        bad[start + 8] = 9;
        assert_eq!(decode(&bad), Err(ObjectsError::Version(9)));
        let mut bad = out.clone();
        bad[start + 9] = 9;
        assert!(decode(&bad).is_err());
        // A flag with no segment behind it.
        let mut flagged = Vec::new();
        FrameTag {
            seq: 1,
            capture_unix_us: 1,
            motion: false,
            objects: true,
        }
        .encode_into(JPEG, &mut flagged)
        .unwrap();
        assert_eq!(decode(&flagged), Err(ObjectsError::Missing));
        assert_eq!(decode(JPEG), Err(ObjectsError::Untagged));
    }

    #[test]
    fn the_flag_alone_does_not_bother_a_tag_reader() {
        let out = tagged(&[object("person", 0.9, [0.1; 4])]);
        let tag = FrameTag::decode(&out).unwrap();
        assert_eq!((tag.seq, tag.capture_unix_us), (3, 4));
        assert_ne!(out[2 + TAG_BYTES - 1] & FLAG_OBJECTS, 0);
    }
}
