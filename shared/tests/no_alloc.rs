//! Hostile chunk headers cost no memory: once a `Reassembler` is made, decoding and pushing
//! datagrams (hostile, foreign, valid, evicting) allocates nothing. A counting allocator (this
//! test binary's global one) counts the allocations made on the test's own thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::Instant;

use surv_proto::chunk::{ChunkHeader, CHUNK_HEADER_BYTES};
use surv_proto::{Ack, Push, Reassembler};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> u64 {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    ALLOCATIONS.with(Cell::get)
}

/// A small deterministic generator (xorshift), so the test needs no crate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn hostile_chunks_and_acks_allocate_nothing() {
    const KEY: u64 = 42;
    const CHUNK: usize = 1172;
    let mut r = Reassembler::new(KEY, CHUNK);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    // 10,000 datagrams made beforehand: random headers claiming huge counts and sizes, indexes
    // past the count, valid chunks of many frames (so slots are taken and given up), and their
    // truncations.
    let mut datagrams: Vec<Vec<u8>> = Vec::with_capacity(10_000);
    let payload = vec![7u8; 9_000];
    for i in 0..10_000u64 {
        let mut d = match i % 4 {
            0 => {
                // Random bytes after a valid magic and version.
                let mut d: Vec<u8> = (0..CHUNK_HEADER_BYTES + (rng.next() % 2000) as usize)
                    .map(|_| rng.next() as u8)
                    .collect();
                d[..3].copy_from_slice(&[b'S', b'C', 0x10]);
                d
            }
            1 => {
                // Hostile fields: k, m, index, sizes.
                let h = ChunkHeader {
                    resent: false,
                    index: rng.next() as u8,
                    data_chunks: rng.next() as u8,
                    parity_chunks: rng.next() as u8,
                    chunk_bytes: rng.next() as u16,
                    frame_bytes: rng.next() as u32,
                    seq: rng.next() % 64,
                    key: KEY,
                };
                let mut d = h.encode().to_vec();
                d.extend_from_slice(&payload[..(rng.next() % 1200) as usize]);
                d
            }
            _ => {
                // A valid chunk of a frame of 1-4 chunks (its size fixed by its seq), frames
                // in rising order with some going back, chunks in random order.
                let seq = (i / 6).saturating_sub(rng.next() % 3);
                let frame_bytes = 1 + (seq * 7_919 % 4_000) as usize;
                let k = frame_bytes.div_ceil(CHUNK);
                let index = (rng.next() % k as u64) as usize;
                let h = ChunkHeader::for_frame(seq, KEY, frame_bytes, CHUNK)
                    .unwrap()
                    .nth(index)
                    .unwrap();
                let mut d = h.encode().to_vec();
                d.extend_from_slice(&payload[..h.data_range().unwrap().len()]);
                d
            }
        };
        if i % 7 == 0 {
            d.truncate((rng.next() % d.len() as u64) as usize);
        }
        datagrams.push(d);
    }
    let acks: Vec<Vec<u8>> = (0..1000u64)
        .map(|i| format!("nack {i} n={} m={:x} k=000000000000002a", i % 130, i * 977).into_bytes())
        .collect();
    let now = Instant::now();
    let mut outcomes = [0u64; 3];
    let made = allocations(|| {
        for d in &datagrams {
            let _ = ChunkHeader::decode(d);
            match r.push(d, now) {
                Push::Complete { .. } => outcomes[0] += 1,
                Push::Pending { .. } | Push::Held { .. } => outcomes[1] += 1,
                Push::Rejected(_) => outcomes[2] += 1,
            }
            while let Some(ready) = r.pop_ready() {
                std::hint::black_box(ready);
                outcomes[0] += 1;
            }
            for inc in r.incomplete() {
                std::hint::black_box(inc);
            }
        }
        for a in &acks {
            let _ = std::hint::black_box(Ack::decode_keyed(a));
        }
    });
    assert_eq!(made, 0, "allocations while decoding and reassembling");
    // The stream reached every path: frames completed, chunks stored, chunks refused.
    assert!(outcomes.iter().all(|&n| n > 0), "{outcomes:?}");
    // The counter works: a Vec counts.
    assert!(allocations(|| drop(std::hint::black_box(vec![1u8; 10]))) > 0);
}
