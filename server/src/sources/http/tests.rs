//! The http:// source's URL handling and the reasons a user reads for each refusal. (Streams
//! and stills against stand-in cameras: tests/tests/source_http.rs.)

use super::client::{status_problem, Target};
use super::*;

#[test]
fn urls_give_host_port_path_and_credentials() {
    let t = Target::parse("http://admin:p%40ss%3Aword@10.0.0.9:8080/img%20a?x=1#frag").unwrap();
    assert_eq!(t.shown, "http://admin:***@10.0.0.9:8080/img%20a?x=1#frag");
    assert!(t.has_credentials());
    let dbg = format!("{t:?}");
    assert!(!dbg.contains("p%40ss"), "{dbg}");
    for ok in [
        "http://cam",
        "HTTP://cam.local/stream.mjpg",
        "http://[::1]:81/x",
        "http://[::1]/x",
        "http://cam?action=stream",
        "http://user@cam/x",
    ] {
        assert!(Target::parse(ok).is_ok(), "{ok}");
    }
    for bad in [
        "rtsp://cam/x",
        "http://",
        "http://cam:0/x",
        "http://cam:99999/x",
        "http://[::1/x",
        "http://cam/a b",
    ] {
        assert!(Target::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn the_source_is_built_from_its_spec_and_hides_the_password() {
    let spec = SourceSpec::parse("http://u:secret@127.0.0.1:9/img").unwrap();
    let source = spec.build(&SourceOptions::default()).unwrap();
    assert_eq!(source.describe(), "http://u:***@127.0.0.1:9/img");
    let err = SourceSpec::parse("http://cam:77777/")
        .unwrap()
        .build(&SourceOptions::default())
        .err()
        .expect("a bad port is an error");
    assert!(err.to_string().contains("HOST:PORT"), "{err}");
}

use super::super::SourceSpec;

#[test]
fn refusals_say_what_to_do() {
    let with = Target::parse("http://u:p@cam/snap.jpg").unwrap();
    let without = Target::parse("http://cam/snap.jpg").unwrap();
    let response = |code: u16, header: Option<(&str, &str)>| {
        let mut r = hyper::Response::builder().status(code);
        if let Some((k, v)) = header {
            r = r.header(k, v);
        }
        r.body(()).unwrap()
    };
    assert_eq!(status_problem(&response(200, None), &with), None);
    assert_eq!(status_problem(&response(206, None), &with), None);
    let wrong = status_problem(
        &response(401, Some(("www-authenticate", "Digest realm=\"x\""))),
        &with,
    )
    .unwrap();
    assert!(wrong.starts_with("HTTP 401: wrong credentials"), "{wrong}");
    assert!(wrong.contains("Digest"), "{wrong}");
    let missing = status_problem(&response(401, None), &without).unwrap();
    assert!(
        missing.contains("HTTP 401: missing credentials"),
        "{missing}"
    );
    let nf = status_problem(&response(404, None), &with).unwrap();
    assert!(nf.contains("404") && nf.contains("/snap.jpg"), "{nf}");
    let moved = status_problem(&response(302, Some(("location", "/other"))), &with).unwrap();
    assert!(moved.contains("/other"), "{moved}");
    assert!(status_problem(&response(503, None), &with)
        .unwrap()
        .contains("HTTP 503"));
    assert!(status_problem(&response(403, None), &with)
        .unwrap()
        .contains("HTTP 403"));
}
