//! What peers send to the RTCP port (receiver reports, punch packets, anything): `is_rtcp`. No
//! input may panic, and what it accepts has the length fields it checked. Replayed by
//! server/src/rtp/tests.rs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use surv_server::rtp::rtcp::is_rtcp;

fuzz_target!(|data: &[u8]| {
    if is_rtcp(data) {
        assert!(data.len() >= 4 && data.len() % 4 == 0);
        assert!((200..=206).contains(&data[1]));
    }
});
