//! The RTP/JPEG check and packetizer on arbitrary bytes: `rtp_jpeg_info`, then RFC 2435
//! packets. No input may panic; a JPEG that fits has a size RTP/JPEG can say and a scan inside
//! the input; its packets' payloads are at most MAX_PAYLOAD_BYTES and their fragments put the
//! scan back together. Replayed by server/src/rtp/tests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::rtp::jpeg::{rtp_jpeg_info, JpegPacketizer};
use surv_server::rtp::{RtpHeader, MAX_PAYLOAD_BYTES};

fuzz_target!(|data: &[u8]| {
    let info = rtp_jpeg_info(data);
    let mut packetizer = JpegPacketizer::new(9, 0);
    let frame = packetizer.packetize(data, 1);
    assert_eq!(info.is_ok(), frame.is_ok());
    let (Ok(info), Ok(frame)) = (info, frame) else {
        assert_eq!(packetizer.next_seq(), 0);
        return;
    };
    assert!(info.width % 8 == 0 && info.width > 0 && info.width <= 2040);
    assert!(info.height % 8 == 0 && info.height > 0 && info.height <= 2040);
    assert!(info.scan.end <= data.len());
    let mut scan = Vec::new();
    for (i, packet) in frame.packets.iter().enumerate() {
        let (header, payload) = RtpHeader::parse(packet).expect("an RTP packet");
        assert!(payload.len() <= MAX_PAYLOAD_BYTES);
        assert_eq!(header.marker, i + 1 == frame.packets.len());
        let skip = if i == 0 { 8 + 132 } else { 8 };
        scan.extend_from_slice(&payload[skip..]);
    }
    assert_eq!(&scan[..], &data[info.scan]);
});
