//! Annex B access units (NAL units after `00 00 01` or `00 00 00 01` start codes, as OpenH264
//! writes them and RTSP cameras send them): their NAL units, their parameter sets, and the
//! length-prefixed form MP4 stores.
//!
//! ```text
//! Annex B:  00 00 00 01 | SPS | 00 00 00 01 | PPS | 00 00 01 | IDR slice ...
//! AVC:      len(4, BE) | slice | len(4, BE) | slice ...      (SPS, PPS apart, in avcC)
//! ```
//!
//! Any bytes are accepted: a stream without a start code has no NAL unit, never a panic.

/// H.264 NAL unit types (ITU-T H.264 table 7-1) this module tells apart.
pub mod nal_type {
    /// A slice of a non-IDR picture.
    pub const NON_IDR_SLICE: u8 = 1;
    /// A slice of an IDR picture: a decoder can start here.
    pub const IDR_SLICE: u8 = 5;
    pub const SPS: u8 = 7;
    pub const PPS: u8 = 8;
    pub const ACCESS_UNIT_DELIMITER: u8 = 9;
    pub const FILLER: u8 = 12;
}

/// The type of a NAL unit (its header byte's low 5 bits); `None` for an empty one.
pub fn nal_type(nal: &[u8]) -> Option<u8> {
    nal.first().map(|h| h & 0x1F)
}

/// The NAL units of an Annex B stream, without their start codes: split at every `00 00 01`;
/// zero bytes at a unit's end (a 4-byte start code's first byte, Annex B's
/// `trailing_zero_8bits`; a NAL unit never ends in `00`) are dropped, and so are empty units
/// and whatever precedes the first start code. The one splitter of the project: the server's
/// RTP packetizer (fuzzed there) and the viewer's MP4 writer use it.
pub fn nal_units(buf: &[u8]) -> impl Iterator<Item = &[u8]> + Clone {
    let mut next = find_start(buf, 0);
    std::iter::from_fn(move || loop {
        let begin = next?;
        next = find_start(buf, begin);
        let end = match next {
            Some(after) => after - START_CODE.len(),
            None => buf.len(),
        };
        let nal = trim_trailing_zeros(buf.get(begin..end)?);
        if !nal.is_empty() {
            return Some(nal);
        }
    })
}

/// The three bytes every start code ends in.
const START_CODE: [u8; 3] = [0, 0, 1];

/// The index just after the first start code at or after `from`.
fn find_start(buf: &[u8], from: usize) -> Option<usize> {
    let at = memchr::memmem::find(buf.get(from..)?, &START_CODE)?;
    Some(from + at + START_CODE.len())
}

fn trim_trailing_zeros(nal: &[u8]) -> &[u8] {
    let len = nal.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
    &nal[..len]
}

/// The access unit's SPS and PPS (each without its start code), when it carries both: an IDR
/// access unit from OpenH264 does, in band, before its slice.
pub fn parameter_sets(annexb: &[u8]) -> Option<(&[u8], &[u8])> {
    let (mut sps, mut pps) = (None, None);
    for nal in nal_units(annexb) {
        match nal_type(nal) {
            Some(nal_type::SPS) => sps = Some(nal),
            Some(nal_type::PPS) => pps = Some(nal),
            _ => {}
        }
    }
    Some((sps?, pps?))
}

/// Whether the access unit holds an IDR slice.
pub fn has_idr_slice(annexb: &[u8]) -> bool {
    nal_units(annexb).any(|nal| nal_type(nal) == Some(nal_type::IDR_SLICE))
}

/// Whether no other picture can refer to this access unit: it has slices, and every one has
/// `nal_ref_idc` 0 (H.264 7.4.1), so a sender may leave it out and the stream still decodes.
pub fn is_disposable(annexb: &[u8]) -> bool {
    let mut slices = nal_units(annexb)
        .filter(|nal| matches!(nal_type(nal), Some(1..=nal_type::IDR_SLICE)))
        .peekable();
    slices.peek().is_some() && slices.all(|nal| nal[0] & 0x60 == 0)
}

/// One coded picture in MP4 form.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AvcAccessUnit {
    /// Length-prefixed NAL units, without SPS and PPS.
    pub data: Vec<u8>,
    pub sps: Option<Vec<u8>>,
    pub pps: Option<Vec<u8>>,
    /// Holds an IDR slice.
    pub idr: bool,
}

/// Converts an Annex B access unit to the length-prefixed form MP4 stores, and returns the SPS
/// and PPS found, which MP4 keeps in `avcC` rather than in the samples.
pub fn to_avc(annexb: &[u8]) -> AvcAccessUnit {
    let mut unit = AvcAccessUnit::default();
    for nal in nal_units(annexb) {
        let Some(kind) = nal_type(nal) else { continue };
        match kind {
            nal_type::SPS => unit.sps = Some(nal.to_vec()),
            nal_type::PPS => unit.pps = Some(nal.to_vec()),
            // Access unit delimiters and filler: nothing a player needs.
            nal_type::ACCESS_UNIT_DELIMITER | nal_type::FILLER => {}
            kind => {
                if kind == nal_type::IDR_SLICE {
                    unit.idr = true;
                }
                let len = u32::try_from(nal.len()).unwrap_or(u32::MAX);
                unit.data.extend_from_slice(&len.to_be_bytes());
                unit.data.extend_from_slice(nal);
            }
        }
    }
    unit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_picture_is_disposable_when_no_slice_is_a_reference() {
        // Two slices, both nal_ref_idc 0.
        assert!(is_disposable(&[
            0, 0, 0, 1, 0x01, 0x9a, 0, 0, 0, 1, 0x01, 0x9b
        ]));
        // One of them a reference (nal_ref_idc 1, 2, 3).
        for head in [0x21, 0x41, 0x61] {
            assert!(!is_disposable(&[
                0, 0, 0, 1, 0x01, 0x9a, 0, 0, 0, 1, head, 0x9b
            ]));
        }
        // An IDR slice is always a reference; SEI (nal_ref_idc 0) is not a slice.
        assert!(!is_disposable(&[0, 0, 0, 1, 0x65, 0x88]));
        assert!(!is_disposable(&[0, 0, 0, 1, 0x06, 0x05]));
        assert!(!is_disposable(&[]));
    }

    fn stream() -> Vec<u8> {
        [
            &[0, 0, 0, 1, 0x67, 1, 2, 3][..], // SPS
            &[0, 0, 0, 1, 0x68, 4][..],       // PPS
            &[0, 0, 1, 0x65, 9, 9, 0][..],    // IDR slice; its last zero is the next code's
            &[0, 0, 0, 1, 0x41, 7][..],       // non-IDR slice
        ]
        .concat()
    }

    #[test]
    fn annexb_splits_and_strips_parameter_sets() {
        let unit = to_avc(&stream());
        assert_eq!(unit.sps.as_deref(), Some(&[0x67, 1, 2, 3][..]));
        assert_eq!(unit.pps.as_deref(), Some(&[0x68, 4][..]));
        assert!(unit.idr);
        // Trailing zeros before a start code belong to the start code (Annex B's zero_byte).
        assert_eq!(unit.data, [0, 0, 0, 3, 0x65, 9, 9, 0, 0, 0, 2, 0x41, 7]);
        assert_eq!(to_avc(&[]), AvcAccessUnit::default());
        assert_eq!(to_avc(&[0, 0, 1]).data, Vec::<u8>::new());
    }

    #[test]
    fn parameter_sets_need_both() {
        let s = stream();
        assert_eq!(
            parameter_sets(&s),
            Some((&[0x67, 1, 2, 3][..], &[0x68, 4][..]))
        );
        assert!(has_idr_slice(&s));
        assert_eq!(parameter_sets(&[0, 0, 1, 0x67, 1]), None);
        assert!(!has_idr_slice(&[0, 0, 1, 0x41, 1]));
    }

    #[test]
    fn any_bytes_split_without_panic() {
        let s = stream();
        for len in 0..=s.len() {
            let units: Vec<&[u8]> = nal_units(&s[..len]).collect();
            assert!(units.len() <= 4);
            let _ = to_avc(&s[..len]);
            let _ = parameter_sets(&s[..len]);
        }
        assert_eq!(nal_units(&[1, 2, 3]).count(), 0, "no start code, no unit");
        assert_eq!(
            nal_units(&[0, 0, 1, 0, 0, 1]).count(),
            0,
            "empty units are none"
        );
    }
}
