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

/// The NAL units of an Annex B stream, without their start codes. Zero bytes before a start
/// code belong to it (Annex B's `zero_byte` / `trailing_zero_8bits`), not to the unit before.
pub fn nal_units(buf: &[u8]) -> NalUnits<'_> {
    NalUnits {
        buf,
        next: find_start(buf, 0),
    }
}

/// Iterator of [`nal_units`].
#[derive(Debug, Clone)]
pub struct NalUnits<'a> {
    buf: &'a [u8],
    /// Where the next unit's bytes begin (after its start code), if there is one.
    next: Option<usize>,
}

impl<'a> Iterator for NalUnits<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let start = self.next?;
        self.next = find_start(self.buf, start);
        let mut end = match self.next {
            // The start code's three bytes, and the zeros before them.
            Some(after) => after - 3,
            None => self.buf.len(),
        };
        if self.next.is_some() {
            while end > start && self.buf[end - 1] == 0 {
                end -= 1;
            }
        }
        Some(&self.buf[start..end])
    }
}

/// The index after the first `00 00 01` at or after `from`.
fn find_start(buf: &[u8], from: usize) -> Option<usize> {
    let rest = buf.get(from..)?;
    rest.windows(3)
        .position(|w| w == [0, 0, 1])
        .map(|i| from + i + 3)
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
            nal_units(&[0, 0, 1, 0, 0, 1]).collect::<Vec<_>>(),
            [&[][..], &[][..]]
        );
    }
}
