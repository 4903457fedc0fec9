//! What an LL-HLS player puts in a playlist request's query (`_HLS_msn`, `_HLS_part`, and
//! anything else): parsed, and checked against a few live edges. No input may panic.
//! Replayed by server/src/hls/playlist.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::hls::playlist::examine;

fuzz_target!(|data: &[u8]| {
    examine(data);
});
