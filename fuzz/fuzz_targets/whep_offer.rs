//! What a WHEP player POSTs as its offer: the server's checks, then str0m's SDP parser and
//! negotiation, then the server's choice of the payload type. No input may crash the server.
//! Replayed by server/src/watchers/webrtc/offer.rs.
//!
//! str0m 0.24.1 panics on some hostile offers (a payload type claimed twice: "Pt locked
//! multiple times", corpus `crash-str0m-pt-claimed-twice`); `offer::answer` catches a panic
//! inside str0m's negotiation and refuses the offer (400). libFuzzer's panic hook would abort
//! at that caught panic, so the default hook is put back: a panic anywhere else still
//! unwinds out of `examine` and crashes the target.
#![no_main]

use std::sync::Once;

use libfuzzer_sys::fuzz_target;
use surv_server::watchers::webrtc::offer::examine;

static DEFAULT_HOOK: Once = Once::new();

fuzz_target!(|data: &[u8]| {
    DEFAULT_HOOK.call_once(|| drop(std::panic::take_hook()));
    let _ = examine(data);
});
