//! Unit tests of reassembly: every loss pattern of a small frame in every order, with and
//! without duplicates; newer frames held for older ones in repair; a frame past the slots;
//! hostile and foreign chunks; giving up.

use std::time::{Duration, Instant};

use super::*;
use crate::chunk::ChunkHeader;

const KEY: u64 = 0x5eed;
const CHUNK: usize = 4;

/// A frame of `len` bytes numbered from `seed`.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| seed.wrapping_add(i as u8)).collect()
}

/// The frame's chunk datagrams: its data chunks, then its `parity` parity chunks, every header
/// saying the frame was encoded with `parity` parity chunks.
fn chunks(seq: u64, frame: &[u8], parity: u8) -> Vec<Vec<u8>> {
    let mut code = Vec::new();
    if parity > 0 {
        crate::parity::ParityEncoder::default()
            .encode(frame, CHUNK, usize::from(parity), &mut code)
            .unwrap();
    }
    let data: Vec<ChunkHeader> = ChunkHeader::for_frame(seq, KEY, frame.len(), CHUNK)
        .unwrap()
        .map(|h| ChunkHeader {
            parity_chunks: parity,
            ..h
        })
        .collect();
    let k = data[0].data_chunks;
    let mut out: Vec<Vec<u8>> = data
        .iter()
        .map(|h| {
            let mut d = h.encode().to_vec();
            d.extend_from_slice(&frame[h.data_range().unwrap()]);
            d
        })
        .collect();
    for p in 0..parity {
        let mut d = ChunkHeader {
            index: k + p,
            ..data[0]
        }
        .encode()
        .to_vec();
        let at = usize::from(p) * CHUNK;
        d.extend_from_slice(&code[at..at + CHUNK]);
        out.push(d);
    }
    out
}

/// Every order of `items` (Heap's algorithm).
fn permutations(items: &mut Vec<usize>, n: usize, out: &mut Vec<Vec<usize>>) {
    if n <= 1 {
        out.push(items.clone());
        return;
    }
    for i in 0..n - 1 {
        permutations(items, n - 1, out);
        let j = if n.is_multiple_of(2) { i } else { 0 };
        items.swap(j, n - 1);
    }
    permutations(items, n - 1, out);
}

/// What the test expects the reassembler to have said about a pushed sequence.
#[derive(Debug, Default)]
struct Outcome {
    completed: Option<Vec<u8>>,
    pending: usize,
    duplicates: usize,
}

fn push_all(r: &mut Reassembler, datagrams: &[&[u8]], now: Instant) -> Outcome {
    let mut out = Outcome::default();
    for d in datagrams {
        match r.push(d, now) {
            Push::Complete { frame, .. } => {
                assert!(out.completed.is_none(), "completed twice");
                out.completed = Some(frame.to_vec());
            }
            Push::Pending { .. } => out.pending += 1,
            Push::Held { .. } => panic!("held, with no older frame"),
            Push::Rejected(Rejected::Duplicate) => out.duplicates += 1,
            Push::Rejected(Rejected::Late) => {
                assert!(out.completed.is_some(), "late before the frame completed");
            }
            Push::Rejected(other) => panic!("refused: {other:?}"),
        }
    }
    out
}

/// Every subset of a frame's 6 chunks (5 data, the last short, and 1 parity), each in every
/// order, once plainly and once with each chunk pushed twice in a row: the frame completes iff
/// 5 of the 6 came (the parity chunk standing in for any one data chunk), with exactly the
/// frame's bytes; otherwise the reassembler names the missing data chunks and how many more
/// chunks it needs.
#[test]
fn every_loss_pattern_of_a_small_frame_in_every_order() {
    let f = frame(18, 40); // 5 chunks of 4: 4+4+4+4+2
    let all = chunks(3, &f, 1);
    assert_eq!(all.len(), 6);
    let now = Instant::now();
    let mut sequences = 0;
    for subset in 0u32..(1 << all.len()) {
        let members: Vec<usize> = (0..all.len()).filter(|i| subset & (1 << i) != 0).collect();
        let mut orders = Vec::new();
        permutations(&mut members.clone(), members.len(), &mut orders);
        for order in orders {
            for doubled in [false, true] {
                let seq: Vec<&[u8]> = order
                    .iter()
                    .flat_map(|&i| std::iter::repeat_n(&all[i][..], 1 + usize::from(doubled)))
                    .collect();
                let mut r = Reassembler::new(KEY, CHUNK);
                let out = push_all(&mut r, &seq, now);
                sequences += 1;
                let got = members.len();
                if got >= 5 {
                    assert_eq!(out.completed.as_deref(), Some(&f[..]), "{order:?}");
                    assert_eq!(r.incomplete().count(), 0);
                    assert_eq!(r.newest_done(), Some(3));
                    assert_eq!(r.stats().complete, 1);
                    // Restored when a data chunk was missing as the fifth chunk came.
                    let fifth = order[4];
                    let data_by_fifth = order[..5].iter().filter(|&&i| i < 5).count();
                    assert_eq!(
                        r.stats().restored,
                        u64::from(data_by_fifth < 5),
                        "{order:?} (fifth {fifth})"
                    );
                    assert_eq!(r.stats().chunk_bytes, 18, "r= counts the frame once");
                } else {
                    assert_eq!(out.completed, None, "{order:?}");
                    assert_eq!(out.pending, got, "{order:?}");
                    let want_missing: u128 = (0..5)
                        .filter(|i| !members.contains(i))
                        .map(|i| 1u128 << i)
                        .sum();
                    let inc: Vec<Incomplete> = r.incomplete().collect();
                    if got == 0 {
                        assert!(inc.is_empty());
                    } else {
                        assert_eq!(inc.len(), 1);
                        assert_eq!(inc[0].seq, 3);
                        assert_eq!(inc[0].missing, want_missing, "{order:?}");
                        assert_eq!(usize::from(inc[0].need), 5 - got);
                        assert_eq!(inc[0].data_chunks, 5);
                    }
                    assert_eq!(r.newest_done(), None);
                }
                if doubled {
                    // The chunk that completes the frame, and every one after, is late again.
                    assert_eq!(out.duplicates, got.min(4), "{order:?}");
                } else {
                    assert_eq!(out.duplicates, 0);
                }
            }
        }
    }
    assert_eq!(sequences, 2 * 1957, "all 2^6 subsets in every order");
}

/// Frame 2 overtakes frame 1 and completes: it is held until frame 1 completes, then both
/// leave in order; chunks of frames that left are late.
#[test]
fn a_newer_frame_waits_for_an_older_one_in_repair() {
    let (old, new) = (frame(10, 1), frame(10, 2));
    let (old_c, new_c) = (chunks(1, &old, 0), chunks(2, &new, 0));
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    assert_eq!(r.push(&old_c[0], now), Push::Pending { seq: 1 });
    for c in &new_c[..2] {
        assert_eq!(r.push(c, now), Push::Pending { seq: 2 });
    }
    assert_eq!(r.push(&new_c[2], now), Push::Held { seq: 2 });
    assert_eq!(r.pop_ready(), None, "frame 1 is still in assembly");
    assert_eq!(r.newest_done(), Some(2), "acks may name the held frame");
    let inc: Vec<u64> = r.incomplete().map(|i| i.seq).collect();
    assert_eq!(inc, [1], "a held frame is not incomplete");
    assert_eq!(
        r.push(&new_c[0], now),
        Push::Rejected(Rejected::Late),
        "held: complete already"
    );
    // Frame 1's missing chunks come (a repair): it leaves, then frame 2.
    assert_eq!(r.push(&old_c[1], now), Push::Pending { seq: 1 });
    assert_eq!(
        r.push(&old_c[2], now),
        Push::Complete {
            seq: 1,
            frame: &old[..]
        }
    );
    assert_eq!(r.pop_ready(), Some((2, &new[..])));
    assert_eq!(r.pop_ready(), None);
    assert_eq!((r.stats().held, r.stats().given_up), (1, 0));
    for c in old_c.iter().chain(&new_c) {
        assert_eq!(r.push(c, now), Push::Rejected(Rejected::Late));
    }
    assert_eq!(r.incomplete().count(), 0);
}

/// `r=` counts the frames up to the one acked: not the chunks in of newer frames.
#[test]
fn bytes_through_leave_out_newer_frames_in_assembly() {
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    let (a, b) = (chunks(7, &frame(10, 0), 0), chunks(8, &frame(10, 1), 0));
    for c in &a {
        r.push(c, now);
    }
    r.push(&b[0], now);
    r.push(&b[2], now);
    assert_eq!(r.stats().chunk_bytes, 10 + 4 + 2);
    assert_eq!(
        r.bytes_through(7),
        10,
        "frame 8's 6 bytes are not through 7"
    );
    assert_eq!(r.bytes_through(8), 16);
}

/// Giving up the frame in repair releases the frames held behind it.
#[test]
fn giving_up_an_older_frame_releases_the_held_ones() {
    let fs: Vec<Vec<u8>> = (0..3u8).map(|s| frame(10, s * 10)).collect();
    let cs: Vec<Vec<Vec<u8>>> = (0..3).map(|s| chunks(s as u64 + 10, &fs[s], 0)).collect();
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    r.push(&cs[0][0], now); // frame 10, incomplete
    for c in &cs[1] {
        r.push(c, now);
    }
    for c in &cs[2] {
        r.push(c, now);
    }
    assert_eq!(r.stats().held, 2);
    assert_eq!(r.pop_ready(), None);
    assert_eq!(r.give_up(10), 1);
    assert_eq!(r.pop_ready(), Some((11, &fs[1][..])));
    assert_eq!(r.pop_ready(), Some((12, &fs[2][..])));
    assert_eq!(r.pop_ready(), None);
    assert_eq!(r.push(&cs[0][1], now), Push::Rejected(Rejected::Late));
}

/// With every slot taken, a newer frame gives up the oldest; a frame older than all of them is
/// late; a frame older than those in assembly but newer than what left may still start.
#[test]
fn a_frame_past_the_slots_gives_up_the_oldest_and_older_ones_are_late() {
    let n = SLOTS as u64 + 2;
    let fs: Vec<Vec<u8>> = (0..n).map(|s| frame(10, s as u8 * 10)).collect();
    let cs: Vec<Vec<Vec<u8>>> = (0..n as usize)
        .map(|s| chunks(s as u64 + 10, &fs[s], 0))
        .collect();
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    // Frames 11 ..= 10 + SLOTS take every slot.
    for c in &cs[1..=SLOTS] {
        assert!(matches!(r.push(&c[0], now), Push::Pending { .. }));
    }
    // Frame 10 is older than all of them: late, and nothing is given up for it.
    assert_eq!(r.push(&cs[0][0], now), Push::Rejected(Rejected::Late));
    assert_eq!(r.stats().given_up, 0);
    // The next frame takes frame 11's slot.
    let last = SLOTS + 1;
    assert!(matches!(r.push(&cs[last][0], now), Push::Pending { .. }));
    assert_eq!(r.stats().given_up, 1);
    let seqs: Vec<u64> = r.incomplete().map(|i| i.seq).collect();
    assert_eq!(seqs, (12..=10 + last as u64).collect::<Vec<_>>());
    // Frame 11 cannot come back.
    assert_eq!(r.push(&cs[1][1], now), Push::Rejected(Rejected::Late));
    // Frame 12 still completes, and leaves at once: it is the oldest.
    assert!(matches!(r.push(&cs[2][1], now), Push::Pending { .. }));
    assert_eq!(
        r.push(&cs[2][2], now),
        Push::Complete {
            seq: 12,
            frame: &fs[2][..]
        }
    );
    assert_eq!(r.incomplete().count(), SLOTS - 1);
}

#[test]
fn a_chunk_disagreeing_with_its_frame_is_refused() {
    let f = frame(10, 0);
    let c = chunks(5, &f, 0);
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    r.push(&c[0], now);
    // Same seq, another frame length (12 bytes, still 3 chunks).
    let other = chunks(5, &frame(12, 0), 0);
    assert_eq!(r.push(&other[1], now), Push::Rejected(Rejected::Mismatch));
    // Same seq, parity count changed.
    let other = chunks(5, &f, 2);
    assert_eq!(r.push(&other[1], now), Push::Rejected(Rejected::Mismatch));
    // Another key; another chunk size; garbage.
    let mut foreign = c[1].clone();
    foreign[27] ^= 1;
    assert_eq!(r.push(&foreign, now), Push::Rejected(Rejected::Foreign));
    let wide: Vec<u8> = {
        let h = ChunkHeader::for_frame(5, KEY, 10, 6)
            .unwrap()
            .next()
            .unwrap();
        let mut d = h.encode().to_vec();
        d.extend_from_slice(&f[..6]);
        d
    };
    assert_eq!(r.push(&wide, now), Push::Rejected(Rejected::ChunkSize));
    assert!(matches!(
        r.push(&f, now),
        Push::Rejected(Rejected::Invalid(_))
    ));
    assert_eq!(r.stats().refused, 5);
    // The frame is unharmed.
    r.push(&c[1], now);
    assert_eq!(
        r.push(&c[2], now),
        Push::Complete {
            seq: 5,
            frame: &f[..]
        }
    );
}

#[test]
fn giving_up_drops_the_frame_and_everything_older() {
    let now = Instant::now();
    let later = now + Duration::from_millis(30);
    let mut r = Reassembler::new(KEY, CHUNK);
    let (a, b) = (chunks(7, &frame(10, 0), 0), chunks(8, &frame(10, 1), 0));
    r.push(&a[0], now);
    r.push(&b[2], now);
    r.push(&b[0], later);
    let inc: Vec<Incomplete> = r.incomplete().collect();
    assert_eq!(inc[1].seq, 8);
    assert_eq!((inc[1].first_at, inc[1].last_at), (now, later));
    assert_eq!(inc[1].highest_index, 2);
    assert_eq!(inc[1].missing, 0b010);
    assert_eq!(r.give_up(7), 1);
    assert_eq!(r.newest_done(), Some(7));
    assert_eq!(r.push(&a[1], now), Push::Rejected(Rejected::Late));
    assert_eq!(r.give_up(8), 1);
    assert_eq!(r.incomplete().count(), 0);
    assert_eq!(r.stats().given_up, 2);
    // A newer frame starts afresh in a freed slot.
    let c = chunks(9, &frame(3, 9), 0);
    assert_eq!(
        r.push(&c[0], now),
        Push::Complete {
            seq: 9,
            frame: &frame(3, 9)[..]
        }
    );
}

/// The largest frame at the smallest mtu (85 chunks), and a 128-chunk frame: the bitmap's top
/// bits work.
#[test]
fn large_frames_reassemble() {
    use crate::chunk::{chunk_bytes_for_mtu, MIN_MTU_BYTES};
    let now = Instant::now();
    for (len, chunk) in [
        (MAX_UDP_PAYLOAD_BYTES, chunk_bytes_for_mtu(MIN_MTU_BYTES)),
        (256, 2),
    ] {
        let f = frame(len, 3);
        let mut r = Reassembler::new(KEY, chunk);
        let hs: Vec<ChunkHeader> = ChunkHeader::for_frame(1, KEY, len, chunk)
            .unwrap()
            .collect();
        let mut done = None;
        // Backwards, the first chunk last.
        for h in hs.iter().rev() {
            let mut d = h.encode().to_vec();
            d.extend_from_slice(&f[h.data_range().unwrap()]);
            if let Push::Complete { frame, .. } = r.push(&d, now) {
                done = Some(frame.to_vec());
            } else if h.index == 1 {
                let inc = r.incomplete().next().unwrap();
                assert_eq!(inc.missing, 1, "only chunk 0 missing");
                assert_eq!(inc.need, 1);
            }
        }
        assert_eq!(done.as_deref(), Some(&f[..]), "{len}");
    }
}

/// The loss a viewer reports: chunks that did not come on their first sending, up to the
/// highest index that did, over the chunks sent; resent chunks and parity that came after the
/// frame was whole do not count; nothing is said before [`LOSS_FIRST_CHUNKS`], and a window
/// without loss takes the figure down over the next two.
#[test]
fn the_loss_reported_is_the_share_of_chunks_lost_on_their_first_sending() {
    let f = frame(40, 9); // 10 data chunks
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    let mut seq = 0;
    // Frames of 10 data + 2 parity chunks, each losing its chunk 3 (the parity completes it)
    // and its last parity chunk (after completion: not seen, not counted).
    let mut lossy = |r: &mut Reassembler, frames: u32| {
        for _ in 0..frames {
            seq += 1;
            let c = chunks(seq, &f, 2);
            for (i, d) in c.iter().enumerate() {
                if i == 3 || i == 11 {
                    continue;
                }
                let pushed = r.push(d, now);
                if i == 10 {
                    assert!(matches!(pushed, Push::Complete { .. }), "{pushed:?}");
                }
            }
            // A repair of chunk 3 after the frame left: late, and no loss taken back.
            let mut resent = c[3].clone();
            resent[2] |= crate::chunk::FLAG_RESENT;
            assert_eq!(r.push(&resent, now), Push::Rejected(Rejected::Late));
        }
    };
    lossy(&mut r, LOSS_FIRST_CHUNKS / 11);
    assert_eq!(r.loss_permille(), None, "99 chunks");
    lossy(&mut r, 1);
    // 1 lost of 11 sent up to the highest index seen (10): 90.9 ‰.
    assert_eq!(r.loss_permille(), Some(90));
    lossy(&mut r, LOSS_WINDOW_CHUNKS / 11);
    assert_eq!(r.loss_permille(), Some(90));
    assert_eq!(r.stats().restored, u64::from(LOSS_WINDOW_CHUNKS / 11 + 10));
    // Then frames without loss: a window, and the figure falls (the window before now holds
    // the last lossy frames and the clean ones); another, and it is 0.
    let mut clean = |r: &mut Reassembler, chunks_sent: u32| {
        for _ in 0..chunks_sent / 10 {
            seq += 1;
            for d in &chunks(seq, &f, 0) {
                r.push(d, now);
            }
        }
    };
    clean(&mut r, LOSS_WINDOW_CHUNKS);
    let mixed = r.loss_permille().unwrap();
    assert!((1..90).contains(&mixed), "{mixed}");
    clean(&mut r, LOSS_WINDOW_CHUNKS);
    assert_eq!(r.loss_permille(), Some(0));
}

/// The path rate a viewer reports: a frame's first copies after its first, in datagram bytes,
/// over their spread on arrival; the upper quartile of the last [`PATH_SAMPLES`] frames, so
/// that one frame read all at once does not count; resent chunks, frames of fewer than three
/// chunks and chunks that came at one instant say nothing.
#[test]
fn the_path_rate_reported_is_the_spread_of_a_frames_chunks() {
    let f = frame(40, 9); // 10 data chunks of 4 bytes: datagrams of 32
    let t0 = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    let at = |us: u64| t0 + Duration::from_micros(us);
    // Frame 1: one chunk every 100 µs: 9 × 32 bytes over 900 µs = 2,560 kbit/s.
    for (i, d) in chunks(1, &f, 0).iter().enumerate() {
        r.push(d, at(100 * i as u64));
    }
    assert_eq!(chunks(1, &f, 0)[1].len(), 32);
    assert_eq!(r.path_kbps(), Some(2_560));
    // Frame 2, twice as fast, loses chunk 5 (asked for, resent 10 ms later: not counted): 8 ×
    // 32 bytes over 450 µs.
    let c = chunks(2, &f, 0);
    for (i, d) in c.iter().enumerate().filter(|&(i, _)| i != 5) {
        r.push(d, at(10_000 + 50 * i as u64));
    }
    let mut resent = c[5].clone();
    resent[2] |= crate::chunk::FLAG_RESENT;
    assert!(matches!(r.push(&resent, at(20_000)), Push::Complete { .. }));
    assert_eq!(
        r.path_kbps(),
        Some(8 * 32 * 8_000 / 450),
        "the higher of the two"
    );
    // Frames whose chunks came at one instant, or of two chunks, measure nothing.
    for d in &chunks(3, &f, 0) {
        r.push(d, at(30_000));
    }
    for d in &chunks(4, &frame(8, 1), 0) {
        r.push(d, at(40_000));
    }
    assert_eq!(r.path_kbps(), Some(8 * 32 * 8_000 / 450));
    // After PATH_SAMPLES slower frames, the fast one is forgotten ...
    let mut seq = 10;
    let mut t = 50_000;
    let mut frame_every = |r: &mut Reassembler, us_apart: u64| {
        for (i, d) in chunks(seq, &f, 0).iter().enumerate() {
            r.push(d, at(t + us_apart * i as u64));
        }
        seq += 1;
        t += 10_000;
    };
    for _ in 0..PATH_SAMPLES {
        frame_every(&mut r, 100);
    }
    assert_eq!(r.path_kbps(), Some(2_560));
    // ... three frames read at a hundredth of that spread do not count, a fourth does.
    for _ in 0..3 {
        frame_every(&mut r, 1);
    }
    assert_eq!(r.path_kbps(), Some(2_560));
    frame_every(&mut r, 1);
    assert_eq!(r.path_kbps(), Some(256_000));
    // A new reassembler has no figure.
    assert_eq!(Reassembler::new(KEY, CHUNK).path_kbps(), None);
}

/// A frame that lost more data chunks than its parity covers is asked for; the repair of any
/// of them completes it with the parity it has.
#[test]
fn a_repair_completes_a_frame_with_the_parity_it_has() {
    let f = frame(40, 3);
    let c = chunks(7, &f, 2);
    let now = Instant::now();
    let mut r = Reassembler::new(KEY, CHUNK);
    for (i, d) in c.iter().enumerate() {
        if ![1, 4, 8].contains(&i) {
            assert_eq!(r.push(d, now), Push::Pending { seq: 7 });
        }
    }
    let inc: Vec<Incomplete> = r.incomplete().collect();
    assert_eq!(inc.len(), 1);
    assert_eq!(inc[0].missing, 1 << 1 | 1 << 4 | 1 << 8);
    assert_eq!(inc[0].need, 1, "7 data + 2 parity of 10");
    let mut resent = c[4].clone();
    resent[2] |= crate::chunk::FLAG_RESENT;
    match r.push(&resent, now) {
        Push::Complete { seq: 7, frame } => assert_eq!(frame, &f[..]),
        other => panic!("{other:?}"),
    }
    assert_eq!(r.stats().restored, 1);
}
