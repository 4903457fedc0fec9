//! Cameras are independent: one camera failing over and over, or stalled, costs the viewers of
//! another camera nothing, and each viewer gets only its own camera's frames.

use std::time::Duration;

use surv_proto::Form;
use surv_server::capture::FrameSink;
use surv_server::capture::SourceState;
use surv_server::sources::{FrameReader, Source, SourceError, SourceRun, TestPattern};
use surv_tests::{heavy, share, start_server_cameras, AckStyle, RawViewer, ServerOpts};
use tokio_util::sync::CancellationToken;

fn pattern(w: u32, h: u32) -> Box<dyn Source> {
    surv_tests::test_pattern(w, h, 30)
}

/// A camera that opens, sends a few frames, then fails, again and again (a camera on a bad
/// cable).
struct Flaky;

impl Source for Flaky {
    fn describe(&self) -> String {
        "flaky camera".into()
    }

    fn run<'a>(&'a mut self, sink: &'a FrameSink, stop: &'a CancellationToken) -> SourceRun<'a> {
        Box::pin(async move {
            let mut inner = TestPattern::new(96, 64, 30).map_err(|e| SourceError::Open {
                device: "flaky".into(),
                reason: e.to_string(),
            })?;
            sink.opened("flaky camera", Default::default());
            let mut frame = surv_server::sources::RawFrame::new();
            for _ in 0..5 {
                if stop.is_cancelled() {
                    return Ok(());
                }
                inner.next_frame(&mut frame)?;
                sink.publish_raw(&frame);
            }
            Err(SourceError::Read {
                device: "flaky".into(),
                reason: "cable unplugged".into(),
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_camera_costs_another_cameras_viewers_nothing() {
    let _serial = heavy().await;
    let srv = start_server_cameras(
        ServerOpts::sized(160, 96),
        vec![("good", pattern(160, 96)), ("flaky", Box::new(Flaky))],
    )
    .await
    .unwrap();
    let mut good = RawViewer::register_for(srv.addr, Form::V1, Some("good"))
        .await
        .unwrap();
    let mut flaky = RawViewer::register_for(srv.addr, Form::V1, Some("flaky"))
        .await
        .unwrap();
    let window = Duration::from_secs(3);
    let (g, f) = tokio::join!(
        good.receive(window, u64::MAX, AckStyle::Seq, 0),
        flaky.receive(window, u64::MAX, AckStyle::Seq, 0)
    );
    let (g, f) = (g.unwrap(), f.unwrap());
    let got = share(g.decoded, 30, window);
    assert!(
        got >= 0.95,
        "the good camera's viewer got {:.1} %",
        got * 100.0
    );
    assert_eq!(g.undecodable, 0);
    assert!(
        f.decoded >= 1,
        "the flaky camera's viewer still gets frames"
    );
    let cameras = srv.server.cameras.list();
    assert_eq!(cameras[0].capture.state(), SourceState::Live);
    assert!(
        cameras[1]
            .capture
            .stats
            .source_lost
            .load(std::sync::atomic::Ordering::Relaxed)
            >= 1
    );
    assert_eq!(
        cameras[0]
            .capture
            .stats
            .source_lost
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    // The journal says which camera was lost.
    let lost = srv
        .wait_journal(|l| l.contains("SOURCE-LOST"))
        .await
        .unwrap();
    assert!(lost.ends_with("cam=flaky"), "{lost}");
    srv.stop().await.unwrap();
}
