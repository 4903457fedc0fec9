//! OAK host programs watch surv over TCP (`--tcp-stream-port`): the stand-in of seed 000's host
//! program reads ABCDE-framed frames and decodes them; it is a watcher like any other (JOIN and
//! LEAVE `form=oak-tcp`), and the frames are the ones every other watcher gets.

use std::time::Duration;

use surv_tests::standins::oak_host;
use surv_tests::{free_tcp_port, start_server, ServerOpts};
use tokio::net::TcpStream;

#[tokio::test]
async fn an_oak_host_program_reads_and_decodes_the_stream() -> anyhow::Result<()> {
    // The camera's own port, as `--tcp-stream-port` starts it.
    let port = free_tcp_port();
    let srv = start_server(ServerOpts {
        tcp_stream_port: port,
        ..ServerOpts::sized(160, 90)
    })
    .await?;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));

    let mut host = TcpStream::connect(addr).await?;
    let mut last_ts = 0.0;
    let mut seqs = Vec::new();
    let started = tokio::time::Instant::now();
    for _ in 0..30 {
        let frame = oak_host::read_frame(&mut host).await?;
        assert_eq!((frame.width, frame.height), (160, 90));
        assert!(frame.ts >= last_ts, "timestamps go forward");
        last_ts = frame.ts;
        seqs.push(surv_proto::FrameTag::decode(&frame.jpeg)?.seq);
    }
    // 30 frames of a 30 fps source in about a second: the full rate, newest first.
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(seqs.windows(2).all(|w| w[1] > w[0]), "{seqs:?}");
    let now_s = surv_proto::unix_micros_now() as f64 / 1e6;
    assert!(
        (now_s - last_ts).abs() < 5.0,
        "capture time in seconds: {last_ts}"
    );
    srv.wait_journal(|l| l.contains("JOIN") && l.contains("form=oak-tcp"))
        .await?;
    assert_eq!(srv.server.watchers.len(), 1);

    // The host closes its socket: it leaves at once, reason closed.
    drop(host);
    srv.wait_journal(|l| {
        l.contains("LEAVE") && l.contains("form=oak-tcp") && l.contains("reason=closed")
    })
    .await?;

    // One still connected at shutdown leaves with reason shutdown.
    let mut host = TcpStream::connect(addr).await?;
    oak_host::read_frame(&mut host).await?;
    let journal = srv.stop().await?;
    let leaves: Vec<_> = journal
        .iter()
        .filter(|l| l.contains("LEAVE") && l.contains("form=oak-tcp"))
        .collect();
    assert_eq!(leaves.len(), 2, "{journal:#?}");
    assert!(leaves[1].contains("reason=shutdown"), "{}", leaves[1]);
    Ok(())
}
