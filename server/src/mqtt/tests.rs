//! The MQTT pieces on their own: the JSON of each event, the outbox (bounded, oldest dropped,
//! unacknowledged events back in order after a disconnect), the broker URL and topic checks.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{json, Value};

use super::outbox::Outbox;
use super::payload::{motion_state, EventJson, MAX_TEXT_CHARS};
use super::{check_topic, client_id, BrokerUrl};
use crate::journal::stamp_us as rfc3339;
use crate::journal::{Event, Leave, LeaveReason};
use crate::watchers::WatcherKind;

const AT: u64 = 1_795_000_000_123_456;

fn json_of(event: &Event) -> Value {
    serde_json::from_str(&EventJson::of(event).to_json()).unwrap()
}

/// `at` is RFC 3339 for the same instant as `at_us` (to the millisecond).
fn assert_time(v: &Value, text_key: &str, us_key: &str) {
    let us = v[us_key].as_u64().unwrap();
    let text = v[text_key].as_str().unwrap();
    let parsed = chrono::DateTime::parse_from_rfc3339(text).unwrap();
    assert_eq!(parsed.timestamp_micros() as u64, us / 1000 * 1000, "{text}");
}

#[test]
fn join_and_leave_carry_kind_address_reason_and_frames() {
    let viewer: SocketAddr = "127.0.0.1:5000".parse().unwrap();
    let join = json_of(&Event::Join {
        at_us: AT,
        session_id: 3,
        viewer,
        kind: WatcherKind::Seed,
        camera: "door".into(),
    });
    assert_time(&join, "at", "at_us");
    assert_eq!(join["at_us"], AT);
    let mut without_time = join.clone();
    without_time.as_object_mut().unwrap().remove("at");
    assert_eq!(
        without_time,
        json!({"type":"join","at_us":AT,"session":3,"kind":"seed","address":"127.0.0.1:5000","camera":"door"})
    );

    let leave = json_of(&Event::Leave {
        at_us: AT,
        leave: Leave {
            session_id: 3,
            viewer,
            kind: WatcherKind::Seed,
            reason: LeaveReason::Timeout,
            duration: Duration::from_millis(10_333),
            frames_sent: 310,
            bytes_sent: 1_534_210,
            frames_skipped: 2,
            camera: "door".into(),
        },
    });
    assert_eq!(leave["type"], "leave");
    assert_eq!(leave["camera"], "door");
    assert_eq!(leave["kind"], "seed");
    assert_eq!(leave["address"], "127.0.0.1:5000");
    assert_eq!(leave["reason"], "timeout");
    assert_eq!(leave["frames"], 310);
    assert_eq!(leave["frames_skipped"], 2);
    assert_eq!(leave["bytes"], 1_534_210);
    assert_eq!(leave["duration_s"], 10.333);
}

#[test]
fn source_events_say_which_source_and_why_with_long_text_cut() {
    let long = "x".repeat(MAX_TEXT_CHARS * 3);
    let lost = json_of(&Event::SourceLost {
        at_us: AT,
        source: "camera 0".into(),
        reason: long,
        camera: Some("door".into()),
    });
    assert_eq!(lost["type"], "source_lost");
    assert_eq!(lost["source"], "camera 0");
    assert_eq!(lost["camera"], "door");
    assert_eq!(
        lost["reason"].as_str().unwrap().chars().count(),
        MAX_TEXT_CHARS + 1
    );
    let back = json_of(&Event::SourceBack {
        at_us: AT,
        source: "camera 0".into(),
        down: Duration::from_millis(3_200),
        camera: None,
    });
    assert_eq!(back["type"], "source_back");
    assert_eq!(back["down_s"], 3.2);
    assert!(back.get("camera").is_none(), "no camera, no field: {back}");
    assert_time(&back, "at", "at_us");
}

#[test]
fn motion_events_give_percent_scores_fraction_boxes_and_times() {
    let region = [0.25, 0.4, 0.125, 1.0 / 6.0];
    let want_box = json!({"x":0.25,"y":0.4,"w":0.125,"h":0.1667});
    let start_event = Event::MotionStart {
        at_us: AT,
        score: 0.031_25,
        region,
        camera: Some("yard".into()),
    };
    let start = json_of(&start_event);
    assert_eq!(start["type"], "motion_start");
    assert_eq!(start["score"], 3.125);
    assert_eq!(start["box"], want_box);
    assert_time(&start, "at", "at_us");
    assert_eq!(motion_state(&start_event), Some(true));

    let update = json_of(&Event::MotionUpdate {
        at_us: AT + 1_000_000,
        start_us: AT,
        score: 0.025,
        peak: 0.0625,
        region,
        camera: Some("yard".into()),
    });
    assert_eq!(update["type"], "motion_update");
    assert_eq!(
        (update["score"].clone(), update["peak"].clone()),
        (json!(2.5), json!(6.25))
    );
    assert_eq!(update["start_us"], AT);
    assert_time(&update, "start", "start_us");

    let end_event = Event::MotionEnd {
        start_us: AT,
        end_us: AT + 4_990_000,
        peak: 0.0625,
        region,
        camera: Some("yard".into()),
    };
    let end = json_of(&end_event);
    assert_eq!(end["type"], "motion_end");
    assert_eq!(end["duration_s"], 4.99);
    assert_eq!(end["at_us"], end["end_us"]);
    assert_time(&end, "end", "end_us");
    assert_time(&end, "start", "start_us");
    assert_eq!(end["box"], want_box);
    assert_eq!(motion_state(&end_event), Some(false));
    assert_eq!(
        (start["camera"].clone(), end["camera"].clone()),
        (json!("yard"), json!("yard"))
    );
}

#[test]
fn object_events_give_scores_boxes_labels_and_times() {
    let region = [0.25, 0.4, 0.125, 1.0 / 6.0];
    let want_box = json!({"x":0.25,"y":0.4,"w":0.125,"h":0.1667});
    let start = json_of(&Event::ObjectStart {
        at_us: AT,
        label: "person",
        score: 0.6283,
        region,
        camera: Some("yard".into()),
    });
    assert_eq!(start["type"], "object_start");
    assert_eq!(
        (start["label"].clone(), start["score"].clone()),
        (json!("person"), json!(0.628))
    );
    assert_eq!(start["box"], want_box);
    assert_time(&start, "at", "at_us");
    let end = json_of(&Event::ObjectEnd {
        start_us: AT,
        end_us: AT + 5_800_000,
        label: "person",
        peak: 0.641,
        region,
        camera: Some("yard".into()),
    });
    assert_eq!(end["type"], "object_end");
    assert_eq!(
        (end["duration_s"].clone(), end["peak"].clone()),
        (json!(5.8), json!(0.641))
    );
    assert_eq!(end["at_us"], end["end_us"]);
    assert_time(&end, "end", "end_us");
    assert_time(&end, "start", "start_us");
    assert_eq!(end["camera"], "yard");
    let count = json_of(&Event::ObjectCount {
        at_us: AT,
        label: "dog",
        count: 2,
        camera: None,
    });
    assert_eq!(
        (count["label"].clone(), count["count"].clone()),
        (json!("dog"), json!(2))
    );
    assert!(count.get("camera").is_none(), "{count}");
}

#[test]
fn a_time_out_of_range_is_written_as_its_number_not_a_panic() {
    assert_eq!(rfc3339(u64::MAX), u64::MAX.to_string());
}

#[test]
fn a_full_queue_drops_the_oldest_and_counts_it() {
    let mut o = Outbox::<String>::new(3);
    let dropped: u64 = (0..5).map(|i| o.push(format!("e{i}"))).sum();
    assert_eq!(dropped, 2);
    assert_eq!(o.queued(), 3);
    assert_eq!(o.next().map(String::as_str), Some("e2"));
}

#[test]
fn unacknowledged_events_go_back_in_order_and_acked_ones_do_not() {
    let mut o = Outbox::<String>::new(10);
    for i in 0..4 {
        o.push(format!("e{i}"));
    }
    o.handed_other(); // `online`, at QoS 1
    for _ in 0..3 {
        o.handed_next();
    }
    assert_eq!((o.queued(), o.in_flight()), (1, 4));
    // rumqttc writes them in the order handed, numbering the QoS 1 ones.
    assert!(!o.written(1));
    assert!(!o.written(2));
    assert!(!o.written(3));
    assert!(o.acked(2), "e0 taken by the broker");
    assert!(!o.acked(2), "an ack twice finishes nothing");
    assert!(o.acked(1));
    assert_eq!(o.in_flight(), 2);
    // The link drops before e1 (written, pkid 3) and e2 (not written) are acknowledged.
    assert_eq!(o.connection_lost(), 0);
    assert_eq!(o.in_flight(), 0);
    let mut order = Vec::new();
    while let Some(e) = o.next().cloned() {
        order.push(e);
        o.handed_next();
    }
    assert_eq!(order, ["e1", "e2", "e3"]);
}

#[test]
fn a_qos0_message_is_done_once_written_and_requeueing_keeps_the_cap() {
    let mut o = Outbox::<String>::new(2);
    o.handed_other();
    assert!(o.written(0), "QoS 0: done when written");
    assert_eq!(o.in_flight(), 0);
    o.push("a".into());
    o.push("b".into());
    o.handed_next();
    o.handed_next();
    o.push("c".into());
    o.push("d".into());
    // a and b come back in front of c and d: the queue holds 2, so the oldest two go.
    assert_eq!(o.connection_lost(), 2);
    assert_eq!(o.next().map(String::as_str), Some("c"));
    // A pkid nobody waits for is ignored.
    assert!(!o.acked(7));
    assert!(!o.written(9));
}

#[test]
fn broker_urls_parse_with_login_and_never_show_the_password() {
    let b = BrokerUrl::parse("mqtt://cam%40home:p%3Ass@broker.lan:1884").unwrap();
    assert_eq!(b.host, "broker.lan");
    assert_eq!(b.port, 1884);
    assert_eq!(b.login, Some(("cam@home".to_string(), "p:ss".to_string())));
    assert_eq!(b.to_string(), "mqtt://cam@home:***@broker.lan:1884");
    assert!(!format!("{b:?}").contains("p:ss"));
    let plain = BrokerUrl::parse("mqtt://127.0.0.1").unwrap();
    assert_eq!((plain.port, plain.login), (1883, None));
    let v6 = BrokerUrl::parse("mqtt://[::1]:1999/").unwrap();
    assert_eq!(v6.to_string(), "mqtt://[::1]:1999");
    for bad in [
        "mqtts://u:secret@h",
        "http://h",
        "mqtt://u:secret@h/topic",
        "mqtt://",
        "broker:1883",
    ] {
        let e = BrokerUrl::parse(bad).unwrap_err();
        assert!(!e.contains("secret"), "{bad}: {e}");
    }
}

#[test]
fn a_password_file_completes_a_url_that_names_the_user() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("mqtt-password");
    let url = |u: &str| BrokerUrl::parse(u).unwrap();
    std::fs::write(&file, "s3cr3t with spaces\n").unwrap();
    let b = url("mqtt://cam@broker.lan")
        .with_password_file(&file)
        .unwrap();
    assert_eq!(
        b.login,
        Some(("cam".to_string(), "s3cr3t with spaces".to_string()))
    );
    assert_eq!(b.to_string(), "mqtt://cam:***@broker.lan:1883");
    std::fs::write(&file, "crlf\r\n").unwrap();
    let b = url("mqtt://cam@h").with_password_file(&file).unwrap();
    assert_eq!(b.login.unwrap().1, "crlf");
    // Refusals name the file or the URL's fault, never the password.
    std::fs::write(&file, "s3cr3t").unwrap();
    let refusals = [
        url("mqtt://h").with_password_file(&file),
        url("mqtt://cam:other@h").with_password_file(&file),
        url("mqtt://cam@h").with_password_file(&dir.path().join("missing")),
    ];
    for r in refusals {
        let e = r.unwrap_err();
        assert!(!e.contains("s3cr3t") && !e.contains("other"), "{e}");
    }
    std::fs::write(&file, "\n").unwrap();
    let e = url("mqtt://cam@h").with_password_file(&file).unwrap_err();
    assert!(e.contains("empty"), "{e}");
    std::fs::write(&file, vec![b'x'; 70_000]).unwrap();
    let e = url("mqtt://cam@h").with_password_file(&file).unwrap_err();
    assert!(e.contains("65535"), "{e}");
    std::fs::write(&file, [0xff, 0xfe]).unwrap();
    let e = url("mqtt://cam@h").with_password_file(&file).unwrap_err();
    assert!(e.contains("UTF-8"), "{e}");
}

#[test]
fn topics_without_wildcards_or_empty_levels() {
    assert!(check_topic("surv/front-door", false).is_ok());
    assert!(check_topic("front-door", true).is_ok());
    for bad in ["", "surv/#", "a+b", "/surv", "surv/", "a//b", "nul\0"] {
        assert!(check_topic(bad, false).is_err(), "{bad:?}");
    }
    assert!(check_topic("a/b", true).is_err());
    assert_eq!(
        client_id("a-very-long-host-name.example", 123456),
        "surv-123456-a-very-long"
    );
}
