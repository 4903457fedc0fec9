//! What a WHEP player POSTs as its offer: the server's checks, then str0m's SDP parser and
//! negotiation, then the server's choice of the payload type. No input may panic. Replayed by
//! server/src/watchers/webrtc/offer.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::watchers::webrtc::offer::examine;

fuzz_target!(|data: &[u8]| {
    let _ = examine(data);
});
