//! Datagram classification and the owner's silence limit.

use std::time::Duration;

use super::{classify, silence_limit, Datagram, MAX_SILENCE, MIN_SILENCE};

#[test]
fn datagrams_are_told_apart_in_one_place() {
    assert_eq!(classify(&[0xFF, 0xD8, 0xFF, 0xD9]), Datagram::Jpeg);
    assert_eq!(classify(b"Request"), Datagram::WatcherRequest);
    assert_eq!(classify(b"Request\n"), Datagram::Other);
    assert_eq!(classify(b""), Datagram::Other);
    assert_eq!(classify(b"continue"), Datagram::Other);
}

#[test]
fn silence_limit_is_ten_frames_within_bounds() {
    assert_eq!(silence_limit(None), MAX_SILENCE);
    let ms = Duration::from_millis;
    assert_eq!(silence_limit(Some(ms(150))), ms(1500));
    assert_eq!(silence_limit(Some(ms(33))), MIN_SILENCE);
    assert_eq!(silence_limit(Some(ms(1000))), MAX_SILENCE);
}
