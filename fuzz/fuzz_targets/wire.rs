//! The SURV/1 wire messages a peer sends or a hostile server answers: registration lines (with
//! tokens), seed 001's Request datagrams, acks, replies and frame tags. No input may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = surv_proto::Registration::decode(data, true);
    let _ = surv_proto::Registration::decode(data, false);
    let _ = surv_proto::RegistrationLine::decode(data, false);
    let _ = surv_proto::AppRequest::decode(data);
    let _ = surv_proto::Ack::decode(data);
    let _ = surv_proto::Reply::decode(data);
    let _ = surv_proto::FrameTag::decode(data);
});
