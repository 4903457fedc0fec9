//! The server's decoder of every ack form, the chunked session's `hello mtu=`, `continue r=`
//! and `nack` included. No input may panic, and what decodes encodes back to the same ack.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((ack, key)) = surv_proto::Ack::decode_keyed(data) {
        let wire = ack.encode_keyed(key);
        assert!(wire.len() <= surv_proto::MAX_CHUNK_ACK_BYTES);
        assert_eq!(surv_proto::Ack::decode_keyed(&wire), Ok((ack, key)));
    }
});
