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
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// One RIFF chunk (or LIST, whose `data` starts with the list type) as found in a file.
    struct Chunk<'a> {
        id: [u8; 4],
        /// Offset of the chunk header in the buffer that was parsed.
        at: usize,
        data: &'a [u8],
    }

    /// Splits `buf[start..end]` into chunks, asserting each size stays inside its parent.
    fn chunks(buf: &[u8], start: usize, end: usize) -> Vec<Chunk<'_>> {
        let mut out = Vec::new();
        let mut at = start;
        while at < end {
            assert!(
                at + 8 <= end,
                "chunk header at {at} runs past its parent's end {end}"
            );
            let id: [u8; 4] = buf[at..at + 4].try_into().unwrap();
            let size = u32::from_le_bytes(buf[at + 4..at + 8].try_into().unwrap()) as usize;
            assert!(
                at + 8 + size <= end,
                "chunk {} at {at} of {size} bytes runs past its parent's end {end}",
                String::from_utf8_lossy(&id)
            );
            out.push(Chunk {
                id,
                at,
                data: &buf[at + 8..at + 8 + size],
            });
            at += 8 + size + (size & 1);
        }
        assert_eq!(at, end, "chunks do not end where their parent does");
        out
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// The LIST of `list_type` among `cs`, as (its chunks, the LIST chunk).
    fn list<'a>(buf: &'a [u8], cs: &[Chunk<'a>], list_type: &[u8; 4]) -> Vec<Chunk<'a>> {
        let l = cs
            .iter()
            .find(|c| &c.id == b"LIST" && &c.data[..4] == list_type)
            .unwrap_or_else(|| panic!("no LIST {}", String::from_utf8_lossy(list_type)));
        chunks(buf, l.at + 12, l.at + 8 + l.data.len())
    }

    fn child<'a, 'b>(cs: &'b [Chunk<'a>], id: &[u8; 4]) -> &'b Chunk<'a> {
        cs.iter()
            .find(|c| &c.id == id)
            .unwrap_or_else(|| panic!("no {} chunk", String::from_utf8_lossy(id)))
    }

    /// Frames of assorted odd and even lengths, each distinct, so padding and the index are
    /// exercised; the writer does not look inside them.
    fn frames() -> Vec<Vec<u8>> {
        (0..7u8)
            .map(|i| {
                let len = 100 + usize::from(i) * 37;
                (0..len).map(|j| (j as u8).wrapping_add(i)).collect()
            })
            .collect()
    }

    /// Parses a finished file and checks every size, count and the frame rate against what was
    /// written: `frames` holds one entry per slot, empty for an empty slot. The recorder's tests
    /// run it on their segments too.
    pub(crate) fn check_file<F: AsRef<[u8]>>(
        buf: &[u8],
        frames: &[F],
        frame_us: u32,
        width: u32,
        height: u32,
    ) {
        assert_eq!(&buf[..4], b"RIFF");
        assert_eq!(
            u32_at(buf, 4) as usize,
            buf.len() - 8,
            "RIFF size is file len - 8"
        );
        assert_eq!(&buf[8..12], b"AVI ");
        let top = chunks(buf, 12, buf.len());
        let ids: Vec<_> = top.iter().map(|c| c.id).collect();
        assert_eq!(ids, [*b"LIST", *b"LIST", *b"idx1"]);

        let hdrl = list(buf, &top, b"hdrl");
        let avih = child(&hdrl, b"avih").data;
        assert_eq!(avih.len(), 56);
        let n = frames.len() as u32;
        assert_eq!(u32_at(avih, 0), frame_us, "dwMicroSecPerFrame");
        assert_eq!(u32_at(avih, 12), AVIF_HASINDEX, "dwFlags");
        assert_eq!(u32_at(avih, 16), n, "dwTotalFrames");
        assert_eq!(u32_at(avih, 24), 1, "dwStreams");
        let biggest = frames.iter().map(|f| f.as_ref().len()).max().unwrap() as u32;
        assert_eq!(u32_at(avih, 28), biggest + 8, "dwSuggestedBufferSize");
        assert_eq!((u32_at(avih, 32), u32_at(avih, 36)), (width, height));

        let strl = list(buf, &hdrl, b"strl");
        let strh = child(&strl, b"strh").data;
        assert_eq!((&strh[0..4], &strh[4..8]), (&b"vids"[..], &b"MJPG"[..]));
        assert_eq!(u32_at(strh, 20), frame_us, "dwScale");
        assert_eq!(u32_at(strh, 24), 1_000_000, "dwRate");
        assert_eq!(u32_at(strh, 32), n, "dwLength");
        let strf = child(&strl, b"strf").data;
        assert_eq!(strf.len(), 40);
        assert_eq!((u32_at(strf, 4), u32_at(strf, 8)), (width, height));
        assert_eq!(u16::from_le_bytes([strf[14], strf[15]]), 24, "biBitCount");
        assert_eq!(&strf[16..20], b"MJPG", "biCompression");

        let movi_list = top.iter().find(|c| &c.data[..4] == b"movi").unwrap();
        assert_eq!(movi_list.at + 8, MOVI_FOURCC_AT as usize);
        let movi = list(buf, &top, b"movi");
        assert_eq!(movi.len(), frames.len());
        for (c, f) in movi.iter().zip(frames) {
            let f = f.as_ref();
            assert_eq!(&c.id, b"00dc");
            assert_eq!(c.data, f, "frame bytes stored as given");
            if f.len() % 2 == 1 {
                assert_eq!(buf[c.at + 8 + f.len()], 0, "pad byte");
            }
        }

        let idx1 = child(&top, b"idx1").data;
        assert_eq!(idx1.len(), 16 * frames.len(), "one idx1 entry per frame");
        for (e, c) in idx1.chunks(16).zip(&movi) {
            assert_eq!(&e[..4], b"00dc");
            let flags = if c.data.is_empty() {
                AVIIF_DROPPED
            } else {
                AVIIF_KEYFRAME
            };
            assert_eq!(u32_at(e, 4), flags);
            let offset = u32_at(e, 8) as usize;
            assert_eq!(
                movi_list.at + 8 + offset,
                c.at,
                "idx1 offset is from the movi fourcc"
            );
            assert_eq!(u32_at(e, 12) as usize, c.data.len());
        }
    }

    #[test]
    fn layout_parses_back() {
        let frames = frames();
        let mut avi = AviWriter::new(Cursor::new(Vec::new()), 160, 90, 40_000).unwrap();
        for f in &frames {
            avi.write_frame(f).unwrap();
        }
        assert_eq!((avi.frames(), avi.slots()), (7, 7));
        let out = avi.finish().unwrap();
        assert_eq!(
            out.position(),
            out.get_ref().len() as u64,
            "left at the end"
        );
        check_file(out.get_ref(), &frames, 40_000, 160, 90);
    }

    #[test]
    fn empty_slots_keep_the_timeline() {
        let frames = frames();
        let mut avi = AviWriter::new(Cursor::new(Vec::new()), 160, 90, 33_333).unwrap();
        let mut slots: Vec<&[u8]> = Vec::new();
        for (i, f) in frames.iter().enumerate() {
            // Frame i is preceded by i % 3 empty slots.
            let gap = (i % 3) as u32;
            avi.skip(gap).unwrap();
            slots.extend(std::iter::repeat_n(&[][..], gap as usize));
            avi.write_frame(f).unwrap();
            slots.push(f);
        }
        assert_eq!(avi.frames(), 7);
        assert_eq!(avi.slots() as usize, slots.len());
        assert!(avi.write_frame(&[]).is_err(), "an empty frame is a skip");
        let out = avi.finish().unwrap();
        check_file(out.get_ref(), &slots, 33_333, 160, 90);
    }

    #[test]
    fn checkpoints_make_a_cut_file_readable() {
        let frames = frames();
        let mut avi = AviWriter::new(Cursor::new(Vec::new()), 64, 48, 33_333).unwrap();
        for f in &frames[..4] {
            avi.write_frame(f).unwrap();
        }
        avi.checkpoint().unwrap();
        avi.write_frame(&frames[4]).unwrap();
        let cut = avi.out.get_ref().clone();
        // As if killed now: sizes cover the four checkpointed frames, the fifth follows them.
        let at_checkpoint = HEADER_BYTES as usize
            + frames[..4]
                .iter()
                .map(|f| 8 + f.len() + f.len() % 2)
                .sum::<usize>();
        assert_eq!(u32_at(&cut, 4) as usize, at_checkpoint - 8, "RIFF size");
        assert_eq!(u32_at(&cut, AVIH_TOTAL_FRAMES_AT as usize), 4);
        assert_eq!(u32_at(&cut, STRH_LENGTH_AT as usize), 4);
        let top = chunks(&cut, 12, at_checkpoint);
        assert_eq!(list(&cut, &top, b"movi").len(), 4);
        // The writer carries on at the end after a checkpoint.
        for f in &frames[5..] {
            avi.write_frame(f).unwrap();
        }
        let out = avi.finish().unwrap();
        check_file(out.get_ref(), &frames, 33_333, 64, 48);
    }

    #[test]
    fn starts_at_the_writers_position() {
        let frames = frames();
        let mut cursor = Cursor::new(Vec::new());
        cursor.write_all(b"something before").unwrap();
        let mut avi = AviWriter::new(cursor, 64, 48, 33_333).unwrap();
        for f in &frames {
            avi.write_frame(f).unwrap();
        }
        avi.checkpoint().unwrap();
        let out = avi.finish().unwrap();
        let buf = out.get_ref();
        assert_eq!(&buf[..16], b"something before");
        check_file(&buf[16..], &frames, 33_333, 64, 48);
    }

    #[test]
    fn degenerate_intervals_and_counts_do_not_panic() {
        for (frames, frame_us) in [(0, 0), (1, 0), (3, u32::MAX)] {
            let mut avi = AviWriter::new(Cursor::new(Vec::new()), 16, 16, frame_us).unwrap();
            for _ in 0..frames {
                avi.write_frame(b"jpeg").unwrap();
            }
            avi.checkpoint().unwrap();
            let out = avi.finish().unwrap().into_inner();
            assert_eq!(u32_at(&out, 4) as usize, out.len() - 8);
            let top = chunks(&out, 12, out.len());
            assert_eq!(child(&top, b"idx1").data.len(), 16 * frames);
            let strh_scale = u32_at(&out, 128);
            assert!(
                strh_scale >= 1,
                "a zero scale would divide by zero in players"
            );
        }
    }

    /// Discards what is written but keeps the length, so the 2 GiB limit is tested for real
    /// without the memory.
    #[derive(Default)]
    struct LengthOnly {
        pos: u64,
        len: u64,
    }

    impl Write for LengthOnly {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.pos += buf.len() as u64;
            self.len = self.len.max(self.pos);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Seek for LengthOnly {
        fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
            self.pos = match to {
                SeekFrom::Start(p) => p,
                SeekFrom::End(d) => self.len.checked_add_signed(d).unwrap(),
                SeekFrom::Current(d) => self.pos.checked_add_signed(d).unwrap(),
            };
            Ok(self.pos)
        }
    }

    #[test]
    fn refuses_to_grow_past_the_avi_1_limit() {
        let frame = vec![0u8; 1 << 20];
        let mut avi = AviWriter::new(LengthOnly::default(), 1920, 1080, 33_333).unwrap();
        let mut written = 0u32;
        while avi.has_room_for(frame.len()) {
            avi.write_frame(&frame).unwrap();
            written += 1;
        }
        assert!(written > 2000, "only {written} MiB frames fit");
        let err = avi.write_frame(&frame).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        assert!(err.to_string().contains("exceed"), "{err}");
        assert_eq!(avi.frames(), written, "a refused frame is not counted");
        // A smaller frame may still fit; refusing one frame leaves the writer usable.
        assert!(avi.has_room_for(100));
        avi.write_frame(&frame[..100]).unwrap();
        assert!(avi.skip(u32::MAX).is_err(), "a skip is bounded too");
        let out = avi.finish().unwrap();
        assert!(out.len <= MAX_AVI_BYTES, "{} > {MAX_AVI_BYTES}", out.len);
        assert!(out.len > MAX_AVI_BYTES - (1 << 20) - 100);
        assert!(!AviWriter::new(LengthOnly::default(), 1, 1, 1)
            .unwrap()
            .has_room_for(usize::MAX));
    }
}
