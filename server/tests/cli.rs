//! The surv-server binary as a user meets it: flags and start-up errors.

use std::process::{Command, Output};
use std::time::Duration;

/// The server fails fast on each of these; a build that starts serving instead is killed here,
/// failing the test rather than hanging it.
const EXIT_WITHIN: Duration = Duration::from_secs(30);

/// Every port on an OS-picked one or off: these start-up errors must not depend on whether
/// another server (a user's, the busy suite's 720p one) holds the default ports.
const NO_LISTENERS: [&str; 8] = [
    "--port",
    "0",
    "--http-port",
    "0",
    "--rtsp-port",
    "0",
    "--webrtc-port",
    "0",
];

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_surv-server"))
}

fn output(cmd: &mut Command) -> Output {
    surv_tests::output_within(cmd, EXIT_WITHIN).unwrap()
}

#[test]
fn a_missing_camera_is_named_and_the_test_source_suggested() {
    let logs = tempfile::tempdir().unwrap();
    let out = output(
        server()
            .args(["--cam", "99", "--size", "160x90"])
            .args(NO_LISTENERS)
            .arg("--log-dir")
            .arg(logs.path()),
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/video99"), "{err}");
    assert!(err.contains("--source test"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_flags_are_refused_with_a_reason() {
    for (args, want) in [
        (
            &["--source", "test", "--max-datagram", "70000"][..],
            "--max-datagram",
        ),
        (&["--source", "test", "--size", "640"][..], "WIDTHxHEIGHT"),
        (&["--source", "test", "--cam", "1"][..], "contradict"),
        (&["--source", "test", "--size", "641x480"][..], "641"),
    ] {
        let out = output(
            server()
                .args(args)
                .args(NO_LISTENERS)
                .args(["--bind", "127.0.0.1"]),
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
