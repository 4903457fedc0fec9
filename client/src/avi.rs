//! AVI 1.0 (RIFF) container writer for a single MJPEG video stream.
//!
//! Each JPEG is stored exactly as given (no re-encode), one `00dc` chunk per frame. AVI 1.0 has
//! one constant frame rate per stream, so the file is laid out on a grid of frame slots at the
//! stream's nominal interval: a frame that was lost or skipped on the way leaves its slot empty, as
//! a zero-length `00dc` chunk (ffmpeg's AVI muxer marks dropped frames the same way, and players
//! hold the previous picture). Playback then runs at capture speed also across gaps.
//!
//! Crash safety: [`AviWriter::checkpoint`] flushes what is buffered and patches the sizes and
//! frame counts in the header to cover it. A file cut after a checkpoint (a killed process) has no
//! `idx1`, and readers fall back to scanning the `movi` chunks: it plays up to the cut.
use std::io::{self, Seek, SeekFrom, Write};

/// The largest file this writer produces. AVI 1.0 sizes are 32-bit and many readers treat them
/// as signed, so stay below 2 GiB with a margin; the trailing `idx1` is counted separately.
pub const MAX_AVI_BYTES: u64 = (2 << 30) - (16 << 20);

/// `avih.dwFlags`: the file has an `idx1` index.
const AVIF_HASINDEX: u32 = 0x10;
/// `idx1` entry flag: the chunk is a key frame (every JPEG is).
const AVIIF_KEYFRAME: u32 = 0x10;
/// `idx1` entry flags of an empty slot: not a key frame, nothing to decode.
const AVIIF_DROPPED: u32 = 0;

const AVIH_BYTES: u32 = 56;
const STRH_BYTES: u32 = 56;
const STRF_BYTES: u32 = 40;
const IDX1_ENTRY_BYTES: u64 = 16;
/// Chunk header: fourcc + u32 size.
const CHUNK_HEADER_BYTES: u64 = 8;

// Offsets, from the start of the file, of the fields patched by `finish`. The layout diagram on
// `AviWriter` shows where they come from; `layout_parses_back` checks them.
const RIFF_SIZE_AT: u64 = 4;
const AVIH_MAX_BYTES_PER_SEC_AT: u64 = 36;
const AVIH_TOTAL_FRAMES_AT: u64 = 48;
const AVIH_SUGGESTED_BUFFER_AT: u64 = 60;
const STRH_LENGTH_AT: u64 = 140;
const STRH_SUGGESTED_BUFFER_AT: u64 = 144;
const MOVI_SIZE_AT: u64 = 216;
/// Where the `movi` fourcc sits; `idx1` offsets count from here.
const MOVI_FOURCC_AT: u64 = 220;
/// Everything before the first frame chunk.
const HEADER_BYTES: u64 = 224;

/// Writes one MJPEG stream as an AVI 1.0 file.
///
/// ```text
/// offset
///      0  RIFF <file len - 8> 'AVI '
///     12    LIST <192> 'hdrl'
///     24      avih <56>   MainAVIHeader: µs/frame, max bytes/s, flags (HASINDEX),
///                         total frames, streams = 1, suggested buffer, width, height
///     88      LIST <116> 'strl'
///    100        strh <56> 'vids' 'MJPG', scale, rate (fps = rate / scale), length (frames),
///                         suggested buffer, quality, rcFrame
///    164        strf <40> BITMAPINFOHEADER: width, height, 1 plane, 24 bits, 'MJPG'
///    212    LIST <movi len> 'movi'
///    224      00dc <jpeg len> JPEG bytes [+ 1 pad byte if odd]
///             00dc ...        one chunk per frame
///           idx1 <16 * frames>
///             { '00dc', flags KEYFRAME, offset from 'movi' fourcc, jpeg len } per frame
/// ```
///
/// All integers little-endian. An empty slot is a `00dc` chunk of length 0 with index flags 0.
/// The sizes and frame counts are zero until the first [`checkpoint`](Self::checkpoint) and
/// cover everything only after [`finish`](Self::finish).
pub struct AviWriter<W: Write + Seek> {
    out: W,
    /// Stream position where the RIFF header starts (0 for a fresh file).
    base: u64,
    /// Bytes written so far, counted from `base`.
    len: u64,
    /// `idx1` entries, kept in memory: 16 bytes per slot (1.7 MB for an hour at 30 fps).
    index: Vec<u8>,
    /// Slots written: frames and empty ones.
    slots: u32,
    /// Frames written (non-empty slots).
    frames: u32,
    frame_us: u32,
    max_frame_bytes: u32,
}

impl<W: Write + Seek> AviWriter<W> {
    /// Writes the headers at `out`'s current position, ready for the frames, which are
    /// `frame_us` apart (at least 1).
    pub fn new(mut out: W, width: u16, height: u16, frame_us: u32) -> io::Result<Self> {
        let frame_us = frame_us.max(1);
        let base = out.stream_position()?;
        out.write_all(&header(width, height, frame_us))?;
        Ok(AviWriter {
            out,
            base,
            len: HEADER_BYTES,
            index: Vec::new(),
            slots: 0,
            frames: 0,
            frame_us,
            max_frame_bytes: 0,
        })
    }

    /// Frames written so far (empty slots not counted).
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Slots written so far: frames and empty slots. The file plays for `slots` x `frame_us`.
    pub fn slots(&self) -> u32 {
        self.slots
    }

    /// Leaves `n` slots empty (frames lost or skipped). Fails without writing anything if the
    /// file would grow past [`MAX_AVI_BYTES`].
    pub fn skip(&mut self, n: u32) -> io::Result<()> {
        let room = |w: &Self| {
            let slots = u64::from(w.slots) + u64::from(n);
            w.len
                + u64::from(n) * CHUNK_HEADER_BYTES
                + CHUNK_HEADER_BYTES
                + slots * IDX1_ENTRY_BYTES
                <= MAX_AVI_BYTES
        };
        if !room(self) || self.slots.checked_add(n).is_none() {
            return Err(too_big());
        }
        for _ in 0..n {
            self.write_chunk(&[], AVIIF_DROPPED)?;
        }
        Ok(())
    }

    /// Whether a JPEG of `jpeg_bytes` still fits (with its index entry) under [`MAX_AVI_BYTES`].
    pub fn has_room_for(&self, jpeg_bytes: usize) -> bool {
        let Ok(jpeg_bytes) = u64::try_from(jpeg_bytes) else {
            return false;
        };
        if jpeg_bytes > MAX_AVI_BYTES {
            return false;
        }
        // Bounded by MAX_AVI_BYTES and the u32 slot count: no overflow below.
        let slots = u64::from(self.slots) + 1;
        let total = self.len
            + CHUNK_HEADER_BYTES
            + padded(jpeg_bytes)
            + CHUNK_HEADER_BYTES
            + slots * IDX1_ENTRY_BYTES;
        total <= MAX_AVI_BYTES
    }

    /// Appends one frame in the next slot: `jpeg` as is, in a `00dc` chunk. Fails without
    /// writing anything if the file would grow past [`MAX_AVI_BYTES`]; the caller then finishes it
    /// and starts another.
    pub fn write_frame(&mut self, jpeg: &[u8]) -> io::Result<()> {
        if !self.has_room_for(jpeg.len()) || jpeg.is_empty() {
            return Err(if jpeg.is_empty() {
                io::Error::new(io::ErrorKind::InvalidInput, "an empty frame; use skip()")
            } else {
                too_big()
            });
        }
        self.write_chunk(jpeg, AVIIF_KEYFRAME)?;
        self.frames += 1;
        Ok(())
    }

    fn write_chunk(&mut self, data: &[u8], flags: u32) -> io::Result<()> {
        // The callers checked the size against MAX_AVI_BYTES, far below u32::MAX.
        let data_len = u32::try_from(data.len()).map_err(io::Error::other)?;
        let offset = u32::try_from(self.len - MOVI_FOURCC_AT).map_err(io::Error::other)?;
        let mut chunk_header = [0u8; 8];
        chunk_header[..4].copy_from_slice(b"00dc");
        chunk_header[4..].copy_from_slice(&data_len.to_le_bytes());
        self.out.write_all(&chunk_header)?;
        self.out.write_all(data)?;
        if data.len() % 2 == 1 {
            self.out.write_all(&[0])?;
        }
        self.len += CHUNK_HEADER_BYTES + padded(u64::from(data_len));

        self.index.extend_from_slice(b"00dc");
        self.index.extend_from_slice(&flags.to_le_bytes());
        self.index.extend_from_slice(&offset.to_le_bytes());
        self.index.extend_from_slice(&data_len.to_le_bytes());
        self.slots += 1;
        self.max_frame_bytes = self.max_frame_bytes.max(data_len);
        Ok(())
    }

    /// Makes what was written so far playable should the file end here: flushes it, then patches
    /// the RIFF and `movi` sizes and the frame counts to cover it (no `idx1` yet: readers scan).
    /// Returns the writer to the end, for more frames.
    pub fn checkpoint(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let movi_len = self.len - (MOVI_SIZE_AT + 4);
        self.patch(self.len, movi_len)?;
        self.out.seek(SeekFrom::Start(self.base + self.len))?;
        self.out.flush()
    }

    /// Writes the index, patches sizes and frame counts, and returns the writer positioned at
    /// the end of the file. It is not flushed beyond what `W::flush` does; syncing a file to disk
    /// is the caller's business.
    pub fn finish(mut self) -> io::Result<W> {
        let index_len = u32::try_from(self.index.len()).map_err(io::Error::other)?;
        let mut idx1_header = [0u8; 8];
        idx1_header[..4].copy_from_slice(b"idx1");
        idx1_header[4..].copy_from_slice(&index_len.to_le_bytes());
        self.out.write_all(&idx1_header)?;
        self.out.write_all(&self.index)?;
        let movi_len = self.len - (MOVI_SIZE_AT + 4);
        self.len += CHUNK_HEADER_BYTES + u64::from(index_len);
        self.patch(self.len, movi_len)?;
        self.out.seek(SeekFrom::Start(self.base + self.len))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes the header fields that depend on what follows, for a file of `len` bytes whose
    /// `movi` list is `movi_len` bytes; leaves the position anywhere.
    fn patch(&mut self, len: u64, movi_len: u64) -> io::Result<()> {
        let duration_us = u64::from(self.slots) * u64::from(self.frame_us);
        let movi_bytes = movi_len.saturating_sub(4);
        let bytes_per_sec = movi_bytes
            .saturating_mul(1_000_000)
            .checked_div(duration_us)
            .unwrap_or(movi_bytes);
        // A reader's buffer must hold the biggest chunk, header included.
        let buffer = self.max_frame_bytes.saturating_add(8);
        let patches: [(u64, u32); 7] = [
            (RIFF_SIZE_AT, clamp_u32(len - 8)),
            (AVIH_MAX_BYTES_PER_SEC_AT, clamp_u32(bytes_per_sec)),
            (AVIH_TOTAL_FRAMES_AT, self.slots),
            (AVIH_SUGGESTED_BUFFER_AT, buffer),
            (STRH_LENGTH_AT, self.slots),
            (STRH_SUGGESTED_BUFFER_AT, buffer),
            (MOVI_SIZE_AT, clamp_u32(movi_len)),
        ];
        for (at, value) in patches {
            self.out.seek(SeekFrom::Start(self.base + at))?;
            self.out.write_all(&value.to_le_bytes())?;
        }
        Ok(())
    }
}

fn too_big() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("avi 1.0 file would exceed {MAX_AVI_BYTES} bytes; finish it and start another"),
    )
}

/// The bytes before the first frame, with placeholder sizes and counts.
fn header(width: u16, height: u16, frame_us: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_BYTES as usize);
    let w32 = u32::from(width);
    let h32 = u32::from(height);
    let mut put = |bytes: &[u8]| h.extend_from_slice(bytes);

    put(b"RIFF");
    put(&0u32.to_le_bytes()); // file len - 8, patched
    put(b"AVI ");

    put(b"LIST");
    put(&(4 + 8 + AVIH_BYTES + 12 + 8 + STRH_BYTES + 8 + STRF_BYTES).to_le_bytes());
    put(b"hdrl");

    put(b"avih");
    put(&AVIH_BYTES.to_le_bytes());
    put(&frame_us.to_le_bytes()); // dwMicroSecPerFrame
    put(&0u32.to_le_bytes()); // dwMaxBytesPerSec, patched
    put(&0u32.to_le_bytes()); // dwPaddingGranularity
    put(&AVIF_HASINDEX.to_le_bytes()); // dwFlags
    put(&0u32.to_le_bytes()); // dwTotalFrames, patched
    put(&0u32.to_le_bytes()); // dwInitialFrames
    put(&1u32.to_le_bytes()); // dwStreams
    put(&0u32.to_le_bytes()); // dwSuggestedBufferSize, patched
    put(&w32.to_le_bytes()); // dwWidth
    put(&h32.to_le_bytes()); // dwHeight
    put(&[0u8; 16]); // dwReserved[4]

    put(b"LIST");
    put(&(4 + 8 + STRH_BYTES + 8 + STRF_BYTES).to_le_bytes());
    put(b"strl");

    put(b"strh");
    put(&STRH_BYTES.to_le_bytes());
    put(b"vids"); // fccType
    put(b"MJPG"); // fccHandler
    put(&0u32.to_le_bytes()); // dwFlags
    put(&0u16.to_le_bytes()); // wPriority
    put(&0u16.to_le_bytes()); // wLanguage
    put(&0u32.to_le_bytes()); // dwInitialFrames
    put(&frame_us.to_le_bytes()); // dwScale: fps = rate / scale
    put(&1_000_000u32.to_le_bytes()); // dwRate
    put(&0u32.to_le_bytes()); // dwStart
    put(&0u32.to_le_bytes()); // dwLength, patched
    put(&0u32.to_le_bytes()); // dwSuggestedBufferSize, patched
    put(&u32::MAX.to_le_bytes()); // dwQuality: driver default
    put(&0u32.to_le_bytes()); // dwSampleSize: frames vary in size

    // rcFrame is four signed 16-bit values; JPEG dimensions above i16::MAX are clamped there.
    put(&0i16.to_le_bytes());
    put(&0i16.to_le_bytes());
    put(&i16::try_from(width).unwrap_or(i16::MAX).to_le_bytes());
    put(&i16::try_from(height).unwrap_or(i16::MAX).to_le_bytes());

    put(b"strf");
    put(&STRF_BYTES.to_le_bytes());
    put(&STRF_BYTES.to_le_bytes()); // biSize
    put(&w32.to_le_bytes()); // biWidth (i32; a u16 always fits)
    put(&h32.to_le_bytes()); // biHeight: positive, as every MJPEG writer does
    put(&1u16.to_le_bytes()); // biPlanes
    put(&24u16.to_le_bytes()); // biBitCount
    put(b"MJPG"); // biCompression
    let image_bytes = u64::from(w32) * u64::from(h32) * 3;
    put(&clamp_u32(image_bytes).to_le_bytes()); // biSizeImage: uncompressed size, a hint
    put(&0u32.to_le_bytes()); // biXPelsPerMeter
    put(&0u32.to_le_bytes()); // biYPelsPerMeter
    put(&0u32.to_le_bytes()); // biClrUsed
    put(&0u32.to_le_bytes()); // biClrImportant

    put(b"LIST");
    put(&0u32.to_le_bytes()); // movi len, patched
    put(b"movi");
    debug_assert_eq!(h.len(), HEADER_BYTES as usize);
    h
}

/// Chunk data is padded to an even length.
fn padded(len: u64) -> u64 {
    len + (len & 1)
}

fn clamp_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

#[cfg(test)]
pub(crate) mod tests;
