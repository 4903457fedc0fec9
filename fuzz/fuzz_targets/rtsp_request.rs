//! What an RTSP player sends the server: rtsp-types parses it, then the server's own readers
//! take it apart (the mount a URI names, the Transport offers, a Digest answer). No input may
//! panic. Replayed by server/src/watchers/rtsp/request.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::watchers::rtsp::request::examine;

fuzz_target!(|data: &[u8]| {
    examine(data);
});
