//! A viewer's reassembly of a chunked session under any sequence of datagrams: the input is
//! datagrams, each after a length byte, pushed in order into one `Reassembler` (key 0, chunks
//! of 8 bytes). No input may panic; a frame that leaves (completed at once, or held and then
//! popped) is the frame's length and, byte for byte, the payloads of the data chunks stored for
//! it (all of them, unless parity chunks restored the rest); frames leave in increasing order,
//! none twice.
#![no_main]

use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use surv_proto::reassembly::SLOTS;
use surv_proto::{ChunkHeader, Push, Reassembler};

/// What each frame's stored chunks said: its length, its bytes so far, and whether parity
/// chunks restored the rest.
type Model = HashMap<u64, (usize, Vec<Option<u8>>, bool)>;

/// A frame that left must be what its stored data chunks said.
fn check(model: &mut Model, seq: u64, frame: &[u8]) {
    let (frame_bytes, bytes, restored) =
        model.remove(&seq).expect("a frame that left had chunks stored");
    assert_eq!(frame.len(), frame_bytes);
    for (got, want) in frame.iter().zip(&bytes) {
        match want {
            Some(want) => assert_eq!(got, want, "a stored chunk's byte"),
            None => assert!(restored, "every byte came from a stored chunk"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(0, 8);
    let mut model = Model::new();
    let now = Instant::now();
    let mut left: Option<u64> = None;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (datagram, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let header = ChunkHeader::decode(datagram).ok();
        let restored = r.stats().restored;
        let (stored, completed) = match r.push(datagram, now) {
            Push::Complete { seq, frame } => (Some(seq), Some((seq, frame.to_vec()))),
            Push::Pending { seq } | Push::Held { seq } => (Some(seq), None),
            Push::Rejected(_) => (None, None),
        };
        let restored = r.stats().restored > restored;
        if let Some(seq) = stored {
            let (h, payload) = header.expect("a stored chunk decodes");
            assert_eq!(h.seq, seq);
            let len = h.frame_bytes as usize;
            let entry = model.entry(seq).or_insert((len, vec![None; len], false));
            assert_eq!(entry.0, len, "one frame, one length");
            entry.2 |= restored;
            if let Some(range) = h.data_range() {
                for (b, &p) in entry.1[range].iter_mut().zip(payload) {
                    *b = Some(p);
                }
            }
        }
        if let Some((seq, frame)) = completed {
            assert!(left.is_none_or(|l| seq > l), "frames leave in order");
            left = Some(seq);
            check(&mut model, seq, &frame);
        }
        while let Some((seq, frame)) = r.pop_ready() {
            assert!(left.is_none_or(|l| seq > l), "frames leave in order");
            left = Some(seq);
            check(&mut model, seq, frame);
        }
        assert!(r.incomplete().count() <= SLOTS);
    }
});
