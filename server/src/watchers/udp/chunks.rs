//! Chunked sends: a frame as MTU-sized chunks ([`surv_proto::chunk`]) to each viewer that
//! asked for them, in one `sendmmsg` whose messages are one UDP GSO send per viewer: the
//! viewer's own 28-byte headers and slices of the frame every viewer shares, never copied.
//!
//! ```text
//!  frame (made once) ─▶ viewer A: iov [hdrA₀][jpeg 0..1172][hdrA₁][jpeg 1172..2344]…[hdrA₁₈][tail]
//!                                  UDP_SEGMENT = 1200: the kernel cuts one datagram per chunk
//!                       viewer B: iov [hdrB₀][jpeg 0..1172]…
//!                       └──────────── one sendmmsg(A, B, …) ────────────┘
//! ```
//!
//! A message carries at most [`GSO_MAX_SEGMENTS`] chunks and [`GSO_MAX_BYTES`] bytes (54 chunks
//! at mtu 1,200), so a large frame is two messages. Where the kernel refuses segmentation
//! ([`sys::GSO_WORKS`]) every chunk is a message of its own, still one `sendmmsg` for all.
//! The same path resends the chunks a viewer's `nack` names (flagged as resent).

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_proto::chunk::{ChunkHeader, CHUNK_HEADER_BYTES};

use super::data_path::Outcome;
use crate::sys::{self, GsoBatch, GsoMessage, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, GSO_WORKS};

/// Which chunks of the frame a viewer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunks {
    /// All its data chunks (the frame's first sending).
    All,
    /// The data chunks whose bits are set (a repair): flagged as resent.
    Missing(u128),
}

/// One viewer's part of a chunked send.
#[derive(Debug, Clone)]
pub(crate) struct ChunkJob {
    pub dest: SocketAddr,
    pub key: u64,
    pub chunk_bytes: usize,
    pub chunks: Chunks,
}

/// Reusable buffers for chunked sends.
#[derive(Default)]
pub(crate) struct ChunkSender {
    headers: Vec<[u8; CHUNK_HEADER_BYTES]>,
    /// The frame bytes each header's chunk carries.
    ranges: Vec<Range<usize>>,
    /// Each job's headers: `headers[spans[j]]`.
    spans: Vec<Range<usize>>,
    messages: Vec<GsoMessage>,
    /// The job each message belongs to.
    owners: Vec<usize>,
    batch: GsoBatch,
}

impl ChunkSender {
    /// Sends frame `seq` (its bytes `frame`) to every job, and says in `out` what became of
    /// each: `Sent` once any of its chunks went, `Skipped` when the socket buffer stayed full
    /// for all of them (after `waits` waits of `wait`), `Failed` on an error. A job whose frame
    /// cannot be chunked at its size (larger than 128 chunks) fails.
    #[allow(clippy::too_many_arguments)]
    pub fn send(
        &mut self,
        fd: RawFd,
        seq: u64,
        frame: &[u8],
        jobs: &[ChunkJob],
        out: &mut Vec<Outcome>,
        waits: u32,
        wait: Duration,
    ) {
        out.clear();
        out.resize(jobs.len(), Outcome::Skipped);
        self.headers.clear();
        self.ranges.clear();
        self.spans.clear();
        for (j, job) in jobs.iter().enumerate() {
            let start = self.headers.len();
            let Some(headers) = ChunkHeader::for_frame(seq, job.key, frame.len(), job.chunk_bytes)
            else {
                out[j] = Outcome::Failed;
                self.spans.push(start..start);
                continue;
            };
            for h in headers {
                let resent = match job.chunks {
                    Chunks::All => false,
                    Chunks::Missing(bits) if (bits >> h.index) & 1 == 1 => true,
                    Chunks::Missing(_) => continue,
                };
                let Some(range) = h.data_range() else {
                    continue;
                };
                self.headers.push(ChunkHeader { resent, ..h }.encode());
                self.ranges.push(range);
            }
            self.spans.push(start..self.headers.len());
        }
        let Self {
            headers,
            ranges,
            spans,
            messages,
            owners,
            batch,
        } = self;
        let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(2 * headers.len());
        for (header, range) in headers.iter().zip(ranges.iter()) {
            iovs.push(IoSlice::new(header));
            iovs.push(IoSlice::new(frame.get(range.clone()).unwrap_or_default()));
        }
        let mut gso = GSO_WORKS.load(Relaxed);
        messages.clear();
        owners.clear();
        plan(messages, owners, spans, ranges, jobs, 0, gso);
        let mut done = 0;
        let mut waited = 0;
        while done < messages.len() {
            match batch.send(fd, &iovs, &messages[done..]) {
                Ok(n) if n > 0 => {
                    for &j in &owners[done..done + n] {
                        out[j] = Outcome::Sent;
                    }
                    done += n;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if gso && messages[done].segment.is_some() && sys::cannot_segment(&e) => {
                    if GSO_WORKS.swap(false, Relaxed) {
                        tracing::info!(error = %e,
                            "UDP segmentation offload refused: chunks go one datagram a message");
                    }
                    gso = false;
                    let from = messages[done].iovs.start / 2;
                    messages.truncate(done);
                    owners.truncate(done);
                    plan(messages, owners, spans, ranges, jobs, from, gso);
                    continue;
                }
                Err(e) => {
                    let j = owners[done];
                    tracing::trace!(viewer = %jobs[j].dest, error = %e, "sending chunks failed");
                    if out[j] != Outcome::Sent {
                        out[j] = Outcome::Failed;
                    }
                    while done < messages.len() && owners[done] == j {
                        done += 1;
                    }
                    continue;
                }
            }
            if done < messages.len() {
                if waited == waits {
                    break;
                }
                waited += 1;
                sys::wait_writable(fd, wait);
            }
        }
    }
}

/// Cuts the headers from `from` on into messages: with `gso`, runs of up to the kernel's
/// limits per viewer (equal chunks, the frame's short last one last); without, one per chunk.
fn plan(
    messages: &mut Vec<GsoMessage>,
    owners: &mut Vec<usize>,
    spans: &[Range<usize>],
    ranges: &[Range<usize>],
    jobs: &[ChunkJob],
    from: usize,
    gso: bool,
) {
    for (j, span) in spans.iter().enumerate() {
        let start = span.start.max(from);
        if start >= span.end {
            continue;
        }
        let segment = CHUNK_HEADER_BYTES + jobs[j].chunk_bytes;
        let per_message = if gso {
            GSO_MAX_SEGMENTS.min(GSO_MAX_BYTES / segment).max(1)
        } else {
            1
        };
        let mut at = start;
        while at < span.end {
            let end = (at + per_message).min(span.end);
            // A run of one is a plain datagram; so is a run whose first chunk is short (the
            // frame's last alone): GSO cuts at the first segment's size.
            let first_full = ranges[at].len() == jobs[j].chunk_bytes;
            messages.push(GsoMessage {
                dest: jobs[j].dest,
                iovs: 2 * at..2 * end,
                segment: (end - at > 1 && first_full)
                    .then(|| u16::try_from(segment).ok())
                    .flatten(),
            });
            owners.push(j);
            at = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use surv_proto::{chunk_bytes_for_mtu, Push, Reassembler};

    fn frame(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    /// Reads what arrived on `rx` until `count` datagrams or 5 s.
    fn receive(rx: &UdpSocket, count: usize) -> Vec<Vec<u8>> {
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 70_000];
        while got.len() < count {
            match rx.recv(&mut buf) {
                Ok(n) => got.push(buf[..n].to_vec()),
                Err(e) => panic!("after {} datagrams: {e}", got.len()),
            }
        }
        got
    }

    /// Two viewers with different mtus in one send (one of them a frame of two messages), then
    /// a repair of three chunks: every chunk arrives as its own datagram, no larger than the
    /// viewer's mtu, under its own key, and each viewer reassembles the frame.
    #[test]
    fn each_viewer_gets_its_chunks_one_datagram_each() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let f = frame(64_000);
        let (mtu_a, mtu_b) = (1200u16, 8972u16);
        let jobs = [
            ChunkJob {
                dest: a.local_addr().unwrap(),
                key: 1,
                chunk_bytes: chunk_bytes_for_mtu(mtu_a),
                chunks: Chunks::All,
            },
            ChunkJob {
                dest: b.local_addr().unwrap(),
                key: 2,
                chunk_bytes: chunk_bytes_for_mtu(mtu_b),
                chunks: Chunks::All,
            },
        ];
        let mut sender = ChunkSender::default();
        let mut out = Vec::new();
        sender.send(
            tx.as_raw_fd(),
            9,
            &f,
            &jobs,
            &mut out,
            4,
            Duration::from_millis(5),
        );
        assert_eq!(out, [Outcome::Sent, Outcome::Sent]);
        for (rx, job, mtu) in [(&a, &jobs[0], mtu_a), (&b, &jobs[1], mtu_b)] {
            let k = f.len().div_ceil(job.chunk_bytes);
            let got = receive(rx, k);
            let mut r = Reassembler::new(job.key, job.chunk_bytes);
            let mut whole = None;
            for d in &got {
                assert!(d.len() <= usize::from(mtu), "{} > {mtu}", d.len());
                if let Push::Complete { frame, .. } = r.push(d, std::time::Instant::now()) {
                    whole = Some(frame.to_vec());
                }
            }
            assert_eq!(whole.as_deref(), Some(&f[..]), "mtu {mtu}");
        }
        // A repair: chunks 0, 7 and the last, flagged resent.
        let k = f.len().div_ceil(jobs[0].chunk_bytes);
        let missing = 1u128 | 1 << 7 | 1 << (k - 1);
        let repair = [ChunkJob {
            chunks: Chunks::Missing(missing),
            ..jobs[0].clone()
        }];
        sender.send(
            tx.as_raw_fd(),
            9,
            &f,
            &repair,
            &mut out,
            4,
            Duration::from_millis(5),
        );
        assert_eq!(out, [Outcome::Sent]);
        let got = receive(&a, 3);
        let indexes: Vec<u8> = got
            .iter()
            .map(|d| {
                let (h, payload) = ChunkHeader::decode(d).unwrap();
                assert!(h.resent);
                assert_eq!(payload, &f[h.data_range().unwrap()]);
                h.index
            })
            .collect();
        assert_eq!(indexes, [0, 7, k as u8 - 1]);
        eprintln!(
            "UDP segmentation offload works here: {}",
            GSO_WORKS.load(Relaxed)
        );
    }

    #[test]
    fn messages_keep_within_the_kernel_limits() {
        let dest: SocketAddr = "127.0.0.1:9".parse().unwrap();
        let chunk_bytes = 1172;
        let frame_bytes = 65_000;
        let k = frame_bytes / chunk_bytes + 1;
        let ranges: Vec<Range<usize>> = (0..k)
            .map(|i| i * chunk_bytes..((i + 1) * chunk_bytes).min(frame_bytes))
            .collect();
        let jobs = [ChunkJob {
            dest,
            key: 0,
            chunk_bytes,
            chunks: Chunks::All,
        }];
        let (mut messages, mut owners) = (Vec::new(), Vec::new());
        plan(
            &mut messages,
            &mut owners,
            std::slice::from_ref(&(0..k)),
            &ranges,
            &jobs,
            0,
            true,
        );
        assert_eq!(messages.len(), 2, "56 chunks: 54 + 2");
        assert_eq!(messages[0].iovs, 0..108);
        assert_eq!(messages[0].segment, Some(1200));
        assert_eq!(messages[1].iovs, 108..112);
        for m in &messages {
            let bytes: usize = (m.iovs.start / 2..m.iovs.end / 2)
                .map(|i| CHUNK_HEADER_BYTES + ranges[i].len())
                .sum();
            assert!(bytes <= GSO_MAX_BYTES && m.iovs.len() / 2 <= GSO_MAX_SEGMENTS);
        }
        // Without GSO, and from a later chunk on: one chunk a message.
        let (mut messages, mut owners) = (Vec::new(), Vec::new());
        plan(
            &mut messages,
            &mut owners,
            std::slice::from_ref(&(0..k)),
            &ranges,
            &jobs,
            50,
            false,
        );
        assert_eq!(messages.len(), k - 50);
        assert!(messages
            .iter()
            .all(|m| m.segment.is_none() && m.iovs.len() == 2));
    }
}
