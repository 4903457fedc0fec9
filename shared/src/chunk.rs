//! A frame in MTU-sized chunks: the header each chunk datagram of a chunked SURV/1 session
//! carries (server → viewer), and its limits.
//!
//! A whole frame datagram of 25–65 KB crosses a real link (1,500-byte packets) as 17–45 IP
//! fragments, and losing any one loses the frame. A viewer that asks for chunks (its `hello`
//! names an `mtu`, see [`crate::ack`]) gets each frame as datagrams of at most that size
//! instead, each a 28-byte header and a slice of the same tagged JPEG every viewer gets:
//!
//! ```text
//!  0     2    3     4     5     6          8               12                      20                      28
//!  +-----+----+-----+-----+-----+----------+---------------+-----------------------+-----------------------+--------
//!  | 'S' | vf | idx |  k  |  m  | chunk_   | frame_bytes   | seq (u64)             | key (u64)             | payload
//!  | 'C' |    |     |     |     | bytes u16| (u32)         | = the frame tag's seq | the session key       |
//!  +-----+----+-----+-----+-----+----------+---------------+-----------------------+-----------------------+--------
//!   magic  ver:4 index  data  parity  size of every  JPEG length     frame number            K from the OK line
//!          flags:4 0..k+m chunks chunks data chunk but
//!          bit0 R=resent       encoded the last (even)
//! ```
//!
//! All numbers big-endian. `vf` is the version (1) in its high nibble and flags in its low one:
//! bit 0 ([`FLAG_RESENT`]) marks a chunk sent again after the viewer's `nack`; other bits are 0
//! and readers ignore them.
//!
//! * Data chunk `i < k` carries `jpeg[i·chunk_bytes .. min((i+1)·chunk_bytes, frame_bytes)]`:
//!   every data chunk is `chunk_bytes` long but the last, which is the rest.
//! * Chunks `k ≤ i < k+m` are parity (forward error correction, [`crate::parity`]), each
//!   `chunk_bytes` long: any `k` of a frame's `k+m` chunks give it back. A server sends them
//!   only to a viewer that reports its loss (`l=` in its `continue`, see [`crate::ack`]), and
//!   `m` is the same in every chunk of one frame to one viewer, resent ones included.
//! * A frame's first byte is `0xFF` (SOI) and a chunk's is `'S'`: one byte tells a whole frame
//!   datagram from a chunk.
//! * The key in every chunk makes a chunk from anyone but this session's server cost one
//!   compare.
//!
//! [`ChunkHeader::decode`] borrows, never allocates, and checks every field against the named
//! limits below with checked arithmetic: `k` must be exactly `ceil(frame_bytes / chunk_bytes)`
//! and the payload exactly its chunk's length, so sizes that do not add up are refused before
//! anyone sizes a buffer from them.

use thiserror::Error;

use crate::MAX_UDP_PAYLOAD_BYTES;

/// Bytes of the header before each chunk's payload.
pub const CHUNK_HEADER_BYTES: usize = 28;

/// The first two bytes of every chunk.
pub const CHUNK_MAGIC: [u8; 2] = *b"SC";

/// The header's version (the high nibble of byte 2).
pub const CHUNK_VERSION: u8 = 1;

/// Flag: this chunk was sent again, after a `nack`.
pub const FLAG_RESENT: u8 = 1;

/// The smallest chunk datagram a server sends or a viewer may ask for (UDP payload bytes).
pub const MIN_MTU_BYTES: u16 = 800;

/// The largest: a 9,000-byte jumbo frame less the IPv4 and UDP headers.
pub const MAX_MTU_BYTES: u16 = 8_972;

/// What `surv-server --mtu` and `surv-client --mtu` default to: fits every path whose MTU is
/// at least IPv6's minimum of 1,280 (and PPPoE, WireGuard, most VPNs).
pub const DEFAULT_MTU_BYTES: u16 = 1_200;

/// The smallest `chunk_bytes` a header may carry (what a session uses is set by its mtu; small
/// ones exist for tests).
pub const MIN_CHUNK_BYTES: usize = 2;

/// The largest `chunk_bytes`: the largest mtu less the header.
pub const MAX_CHUNK_BYTES: usize = MAX_MTU_BYTES as usize - CHUNK_HEADER_BYTES;

/// Parity chunks a frame may be encoded with.
pub const MAX_PARITY_CHUNKS: usize = 32;

/// Chunks (data and parity) of one frame. At the smallest mtu, 772 bytes a chunk, a frame of
/// [`MAX_UDP_PAYLOAD_BYTES`] is 85 data chunks.
pub const MAX_CHUNKS_PER_FRAME: usize = 128;

/// The payload bytes of each data chunk (but a frame's last) for a chunk datagram of at most
/// `mtu` bytes: the mtu less the header, rounded down to even (parity codes want even shards).
pub fn chunk_bytes_for_mtu(mtu: u16) -> usize {
    usize::from(mtu).saturating_sub(CHUNK_HEADER_BYTES) & !1
}

/// An even number in [`MIN_CHUNK_BYTES`]`..=`[`MAX_CHUNK_BYTES`].
fn valid_chunk_bytes(n: usize) -> bool {
    (MIN_CHUNK_BYTES..=MAX_CHUNK_BYTES).contains(&n) && n.is_multiple_of(2)
}

/// How many data chunks of `chunk_bytes` carry `frame_bytes`: `None` when the frame cannot be
/// chunked at that size (empty, over [`MAX_UDP_PAYLOAD_BYTES`], or over
/// [`MAX_CHUNKS_PER_FRAME`] chunks).
pub fn data_chunks(frame_bytes: usize, chunk_bytes: usize) -> Option<usize> {
    if frame_bytes == 0 || frame_bytes > MAX_UDP_PAYLOAD_BYTES || chunk_bytes == 0 {
        return None;
    }
    Some(frame_bytes.div_ceil(chunk_bytes)).filter(|&k| k <= MAX_CHUNKS_PER_FRAME)
}

/// One chunk's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    /// Sent again after a `nack` ([`FLAG_RESENT`]).
    pub resent: bool,
    /// This chunk: data `0..k`, parity `k..k+m`.
    pub index: u8,
    /// `k`: data chunks of the frame.
    pub data_chunks: u8,
    /// `m`: parity chunks the frame was encoded with.
    pub parity_chunks: u8,
    /// Payload bytes of every data chunk but the last, and of every parity chunk.
    pub chunk_bytes: u16,
    /// The whole frame's length (the tagged JPEG).
    pub frame_bytes: u32,
    /// The frame's number, as in its tag.
    pub seq: u64,
    /// The session key.
    pub key: u64,
}

/// Why a datagram is not a chunk. Each is refused before anything is sized from the header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ChunkError {
    #[error("{0} bytes is shorter than a chunk header")]
    Short(usize),
    #[error("not a chunk (no \"SC\" magic)")]
    Magic,
    #[error("chunk header version {0} is not {CHUNK_VERSION}")]
    Version(u8),
    #[error("chunk size {0} is not an even number in {MIN_CHUNK_BYTES}..={MAX_CHUNK_BYTES}")]
    ChunkBytes(u16),
    #[error("frame size {0} is not in 1..={MAX_UDP_PAYLOAD_BYTES}")]
    FrameBytes(u32),
    #[error("{got} data chunks do not carry the frame's bytes (it takes {want})")]
    DataChunks { got: u8, want: usize },
    #[error("{0} parity chunks is over {MAX_PARITY_CHUNKS}")]
    Parity(u8),
    #[error("{0} chunks is over {MAX_CHUNKS_PER_FRAME} a frame")]
    TooMany(usize),
    #[error("chunk index {index} is not under the frame's {count} chunks")]
    Index { index: u8, count: usize },
    #[error("chunk payload of {got} bytes where its header says {want}")]
    Payload { got: usize, want: usize },
}

impl ChunkHeader {
    /// The header as it goes on the wire; the payload follows it.
    pub fn encode(&self) -> [u8; CHUNK_HEADER_BYTES] {
        let mut out = [0u8; CHUNK_HEADER_BYTES];
        out[..2].copy_from_slice(&CHUNK_MAGIC);
        out[2] = CHUNK_VERSION << 4 | if self.resent { FLAG_RESENT } else { 0 };
        out[3] = self.index;
        out[4] = self.data_chunks;
        out[5] = self.parity_chunks;
        out[6..8].copy_from_slice(&self.chunk_bytes.to_be_bytes());
        out[8..12].copy_from_slice(&self.frame_bytes.to_be_bytes());
        out[12..20].copy_from_slice(&self.seq.to_be_bytes());
        out[20..28].copy_from_slice(&self.key.to_be_bytes());
        out
    }

    /// Reads a chunk datagram: its header and its payload (borrowed), every field checked.
    pub fn decode(datagram: &[u8]) -> Result<(ChunkHeader, &[u8]), ChunkError> {
        let header = ChunkHeader::decode_head(datagram)?;
        let payload = &datagram[CHUNK_HEADER_BYTES..];
        let want = header.payload_bytes()?;
        if payload.len() != want {
            return Err(ChunkError::Payload {
                got: payload.len(),
                want,
            });
        }
        Ok((header, payload))
    }

    /// Reads the header alone from the start of a chunk datagram (what follows it is not
    /// looked at): for a receiver that copies only the first bytes of each datagram, as a load
    /// generator does. Every field is checked but the payload's length, which
    /// [`ChunkHeader::payload_bytes`] gives.
    pub fn decode_head(datagram: &[u8]) -> Result<ChunkHeader, ChunkError> {
        let Some(head) = datagram.first_chunk::<CHUNK_HEADER_BYTES>() else {
            return Err(ChunkError::Short(datagram.len()));
        };
        if head[..2] != CHUNK_MAGIC {
            return Err(ChunkError::Magic);
        }
        if head[2] >> 4 != CHUNK_VERSION {
            return Err(ChunkError::Version(head[2] >> 4));
        }
        let be16 = |at: usize| u16::from_be_bytes([head[at], head[at + 1]]);
        let be32 =
            |at: usize| u32::from_be_bytes([head[at], head[at + 1], head[at + 2], head[at + 3]]);
        let be64 = |at: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&head[at..at + 8]);
            u64::from_be_bytes(b)
        };
        let header = ChunkHeader {
            resent: head[2] & FLAG_RESENT != 0,
            index: head[3],
            data_chunks: head[4],
            parity_chunks: head[5],
            chunk_bytes: be16(6),
            frame_bytes: be32(8),
            seq: be64(12),
            key: be64(20),
        };
        header.payload_bytes()?;
        Ok(header)
    }

    /// Checks every field but the payload's length, and says what that length must be.
    pub fn payload_bytes(&self) -> Result<usize, ChunkError> {
        let chunk = usize::from(self.chunk_bytes);
        if !valid_chunk_bytes(chunk) {
            return Err(ChunkError::ChunkBytes(self.chunk_bytes));
        }
        let frame = usize::try_from(self.frame_bytes).unwrap_or(usize::MAX);
        if frame == 0 || frame > MAX_UDP_PAYLOAD_BYTES {
            return Err(ChunkError::FrameBytes(self.frame_bytes));
        }
        let k = usize::from(self.data_chunks);
        let want = frame.div_ceil(chunk);
        if k != want {
            return Err(ChunkError::DataChunks {
                got: self.data_chunks,
                want,
            });
        }
        let m = usize::from(self.parity_chunks);
        if m > MAX_PARITY_CHUNKS {
            return Err(ChunkError::Parity(self.parity_chunks));
        }
        let count = k + m;
        if count > MAX_CHUNKS_PER_FRAME {
            return Err(ChunkError::TooMany(count));
        }
        let index = usize::from(self.index);
        if index >= count {
            return Err(ChunkError::Index {
                index: self.index,
                count,
            });
        }
        Ok(if index + 1 == k {
            // k = ceil(frame / chunk) ≥ 1, so (k − 1)·chunk < frame.
            frame - (k - 1) * chunk
        } else {
            chunk
        })
    }

    /// Where a data chunk's payload goes in the frame; `None` for a parity chunk. Only for a
    /// header that [`ChunkHeader::decode`] accepted (or one built from a real frame).
    pub fn data_range(&self) -> Option<std::ops::Range<usize>> {
        let index = usize::from(self.index);
        if index >= usize::from(self.data_chunks) {
            return None;
        }
        let chunk = usize::from(self.chunk_bytes);
        let start = index.checked_mul(chunk)?;
        let end = start
            .checked_add(chunk)?
            .min(usize::try_from(self.frame_bytes).ok()?);
        (start < end).then_some(start..end)
    }

    /// Which parity chunk this is (`index − k`); `None` for a data chunk.
    pub fn parity_index(&self) -> Option<usize> {
        usize::from(self.index).checked_sub(usize::from(self.data_chunks))
    }

    /// The headers of every data chunk of a frame of `frame_bytes` under `key`, in order, for a
    /// sender; `None` when the frame cannot be chunked at `chunk_bytes` (see [`data_chunks`]).
    pub fn for_frame(
        seq: u64,
        key: u64,
        frame_bytes: usize,
        chunk_bytes: usize,
    ) -> Option<impl Iterator<Item = ChunkHeader>> {
        ChunkHeader::for_frame_with_parity(seq, key, frame_bytes, chunk_bytes, 0)
    }

    /// As [`ChunkHeader::for_frame`], the frame coded with `m` parity chunks
    /// ([`crate::parity`]): the data chunks' headers, then the parity chunks'; `None` also when
    /// `m` parity chunks cannot go with the frame (over 32, or over 128 chunks in all).
    pub fn for_frame_with_parity(
        seq: u64,
        key: u64,
        frame_bytes: usize,
        chunk_bytes: usize,
        m: usize,
    ) -> Option<impl Iterator<Item = ChunkHeader>> {
        if !valid_chunk_bytes(chunk_bytes) {
            return None;
        }
        let k = data_chunks(frame_bytes, chunk_bytes)?;
        if m > 0 && !crate::parity::valid_shape(k, m) {
            return None;
        }
        let (k8, m8, chunk16, frame32) = (
            u8::try_from(k).ok()?,
            u8::try_from(m).ok()?,
            u16::try_from(chunk_bytes).ok()?,
            u32::try_from(frame_bytes).ok()?,
        );
        Some((0..k8 + m8).map(move |index| ChunkHeader {
            resent: false,
            index,
            data_chunks: k8,
            parity_chunks: m8,
            chunk_bytes: chunk16,
            frame_bytes: frame32,
            seq,
            key,
        }))
    }
}

#[cfg(test)]
mod tests;
