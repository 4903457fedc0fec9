//! RFC 6184 packetizing of H.264 access units (packetization-mode 1), and the Annex B and
//! parameter-set reading an RTSP mount needs for its SDP.
//!
//! Each NAL unit of the access unit goes in one packet when it fits [`MAX_PAYLOAD_BYTES`],
//! otherwise in FU-A fragments; all packets carry the access unit's timestamp and only the last
//! has the marker bit. No STAP-A: ffmpeg, GStreamer and retina read parameter sets sent alone.
//!
//! ```text
//! single NAL unit:  | RTP header | NAL header | NAL payload ...                        |
//! FU-A fragment:    | RTP header | FU indicator | FU header | part of the NAL payload  |
//!                                  F|NRI|28       S|E|R|type  (the NAL header byte is not
//!                                                              repeated: its F|NRI and type
//!                                                              travel in these two bytes)
//! ```

use base64::Engine as _;
use bytes::BytesMut;

use super::{split_packets, RtpFrame, RtpHeader, MAX_PAYLOAD_BYTES, RTP_HEADER_BYTES};
use crate::frame::ParameterSets;

/// The dynamic payload type surv's H.264 streams use (RTSP and `--forward` SDPs say so).
pub const PAYLOAD_TYPE: u8 = 96;

/// NAL unit types this module looks at.
const NAL_SPS: u8 = 7;
const NAL_PPS: u8 = 8;
/// The FU-A payload type in an FU indicator.
const FU_A: u8 = 28;
/// FU indicator + FU header.
const FU_HEADER_BYTES: usize = 2;
/// NAL payload bytes in one FU-A fragment.
const FU_CHUNK_BYTES: usize = MAX_PAYLOAD_BYTES - FU_HEADER_BYTES;

/// Makes the RTP packets of one H.264 stream: one SSRC, one run of sequence numbers.
#[derive(Debug)]
pub struct H264Packetizer {
    ssrc: u32,
    payload_type: u8,
    next_seq: u16,
}

impl H264Packetizer {
    /// A packetizer whose first packet will have sequence number `first_seq` (random, for a
    /// new stream, as RFC 3550 asks).
    pub fn new(ssrc: u32, payload_type: u8, first_seq: u16) -> H264Packetizer {
        H264Packetizer {
            ssrc,
            payload_type,
            next_seq: first_seq,
        }
    }

    /// The sequence number the next packet will have.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// The packets of one access unit `annexb` (NAL units after start codes), all with
    /// timestamp `rtp_ts`. An access unit with no NAL unit gives no packet and uses no
    /// sequence number.
    pub fn packetize(&mut self, annexb: &[u8], rtp_ts: u32, keyframe: bool) -> RtpFrame {
        let nals: Vec<&[u8]> = split_annexb(annexb).collect();
        let total: usize = nals.iter().map(|nal| wire_bytes(nal.len())).sum();
        let mut buf = BytesMut::with_capacity(total);
        let mut ends = Vec::with_capacity(nals.len() + total / MAX_PAYLOAD_BYTES);
        let first_seq = self.next_seq;
        let last_nal = nals.len().saturating_sub(1);
        for (i, nal) in nals.iter().enumerate() {
            let au_end = i == last_nal;
            if nal.len() <= MAX_PAYLOAD_BYTES {
                self.header(rtp_ts, au_end).write(&mut buf);
                buf.extend_from_slice(nal);
                ends.push(buf.len());
                continue;
            }
            let Some((&nal_header, body)) = nal.split_first() else {
                continue;
            };
            let indicator = (nal_header & 0x60) | FU_A;
            let nal_type = nal_header & 0x1F;
            let mut chunks = body.chunks(FU_CHUNK_BYTES).peekable();
            let mut start = true;
            while let Some(chunk) = chunks.next() {
                let end = chunks.peek().is_none();
                self.header(rtp_ts, au_end && end).write(&mut buf);
                let fu_header = u8::from(start) << 7 | u8::from(end) << 6 | nal_type;
                buf.extend_from_slice(&[indicator, fu_header]);
                buf.extend_from_slice(chunk);
                ends.push(buf.len());
                start = false;
            }
        }
        debug_assert_eq!(buf.len(), total);
        RtpFrame {
            first_seq,
            rtp_ts,
            keyframe,
            packets: split_packets(buf.freeze(), &ends),
        }
    }

    /// The next packet's header; takes its sequence number.
    fn header(&mut self, rtp_ts: u32, marker: bool) -> RtpHeader {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        RtpHeader {
            payload_type: self.payload_type,
            marker,
            seq,
            timestamp: rtp_ts,
            ssrc: self.ssrc,
        }
    }
}

/// The bytes a NAL unit of `nal_bytes` (> 0) takes on the wire, RTP headers included.
fn wire_bytes(nal_bytes: usize) -> usize {
    if nal_bytes <= MAX_PAYLOAD_BYTES {
        RTP_HEADER_BYTES + nal_bytes
    } else {
        let body = nal_bytes - 1;
        body.div_ceil(FU_CHUNK_BYTES) * (RTP_HEADER_BYTES + FU_HEADER_BYTES) + body
    }
}

/// The NAL units of an Annex B byte stream, without their start codes (the project's one
/// splitter, [`surv_codec::annexb::nal_units`]; fuzzed through the packetizer here).
pub use surv_codec::annexb::nal_units as split_annexb;

/// The first SPS and the first PPS of an access unit, if it carries both (an IDR access unit
/// from openh264, or from a camera that sends them in band).
pub fn parameter_sets(annexb: &[u8]) -> Option<ParameterSets> {
    let mut sps = None;
    let mut pps = None;
    for nal in split_annexb(annexb) {
        let Some(&header) = nal.first() else {
            continue;
        };
        match header & 0x1F {
            NAL_SPS if sps.is_none() => sps = Some(nal),
            NAL_PPS if pps.is_none() => pps = Some(nal),
            _ => {}
        }
        if let (Some(sps), Some(pps)) = (sps, pps) {
            return Some(ParameterSets {
                sps: bytes::Bytes::copy_from_slice(sps),
                pps: bytes::Bytes::copy_from_slice(pps),
            });
        }
    }
    None
}

/// The SDP's `profile-level-id`: profile_idc, the constraint flags and level_idc, the SPS's
/// bytes 1..4 as six hex digits (`42c01f` for openh264's Constrained Baseline at level 3.1).
/// `None` unless `sps` is an SPS NAL unit (with its header byte) of at least 4 bytes.
pub fn profile_level_id(sps: &[u8]) -> Option<String> {
    match sps {
        [header, profile, constraints, level, ..] if header & 0x1F == NAL_SPS => {
            Some(format!("{profile:02x}{constraints:02x}{level:02x}"))
        }
        _ => None,
    }
}

/// The SDP's `sprop-parameter-sets`: the SPS and the PPS in base64, comma-separated.
pub fn sprop_parameter_sets(ps: &ParameterSets) -> String {
    let b64 = &base64::engine::general_purpose::STANDARD;
    format!("{},{}", b64.encode(&ps.sps), b64.encode(&ps.pps))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::tests::{check_run, rtp};

    const SSRC: u32 = 0x1A2B_3C4D;

    /// One IDR access unit from openh264, as the encoder thread will make them: 1280x720,
    /// noise (so that it is large), Annex B with SPS and PPS in band.
    fn openh264_idr() -> Vec<u8> {
        use openh264::encoder::{
            BitRate, Complexity, Encoder, EncoderConfig, FrameRate, Profile, RateControlMode,
            UsageType,
        };
        use openh264::formats::{RgbSliceU8, YUVBuffer};
        use openh264::OpenH264API;
        let (width, height) = (1280, 720);
        let rgb = surv_tests::Picture::Noise(7).rgb(width, height);
        let config = EncoderConfig::new()
            .skip_frames(false)
            .rate_control_mode(RateControlMode::Bufferbased)
            .bitrate(BitRate::from_bps(2_000_000))
            .max_frame_rate(FrameRate::from_hz(30.0))
            .usage_type(UsageType::CameraVideoRealTime)
            .complexity(Complexity::Low)
            .profile(Profile::Baseline)
            .num_threads(1);
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
            .expect("an openh264 encoder");
        let yuv = YUVBuffer::from_rgb8_source(RgbSliceU8::new(&rgb, (width, height)));
        let bitstream = encoder.encode(&yuv).expect("openh264 encodes a frame");
        let mut annexb = Vec::new();
        bitstream.write_vec(&mut annexb);
        annexb
    }

    /// A test-only RFC 6184 depacketizer, as strict as retina's: the NAL units of one access
    /// unit's packets. Panics on anything retina would refuse.
    fn depacketize(packets: &[bytes::Bytes]) -> Vec<Vec<u8>> {
        let mut nals = Vec::new();
        let mut fu: Option<Vec<u8>> = None;
        for (i, packet) in packets.iter().enumerate() {
            let (header, payload) = rtp(packet);
            let last = i + 1 == packets.len();
            assert_eq!(header.marker, last, "packet {i}: marker only on the last");
            let (&first, rest) = payload.split_first().expect("a non-empty payload");
            match first & 0x1F {
                1..=23 => {
                    assert!(fu.is_none(), "packet {i}: a single NAL unit inside an FU-A");
                    nals.push(payload.to_vec());
                }
                FU_A => {
                    let (&fu_header, body) = rest.split_first().expect("an FU header");
                    let (start, end) = (fu_header & 0x80 != 0, fu_header & 0x40 != 0);
                    assert!(!(start && end), "packet {i}: FU-A with S and E");
                    assert!(fu_header & 0x20 == 0, "packet {i}: FU-A R bit");
                    if start {
                        assert!(fu.is_none(), "packet {i}: FU-A start inside an FU-A");
                        fu = Some(vec![(first & 0xE0) | (fu_header & 0x1F)]);
                    }
                    let nal = fu.as_mut().expect("an FU-A continued without its start");
                    assert_eq!(nal[0] & 0x1F, fu_header & 0x1F, "packet {i}: type changed");
                    nal.extend_from_slice(body);
                    if end {
                        nals.extend(fu.take());
                    } else {
                        assert!(!header.marker, "packet {i}: FU-A pkt with MARK && !END");
                    }
                }
                other => panic!("packet {i}: NAL unit type {other} not sent by surv"),
            }
        }
        assert!(fu.is_none(), "the access unit ends inside an FU-A");
        nals
    }

    #[test]
    fn openh264_idr_round_trips_through_single_nal_and_fu_a_packets() {
        let annexb = openh264_idr();
        assert!(annexb.len() > 20_000, "IDR of {} bytes", annexb.len());
        let nals: Vec<&[u8]> = split_annexb(&annexb).collect();
        let types: Vec<u8> = nals.iter().map(|n| n[0] & 0x1F).collect();
        assert_eq!(&types[..2], &[NAL_SPS, NAL_PPS], "{types:?}");
        assert!(types[2..].iter().all(|&t| t == 5), "{types:?}");

        let mut packetizer = H264Packetizer::new(SSRC, 96, 1000);
        let frame = packetizer.packetize(&annexb, 123_456, true);
        assert_eq!(
            (frame.first_seq, frame.rtp_ts, frame.keyframe),
            (1000, 123_456, true)
        );
        check_run(&frame, SSRC, 96);
        assert_eq!(packetizer.next_seq(), frame.next_seq());
        // SPS and PPS alone, then the slice(s) as FU-As.
        let (_, sps) = rtp(&frame.packets[0]);
        let (_, pps) = rtp(&frame.packets[1]);
        assert_eq!((sps, pps), (nals[0], nals[1]));
        for packet in &frame.packets[2..] {
            assert_eq!(rtp(packet).1[0] & 0x1F, FU_A);
        }
        assert_eq!(depacketize(&frame.packets), nals);
        // The frame's packets share one buffer: the wire bytes are the Annex B bytes less the
        // start codes, plus the headers.
        let fu_packets = frame.packets.len() - 2;
        assert_eq!(
            frame.wire_bytes(),
            nals.iter().map(|n| n.len()).sum::<usize>()
                + frame.packets.len() * RTP_HEADER_BYTES
                + fu_packets * FU_HEADER_BYTES
                - (nals.len() - 2)
        );
        // What the SDP says about this stream.
        let ps = parameter_sets(&annexb).expect("SPS and PPS in the IDR");
        assert_eq!((&ps.sps[..], &ps.pps[..]), (nals[0], nals[1]));
        assert_eq!(profile_level_id(&ps.sps).as_deref(), Some("42c01f"));
        let sprop = sprop_parameter_sets(&ps);
        let (sps64, pps64) = sprop.split_once(',').expect("two sets");
        let b64 = &base64::engine::general_purpose::STANDARD;
        assert_eq!(b64.decode(sps64).expect("base64"), nals[0]);
        assert_eq!(b64.decode(pps64).expect("base64"), nals[1]);
    }

    #[test]
    fn fu_a_fragments_carry_the_nal_header_bits_not_the_byte() {
        // NRI 2 (0x40), type 5; payload 1..=3000 so that three fragments are needed.
        let mut nal = vec![0x45];
        nal.extend((0..3000u32).map(|i| (i % 251) as u8 + 1));
        let annexb = [&[0, 0, 0, 1][..], &nal].concat();
        let frame = H264Packetizer::new(SSRC, 96, 0).packetize(&annexb, 9, false);
        assert_eq!(frame.packets.len(), 3000usize.div_ceil(FU_CHUNK_BYTES));
        let headers: Vec<[u8; 2]> = frame
            .packets
            .iter()
            .map(|p| {
                let payload = rtp(p).1;
                [payload[0], payload[1]]
            })
            .collect();
        assert_eq!(headers, vec![[0x5C, 0x85], [0x5C, 0x05], [0x5C, 0x45]]);
        let (_, first) = rtp(&frame.packets[0]);
        assert_eq!(&first[2..], &nal[1..1 + FU_CHUNK_BYTES]);
        assert_eq!(depacketize(&frame.packets), vec![nal]);
        check_run(&frame, SSRC, 96);
    }

    #[test]
    fn nal_of_exactly_max_payload_is_one_packet_and_one_more_byte_is_two() {
        for (len, packets) in [(MAX_PAYLOAD_BYTES, 1), (MAX_PAYLOAD_BYTES + 1, 2)] {
            let nal: Vec<u8> = std::iter::once(0x41)
                .chain(std::iter::repeat_n(7, len - 1))
                .collect();
            let annexb = [&[0, 0, 1][..], &nal].concat();
            let frame = H264Packetizer::new(SSRC, 96, 0).packetize(&annexb, 0, false);
            assert_eq!(frame.packets.len(), packets, "NAL of {len} bytes");
            check_run(&frame, SSRC, 96);
            assert_eq!(depacketize(&frame.packets), vec![nal]);
        }
    }

    #[test]
    fn sequence_numbers_wrap_at_65535() {
        let mut nal = vec![0x65];
        nal.extend(std::iter::repeat_n(0x11, 5000));
        let annexb = [
            &[0, 0, 0, 1, 0x67, 0x42, 0xc0, 0x1f][..],
            &[0, 0, 0, 1],
            &nal,
        ]
        .concat();
        let mut packetizer = H264Packetizer::new(SSRC, 96, 65534);
        let frame = packetizer.packetize(&annexb, 1, true);
        let seqs: Vec<u16> = frame.packets.iter().map(|p| rtp(p).0.seq).collect();
        assert_eq!(seqs, vec![65534, 65535, 0, 1, 2]);
        assert_eq!(packetizer.next_seq(), 3);
        let next = packetizer.packetize(&annexb, 3001, false);
        assert_eq!(next.first_seq, 3);
        check_run(&next, SSRC, 96);
    }

    #[test]
    fn annexb_splits_at_3_and_4_byte_start_codes_and_drops_trailing_zeros() {
        let stream = [
            &[0, 0, 0, 1, 0x67, 1, 2, 3][..], // SPS: its last byte is not eaten by the 4-byte code
            &[0, 0, 0, 1, 0x68, 4][..],       // PPS
            &[0, 0, 1, 0x65, 9, 0, 9][..],    // 3-byte code; a zero inside stays
            &[0, 0, 0, 0, 0, 1, 0x41, 7][..], // trailing_zero_8bits before a 4-byte code
            &[0, 0, 1][..],                   // an empty NAL unit
            &[0, 0, 1, 0x41, 8, 0, 0][..],    // trailing zeros at the end of the stream
        ]
        .concat();
        let nals: Vec<&[u8]> = split_annexb(&stream).collect();
        assert_eq!(
            nals,
            vec![
                &[0x67, 1, 2, 3][..],
                &[0x68, 4],
                &[0x65, 9, 0, 9],
                &[0x41, 7],
                &[0x41, 8]
            ]
        );
        // Leading garbage before the first start code is not a NAL unit.
        let nals: Vec<&[u8]> = split_annexb(&[9, 9, 0, 0, 1, 0x41, 5]).collect();
        assert_eq!(nals, vec![&[0x41, 5][..]]);
        let ps = parameter_sets(&stream).expect("SPS and PPS");
        assert_eq!(
            (&ps.sps[..], &ps.pps[..]),
            (&[0x67, 1, 2, 3][..], &[0x68, 4][..])
        );
        assert!(
            parameter_sets(&stream[8..]).is_none(),
            "no SPS: no parameter sets"
        );
    }

    #[test]
    fn empty_or_start_code_only_input_gives_no_packet() {
        let mut packetizer = H264Packetizer::new(SSRC, 96, 77);
        for input in [
            &[][..],
            &[0, 0, 1],
            &[0, 0, 0, 1, 0, 0, 0, 1],
            &[0, 0],
            &[5, 6, 7],
        ] {
            let frame = packetizer.packetize(input, 5, false);
            assert!(frame.packets.is_empty(), "{input:?}");
            assert_eq!(frame.first_seq, 77);
        }
        assert_eq!(packetizer.next_seq(), 77, "no packet, no sequence number");
    }

    #[test]
    fn profile_level_id_reads_the_sps_and_refuses_other_nal_units() {
        assert_eq!(
            profile_level_id(&[0x67, 0x4d, 0x40, 0x15, 0xda]).as_deref(),
            Some("4d4015")
        );
        assert_eq!(profile_level_id(&[0x67, 0x42, 0xc0]), None);
        assert_eq!(profile_level_id(&[0x68, 0x42, 0xc0, 0x1f]), None);
        assert_eq!(profile_level_id(&[]), None);
    }

    #[test]
    fn sprop_matches_the_design_docs_openh264_example() {
        let b64 = &base64::engine::general_purpose::STANDARD;
        let ps = ParameterSets {
            sps: b64.decode("Z0LAH4xoBQBboB4RCNQ=").expect("base64").into(),
            pps: b64.decode("aM48gA==").expect("base64").into(),
        };
        assert_eq!(sprop_parameter_sets(&ps), "Z0LAH4xoBQBboB4RCNQ=,aM48gA==");
        assert_eq!(profile_level_id(&ps.sps).as_deref(), Some("42c01f"));
    }
}
