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
//!
//! A viewer that reports loss is also sent parity chunks after the data ([`parity_chunks`]
//! says how many): made once per frame for each chunk size and count that some viewer gets, by
//! [`ParityEncoder`], and sent from that one buffer to each of them as the data is.

use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::ops::Range;
use std::os::fd::RawFd;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_proto::chunk::{ChunkHeader, CHUNK_HEADER_BYTES, MAX_CHUNKS_PER_FRAME, MAX_PARITY_CHUNKS};
use surv_proto::parity::ParityEncoder;

use super::data_path::Outcome;
use crate::sys::{self, GsoBatch, GsoMessage, GSO_MAX_BYTES, GSO_MAX_SEGMENTS, GSO_WORKS};

/// Below this loss (in thousandths) a viewer is sent no parity: a `nack` repairs the rare loss.
pub(crate) const PARITY_FROM_PERMILLE: u16 = 5;

/// How many parity chunks go with a frame of `k` data chunks to a viewer that reports
/// `loss_permille` of its chunks lost: a share of `k` about twice the loss and more (0.5–2 %
/// lost: 5 %; under 4 %: 10 %; under 8 %: 20 %; under 12 %: 30 %; more: 50 %), at least one,
/// at most 32 and 128 chunks in all. None to a viewer that reports no loss, and none to one
/// whose path is congested (`limited`, [`super::rate`]): there the loss is its queue's, and
/// parity would fill it more. A few shares, not one per figure, so that viewers with similar
/// losses share one encode.
///
/// With `k` = 30 (1280x720) and 10 % of chunks lost, 9 parity chunks leave about 1 frame in
/// 300 to a `nack`; at 3 %, 3 leave about 1 in 50; at 1 %, 2 leave about 1 in 250.
pub(crate) fn parity_chunks(k: usize, loss_permille: Option<u16>, limited: bool) -> u8 {
    let Some(loss) = loss_permille.filter(|&l| l >= PARITY_FROM_PERMILLE && !limited) else {
        return 0;
    };
    let percent = match loss {
        ..20 => 5,
        20..40 => 10,
        40..80 => 20,
        80..120 => 30,
        _ => 50,
    };
    let m = (k * percent).div_ceil(100).clamp(1, MAX_PARITY_CHUNKS);
    let m = m.min(MAX_CHUNKS_PER_FRAME.saturating_sub(k));
    u8::try_from(m).unwrap_or(0)
}

/// Which chunks of the frame a viewer is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunks {
    /// All its data chunks, and its parity chunks (the frame's first sending).
    All,
    /// The data chunks whose bits are set (a repair): flagged as resent.
    Missing(u128),
    /// The chunks, data and parity, whose bits are set (index `k + j` is parity chunk `j`):
    /// part of the frame's first sending, paced ([`super::pacing`]).
    Part(u128),
}

/// One viewer's part of a chunked send.
#[derive(Debug, Clone)]
pub(crate) struct ChunkJob {
    pub dest: SocketAddr,
    pub key: u64,
    pub chunk_bytes: usize,
    pub chunks: Chunks,
    /// Parity chunks the frame is coded with for this viewer (every header says so; sent
    /// with [`Chunks::All`]).
    pub parity: u8,
}

/// Reusable buffers for chunked sends.
#[derive(Default)]
pub(crate) struct ChunkSender {
    headers: Vec<[u8; CHUNK_HEADER_BYTES]>,
    /// The bytes each header's chunk carries: of the frame, or past its end, of `parity`.
    ranges: Vec<Range<usize>>,
    /// This frame's parity chunks, one code after another ...
    parity: Vec<u8>,
    /// ... each `(chunk_bytes, m, where in parity)`.
    codes: Vec<(usize, u8, usize)>,
    encoder: ParityEncoder,
    scratch: Vec<u8>,
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
        self.parity.clear();
        self.codes.clear();
        for (j, job) in jobs.iter().enumerate() {
            let start = self.headers.len();
            let m = usize::from(job.parity);
            // A paced part needs the code only if it carries parity (index k or more).
            let has_parity = |bits: u128| {
                surv_proto::chunk::data_chunks(frame.len(), job.chunk_bytes)
                    .is_some_and(|k| k < 128 && bits >> k != 0)
            };
            let parity_at = match (job.chunks, m) {
                (Chunks::All, 1..) => self.code(frame, job.chunk_bytes, job.parity),
                (Chunks::Part(bits), 1..) if has_parity(bits) => {
                    self.code(frame, job.chunk_bytes, job.parity)
                }
                _ => Some(0),
            };
            let headers = parity_at.and_then(|_| {
                ChunkHeader::for_frame_with_parity(seq, job.key, frame.len(), job.chunk_bytes, m)
            });
            let (Some(parity_at), Some(headers)) = (parity_at, headers) else {
                out[j] = Outcome::Failed;
                self.spans.push(start..start);
                continue;
            };
            for h in headers {
                let resent = match job.chunks {
                    Chunks::All => false,
                    Chunks::Missing(bits) if (bits >> h.index) & 1 == 1 => true,
                    Chunks::Part(bits) if (bits >> h.index) & 1 == 1 => false,
                    Chunks::Missing(_) | Chunks::Part(_) => continue,
                };
                let range = match h.parity_index() {
                    None => h.data_range(),
                    Some(p) => {
                        let at = frame.len() + parity_at + p * job.chunk_bytes;
                        Some(at..at + job.chunk_bytes)
                    }
                };
                let Some(range) = range else {
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
            parity,
            spans,
            messages,
            owners,
            batch,
            ..
        } = self;
        let mut iovs: Vec<IoSlice<'_>> = Vec::with_capacity(2 * headers.len());
        for (header, range) in headers.iter().zip(ranges.iter()) {
            let bytes = match range.start.checked_sub(frame.len()) {
                None => frame.get(range.clone()),
                Some(at) => parity.get(at..at + range.len()),
            };
            iovs.push(IoSlice::new(header));
            iovs.push(IoSlice::new(bytes.unwrap_or_default()));
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

impl ChunkSender {
    /// Where this frame's `m` parity chunks at `chunk_bytes` start in `parity`, made now if no
    /// viewer before needed them; `None` if the frame cannot have them.
    fn code(&mut self, frame: &[u8], chunk_bytes: usize, m: u8) -> Option<usize> {
        if let Some(&(_, _, at)) = self
            .codes
            .iter()
            .find(|&&(cb, mm, _)| (cb, mm) == (chunk_bytes, m))
        {
            return Some(at);
        }
        self.encoder
            .encode(frame, chunk_bytes, usize::from(m), &mut self.scratch)?;
        let at = self.parity.len();
        self.parity.extend_from_slice(&self.scratch);
        self.codes.push((chunk_bytes, m, at));
        Some(at)
    }
}

/// Cuts the headers from `from` on into messages: with `gso`, runs of up to the kernel's
/// limits per viewer of equal chunks, each run ending at a short chunk (the frame's last data
/// chunk, which parity chunks may follow); without, one per chunk.
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
            let limit = (at + per_message).min(span.end);
            let mut end = at + 1;
            while end < limit && ranges[end - 1].len() == jobs[j].chunk_bytes {
                end += 1;
            }
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
                parity: 0,
            },
            ChunkJob {
                dest: b.local_addr().unwrap(),
                key: 2,
                chunk_bytes: chunk_bytes_for_mtu(mtu_b),
                chunks: Chunks::All,
                parity: 0,
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

    /// A viewer sent parity: its data chunks then its parity chunks, every datagram within its
    /// mtu and every header saying the same `m`; with as many chunks lost as it has parity
    /// (the short last data chunk among them), it reassembles the frame. A second viewer with
    /// the same count shares the one encode; a repair's headers keep the frame's `m`.
    #[test]
    fn parity_chunks_follow_the_data_and_stand_in_for_lost_ones() {
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.set_nonblocking(true).unwrap();
        let (a, b) = (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("127.0.0.1:0").unwrap(),
        );
        let f = frame(40_000);
        let chunk_bytes = chunk_bytes_for_mtu(1200);
        let k = f.len().div_ceil(chunk_bytes);
        let m = parity_chunks(k, Some(100), false);
        assert_eq!(usize::from(m), (k * 30).div_ceil(100), "10 % lost: 30 %");
        let job = |rx: &UdpSocket, key| ChunkJob {
            dest: rx.local_addr().unwrap(),
            key,
            chunk_bytes,
            chunks: Chunks::All,
            parity: m,
        };
        let jobs = [job(&a, 1), job(&b, 2)];
        let mut sender = ChunkSender::default();
        let mut out = Vec::new();
        let wait = Duration::from_millis(5);
        sender.send(tx.as_raw_fd(), 4, &f, &jobs, &mut out, 4, wait);
        assert_eq!(out, [Outcome::Sent, Outcome::Sent]);
        assert_eq!(sender.codes.len(), 1, "one encode for both");
        for (rx, key) in [(&a, 1), (&b, 2)] {
            let got = receive(rx, k + usize::from(m));
            let mut r = Reassembler::new(key, chunk_bytes);
            let mut whole = None;
            for (i, d) in got.iter().enumerate() {
                assert!(d.len() <= 1200);
                let (h, _) = ChunkHeader::decode(d).unwrap();
                assert_eq!((usize::from(h.index), h.parity_chunks), (i, m));
                // Lose m data chunks, the last among them.
                if i >= k - usize::from(m) && i < k {
                    continue;
                }
                if let Push::Complete { frame, .. } = r.push(d, std::time::Instant::now()) {
                    whole = Some(frame.to_vec());
                }
            }
            assert_eq!(whole.as_deref(), Some(&f[..]), "key {key}");
            assert_eq!(r.stats().restored, 1);
        }
        let repair = [ChunkJob {
            chunks: Chunks::Missing(1 << 2),
            ..jobs[0].clone()
        }];
        sender.send(tx.as_raw_fd(), 4, &f, &repair, &mut out, 4, wait);
        let resent = receive(&a, 1);
        let (h, payload) = ChunkHeader::decode(&resent[0]).unwrap();
        assert_eq!((h.index, h.parity_chunks, h.resent), (2, m, true));
        assert_eq!(payload, &f[h.data_range().unwrap()]);
    }

    #[test]
    fn how_much_parity_follows_the_loss() {
        assert_eq!(parity_chunks(30, None, false), 0, "no report");
        assert_eq!(parity_chunks(30, Some(4), false), 0, "under 0.5 %");
        assert_eq!(parity_chunks(30, Some(5), false), 2, "5 % of 30");
        assert_eq!(parity_chunks(30, Some(30), false), 3);
        assert_eq!(parity_chunks(30, Some(100), false), 9);
        assert_eq!(parity_chunks(30, Some(100), true), 0, "congested");
        assert_eq!(parity_chunks(1, Some(10), false), 1, "at least one");
        assert_eq!(
            parity_chunks(100, Some(1000), false),
            28,
            "128 chunks in all"
        );
        assert_eq!(parity_chunks(60, Some(1000), false), 30);
        assert_eq!(parity_chunks(80, Some(1000), false), 32, "at most 32");
        assert_eq!(parity_chunks(128, Some(1000), false), 0, "no room");
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
            parity: 0,
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
