//! What every packetizer's tests check of a frame, and the replay of the fuzz corpora
//! (fuzz/corpus/rtp_annexb, rtp_jpeg, rtcp) under plain `cargo test`: each replay makes the
//! same calls and checks the same invariants as its target in fuzz/fuzz_targets/.

use std::path::PathBuf;

use bytes::Bytes;

use super::h264::{parameter_sets, profile_level_id, split_annexb, H264Packetizer};
use super::jpeg::{rtp_jpeg_info, JpegPacketizer};
use super::rtcp::is_rtcp;
use super::{RtpFrame, RtpHeader, MAX_PAYLOAD_BYTES};

/// A packet surv wrote, read back: its header and payload.
pub(crate) fn rtp(packet: &Bytes) -> (RtpHeader, &[u8]) {
    RtpHeader::parse(packet).expect("a whole RTP packet")
}

/// The invariants of every frame surv sends: sequence numbers consecutive from `first_seq`
/// (wrapping), one timestamp, one SSRC and payload type, the marker on the last packet only,
/// no payload above [`MAX_PAYLOAD_BYTES`], and no CSRC, extension or padding.
pub(crate) fn check_run(frame: &RtpFrame, ssrc: u32, payload_type: u8) {
    for (i, packet) in frame.packets.iter().enumerate() {
        let (header, payload) = rtp(packet);
        assert_eq!(packet[0], 0x80, "packet {i}: V=2, no P/X/CC");
        assert_eq!(
            header.seq,
            frame.first_seq.wrapping_add(i as u16),
            "packet {i}"
        );
        assert_eq!(header.timestamp, frame.rtp_ts, "packet {i}");
        assert_eq!((header.ssrc, header.payload_type), (ssrc, payload_type));
        assert_eq!(
            header.marker,
            i + 1 == frame.packets.len(),
            "packet {i}: marker"
        );
        assert!(
            !payload.is_empty() && payload.len() <= MAX_PAYLOAD_BYTES,
            "packet {i}: payload of {} bytes",
            payload.len()
        );
    }
}

#[test]
fn rtp_header_writes_and_parses_back() {
    let header = RtpHeader {
        payload_type: 96,
        marker: true,
        seq: 0xBEEF,
        timestamp: 0x0102_0304,
        ssrc: 0xA1B2_C3D4,
    };
    let mut buf = Vec::new();
    header.write(&mut buf);
    buf.extend_from_slice(b"payload");
    assert_eq!(
        &buf[..12],
        &[0x80, 0xE0, 0xBE, 0xEF, 1, 2, 3, 4, 0xA1, 0xB2, 0xC3, 0xD4]
    );
    assert_eq!(RtpHeader::parse(&buf), Some((header, &b"payload"[..])));
    // Not version 2, too short, padding longer than the packet: not a packet.
    assert_eq!(RtpHeader::parse(&[0x40; 12]), None);
    assert_eq!(RtpHeader::parse(&buf[..11]), None);
    let mut padded = buf.clone();
    padded[0] |= 0x20;
    *padded.last_mut().expect("bytes") = 200;
    assert_eq!(RtpHeader::parse(&padded), None);
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    surv_tests::fixtures::fuzz_corpus(target)
}

/// The calls and checks of fuzz/fuzz_targets/rtp_annexb.rs; the number of packets made.
fn annexb_case(data: &[u8]) -> usize {
    let nals: Vec<&[u8]> = split_annexb(data).collect();
    for nal in &nals {
        assert!(!nal.is_empty() && nal.last() != Some(&0));
    }
    if let Some(ps) = parameter_sets(data) {
        let _ = profile_level_id(&ps.sps);
    }
    let mut packetizer = H264Packetizer::new(7, 96, 65530);
    let frame = packetizer.packetize(data, 42, false);
    check_run(&frame, 7, 96);
    assert_eq!(nals.is_empty(), frame.packets.is_empty());
    assert_eq!(packetizer.next_seq(), frame.next_seq());
    frame.packets.len()
}

#[test]
fn rtp_annexb_corpus_packetizes_without_panicking() {
    let packets: usize = corpus("rtp_annexb")
        .iter()
        .map(|(_, data)| annexb_case(data))
        .sum();
    assert!(packets >= 10, "only {packets} packets from the corpus");
}

/// The calls and checks of fuzz/fuzz_targets/rtp_jpeg.rs; whether the input fits.
fn jpeg_case(data: &[u8]) -> bool {
    let info = rtp_jpeg_info(data);
    let mut packetizer = JpegPacketizer::new(9, 0);
    let frame = packetizer.packetize(data, 1);
    assert_eq!(info.is_ok(), frame.is_ok());
    let (Ok(info), Ok(frame)) = (info, frame) else {
        assert_eq!(packetizer.next_seq(), 0);
        return false;
    };
    assert!(info.width % 8 == 0 && info.width > 0 && info.width <= 2040);
    assert!(info.height % 8 == 0 && info.height > 0 && info.height <= 2040);
    check_run(&frame, 9, 26);
    let mut scan = Vec::new();
    for (i, packet) in frame.packets.iter().enumerate() {
        let skip = if i == 0 { 8 + 132 } else { 8 };
        scan.extend_from_slice(&rtp(packet).1[skip..]);
    }
    assert_eq!(&scan[..], &data[info.scan]);
    true
}

#[test]
fn rtp_jpeg_corpus_is_checked_without_panicking() {
    let mut fits = 0;
    for (path, data) in corpus("rtp_jpeg") {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let fit = jpeg_case(&data);
        fits += usize::from(fit);
        // The seeds say in their names what they are; files the fuzzer added need only not
        // panic.
        if name.starts_with("fits-") || name.starts_with("unfit-") {
            assert_eq!(fit, name.starts_with("fits-"), "{name}");
        }
    }
    assert!(fits >= 3, "only {fits} fitting JPEGs in the corpus");
}

#[test]
fn rtcp_corpus_is_checked_without_panicking() {
    let mut valid = 0;
    for (path, data) in corpus("rtcp") {
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        // The calls and checks of fuzz/fuzz_targets/rtcp.rs.
        let rtcp = is_rtcp(&data);
        if rtcp {
            valid += 1;
            assert!(data.len() >= 4 && data.len() % 4 == 0, "{name}");
            assert!((200..=206).contains(&data[1]), "{name}");
        }
        // Seeds named for what they are: reports are RTCP, the rest is not.
        if name.starts_with("sr-") || name.starts_with("rr-") {
            assert!(rtcp, "{name}");
        } else if name.starts_with("truncated-") || name.starts_with("rtp-") {
            assert!(!rtcp, "{name}");
        }
    }
    assert!(valid >= 3, "only {valid} RTCP packets in the corpus");
}

/// A frame is packetized once however many sessions ask, the newest `cap` frames are held, and
/// a frame older than the newest held is made for its asker alone (not held: the held frames
/// stay in order).
#[test]
fn packets_are_made_once_per_frame_and_held_for_the_newest() {
    use std::sync::Arc;
    let packets: super::Packets<Arc<u64>> = super::Packets::new(2);
    let a = packets.get_or_make(10, || Arc::new(10));
    let b = packets.get_or_make(10, || unreachable!("frame 10 is held"));
    assert!(Arc::ptr_eq(&a, &b));
    packets.get_or_make(11, || Arc::new(11));
    assert_eq!(packets.made(), 2);
    // Older than the newest held: made, not held.
    let old = packets.get_or_make(5, || Arc::new(5));
    assert_eq!(*old, 5);
    assert_eq!(packets.made(), 3);
    assert_eq!(packets.len(), 2);
    packets.get_or_make(5, || Arc::new(5));
    assert_eq!(packets.made(), 4, "frame 5 was not held");
    // A third newer frame pushes out the oldest.
    packets.get_or_make(12, || Arc::new(12));
    assert_eq!(packets.len(), 2);
    packets.get_or_make(10, || Arc::new(10));
    assert_eq!(packets.made(), 6, "frame 10 was let go");
    packets.get_or_make(11, || unreachable!("frame 11 is held"));
}

/// The shared packets under a session's stamp: its SSRC, its sequence run across frames, its
/// timestamp base; version, marker and payload type as made.
#[test]
fn a_stamp_gives_each_session_its_own_headers() {
    let frame = H264Packetizer::new(0, 96, 0).packetize(&[0, 0, 0, 1, 0x65, 1, 2, 3], 3000, true);
    let mut stamp = super::Stamp::new(0xABCD, 100, u16::MAX);
    let mut headers = Vec::new();
    stamp.headers(&frame, &mut headers);
    stamp.headers(&frame, &mut headers);
    assert_eq!(headers.len(), 2 * frame.packets.len());
    for (i, h) in headers.iter().enumerate() {
        let mut packet = h.to_vec();
        packet.push(0x65);
        let (header, _) = RtpHeader::parse(&packet).unwrap();
        assert_eq!(header.seq, u16::MAX.wrapping_add(i as u16));
        assert_eq!((header.ssrc, header.timestamp), (0xABCD, 3100));
        assert_eq!((header.payload_type, header.marker), (96, true));
    }
    assert_eq!(stamp.next_seq(), u16::MAX.wrapping_add(2));
}
