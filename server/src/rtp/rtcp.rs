//! RTCP (RFC 3550 §6): the sender reports surv writes, and the check of what peers send to its
//! RTCP port (receiver reports, NAT "punch" packets).
//!
//! A sender report ties the stream's RTP timestamps to wall-clock time, which players use to
//! place frames; its SSRC is the stream's. It goes out as a compound packet, SR then SDES with
//! the CNAME, as RFC 3550 §6.1 asks of every RTCP packet.
//!
//! ```text
//! SR:   |V=2|P|RC=0| PT=200 | length=6 | SSRC | NTP seconds | NTP fraction | RTP timestamp |
//!       | sender's packet count | sender's octet count |
//! SDES: |V=2|P|SC=1| PT=202 | length   | SSRC | CNAME=1 | len | text … | 0 … (to a 32-bit word)
//! ```

use bytes::{BufMut, Bytes, BytesMut};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
pub const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

const PT_SR: u8 = 200;
const PT_SDES: u8 = 202;
/// Packet types a peer's compound packet may start with and contain (SR, RR, SDES, BYE, APP,
/// RTPFB, PSFB).
const PT_FIRST: u8 = 200;
const PT_LAST: u8 = 206;
const SDES_CNAME: u8 = 1;
/// An SDES item's text is at most 255 bytes (its length is one byte).
const MAX_CNAME_BYTES: usize = 255;

/// A compound RTCP packet: a sender report for `ssrc` (sent at `unix_us`, microseconds since
/// the Unix epoch, when the stream's clock read `rtp_ts`, after `packets` packets with `octets`
/// payload bytes in all, both wrapping at 2^32), then an SDES with `cname` (cut to 255 bytes).
pub fn sender_report(
    ssrc: u32,
    unix_us: u64,
    rtp_ts: u32,
    packets: u32,
    octets: u32,
    cname: &str,
) -> Bytes {
    let cname = cut_at_char(cname, MAX_CNAME_BYTES);
    // SSRC, item type, item length, text, then at least one zero octet ends the item list.
    let chunk_bytes = (4 + 2 + cname.len() + 1).next_multiple_of(4);
    let sdes_bytes = 4 + chunk_bytes;
    let mut out = BytesMut::with_capacity(28 + sdes_bytes);

    let (ntp_secs, ntp_frac) = ntp_time(unix_us);
    out.put_u8(0x80);
    out.put_u8(PT_SR);
    out.put_u16(6);
    out.put_u32(ssrc);
    out.put_u32(ntp_secs);
    out.put_u32(ntp_frac);
    out.put_u32(rtp_ts);
    out.put_u32(packets);
    out.put_u32(octets);

    out.put_u8(0x81);
    out.put_u8(PT_SDES);
    // At most (4 + 264) / 4 - 1 words: fits.
    out.put_u16((sdes_bytes / 4 - 1) as u16);
    out.put_u32(ssrc);
    out.put_u8(SDES_CNAME);
    // Cut to 255 above.
    out.put_u8(cname.len() as u8);
    out.put_slice(cname.as_bytes());
    out.put_bytes(0, chunk_bytes - (4 + 2 + cname.len()));
    out.freeze()
}

/// `unix_us` as a 64-bit NTP timestamp: seconds since 1900 (wrapping in 2036, as NTP's era
/// does) and the fraction of a second in units of 2^-32 s.
pub fn ntp_time(unix_us: u64) -> (u32, u32) {
    let secs = unix_us / 1_000_000 + NTP_UNIX_OFFSET_SECS;
    let frac = ((unix_us % 1_000_000) << 32) / 1_000_000;
    // The era wraps; the fraction is below 2^32 because the remainder is below 10^6.
    (secs as u32, frac as u32)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
fn cut_at_char(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Whether `buf` (one datagram, or one interleaved `$` frame) is a well-formed compound RTCP
/// packet: version 2, the first packet's type in 200..=206, and every packet's length field
/// ending inside the buffer, the last exactly at its end. RFC 3550 A.2's check, less strict
/// (no SR/RR-first rule: punch packets vary). Never panics.
pub fn is_rtcp(buf: &[u8]) -> bool {
    let mut rest = buf;
    let mut first = true;
    while !rest.is_empty() {
        let [b0, pt, len_hi, len_lo, ..] = *rest else {
            return false;
        };
        if b0 >> 6 != 2 || (first && !(PT_FIRST..=PT_LAST).contains(&pt)) {
            return false;
        }
        let words = usize::from(u16::from_be_bytes([len_hi, len_lo]));
        let bytes = (words + 1) * 4;
        match rest.get(bytes..) {
            Some(after) => rest = after,
            None => return false,
        }
        first = false;
    }
    !first
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sender_report_layout_byte_for_byte() {
        // 2024-12-05 04:20:00.5 UTC.
        let unix_us = 1_733_372_400_500_000;
        let sr = sender_report(0x1A2B_3C4D, unix_us, 0xDEAD_BEEF, 1000, 1_400_000, "surv");
        let ntp_secs = (1_733_372_400u64 + 2_208_988_800) as u32;
        let mut expected = vec![0x80, 200, 0, 6, 0x1A, 0x2B, 0x3C, 0x4D];
        expected.extend_from_slice(&ntp_secs.to_be_bytes());
        expected.extend_from_slice(&[0x80, 0, 0, 0]); // half a second
        expected.extend_from_slice(&[0xDE, 0xAD, 0xBE, 0xEF]);
        expected.extend_from_slice(&1000u32.to_be_bytes());
        expected.extend_from_slice(&1_400_000u32.to_be_bytes());
        // SDES: 4 + (4 + 2 + 4 + 1 → 12) bytes = 16 = (3 + 1) words.
        expected.extend_from_slice(&[0x81, 202, 0, 3, 0x1A, 0x2B, 0x3C, 0x4D]);
        expected.extend_from_slice(&[1, 4, b's', b'u', b'r', b'v', 0, 0]);
        assert_eq!(&sr[..], &expected[..]);
        assert!(is_rtcp(&sr));
    }

    #[test]
    fn ntp_time_at_known_instants() {
        assert_eq!(ntp_time(0), (0x83AA_7E80, 0));
        assert_eq!(ntp_time(250_000), (0x83AA_7E80, 0x4000_0000));
        assert_eq!(ntp_time(999_999).1, 0xFFFF_EF39);
        // 2036-02-07 06:28:16 UTC: NTP era 1 begins, the seconds wrap to 0.
        assert_eq!(ntp_time(2_085_978_496 * 1_000_000), (0, 0));
    }

    #[test]
    fn sdes_is_padded_to_whole_words_for_every_cname_length() {
        for len in 0..=300 {
            let cname = "x".repeat(len);
            let sr = sender_report(1, 0, 0, 0, 0, &cname);
            assert_eq!(sr.len() % 4, 0, "cname of {len}");
            assert!(is_rtcp(&sr), "cname of {len}");
            let sdes = &sr[28..];
            let words = usize::from(u16::from_be_bytes([sdes[2], sdes[3]]));
            assert_eq!((words + 1) * 4, sdes.len(), "cname of {len}");
            let item_len = usize::from(sdes[9]);
            assert_eq!(item_len, len.min(255));
            // At least one zero octet ends the item list, and only zeros pad it.
            assert!(sdes[10 + item_len..].iter().all(|&b| b == 0));
            assert!(sdes.len() > 10 + item_len);
        }
        // A cut never splits a character: 254 ASCII bytes then a 2-byte 'é' gives 254.
        let cname = format!("{}é", "a".repeat(254));
        let sr = sender_report(1, 0, 0, 0, 0, &cname);
        assert_eq!(sr[28 + 9], 254);
    }

    #[test]
    fn is_rtcp_accepts_reports_and_refuses_the_rest() {
        // An empty RR (ffmpeg's and retina's punch), and RR + SDES compound.
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 7];
        assert!(is_rtcp(&rr));
        let compound = [&rr[..], &[0x81, 202, 0, 2, 0, 0, 0, 7, 1, 1, b'a', 0]].concat();
        assert!(is_rtcp(&compound));
        // Truncated anywhere but between its packets, or one byte too many: not RTCP.
        for len in (0..compound.len()).filter(|&len| len != rr.len()) {
            assert!(!is_rtcp(&compound[..len]), "prefix of {len}");
        }
        assert!(!is_rtcp(&[&compound[..], &[0]].concat()));
        // Version 1, an RTP packet (PT 96 with the marker: 0xE0), a length beyond the buffer.
        assert!(!is_rtcp(&[0x40, 201, 0, 1, 0, 0, 0, 7]));
        assert!(!is_rtcp(&[0x80, 0xE0, 0, 1, 0, 0, 0, 7]));
        assert!(!is_rtcp(&[0x80, 201, 0xFF, 0xFF, 0, 0, 0, 7]));
        // A later packet of another version.
        assert!(!is_rtcp(&[&rr[..], &[0x40, 202, 0, 0]].concat()));
        // Garbage of every short length never panics.
        for len in 0..64 {
            let junk: Vec<u8> = (0..len).map(|i| (i * 37 + 0x80) as u8).collect();
            let _ = is_rtcp(&junk);
        }
    }
}
