//! The surv-server binary as a user meets it: flags and start-up errors.

use std::process::Command;

fn server() -> Command {
    Command::new(env!("CARGO_BIN_EXE_surv-server"))
}

#[test]
fn a_missing_camera_is_named_and_the_test_source_suggested() {
    let logs = tempfile::tempdir().unwrap();
    let out = server()
        .args(["--cam", "99", "--size", "160x90", "--port", "0"])
        .arg("--log-dir")
        .arg(logs.path())
        .output()
        .unwrap();
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
        let out = server()
            .args(args)
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
