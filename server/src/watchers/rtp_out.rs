//! Sending a frame's shared RTP packets ([`crate::rtp`]) under one session's headers
//! ([`Stamp`]), without copying the payloads: interleaved on an RTSP connection (one `writev`
//! per frame: `$`, channel, length and the session's header, then the shared payload, for each
//! packet), or as UDP datagrams (one `sendmsg` with UDP generic segmentation offload per run
//! of equal-sized packets, so a 40-packet JPEG is one system call, not 40).
//!
//! ```text
//!  shared RtpFrame:   [hdr₀|payload₀] [hdr₁|payload₁] … (made once per camera)
//!  one session:       iovecs  [$ ch len | its hdr₀] [payload₀] [$ ch len | its hdr₁] [payload₁] …
//!                     (UDP: [its hdr₀][payload₀][its hdr₁][payload₁] … cut every 12 + 1400 bytes)
//! ```

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::AsRawFd;
use std::sync::atomic::Ordering::Relaxed;

use bytes::{Bytes, BytesMut};
use tokio::io::Interest;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::UdpSocket;

use crate::rtp::{RtpFrame, Stamp, RTP_HEADER_BYTES};
use crate::sys::{self, cannot_segment, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, GSO_WORKS};

/// `$`, channel, 16-bit length (RFC 2326 §10.12), then the RTP header.
const PREFIX_BYTES: usize = 4 + RTP_HEADER_BYTES;

/// A writer that can try a vectored write without waiting: `WouldBlock` when it has no room.
pub trait TryWriteVectored {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize>;
}

impl TryWriteVectored for OwnedWriteHalf {
    fn try_write_vectored(&self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        OwnedWriteHalf::try_write_vectored(self, bufs)
    }
}

/// One session's buffers for its headers, reused frame after frame.
#[derive(Debug, Default)]
pub struct RtpOut {
    headers: Vec<[u8; RTP_HEADER_BYTES]>,
    prefixes: Vec<[u8; PREFIX_BYTES]>,
}

/// What a UDP send did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct UdpSent {
    pub packets: usize,
    pub bytes: usize,
    /// Packets the socket refused with an error: lost to this session (a full buffer is
    /// waited out, or the packets queued: [`RtpOut::try_send_udp`]).
    pub failed: usize,
}

/// The 4 bytes before each packet interleaved on an RTSP connection (RFC 2326 §10.12): `$`,
/// the channel, the packet's length (16 bits, big-endian; a longer one is cut to 65,535).
pub fn interleave_prefix(channel: u8, len: usize) -> [u8; 4] {
    let [hi, lo] = u16::try_from(len).unwrap_or(u16::MAX).to_be_bytes();
    [b'$', channel, hi, lo]
}

impl RtpOut {
    /// `frame`'s packets under `stamp`'s headers, interleaved on `channel`, as the iovecs of
    /// one `writev` (taking their sequence numbers), and the bytes of RTP in them (headers
    /// included, `$` prefixes not).
    pub fn interleaved<'a>(
        &'a mut self,
        channel: u8,
        stamp: &mut Stamp,
        frame: &'a RtpFrame,
    ) -> (Vec<IoSlice<'a>>, usize) {
        self.headers.clear();
        stamp.headers(frame, &mut self.headers);
        self.prefixes.clear();
        let mut rtp_bytes = 0;
        for (header, packet) in self.headers.iter().zip(&frame.packets) {
            // Packets are at most MAX_PAYLOAD_BYTES plus headers, far under the 16-bit length.
            let mut prefix = [0u8; PREFIX_BYTES];
            prefix[..4].copy_from_slice(&interleave_prefix(channel, packet.len()));
            prefix[4..].copy_from_slice(header);
            self.prefixes.push(prefix);
            rtp_bytes += packet.len();
        }
        let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(2 * self.prefixes.len());
        for (prefix, packet) in self.prefixes.iter().zip(&frame.packets) {
            iovs.push(IoSlice::new(prefix));
            iovs.push(IoSlice::new(payload(packet)));
        }
        (iovs, rtp_bytes)
    }

    /// Sends `frame`'s packets under `stamp`'s headers to `dest` from `socket`, waiting for
    /// room in its buffer as `send_to` does; a packet the socket refuses is lost, counted in
    /// `failed`, as any UDP loss.
    pub async fn send_udp(
        &mut self,
        socket: &UdpSocket,
        dest: SocketAddr,
        stamp: &mut Stamp,
        frame: &RtpFrame,
    ) -> UdpSent {
        let mut unsent = VecDeque::new();
        let mut sent = self.try_send_udp(socket, dest, stamp, frame, &mut unsent);
        while !unsent.is_empty() {
            let drained = drain_udp(socket, dest, &mut unsent, usize::MAX);
            sent.failed += drained.failed;
            sent.packets -= drained.failed;
            sent.bytes -= drained.failed_bytes;
            if drained.blocked && socket.writable().await.is_err() {
                break;
            }
        }
        sent
    }

    /// Sends `frame`'s packets under `stamp`'s headers to `dest` from `socket` as far as its
    /// buffer takes them now, never waiting: from the first packet it has no room for, the
    /// packets wait in `unsent` (whole datagrams, in order) for [`drain_udp`]; all of them when
    /// `unsent` already holds some, which go first. A packet the socket refuses otherwise is
    /// lost, counted in `failed`, as any UDP loss; `packets` and `bytes` count the rest, sent
    /// or waiting.
    pub fn try_send_udp(
        &mut self,
        socket: &UdpSocket,
        dest: SocketAddr,
        stamp: &mut Stamp,
        frame: &RtpFrame,
        unsent: &mut VecDeque<Bytes>,
    ) -> UdpSent {
        self.headers.clear();
        stamp.headers(frame, &mut self.headers);
        let mut sent = UdpSent::default();
        for run in gso_runs(&frame.sizes()) {
            let packets = &frame.packets[run.clone()];
            let headers = &self.headers[run];
            let mut tried = RunTry::default();
            if unsent.is_empty() {
                tried = try_run(socket, dest, headers, packets);
            }
            // One by one, a send stops at the first packet refused for want of room.
            let done = tried.sent + tried.failed;
            for (header, packet) in headers.iter().zip(packets).skip(done) {
                let mut datagram = BytesMut::with_capacity(packet.len());
                datagram.extend_from_slice(header);
                datagram.extend_from_slice(payload(packet));
                unsent.push_back(datagram.freeze());
            }
            sent.packets += packets.len() - tried.failed;
            sent.bytes += packets.iter().map(Bytes::len).sum::<usize>() - tried.failed_bytes;
            sent.failed += tried.failed;
        }
        sent
    }
}

/// What [`drain_udp`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Drained {
    /// Bytes taken off the queue, sent or lost.
    pub bytes: usize,
    /// Datagrams the socket refused with an error (lost), and their bytes.
    pub failed: usize,
    pub failed_bytes: usize,
    /// The socket had no room for the next: it and the rest still wait.
    pub blocked: bool,
}

/// Sends the datagrams waiting in `unsent` to `dest`, in order, as far as `socket` takes them
/// now, at most `max` of them.
pub fn drain_udp(
    socket: &UdpSocket,
    dest: SocketAddr,
    unsent: &mut VecDeque<Bytes>,
    max: usize,
) -> Drained {
    let mut drained = Drained::default();
    for _ in 0..max {
        let Some(datagram) = unsent.front() else {
            break;
        };
        match socket.try_send_to(datagram, dest) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                drained.blocked = true;
                break;
            }
            Err(_) => {
                drained.failed += 1;
                drained.failed_bytes += datagram.len();
            }
        }
        drained.bytes += datagram.len();
        unsent.pop_front();
    }
    drained
}

/// The payload after a shared packet's own header.
fn payload(packet: &Bytes) -> &[u8] {
    packet.get(RTP_HEADER_BYTES..).unwrap_or_default()
}

/// What one try of a run of packets did: the first `sent + failed` were dealt with, in order.
#[derive(Debug, Default)]
struct RunTry {
    sent: usize,
    /// Refused with an error (lost), and their bytes.
    failed: usize,
    failed_bytes: usize,
}

/// Tries one run of packets in one segmented send (or one by one where segmenting does not
/// work), without waiting: it stops at the first packet the socket has no room for.
fn try_run(
    socket: &UdpSocket,
    dest: SocketAddr,
    headers: &[[u8; RTP_HEADER_BYTES]],
    packets: &[Bytes],
) -> RunTry {
    let fd = socket.as_raw_fd();
    let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(2 * packets.len());
    for (header, packet) in headers.iter().zip(packets) {
        iovs.push(IoSlice::new(header));
        iovs.push(IoSlice::new(payload(packet)));
    }
    let mut tried = RunTry::default();
    if packets.len() > 1 && GSO_WORKS.load(Relaxed) {
        let segment = u16::try_from(packets[0].len()).unwrap_or(u16::MAX);
        let segmented = socket.try_io(Interest::WRITABLE, || {
            sys::send_segments(fd, &dest, &iovs, Some(segment))
        });
        match segmented {
            Ok(_) => {
                tried.sent = packets.len();
                return tried;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return tried,
            Err(e) if !cannot_segment(&e) => {
                tried.failed = packets.len();
                tried.failed_bytes = packets.iter().map(Bytes::len).sum();
                return tried;
            }
            Err(e) => {
                if GSO_WORKS.swap(false, Relaxed) {
                    tracing::info!(error = %e,
                        "UDP segmentation offload refused: RTP packets go one by one");
                }
            }
        }
    }
    for (pair, packet) in iovs.chunks(2).zip(packets) {
        let one = socket.try_io(Interest::WRITABLE, || {
            sys::send_segments(fd, &dest, pair, None)
        });
        match one {
            Ok(_) => tried.sent += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(_) => {
                tried.failed += 1;
                tried.failed_bytes += packet.len();
            }
        }
    }
    tried
}

/// Cuts a frame's packets (their sizes, in order) into runs one segmented send can carry:
/// packets of one size, the last of a run possibly shorter, at most [`GSO_MAX_SEGMENTS`]
/// packets and [`GSO_MAX_BYTES`] bytes. A packet alone is a run of one.
pub fn gso_runs(sizes: &[usize]) -> Vec<Range<usize>> {
    let mut runs = Vec::new();
    let mut start = 0;
    while start < sizes.len() {
        let size = sizes[start];
        let mut end = start + 1;
        let mut bytes = size;
        while end < sizes.len()
            && end - start < GSO_MAX_SEGMENTS
            && bytes + sizes[end] <= GSO_MAX_BYTES
            && sizes[end] <= size
            && size > 0
        {
            bytes += sizes[end];
            end += 1;
            if sizes[end - 1] < size {
                // A shorter packet ends the run.
                break;
            }
        }
        runs.push(start..end);
        start = end;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::RtpHeader;

    /// A shared frame as the packetizers make it (SSRC 0, sequence from 0, timestamp 1000):
    /// packets of `sizes` bytes, payload bytes numbered by packet, the marker on the last.
    fn frame(sizes: &[usize]) -> RtpFrame {
        let packets = sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| {
                let mut p = BytesMut::new();
                RtpHeader {
                    payload_type: 26,
                    marker: i + 1 == sizes.len(),
                    seq: i as u16,
                    timestamp: 1000,
                    ssrc: 0,
                }
                .write(&mut p);
                p.resize(size, i as u8);
                p.freeze()
            })
            .collect();
        RtpFrame {
            first_seq: 0,
            rtp_ts: 1000,
            keyframe: true,
            packets,
        }
    }

    /// What a session must send: each packet under its own header (SSRC, its sequence from
    /// `first_seq`, timestamp base + 1000), the payload as shared.
    fn check(datagrams: &[Vec<u8>], sizes: &[usize], first_seq: u16) {
        assert_eq!(datagrams.len(), sizes.len());
        for (i, (d, &size)) in datagrams.iter().zip(sizes).enumerate() {
            let (h, payload) = RtpHeader::parse(d).expect("an RTP packet");
            assert_eq!(d.len(), size, "packet {i}");
            assert_eq!(h.seq, first_seq.wrapping_add(i as u16), "packet {i}");
            assert_eq!((h.ssrc, h.timestamp, h.payload_type), (7, 1000 + 50, 26));
            assert_eq!(h.marker, i + 1 == sizes.len(), "packet {i}");
            assert!(
                payload.iter().all(|&b| b == i as u8),
                "packet {i}'s payload"
            );
        }
    }

    /// Segmented (or, where the kernel cannot, one by one): every packet arrives as its own
    /// datagram under the session's header, and the sequence goes on across frames.
    #[tokio::test]
    async fn udp_packets_arrive_one_datagram_each_under_the_session_s_headers() {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dest = rx.local_addr().unwrap();
        let sizes = [30, 16, 1412, 1412, 1412, 1412, 700];
        let shared = frame(&sizes);
        let mut stamp = Stamp::new(7, 50, 65_533);
        let mut out = RtpOut::default();
        for round in 0..2u16 {
            let sent = out.send_udp(&tx, dest, &mut stamp, &shared).await;
            assert_eq!(sent.packets, sizes.len());
            assert_eq!(sent.bytes, sizes.iter().sum::<usize>());
            assert_eq!(sent.failed, 0);
            let mut got = Vec::new();
            let mut buf = vec![0u8; 70_000];
            for _ in 0..sizes.len() {
                let n = tokio::time::timeout(std::time::Duration::from_secs(5), rx.recv(&mut buf))
                    .await
                    .expect("a datagram within 5 s")
                    .unwrap();
                got.push(buf[..n].to_vec());
            }
            check(
                &got,
                &sizes,
                65_533u16.wrapping_add(round * sizes.len() as u16),
            );
        }
        // The shared packets are untouched.
        assert_eq!(RtpHeader::parse(&shared.packets[0]).unwrap().0.ssrc, 0);
        eprintln!(
            "UDP segmentation offload works here: {}",
            GSO_WORKS.load(Relaxed)
        );
    }

    #[test]
    fn interleaved_packets_carry_the_channel_length_and_session_header() {
        let sizes = [1412, 1412, 40];
        let shared = frame(&sizes);
        let mut stamp = Stamp::new(7, 50, 10);
        let mut out = RtpOut::default();
        let (iovs, bytes) = out.interleaved(2, &mut stamp, &shared);
        assert_eq!(bytes, sizes.iter().sum::<usize>());
        let wire: Vec<u8> = iovs.iter().flat_map(|b| b.iter().copied()).collect();
        let mut got = Vec::new();
        let mut rest = &wire[..];
        while let [b'$', channel, hi, lo, tail @ ..] = rest {
            assert_eq!(*channel, 2);
            let len = usize::from(u16::from_be_bytes([*hi, *lo]));
            got.push(tail[..len].to_vec());
            rest = &tail[len..];
        }
        assert!(rest.is_empty(), "{} bytes left over", rest.len());
        check(&got, &sizes, 10);
        // The next frame goes on with the sequence.
        assert_eq!(stamp.next_seq(), 13);
    }

    #[test]
    fn runs_are_equal_sizes_ending_in_a_shorter_one() {
        assert_eq!(gso_runs(&[]), Vec::<Range<usize>>::new());
        assert_eq!(gso_runs(&[100]), vec![0..1]);
        // SPS and the shorter PPS (one send), then an IDR in FU-As of 1412 bytes and a last
        // shorter one.
        assert_eq!(gso_runs(&[30, 10, 1412, 1412, 1412, 500]), vec![0..2, 2..6]);
        // A larger packet after a shorter one starts a new run.
        assert_eq!(gso_runs(&[500, 1412, 1412]), vec![0..1, 1..3]);
        // Equal small ones go together.
        assert_eq!(gso_runs(&[20, 20, 20]), vec![0..3]);
        // A shorter packet ends its run even when an equal one follows.
        assert_eq!(gso_runs(&[1412, 700, 700]), vec![0..2, 2..3]);
    }

    #[test]
    fn runs_stay_within_the_kernel_limits() {
        let sizes = vec![1412; 200];
        let runs = gso_runs(&sizes);
        assert!(runs.iter().all(|r| r.len() <= GSO_MAX_SEGMENTS));
        assert!(runs
            .iter()
            .all(|r| sizes[r.clone()].iter().sum::<usize>() <= GSO_MAX_BYTES));
        assert_eq!(runs.iter().map(Range::len).sum::<usize>(), 200);
        assert_eq!(runs[0], 0..46, "46 × 1412 = 64,952 bytes ≤ 65,000");
        // Contiguous, in order.
        for pair in runs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
    }
}
