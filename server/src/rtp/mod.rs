//! RTP and RTCP packets, sans-IO: a frame in, its wire packets out, ready for every session.
//!
//! * [`h264`]: RFC 6184 packetizing (single NAL unit and FU-A, packetization-mode 1), the Annex B
//!   splitter and what an SDP needs from the parameter sets.
//! * [`jpeg`]: RFC 2435 packetizing, and the check of which JPEGs can be sent as they are.
//! * [`rtcp`]: sender reports, and a validator for what peers send to our RTCP port.
//!
//! A frame is packetized once per camera and shared by every session ([`Packets`] keeps the
//! newest frames' packets): its packets are slices of one buffer ([`RtpFrame`]). Each session
//! sends them under its own 12-byte headers ([`Stamp`]: its SSRC, sequence numbers and
//! timestamp base), the payloads straight from the shared buffer (TCP after a `$` header, UDP
//! as datagrams). No tokio, no sockets: the watchers own the I/O.
//!
//! ```text
//!  0                   1                   2                   3
//!  0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |V=2|P|X|  CC=0 |M|     PT      |       sequence number         |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                           timestamp                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                             SSRC                              |
//! +=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+=+
//! |                payload (at most MAX_PAYLOAD_BYTES)            |
//! ```

pub mod h264;
pub mod jpeg;
pub mod rtcp;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, Bytes};

use crate::capture::h264::H264Unit;

/// The most payload bytes (after the 12-byte RTP header) in one packet: with IP, UDP and RTP
/// headers a packet stays under a 1500-byte Ethernet MTU, with room for a tunnel's overhead.
pub const MAX_PAYLOAD_BYTES: usize = 1400;

/// The fixed RTP header's size (no CSRCs, no extension: surv writes none).
pub const RTP_HEADER_BYTES: usize = 12;

/// The 90 kHz clock every surv video stream runs on (RFC 6184 and RFC 2435 both require it).
pub const CLOCK_RATE_HZ: u32 = 90_000;

/// An RTP fixed header (RFC 3550 §5.1): version 2, no padding, no extension, no CSRCs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpHeader {
    /// 7 bits; the top bit is dropped when written.
    pub payload_type: u8,
    /// The last packet of a frame (an access unit for H.264, a JPEG for RFC 2435).
    pub marker: bool,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

impl RtpHeader {
    /// Appends the header's [`RTP_HEADER_BYTES`] to `out`.
    pub fn write(&self, out: &mut impl BufMut) {
        out.put_u8(0x80);
        out.put_u8(u8::from(self.marker) << 7 | (self.payload_type & 0x7F));
        out.put_u16(self.seq);
        out.put_u32(self.timestamp);
        out.put_u32(self.ssrc);
    }

    /// Reads a version-2 header and returns it with the packet's payload (after any CSRCs and
    /// header extension, before any padding); `None` if `packet` is not a whole RTP packet.
    /// For tests and tools that read surv's packets back; peer RTP is never parsed by the server.
    pub fn parse(packet: &[u8]) -> Option<(RtpHeader, &[u8])> {
        let fixed = packet.get(..RTP_HEADER_BYTES)?;
        if fixed[0] >> 6 != 2 {
            return None;
        }
        let csrcs = usize::from(fixed[0] & 0x0F) * 4;
        let mut start = RTP_HEADER_BYTES.checked_add(csrcs)?;
        if fixed[0] & 0x10 != 0 {
            let ext = packet.get(start..start.checked_add(4)?)?;
            let words = usize::from(u16::from_be_bytes([ext[2], ext[3]]));
            start = start.checked_add(4)?.checked_add(words * 4)?;
        }
        let mut end = packet.len();
        if fixed[0] & 0x20 != 0 {
            let pad = usize::from(*packet.last()?);
            end = end.checked_sub(pad)?;
        }
        let payload = packet.get(start..end)?;
        let header = RtpHeader {
            payload_type: fixed[1] & 0x7F,
            marker: fixed[1] & 0x80 != 0,
            seq: u16::from_be_bytes([fixed[2], fixed[3]]),
            timestamp: u32::from_be_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]),
            ssrc: u32::from_be_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]),
        };
        Some((header, payload))
    }
}

/// One frame's packets, made once and shared by every session (Bytes clones).
#[derive(Clone)]
pub struct RtpFrame {
    /// The first packet's sequence number; packet `i` has `first_seq + i` (wrapping).
    pub first_seq: u16,
    /// Every packet's timestamp (90 kHz).
    pub rtp_ts: u32,
    /// A decoder can start here (an IDR access unit; every JPEG).
    pub keyframe: bool,
    /// Whole RTP packets (header and payload), in sending order; the last has the marker bit.
    /// Slices of one buffer. Empty when the frame had nothing to send (no NAL unit).
    pub packets: Vec<Bytes>,
}

impl RtpFrame {
    /// The bytes of all packets, RTP headers included (an SR's octet count wants the payload
    /// bytes: subtract `packets.len() * RTP_HEADER_BYTES`).
    pub fn wire_bytes(&self) -> usize {
        self.packets.iter().map(Bytes::len).sum()
    }

    /// Each packet's length, headers included.
    pub fn sizes(&self) -> Vec<usize> {
        self.packets.iter().map(Bytes::len).collect()
    }

    /// The sequence number after this frame's last packet.
    pub fn next_seq(&self) -> u16 {
        // A frame holds far fewer than 65536 packets; the count wraps with the sequence.
        self.first_seq.wrapping_add(self.packets.len() as u16)
    }
}

impl fmt::Debug for RtpFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtpFrame")
            .field("first_seq", &self.first_seq)
            .field("rtp_ts", &self.rtp_ts)
            .field("keyframe", &self.keyframe)
            .field("packets", &self.packets.len())
            .field("wire_bytes", &self.wire_bytes())
            .finish()
    }
}

/// Splits one frozen buffer, written packet after packet, at `ends` (each packet's end offset):
/// the packets share the buffer's one allocation.
fn split_packets(buf: Bytes, ends: &[usize]) -> Vec<Bytes> {
    let mut start = 0;
    ends.iter()
        .map(|&end| {
            let packet = buf.slice(start..end);
            start = end;
            packet
        })
        .collect()
}

/// A session's own RTP identity over packets made once for every session: each packet goes out
/// under a header with the packet's own first two bytes (version, marker, payload type) and the
/// session's sequence number, timestamp (its base plus the frame's) and SSRC, as RFC 3550 asks
/// of each stream; the payload is the shared one.
#[derive(Debug, Clone)]
pub struct Stamp {
    pub ssrc: u32,
    /// Added to every frame's timestamp (random per session).
    pub ts_base: u32,
    next_seq: u16,
}

impl Stamp {
    pub fn new(ssrc: u32, ts_base: u32, first_seq: u16) -> Stamp {
        Stamp {
            ssrc,
            ts_base,
            next_seq: first_seq,
        }
    }

    /// The sequence number the next packet will have.
    pub fn next_seq(&self) -> u16 {
        self.next_seq
    }

    /// This session's timestamp for a frame with (shared) timestamp `frame_ts`.
    pub fn timestamp(&self, frame_ts: u32) -> u32 {
        self.ts_base.wrapping_add(frame_ts)
    }

    /// This session's headers for `frame`'s packets, one per packet, appended to `out`; takes
    /// their sequence numbers.
    pub fn headers(&mut self, frame: &RtpFrame, out: &mut Vec<[u8; RTP_HEADER_BYTES]>) {
        let timestamp = self.timestamp(frame.rtp_ts);
        for packet in &frame.packets {
            let mut header = [0u8; RTP_HEADER_BYTES];
            // Version, marker and payload type as the packet has them (every packet made here
            // has its header; a shorter one would go out as a bare header).
            header[0] = packet.first().copied().unwrap_or(0x80);
            header[1] = packet.get(1).copied().unwrap_or(0);
            header[2..4].copy_from_slice(&self.next_seq.to_be_bytes());
            header[4..8].copy_from_slice(&timestamp.to_be_bytes());
            header[8..12].copy_from_slice(&self.ssrc.to_be_bytes());
            self.next_seq = self.next_seq.wrapping_add(1);
            out.push(header);
        }
    }
}

/// The newest frames' packets of one camera's stream, by frame number, so that a frame is
/// packetized once whatever the number of sessions: the first session to send a frame makes
/// its packets, the others take them. Holds at most `cap` frames; a frame older than the
/// newest one held (a session joining with a camera's older units) is made for that session
/// alone.
pub struct Packets<T> {
    frames: Mutex<VecDeque<(u64, T)>>,
    cap: usize,
    /// Frames packetized (the "once" proof: one per frame whatever the number of sessions).
    made: AtomicU64,
}

impl<T: Clone> Packets<T> {
    pub fn new(cap: usize) -> Packets<T> {
        Packets {
            frames: Mutex::new(VecDeque::with_capacity(cap)),
            cap: cap.max(1),
            made: AtomicU64::new(0),
        }
    }

    /// Frame `key`'s packets: held, or made by `make` (under the lock: the other sessions
    /// wanting the same frame wait for it rather than make it again).
    pub fn get_or_make(&self, key: u64, make: impl FnOnce() -> T) -> T {
        let mut frames = self.frames.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, held)) = frames.iter().rev().find(|(k, _)| *k == key) {
            return held.clone();
        }
        let made = make();
        self.made.fetch_add(1, Relaxed);
        if frames.back().is_none_or(|(newest, _)| *newest < key) {
            if frames.len() == self.cap {
                frames.pop_front();
            }
            frames.push_back((key, made.clone()));
        }
        made
    }

    /// How many frames were packetized.
    pub fn made(&self) -> u64 {
        self.made.load(Relaxed)
    }

    /// How many frames are held.
    pub fn len(&self) -> usize {
        self.frames.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<T> fmt::Debug for Packets<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Packets").field("cap", &self.cap).finish()
    }
}

/// A camera's packets for its two RTP streams: H.264 access units by their feed number, and
/// JPEGs by their frame number (`Err` when RTP/JPEG cannot carry the JPEG as it is).
#[derive(Debug)]
pub struct CameraPackets {
    pub h264: Packets<Arc<RtpFrame>>,
    pub jpeg: Packets<Result<Arc<RtpFrame>, jpeg::Unfit>>,
}

impl CameraPackets {
    /// An access unit's packets, as every H.264 session shares them: payload type
    /// [`h264::PAYLOAD_TYPE`], the RTP timestamp its media time's low 32 bits (each session adds
    /// its base); sequence numbers and SSRC are each session's own ([`Stamp`]).
    pub fn h264(&self, unit: &H264Unit) -> Arc<RtpFrame> {
        self.h264.get_or_make(unit.seq, || {
            Arc::new(
                h264::H264Packetizer::new(0, h264::PAYLOAD_TYPE, 0).packetize(
                    &unit.au.data,
                    unit.media_time_90k as u32,
                    unit.au.is_keyframe(),
                ),
            )
        })
    }

    /// Frame `seq`'s JPEG as every RTP/JPEG session shares it (timestamp:
    /// [`jpeg_timestamp`]), or why RTP/JPEG cannot carry it.
    pub fn jpeg(
        &self,
        seq: u64,
        jpeg: &[u8],
        capture_unix_us: u64,
    ) -> Result<Arc<RtpFrame>, jpeg::Unfit> {
        self.jpeg.get_or_make(seq, || {
            jpeg::JpegPacketizer::new(0, 0)
                .packetize(jpeg, jpeg_timestamp(capture_unix_us))
                .map(Arc::new)
        })
    }
}

/// A JPEG's RTP timestamp before a session's base: its capture time on the 90 kHz clock.
pub fn jpeg_timestamp(capture_unix_us: u64) -> u32 {
    (capture_unix_us.wrapping_mul(9) / 100) as u32
}

impl Default for CameraPackets {
    fn default() -> CameraPackets {
        CameraPackets {
            // A GOP of two seconds at 30 fps, so that sessions joining together share theirs.
            h264: Packets::new(64),
            // Sessions follow the newest JPEG; a few behind share too.
            jpeg: Packets::new(4),
        }
    }
}
