//! The H.264 packetizer on arbitrary "access units": `split_annexb`, then RFC 6184 packets. No
//! input may panic; every payload is at most MAX_PAYLOAD_BYTES; the packets run on in sequence
//! with one timestamp and the marker on the last; an input with no NAL unit gives no packet.
//! Replayed by server/src/rtp/tests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::rtp::h264::{parameter_sets, profile_level_id, split_annexb, H264Packetizer};
use surv_server::rtp::{RtpHeader, MAX_PAYLOAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let nals: Vec<&[u8]> = split_annexb(data).collect();
    for nal in &nals {
        assert!(!nal.is_empty() && nal.last() != Some(&0));
    }
    if let Some(ps) = parameter_sets(data) {
        let _ = profile_level_id(&ps.sps);
    }
    let mut packetizer = H264Packetizer::new(7, 96, 65530);
    let frame = packetizer.packetize(data, 42, false);
    assert_eq!(nals.is_empty(), frame.packets.is_empty());
    for (i, packet) in frame.packets.iter().enumerate() {
        let (header, payload) = RtpHeader::parse(packet).expect("an RTP packet");
        assert!(!payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES);
        assert_eq!(header.seq, 65530u16.wrapping_add(i as u16));
        assert_eq!(header.timestamp, 42);
        assert_eq!(header.marker, i + 1 == frame.packets.len());
    }
    assert_eq!(packetizer.next_seq(), frame.next_seq());
});
