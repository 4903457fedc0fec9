//! surv-client against a hostile (or broken) server: malformed `OK SURV/1` lines, an endless
//! line, non-UTF-8, then datagrams that are truncated JPEGs, JPEG headers claiming 65535x65535,
//! random bytes and bogus tags between good frames. The viewer must answer each with a clear
//! error or a counted rejection: no panic, no hang, no unbounded allocation.

use std::net::SocketAddr;
use std::time::Duration;

use surv_client::{ClientError, Config as ClientConfig};
use surv_proto::FrameTag;
use surv_tests::fixtures::Subsamp;
use surv_tests::{test_jpeg, Picture};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

fn client_config(server: SocketAddr, seconds: f64) -> ClientConfig {
    ClientConfig {
        connect_timeout: Duration::from_secs(3),
        ..surv_tests::client_config(server, seconds)
    }
}

/// A server that reads the registration and answers `reply`, then holds the connection a
/// while. The receiver yields the viewer's UDP address once the reply is written.
async fn fake_server(reply: Vec<u8>) -> (SocketAddr, oneshot::Receiver<SocketAddr>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = oneshot::channel();
    tokio::spawn(async move {
        let Ok(Ok((mut tcp, peer))) = timeout(Duration::from_secs(10), listener.accept()).await
        else {
            return;
        };
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        while !line.ends_with(b"\n") && line.len() < 256 {
            match timeout(Duration::from_secs(5), tcp.read(&mut byte)).await {
                Ok(Ok(1)) => line.push(byte[0]),
                _ => return,
            }
        }
        let text = String::from_utf8_lossy(&line);
        let Some(port) = text
            .trim()
            .strip_prefix("SURV/1 ")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|p| p.parse::<u16>().ok())
        else {
            return;
        };
        // The viewer may hang up before all of it is written (an endless line): that is fine.
        let _ = timeout(Duration::from_secs(5), tcp.write_all(&reply)).await;
        let _ = tx.send(SocketAddr::new(peer.ip(), port));
        // Keep the connection while the viewer streams.
        let mut sink = [0u8; 64];
        let _ = timeout(Duration::from_secs(5), tcp.read(&mut sink)).await;
    });
    (addr, rx)
}

#[tokio::test]
async fn malformed_accept_lines_are_clear_errors() {
    let ten_mb = {
        let mut v =
            b"OK SURV/1 session=1 width=160 height=90 fps=30 max_datagram=65000 x=".to_vec();
        v.resize(10 << 20, b'a');
        v
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("missing fields", b"OK SURV/1 session=1 width=160\n".to_vec()),
        (
            "huge numbers",
            b"OK SURV/1 session=1 width=4294967295 height=4294967295 fps=4294967295 max_datagram=99999999999\n".to_vec(),
        ),
        (
            "zero size",
            b"OK SURV/1 session=1 width=0 height=0 fps=30 max_datagram=65000\n".to_vec(),
        ),
        ("a 10 MB line", ten_mb),
        (
            "not UTF-8",
            b"OK SURV/1 session=1 width=\xff\xfe height=90 fps=30 max_datagram=65000\n".to_vec(),
        ),
        ("not a reply at all", b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()),
    ];
    for (what, reply) in cases {
        let (addr, server) = fake_server(reply).await;
        let started = tokio::time::Instant::now();
        let result = timeout(
            Duration::from_secs(10),
            surv_client::run(client_config(addr, 2.0), None, CancellationToken::new()),
        )
        .await
        .unwrap_or_else(|_| panic!("{what}: the viewer hung"));
        match result {
            Err(ClientError::Protocol(reason)) => {
                assert!(!reason.is_empty(), "{what}");
                assert!(
                    reason.len() < 600,
                    "{what}: the reason is bounded: {}",
                    reason.len()
                );
            }
            other => panic!("{what}: expected a protocol error, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{what}: took {:?}",
            started.elapsed()
        );
        drop(server);
    }
}

fn tagged(jpeg: &[u8], seq: u64) -> Vec<u8> {
    let mut out = Vec::new();
    FrameTag {
        seq,
        capture_unix_us: surv_proto::unix_micros_now(),
        motion: false,
        objects: false,
    }
    .encode_into(jpeg, &mut out)
    .unwrap();
    out
}

#[tokio::test]
async fn hostile_datagrams_are_counted_and_good_frames_still_decode() {
    let (addr, viewer_addr) = fake_server(
        b"OK SURV/1 session=1 width=160 height=90 fps=30 max_datagram=65000\n".to_vec(),
    )
    .await;
    let viewer = tokio::spawn(surv_client::run(
        client_config(addr, 2.5),
        None,
        CancellationToken::new(),
    ));
    let to = timeout(Duration::from_secs(5), viewer_addr)
        .await
        .expect("the viewer registered")
        .expect("the fake server learnt its address");
    let good = test_jpeg(160, 90, Picture::Gradient(3), 80, Subsamp::Sub2x2);
    // A header claiming 65535x65535: the SOF0 dimensions rewritten, nothing else.
    let mut giant = good.clone();
    let sof = giant
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline JPEG has SOF0");
    giant[sof + 5..sof + 9].copy_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF]);
    let mut rng: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut random = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng as u8
            })
            .collect()
    };
    let mut bogus_tag = tagged(&good, 0);
    bogus_tag[10] = 9; // a tag version nobody knows

    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut seq = 0u64;
    let mut good_sent = 0u64;
    for round in 0..30u64 {
        let full = tagged(&good, seq);
        let hostile: Vec<Vec<u8>> = vec![
            full[..full.len() / 2].to_vec(),             // truncated
            tagged(&giant, seq + 1),                     // 65535x65535
            random(1 + (round as usize * 997) % 60_000), // random bytes
            bogus_tag.clone(),                           // unknown tag version
            tagged(&good, u64::MAX - round),             // sequence leaps
            tagged(&good, seq + 2)[..40].to_vec(),       // a tag and no picture
        ];
        udp.send_to(&full, to).await.unwrap();
        good_sent += 1;
        for d in hostile {
            udp.send_to(&d, to).await.unwrap();
        }
        seq += 3;
        tokio::time::sleep(Duration::from_millis(33)).await;
    }
    let summary = timeout(Duration::from_secs(10), viewer)
        .await
        .expect("the viewer ends at its time limit")
        .expect("no panic")
        .expect("the stream itself was fine");
    // Every good frame decoded; every hostile one that reached the decoder failed or was
    // ignored, and was counted.
    // Seen: decoded=60 (the good frames and their sequence-leaping copies), decode_failed=90
    // (truncated, 65535x65535, tag without picture), ignored=60 (random bytes, unknown tag).
    assert!(summary.decoded >= 2 * good_sent * 9 / 10, "{summary}");
    assert!(summary.decode_failed >= 3 * good_sent * 9 / 10, "{summary}");
    assert!(summary.ignored >= 2 * good_sent * 9 / 10, "{summary}");
    assert!(
        summary.lost < 1 << 21,
        "the lost count is bounded: {summary}"
    );
}
