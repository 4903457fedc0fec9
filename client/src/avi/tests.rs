//! Tests of the AVI writer: the layout parsed back by a RIFF reader written here, and the
//! checks the recorder's tests reuse on whole segment files.

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
