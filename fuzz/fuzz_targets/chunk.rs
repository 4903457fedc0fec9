//! A viewer's reassembly of a chunked session under any sequence of datagrams: the input is
//! datagrams, each after a length byte, pushed in order into one `Reassembler` (key 0, chunks
//! of 8 bytes). No input may panic; a completed frame is the frame's length and, byte for
//! byte, the payloads of the chunks stored for it; no frame completes twice.
#![no_main]

use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use surv_proto::{ChunkHeader, Push, Reassembler};

fuzz_target!(|data: &[u8]| {
    let mut r = Reassembler::new(0, 8);
    // What each frame's stored chunks said: its length and its bytes so far.
    let mut model: HashMap<u64, (usize, Vec<Option<u8>>)> = HashMap::new();
    let now = Instant::now();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let (datagram, next) = tail.split_at(usize::from(len).min(tail.len()));
        rest = next;
        let header = ChunkHeader::decode(datagram).ok();
        match r.push(datagram, now) {
            Push::Complete { seq, frame } => {
                let (h, payload) = header.expect("a stored chunk decodes");
                assert_eq!(h.seq, seq);
                let (frame_bytes, mut bytes) = model
                    .remove(&seq)
                    .unwrap_or((frame.len(), vec![None; frame.len()]));
                let range = h.data_range().expect("a data chunk");
                for (b, &p) in bytes[range].iter_mut().zip(payload) {
                    *b = Some(p);
                }
                assert_eq!(frame.len(), frame_bytes);
                let want: Option<Vec<u8>> = bytes.into_iter().collect();
                assert_eq!(Some(frame), want.as_deref(), "every byte came from a stored chunk");
            }
            Push::Pending { seq } => {
                let (h, payload) = header.expect("a stored chunk decodes");
                let len = h.frame_bytes as usize;
                let entry = model.entry(seq).or_insert((len, vec![None; len]));
                assert_eq!(entry.0, len, "one frame, one length");
                for (b, &p) in entry.1[h.data_range().expect("a data chunk")].iter_mut().zip(payload) {
                    *b = Some(p);
                }
            }
            Push::Rejected(_) => {}
        }
        assert!(r.incomplete().count() <= 2);
    }
});
