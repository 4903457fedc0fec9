//! A viewer's reassembly of a chunked session under any sequence of datagrams: the input is
//! datagrams, each after a length byte, pushed in order into one `Reassembler` (key 0, chunks
//! of 8 bytes). No input may panic; a frame that leaves (completed at once, or held and then
//! popped) is the frame's length and, byte for byte, the payloads of the chunks stored for it;
//! frames leave in increasing order, none twice.
#![no_main]

use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use surv_proto::reassembly::SLOTS;
use surv_proto::{ChunkHeader, Push, Reassembler};

/// A frame that left must be what its stored chunks said.
fn check(model: &mut HashMap<u64, (usize, Vec<Option<u8>>)>, seq: u64, frame: &[u8]) {
    let (frame_bytes, bytes) = model.remove(&seq).expect("a frame that left had chunks stored");
    assert_eq!(frame.len(), frame_bytes);
    let want: Option<Vec<u8>> = bytes.into_iter().collect();
    assert_eq!(Some(frame), want.as_deref(), "every byte came from a stored chunk");
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(0, 8);
    // What each frame's stored chunks said: its length and its bytes so far.
    let mut model: HashMap<u64, (usize, Vec<Option<u8>>)> = HashMap::new();
    let now = Instant::now();
    let mut left: Option<u64> = None;
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (datagram, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let header = ChunkHeader::decode(datagram).ok();
        let pushed = r.push(datagram, now);
        if let Push::Complete { seq, .. } | Push::Pending { seq } | Push::Held { seq } = pushed {
            let (h, payload) = header.expect("a stored chunk decodes");
            assert_eq!(h.seq, seq);
            let len = h.frame_bytes as usize;
            let entry = model.entry(seq).or_insert((len, vec![None; len]));
            assert_eq!(entry.0, len, "one frame, one length");
            for (b, &p) in entry.1[h.data_range().expect("a data chunk")].iter_mut().zip(payload) {
                *b = Some(p);
            }
        }
        if let Push::Complete { seq, frame } = pushed {
            assert!(left.is_none_or(|l| seq > l), "frames leave in order");
            left = Some(seq);
            check(&mut model, seq, frame);
        }
        while let Some((seq, frame)) = r.pop_ready() {
            assert!(left.is_none_or(|l| seq > l), "frames leave in order");
            left = Some(seq);
            check(&mut model, seq, frame);
        }
        assert!(r.incomplete().count() <= SLOTS);
    }
});
