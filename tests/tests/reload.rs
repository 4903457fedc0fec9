//! A reload (what `SIGHUP` does with a changed config) adds and removes cameras while the
//! others serve on: their viewers lose no frame; the removed camera's viewers leave with reason
//! `removed`; the new camera serves at once; an unknown camera is refused afterwards.

use std::time::Duration;

use surv_proto::Form;
use surv_server::app::CameraPlan;
use surv_server::sources::Source;
use surv_tests::{
    capture_config, heavy, start_server_cameras, AckStyle, RawViewer, ServerOpts, IO_TIMEOUT,
};
use tokio::time::{sleep, timeout};

fn pattern(w: u32, h: u32) -> Box<dyn Source> {
    surv_tests::test_pattern(w, h, 30)
}

/// The longest run of frames a viewer missed: 0 when every frame published while it watched
/// reached it.
fn largest_gap(seqs: &[u64]) -> u64 {
    seqs.windows(2)
        .map(|w| w[1].saturating_sub(w[0]).saturating_sub(1))
        .max()
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adds_and_removes_cameras_and_the_others_lose_no_frame() {
    let _serial = heavy().await;
    let srv = start_server_cameras(
        ServerOpts::sized(160, 96),
        vec![("kept", pattern(160, 96)), ("gone", pattern(128, 96))],
    )
    .await
    .unwrap();
    let mut kept = RawViewer::register_for(srv.addr, Form::V1, Some("kept"))
        .await
        .unwrap();
    let mut gone = RawViewer::register_for(srv.addr, Form::V1, Some("gone"))
        .await
        .unwrap();
    let mut seed = RawViewer::register(srv.addr, Form::Seed).await.unwrap();
    srv.wait_sessions(3).await.unwrap();

    let plans = srv.app.plans().await;
    let new = vec![
        plans[0].clone(),
        CameraPlan::given("added", pattern(192, 96), capture_config(192, 96)),
    ];
    let window = Duration::from_secs(3);
    let reload = async {
        sleep(Duration::from_secs(1)).await;
        srv.app.reload(new).await
    };
    let (k, s, g, done) = tokio::join!(
        kept.receive(window, u64::MAX, AckStyle::Seq, 0),
        seed.receive(window, u64::MAX, AckStyle::Seed, 0),
        gone.receive(window, u64::MAX, AckStyle::Seq, 0),
        reload
    );
    let (k, s, g) = (k.unwrap(), s.unwrap(), g.unwrap());
    assert_eq!(done.added, ["added"]);
    assert_eq!(done.removed, ["gone"]);
    assert_eq!(done.unchanged, ["kept"]);
    assert!(
        done.restarted.is_empty() && done.failed.is_empty(),
        "{done:?}"
    );

    // The kept camera's viewers, SURV/1 and seed form, got every frame across the reload.
    assert!(k.seqs.len() >= 30, "kept: {} frames", k.seqs.len());
    assert_eq!(
        largest_gap(&k.seqs),
        0,
        "kept: a frame was lost: {:?}",
        k.seqs
    );
    assert_eq!(k.undecodable, 0);
    assert!(s.decoded >= 30, "seed: {} frames", s.decoded);
    // The removed camera's viewer stopped getting frames and left with reason `removed`.
    assert!(g.decoded >= 1);
    let leave = srv
        .wait_journal(|l| l.contains("LEAVE") && l.contains("cam=gone"))
        .await
        .unwrap();
    assert!(leave.contains("reason=removed"), "{leave}");
    assert!(
        !srv.journal()
            .iter()
            .any(|l| l.contains("LEAVE") && l.contains("cam=kept")),
        "a kept camera's viewer left:\n{}",
        srv.journal().join("\n")
    );

    // The list is the new one: the added camera serves, the removed one is refused.
    assert_eq!(srv.server.cameras.names(), ["kept", "added"]);
    let v = RawViewer::register_for(srv.addr, Form::V1, Some("added"))
        .await
        .unwrap();
    let p = v.params.clone().unwrap();
    assert_eq!((p.width, p.height), (192, 96));
    let mut buf = vec![0u8; 65536];
    let (n, _) = timeout(IO_TIMEOUT, v.udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(turbojpeg::read_header(&buf[..n]).unwrap().width, 192);
    let refused = RawViewer::register_for(srv.addr, Form::V1, Some("gone"))
        .await
        .err()
        .expect("a removed camera is refused")
        .to_string();
    assert!(refused.contains("cameras: kept, added"), "{refused}");
    srv.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_cannot_start_is_left_out_and_the_others_run_on() {
    let _serial = heavy().await;
    let srv = start_server_cameras(ServerOpts::sized(160, 96), vec![("a", pattern(160, 96))])
        .await
        .unwrap();
    let mut plans = srv.app.plans().await;
    // The built-in test pattern (`source = "test"`) at an odd size cannot start; a request port
    // taken cannot be bound.
    let mut odd = CameraPlan::given("odd", pattern(64, 48), capture_config(161, 97));
    odd.given = None;
    (odd.options.width, odd.options.height) = (161, 97);
    let busy = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut taken = CameraPlan::given("taken", pattern(64, 48), capture_config(64, 48));
    taken.request_port = busy.local_addr().unwrap().port();
    plans.push(odd);
    plans.push(taken);
    let done = srv.app.reload(plans).await;
    let failed: Vec<&str> = done.failed.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(failed, ["odd", "taken"], "{done:?}");
    assert!(done.failed[0].1.contains("161x97"), "{done:?}");
    assert!(done.failed[1].1.contains("request-port"), "{done:?}");
    assert_eq!(srv.server.cameras.names(), ["a"]);
    assert_eq!(done.unchanged, ["a"]);
    let mut v = RawViewer::register_for(srv.addr, Form::V1, Some("a"))
        .await
        .unwrap();
    let got = v
        .receive(Duration::from_millis(500), u64::MAX, AckStyle::Seq, 0)
        .await
        .unwrap();
    assert!(got.decoded >= 5);
    srv.stop().await.unwrap();
}
