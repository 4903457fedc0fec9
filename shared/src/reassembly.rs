//! A chunked session's frames put back together from their chunks ([`crate::chunk`]), sans-IO:
//! the viewer pushes each datagram with the time it arrived and gets whole frames back, in
//! order; it asks which frames are incomplete (what to `nack`) and gives frames up when they are
//! no longer worth showing.
//!
//! ```text
//!  datagram ─▶ ChunkHeader::decode ─▶ key, chunk size ─▶ slot of its seq ─▶ all k data chunks?
//!               (refused: Invalid)     (Foreign, ChunkSize)  (Late, Duplicate,   ├▶ oldest in assembly: Complete(&frame)
//!                                                             Mismatch, Parity)  └▶ older ones still coming: Held
//!                                                                                   (pop_ready once they leave)
//! ```
//!
//! * Up to [`SLOTS`] frames are in assembly at once (each slot the largest frame, allocated once
//!   by [`Reassembler::new`]); nothing is allocated per chunk, so a hostile stream of headers
//!   costs no memory.
//! * Frames leave in order. A frame that completes while an older one is still in assembly (its
//!   missing chunks asked for again, a round trip away) is held, and leaves by
//!   [`Reassembler::pop_ready`] once every older frame has completed or been given up: on a path
//!   whose round trip is longer than a frame interval, a repaired frame is still shown, and the
//!   newer frames wait for it no longer than the viewer's give-up budget ([`crate::Incomplete`]
//!   tells it what is waiting).
//! * A chunk of a frame older than or equal to the newest one that left (shown or given up) is
//!   `Late`: frames are shown in order, never going back.
//! * A chunk of a new frame takes a free slot, or the slot of the oldest frame in assembly, which
//!   is given up (and counted).
//! * Every chunk of a frame must agree with the first one seen on the frame's shape (`k`, `m`,
//!   `frame_bytes`), else it is a `Mismatch`. The payload is copied where its index says; a
//!   repeated index is a `Duplicate` and is not copied again.
//! * Parity chunks ([`crate::parity`]) are kept beside the data (up to 32 of them a frame, in
//!   space allocated once per slot); once a frame has `k` chunks of either kind, its missing
//!   data chunks are restored from them and it is complete. Which frames were restored, and the
//!   share of chunks lost on the way ([`Reassembler::loss_permille`], what the viewer reports
//!   so that the server sends parity for it), are counted.
//! * The rate the path delivered each frame's chunks at (their spread on arrival,
//!   [`Reassembler::path_kbps`], what the viewer reports so that the server paces its chunks)
//!   is measured.

use std::time::Instant;

use crate::chunk::{ChunkError, ChunkHeader, MAX_CHUNKS_PER_FRAME, MAX_PARITY_CHUNKS};
use crate::parity::ParityDecoder;
use crate::MAX_UDP_PAYLOAD_BYTES;

/// Frames in assembly (or held, complete) at once: 8 frames at 30 fps span 267 ms, more than
/// surv-client waits for a frame (250 ms at most).
pub const SLOTS: usize = 8;

/// The loss a viewer reports is measured over the chunks of the frames that left since the
/// window before the last closed: windows of this many chunks sent (about a second of
/// 1280x720@30 at mtu 1,200; at 1 % loss, 10 chunks lost, enough to tell from none) ...
pub const LOSS_WINDOW_CHUNKS: u32 = 1_000;

/// ... and it is said from this many on, so that a viewer that starts on a lossy link gets
/// parity within a few frames.
pub const LOSS_FIRST_CHUNKS: u32 = 100;

/// The path rate a viewer reports is the upper quartile of the last this many frames' (half a
/// second at 30 fps): a frame's chunks are spread by the slowest link they cross, but only when
/// they were sent faster than it, and a frame sent slower (paced) shows its pace instead, so
/// the higher figures are the path's; not the highest, which a viewer that read a frame's
/// chunks late, all at once, measures far too high.
pub const PATH_SAMPLES: usize = 16;

/// What became of one pushed datagram.
#[derive(Debug, PartialEq, Eq)]
pub enum Push<'a> {
    /// Its frame is whole and the oldest in assembly: the frame's bytes (a tagged JPEG),
    /// borrowed until the next push. Newer frames it held back may now be ready
    /// ([`Reassembler::pop_ready`]).
    Complete { seq: u64, frame: &'a [u8] },
    /// Its frame is whole, but an older one is still in assembly: held until that one completes
    /// or is given up, then taken by [`Reassembler::pop_ready`].
    Held { seq: u64 },
    /// Stored; its frame still lacks chunks.
    Pending { seq: u64 },
    /// Not stored, and why.
    Rejected(Rejected),
}

/// Why a datagram was not stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not a valid chunk.
    Invalid(ChunkError),
    /// Another session's key.
    Foreign,
    /// A chunk size other than the session's.
    ChunkSize,
    /// Its frame is older than (or is) the newest one that left (shown or given up), or it is
    /// complete already.
    Late,
    /// Its index is stored already.
    Duplicate,
    /// Its frame's shape differs from the first chunk's of that frame.
    Mismatch,
}

/// Counts since the reassembler was made, for the viewer's summary.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ReassemblyStats {
    /// Datagrams stored.
    pub chunks: u64,
    /// Payload bytes of the chunks stored.
    pub chunk_bytes: u64,
    /// Frames completed.
    pub complete: u64,
    /// Frames that completed while an older one was in assembly, and waited for it.
    pub held: u64,
    /// Frames completed with parity chunks standing in for lost data chunks.
    pub restored: u64,
    /// Parity chunks stored.
    pub parity_chunks: u64,
    /// Frames given up incomplete (by [`Reassembler::give_up`], or by a newer frame needing a
    /// slot when all are taken).
    pub given_up: u64,
    pub duplicate: u64,
    pub late: u64,
    /// Invalid, foreign, wrong size or mismatched: not this session's or not usable.
    pub refused: u64,
}

/// An incomplete frame, for deciding when to `nack` it and what to ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incomplete {
    pub seq: u64,
    /// When its first chunk arrived.
    pub first_at: Instant,
    /// When its latest chunk arrived.
    pub last_at: Instant,
    /// The highest index received: once the frame's last index has come, the rest are lost, not
    /// late.
    pub highest_index: u8,
    /// The frame's data chunk count, `k`.
    pub data_chunks: u8,
    /// Its parity chunk count, `m`: its last chunk is index `k + m − 1`.
    pub parity_chunks: u8,
    /// Chunks still needed: `k` less the data and parity chunks received, at least 1.
    pub need: u8,
    /// Bit i set: data chunk i is missing.
    pub missing: u128,
}

/// One frame in assembly, or complete and held.
struct Slot {
    /// `None`: free.
    seq: Option<u64>,
    /// All its data chunks are in: it waits for an older frame.
    complete: bool,
    /// Payload bytes of the chunks stored.
    bytes: u64,
    data_chunks: u8,
    parity_chunks: u8,
    frame_bytes: u32,
    /// Bit i set: data chunk i is stored.
    have: u128,
    /// Data chunks stored.
    received: u8,
    highest_index: u8,
    /// Bit j set: parity chunk j is stored.
    parity_have: u32,
    /// Chunks that came on their first sending (not resent), and the highest index of those:
    /// what the loss is measured on.
    first_copies: u8,
    highest_first: Option<u8>,
    first_at: Instant,
    last_at: Instant,
    /// When the first of its first copies arrived, and the latest; the datagram bytes of those
    /// after the first: the spread the path gave them ([`PathMeter`]).
    copy_first_at: Option<Instant>,
    copy_last_at: Instant,
    copy_bytes: u32,
    /// The frame's bytes, [`MAX_UDP_PAYLOAD_BYTES`] long.
    buf: Box<[u8]>,
    /// Its parity chunks, [`MAX_PARITY_CHUNKS`] of the session's chunk size.
    parity: Box<[u8]>,
}

impl Slot {
    /// Data and parity chunks stored.
    fn chunks_stored(&self) -> usize {
        usize::from(self.received) + self.parity_have.count_ones() as usize
    }

    /// Frees the slot (its frame left, or was given up or pushed out), counting its chunks'
    /// loss: its frame's number, if it held one.
    fn vacate(&mut self, meters: &mut Meters) -> Option<u64> {
        if self.seq.is_some() {
            meters.loss.count(self);
            meters.path.count(self);
        }
        self.seq.take()
    }
}

/// What each frame that leaves is measured for.
#[derive(Debug, Default)]
struct Meters {
    loss: LossMeter,
    path: PathMeter,
}

/// The rate the path delivered frames' chunks at: the datagram bytes of a frame's first copies
/// after its first, over the time from the first to the last of them, for the last
/// [`PATH_SAMPLES`] frames with three or more; their upper quartile.
#[derive(Debug, Default)]
struct PathMeter {
    /// kbit/s, 0 where none yet.
    samples: [u32; PATH_SAMPLES],
    next: usize,
}

impl PathMeter {
    fn count(&mut self, slot: &Slot) {
        let Some(first) = slot.copy_first_at else {
            return;
        };
        let micros = slot
            .copy_last_at
            .saturating_duration_since(first)
            .as_micros();
        if slot.first_copies < 3 || micros == 0 {
            return;
        }
        let kbps = u128::from(slot.copy_bytes) * 8_000 / micros;
        let kbps = u32::try_from(kbps).unwrap_or(u32::MAX);
        self.samples[self.next] = kbps.clamp(1, crate::ack::MAX_PATH_KBPS);
        self.next = (self.next + 1) % PATH_SAMPLES;
    }

    fn kbps(&self) -> Option<u32> {
        let mut sorted = self.samples;
        sorted.sort_unstable();
        let from = sorted.iter().position(|&k| k > 0)?;
        let taken = &sorted[from..];
        Some(taken[taken.len() * 3 / 4])
    }
}

/// The share of chunks lost on the way: over the window being filled and the one before it
/// (windows of [`LOSS_WINDOW_CHUNKS`]), once they hold [`LOSS_FIRST_CHUNKS`].
#[derive(Debug, Default)]
struct LossMeter {
    /// (sent, lost) of the window before ...
    before: (u32, u32),
    /// ... and of this one.
    now: (u32, u32),
}

impl LossMeter {
    /// A frame that left (complete, held or given up): the chunks sent up to the highest index
    /// that came on its first sending, and how many of those came. (Chunks are sent in index
    /// order; lost ones after the last that came are not seen.)
    fn count(&mut self, slot: &Slot) {
        let Some(highest) = slot.highest_first else {
            return;
        };
        let sent = u32::from(highest) + 1;
        self.now.0 += sent;
        self.now.1 += sent.saturating_sub(u32::from(slot.first_copies));
        if self.now.0 >= LOSS_WINDOW_CHUNKS {
            self.before = std::mem::take(&mut self.now);
        }
    }

    fn permille(&self) -> Option<u16> {
        let sent = u64::from(self.before.0) + u64::from(self.now.0);
        let lost = u64::from(self.before.1) + u64::from(self.now.1);
        if sent < u64::from(LOSS_FIRST_CHUNKS) {
            return None;
        }
        Some(u16::try_from((lost * 1000 / sent).min(1000)).unwrap_or(1000))
    }
}

/// A chunked session's reassembly: see the module doc.
pub struct Reassembler {
    key: u64,
    chunk_bytes: usize,
    slots: Vec<Slot>,
    /// The newest frame that left (shown or given up): older chunks are late.
    floor: Option<u64>,
    /// The newest frame completed (held or shown) or given up: what a `continue` acknowledges.
    newest_done: Option<u64>,
    stats: ReassemblyStats,
    meters: Meters,
    decoder: ParityDecoder,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("chunk_bytes", &self.chunk_bytes)
            .field(
                "in_assembly",
                &self.slots.iter().map(|s| s.seq).collect::<Vec<_>>(),
            )
            .field("floor", &self.floor)
            .field("newest_done", &self.newest_done)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Reassembler {
    /// For the session with `key`, whose chunks are `chunk_bytes` long (from the mtu it was
    /// granted: [`crate::chunk::chunk_bytes_for_mtu`]). Allocates its [`SLOTS`] frame buffers,
    /// about 512 KB, and their parity space (at mtu 1,200, 300 KB), once.
    pub fn new(key: u64, chunk_bytes: usize) -> Reassembler {
        let slot = |now| Slot {
            seq: None,
            complete: false,
            bytes: 0,
            data_chunks: 0,
            parity_chunks: 0,
            frame_bytes: 0,
            have: 0,
            received: 0,
            highest_index: 0,
            parity_have: 0,
            first_copies: 0,
            highest_first: None,
            first_at: now,
            last_at: now,
            copy_first_at: None,
            copy_last_at: now,
            copy_bytes: 0,
            buf: vec![0u8; MAX_UDP_PAYLOAD_BYTES].into_boxed_slice(),
            parity: vec![0u8; MAX_PARITY_CHUNKS * chunk_bytes].into_boxed_slice(),
        };
        let now = Instant::now();
        Reassembler {
            key,
            chunk_bytes,
            slots: (0..SLOTS).map(|_| slot(now)).collect(),
            floor: None,
            newest_done: None,
            stats: ReassemblyStats::default(),
            meters: Meters::default(),
            decoder: ParityDecoder::default(),
        }
    }

    /// The share of chunks lost on the way lately (over the last one to two
    /// [`LOSS_WINDOW_CHUNKS`]), in thousandths: what `l=` reports; `None` until
    /// [`LOSS_FIRST_CHUNKS`] were sent.
    pub fn loss_permille(&self) -> Option<u16> {
        self.meters.loss.permille()
    }

    /// The rate the path delivered chunks at lately, in kbit/s (the upper quartile of the
    /// last [`PATH_SAMPLES`] frames' spreads): what `p=` reports, so that the server spreads a
    /// frame's chunks at a little over it instead of sending them in one burst. `None` until a
    /// frame of three or more chunks arrived spread over some time.
    pub fn path_kbps(&self) -> Option<u32> {
        self.meters.path.kbps()
    }

    pub fn stats(&self) -> ReassemblyStats {
        self.stats
    }

    /// The newest frame completed (held or shown) or given up: what a `continue` acknowledges.
    pub fn newest_done(&self) -> Option<u64> {
        self.newest_done
    }

    /// Payload bytes stored of the frames up to `seq` (the newest one a `continue` names), this
    /// session: every chunk stored but those of newer frames still in assembly. What `r=` says,
    /// so that the server compares it with the bytes of exactly those frames.
    pub fn bytes_through(&self, seq: u64) -> u64 {
        let newer: u64 = self
            .slots
            .iter()
            .filter(|s| s.seq.is_some_and(|s| s > seq))
            .map(|s| s.bytes)
            .sum();
        self.stats.chunk_bytes.saturating_sub(newer)
    }

    /// Takes one datagram that arrived at `now`.
    pub fn push(&mut self, datagram: &[u8], now: Instant) -> Push<'_> {
        match self.store(datagram, now) {
            Ok((seq, Some(i))) => {
                self.stats.complete += 1;
                self.newest_done = Some(self.newest_done.map_or(seq, |d| d.max(seq)));
                self.slots[i].complete = true;
                if self.oldest() != Some(i) {
                    self.stats.held += 1;
                    return Push::Held { seq };
                }
                Push::Complete {
                    seq,
                    frame: self.leave(i),
                }
            }
            Ok((seq, None)) => Push::Pending { seq },
            Err(why) => {
                match why {
                    Rejected::Duplicate => self.stats.duplicate += 1,
                    Rejected::Late => self.stats.late += 1,
                    _ => self.stats.refused += 1,
                }
                Push::Rejected(why)
            }
        }
    }

    /// Stores the chunk: its frame, and `Some(slot)` when that completed it.
    fn store(&mut self, datagram: &[u8], now: Instant) -> Result<(u64, Option<usize>), Rejected> {
        let (h, payload) = ChunkHeader::decode(datagram).map_err(Rejected::Invalid)?;
        if h.key != self.key {
            return Err(Rejected::Foreign);
        }
        if usize::from(h.chunk_bytes) != self.chunk_bytes {
            return Err(Rejected::ChunkSize);
        }
        if self.floor.is_some_and(|floor| h.seq <= floor) {
            return Err(Rejected::Late);
        }
        let i = self.slot_for(&h, now)?;
        let slot = &mut self.slots[i];
        if slot.complete {
            return Err(Rejected::Late);
        }
        let same_shape = (slot.data_chunks, slot.parity_chunks, slot.frame_bytes)
            == (h.data_chunks, h.parity_chunks, h.frame_bytes);
        if !same_shape {
            return Err(Rejected::Mismatch);
        }
        if let Some(j) = h.parity_index() {
            // j < m ≤ 32, checked by decode; a parity chunk is `chunk_bytes` long.
            let bit = 1u32 << j;
            if slot.parity_have & bit != 0 {
                return Err(Rejected::Duplicate);
            }
            let at = j * self.chunk_bytes;
            slot.parity
                .get_mut(at..at + self.chunk_bytes)
                .ok_or(Rejected::Mismatch)?
                .copy_from_slice(payload);
            slot.parity_have |= bit;
            self.stats.parity_chunks += 1;
        } else {
            let range = h.data_range().ok_or(Rejected::Mismatch)?;
            let bit = 1u128 << h.index; // index < k ≤ 128, checked by decode
            if slot.have & bit != 0 {
                return Err(Rejected::Duplicate);
            }
            slot.buf
                .get_mut(range)
                .ok_or(Rejected::Mismatch)?
                .copy_from_slice(payload);
            slot.have |= bit;
            slot.received += 1;
            slot.bytes += payload.len() as u64;
            self.stats.chunks += 1;
            self.stats.chunk_bytes += payload.len() as u64;
        }
        if !h.resent {
            match slot.copy_first_at {
                None => slot.copy_first_at = Some(now),
                Some(_) => {
                    let bytes = u32::try_from(datagram.len()).unwrap_or(u32::MAX);
                    slot.copy_bytes = slot.copy_bytes.saturating_add(bytes);
                    slot.copy_last_at = now;
                }
            }
            slot.first_copies += 1;
            slot.highest_first = Some(slot.highest_first.map_or(h.index, |x| x.max(h.index)));
        }
        slot.highest_index = slot.highest_index.max(h.index);
        slot.last_at = now;
        if slot.received == slot.data_chunks {
            return Ok((h.seq, Some(i)));
        }
        let enough = slot.chunks_stored() >= usize::from(slot.data_chunks);
        Ok((h.seq, (enough && self.restore(i)).then_some(i)))
    }

    /// Restores slot `i`'s missing data chunks from its parity chunks (it has `k` chunks in
    /// all); whether that worked.
    fn restore(&mut self, i: usize) -> bool {
        let slot = &mut self.slots[i];
        let (k, m) = (
            usize::from(slot.data_chunks),
            usize::from(slot.parity_chunks),
        );
        let frame_bytes = usize::try_from(slot.frame_bytes).unwrap_or(0);
        let restored = self.decoder.restore(
            &mut slot.buf,
            frame_bytes,
            self.chunk_bytes,
            k,
            m,
            slot.have,
            &slot.parity,
            slot.parity_have,
        );
        if restored.is_none() {
            return false;
        }
        let stored = slot.bytes;
        slot.have = if k >= MAX_CHUNKS_PER_FRAME {
            u128::MAX
        } else {
            (1u128 << k) - 1
        };
        slot.received = slot.data_chunks;
        slot.bytes = frame_bytes as u64;
        self.stats.chunk_bytes += slot.bytes.saturating_sub(stored);
        self.stats.restored += 1;
        true
    }

    /// The slot of `h`'s frame: its own, a free one, or the oldest frame's (given up).
    fn slot_for(&mut self, h: &ChunkHeader, now: Instant) -> Result<usize, Rejected> {
        if let Some(i) = self.slots.iter().position(|s| s.seq == Some(h.seq)) {
            return Ok(i);
        }
        let i = match self.slots.iter().position(|s| s.seq.is_none()) {
            Some(free) => free,
            None => {
                let oldest = self.oldest().unwrap_or_default();
                let seq = self.slots[oldest].seq.unwrap_or_default();
                if h.seq < seq {
                    return Err(Rejected::Late);
                }
                // Taking the oldest frame's place: it and everything older are gone.
                self.slots[oldest].vacate(&mut self.meters);
                self.stats.given_up += 1;
                self.floor = Some(self.floor.map_or(seq, |f| f.max(seq)));
                oldest
            }
        };
        let slot = &mut self.slots[i];
        slot.seq = Some(h.seq);
        slot.complete = false;
        slot.bytes = 0;
        slot.data_chunks = h.data_chunks;
        slot.parity_chunks = h.parity_chunks;
        slot.frame_bytes = h.frame_bytes;
        slot.have = 0;
        slot.received = 0;
        slot.highest_index = 0;
        slot.parity_have = 0;
        slot.first_copies = 0;
        slot.highest_first = None;
        slot.first_at = now;
        slot.last_at = now;
        slot.copy_first_at = None;
        slot.copy_last_at = now;
        slot.copy_bytes = 0;
        Ok(i)
    }

    /// The slot of the oldest frame in assembly or held.
    fn oldest(&self) -> Option<usize> {
        (0..self.slots.len())
            .filter(|&i| self.slots[i].seq.is_some())
            .min_by_key(|&i| self.slots[i].seq)
    }

    /// Slot `i`'s complete frame leaves (is shown): its bytes, until the next push.
    fn leave(&mut self, i: usize) -> &[u8] {
        let seq = self.slots[i].vacate(&mut self.meters).unwrap_or_default();
        let slot = &mut self.slots[i];
        slot.complete = false;
        self.floor = Some(self.floor.map_or(seq, |f| f.max(seq)));
        let len = usize::try_from(slot.frame_bytes).unwrap_or(0);
        slot.buf.get(..len).unwrap_or_default()
    }

    /// The oldest held frame, once no older frame is in assembly: its number and bytes
    /// (borrowed until the next call). Call until `None` after every push and give-up.
    pub fn pop_ready(&mut self) -> Option<(u64, &[u8])> {
        let i = self.oldest()?;
        if !self.slots[i].complete {
            return None;
        }
        let seq = self.slots[i].seq?;
        Some((seq, self.leave(i)))
    }

    /// Gives up every frame in assembly up to `seq` (it cannot be completed in time): their
    /// chunks are `Late` from now on, and frames held behind them may be ready
    /// ([`Reassembler::pop_ready`]). Returns how many frames in assembly that dropped.
    pub fn give_up(&mut self, seq: u64) -> usize {
        let mut dropped = 0;
        for slot in &mut self.slots {
            if slot.seq.is_some_and(|s| s <= seq) && !slot.complete {
                slot.vacate(&mut self.meters);
                dropped += 1;
            }
        }
        self.stats.given_up += dropped as u64;
        self.floor = Some(self.floor.map_or(seq, |f| f.max(seq)));
        self.newest_done = Some(self.newest_done.map_or(seq, |d| d.max(seq)));
        dropped
    }

    /// The frames in assembly (not the complete ones held), oldest first, with what each
    /// lacks.
    pub fn incomplete(&self) -> impl Iterator<Item = Incomplete> + '_ {
        let mut order: [usize; SLOTS] = std::array::from_fn(|i| i);
        order.sort_by_key(|&i| self.slots[i].seq);
        order.into_iter().filter_map(|i| {
            let s = &self.slots[i];
            if s.complete {
                return None;
            }
            let k = usize::from(s.data_chunks);
            let all = if k >= MAX_CHUNKS_PER_FRAME {
                u128::MAX
            } else {
                (1u128 << k) - 1
            };
            Some(Incomplete {
                seq: s.seq?,
                first_at: s.first_at,
                last_at: s.last_at,
                highest_index: s.highest_index,
                data_chunks: s.data_chunks,
                parity_chunks: s.parity_chunks,
                need: s
                    .data_chunks
                    .saturating_sub(u8::try_from(s.chunks_stored()).unwrap_or(u8::MAX))
                    .max(1),
                missing: all & !s.have,
            })
        })
    }
}

#[cfg(test)]
mod tests;
