//! RTP and RTCP packets, sans-IO: a frame in, its wire packets out, ready for every session.
//!
//! * [`h264`]: RFC 6184 packetizing (single NAL unit and FU-A, packetization-mode 1), the Annex B
//!   splitter and what an SDP needs from the parameter sets.
//! * [`jpeg`]: RFC 2435 packetizing, and the check of which JPEGs can be sent as they are.
//! * [`rtcp`]: sender reports, and a validator for what peers send to our RTCP port.
//!
//! A frame is packetized once and shared: its packets are slices of one buffer ([`RtpFrame`]),
//! which TCP sessions send after a `$` header and UDP sessions send as they are. No tokio, no
//! sockets: the watchers own the I/O.
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

use std::fmt;

use bytes::{BufMut, Bytes};

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
