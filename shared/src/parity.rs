//! Parity chunks: forward error correction for a chunked session ([`crate::chunk`]).
//!
//! A frame of `k` data chunks may be sent with `m` parity chunks (indices `k..k+m`), made by a
//! systematic Reed-Solomon code over the `k` data chunks, the last one padded with zeros to
//! `chunk_bytes`. Any `k` of the `k+m` chunks give the frame back, so a viewer that lost up to
//! `m` of them shows the frame without waiting a round trip for a `nack`'s repair. The code is
//! Leopard-RS's (the `reed-solomon-simd` crate): the parity of a given `(k, m)` is only
//! understood by a decoder of the same `(k, m)`, which is why every chunk's header carries
//! `m`, and every chunk of one frame to one viewer carries the same `m`.
//!
//! [`ParityEncoder`] makes them (the server, once per frame and `(chunk_bytes, m)`);
//! [`crate::reassembly`] uses them.

use reed_solomon_simd::{ReedSolomonDecoder, ReedSolomonEncoder};

use crate::chunk::{data_chunks, MAX_CHUNKS_PER_FRAME, MAX_PARITY_CHUNKS};

/// Whether `m` parity chunks may go with a frame of `k` data chunks.
pub fn valid_shape(k: usize, m: usize) -> bool {
    k >= 1 && (1..=MAX_PARITY_CHUNKS).contains(&m) && k + m <= MAX_CHUNKS_PER_FRAME
}

/// A frame's last data chunk `bytes` padded with zeros to `chunk_bytes`, in `buf`: the code
/// takes whole chunks.
fn padded<'a>(buf: &'a mut Vec<u8>, bytes: &[u8], chunk_bytes: usize) -> &'a [u8] {
    buf.clear();
    buf.extend_from_slice(bytes);
    buf.resize(chunk_bytes, 0);
    buf
}

/// Makes a frame's parity chunks; keeps its working space between frames.
#[derive(Default)]
pub struct ParityEncoder {
    rs: Option<ReedSolomonEncoder>,
    /// The frame's last data chunk, padded with zeros.
    last: Vec<u8>,
}

impl std::fmt::Debug for ParityEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParityEncoder").finish_non_exhaustive()
    }
}

impl ParityEncoder {
    /// Writes the `m` parity chunks of `frame` cut in data chunks of `chunk_bytes` into `out`,
    /// one after another (`m × chunk_bytes` bytes). `None` (and `out` empty) when that frame
    /// cannot have `m` parity chunks at that size: `chunk_bytes` odd or 0, the frame empty or
    /// over 128 chunks with its parity, or `m` not in `1..=32`.
    pub fn encode(
        &mut self,
        frame: &[u8],
        chunk_bytes: usize,
        m: usize,
        out: &mut Vec<u8>,
    ) -> Option<()> {
        out.clear();
        if chunk_bytes == 0 || !chunk_bytes.is_multiple_of(2) {
            return None;
        }
        let k = data_chunks(frame.len(), chunk_bytes)?;
        if !valid_shape(k, m) {
            return None;
        }
        let rs = match &mut self.rs {
            Some(rs) => {
                rs.reset(k, m, chunk_bytes).ok()?;
                rs
            }
            rs @ None => rs.insert(ReedSolomonEncoder::new(k, m, chunk_bytes).ok()?),
        };
        let mut chunks = frame.chunks(chunk_bytes);
        for _ in 1..k {
            rs.add_original_shard(chunks.next()?).ok()?;
        }
        rs.add_original_shard(padded(&mut self.last, chunks.next()?, chunk_bytes))
            .ok()?;
        let result = rs.encode().ok()?;
        out.reserve(m * chunk_bytes);
        for parity in result.recovery_iter() {
            out.extend_from_slice(parity);
        }
        (out.len() == m * chunk_bytes).then_some(())
    }
}

/// Restores a frame's missing data chunks from the chunks it has: its working space, kept
/// between frames (for [`crate::reassembly`]).
#[derive(Default)]
pub(crate) struct ParityDecoder {
    rs: Option<ReedSolomonDecoder>,
    /// The frame's last data chunk, padded with zeros.
    last: Vec<u8>,
}

impl ParityDecoder {
    /// Fills the data chunks of `frame` (`frame_bytes` long; data chunk `i` at
    /// `i·chunk_bytes`) whose bits are clear in `have`, from the data chunks whose bits are set
    /// and the parity chunks in `parity` (chunk `j` at `j·chunk_bytes`) whose bits are set in
    /// `parity_have`. The caller checked that they number at least `k` and that the shape is
    /// valid. `None` if the code refuses them.
    #[allow(clippy::too_many_arguments)]
    pub fn restore(
        &mut self,
        frame: &mut [u8],
        frame_bytes: usize,
        chunk_bytes: usize,
        k: usize,
        m: usize,
        have: u128,
        parity: &[u8],
        parity_have: u32,
    ) -> Option<()> {
        let rs = match &mut self.rs {
            Some(rs) => {
                rs.reset(k, m, chunk_bytes).ok()?;
                rs
            }
            rs @ None => rs.insert(ReedSolomonDecoder::new(k, m, chunk_bytes).ok()?),
        };
        let range = |i: usize| i * chunk_bytes..((i + 1) * chunk_bytes).min(frame_bytes);
        for i in (0..k).filter(|&i| have >> i & 1 == 1) {
            let bytes = frame.get(range(i))?;
            let bytes = if i + 1 == k {
                padded(&mut self.last, bytes, chunk_bytes)
            } else {
                bytes
            };
            rs.add_original_shard(i, bytes).ok()?;
        }
        for j in (0..m).filter(|&j| parity_have >> j & 1 == 1) {
            rs.add_recovery_shard(j, parity.get(j * chunk_bytes..(j + 1) * chunk_bytes)?)
                .ok()?;
        }
        let result = rs.decode().ok()?;
        for (i, bytes) in result.restored_original_iter() {
            let to = frame.get_mut(range(i))?;
            let n = to.len();
            to.copy_from_slice(bytes.get(..n)?);
        }
        Some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_k_of_the_chunks_give_the_frame_back() {
        let frame: Vec<u8> = (0..1_001u32).map(|i| (i * 7 + 3) as u8).collect();
        let (cb, m) = (100, 3);
        let k = frame.len().div_ceil(cb);
        let mut parity = Vec::new();
        ParityEncoder::default()
            .encode(&frame, cb, m, &mut parity)
            .unwrap();
        assert_eq!(parity.len(), m * cb);
        let mut decoder = ParityDecoder::default();
        // Every way of losing up to m of the k + m chunks.
        let mut restored = 0;
        for lost in 0u32..1 << (k + m) {
            if lost.count_ones() as usize > m || lost.count_ones() == 0 {
                continue;
            }
            let have = !(lost as u128) & ((1 << k) - 1);
            let parity_have = !(lost >> k) & ((1 << m) - 1);
            if have == (1 << k) - 1 {
                continue;
            }
            let mut buf = frame.clone();
            for i in (0..k).filter(|&i| have >> i & 1 == 0) {
                buf[i * cb..((i + 1) * cb).min(frame.len())].fill(0xAA);
            }
            decoder
                .restore(&mut buf, frame.len(), cb, k, m, have, &parity, parity_have)
                .unwrap();
            assert_eq!(buf, frame, "lost {lost:#b}");
            restored += 1;
        }
        assert!(restored > 300, "{restored}");
    }

    #[test]
    fn shapes_it_cannot_make_are_refused() {
        let mut out = vec![1];
        let mut e = ParityEncoder::default();
        assert_eq!(e.encode(&[1; 100], 10, 0, &mut out), None);
        assert!(out.is_empty());
        assert_eq!(e.encode(&[1; 100], 10, 33, &mut out), None);
        assert_eq!(e.encode(&[1; 100], 9, 1, &mut out), None);
        assert_eq!(e.encode(&[], 10, 1, &mut out), None);
        // 127 data chunks leave room for one parity chunk, not two.
        assert!(e.encode(&[1; 254], 2, 1, &mut out).is_some());
        assert_eq!(e.encode(&[1; 254], 2, 2, &mut out), None);
    }
}
