//! Chunked SURV/1 end to end on loopback: surv-client gets its frames in MTU-sized chunks while
//! an older client (plain `hello`) on the same shared socket still gets whole datagrams; a
//! scripted viewer that loses chunks gets exactly those again after its `nack`, within the
//! server's repair limits; a server with chunks off sends whole datagrams to everyone.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use surv_proto::{
    chunk_bytes_for_mtu, Ack, ChunkHeader, Form, FrameTag, Nack, Push, Reassembler,
    DEFAULT_MTU_BYTES,
};
use surv_server::Config;
use surv_tests::{client_config, start_server, AckStyle, RawViewer, ServerOpts, IO_TIMEOUT};
use tokio::time::{timeout, Instant};
use tokio_util::sync::CancellationToken;

/// 640x480 frames of the test pattern: 20-40 KB, 18-35 chunks at mtu 1,200.
fn vga() -> ServerOpts {
    ServerOpts::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn surv_client_gets_chunks_and_an_older_client_whole_datagrams() {
    let srv = start_server(vga()).await.unwrap();
    let run = Duration::from_secs(2);
    let client = tokio::spawn(surv_client::run(
        client_config(srv.addr, run.as_secs_f64()),
        None,
        CancellationToken::new(),
    ));
    // An older surv-client: a plain `hello`, whole JPEG datagrams, `continue <seq>` acks.
    let mut old = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    assert_eq!(
        old.params.as_ref().unwrap().mtu,
        Some(DEFAULT_MTU_BYTES),
        "the OK line offers chunks"
    );
    let got = old.receive(run, u64::MAX, AckStyle::Seq, 0).await.unwrap();
    let s = timeout(run + IO_TIMEOUT, client)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(got.datagrams >= 40, "old client: {got:?}");
    assert_eq!(
        got.decoded, got.datagrams,
        "old client: whole JPEGs {got:?}"
    );
    assert!(got.largest > 10_000, "old client: whole frames {got:?}");

    let c = s.chunks.expect("a chunked session");
    assert!(s.received >= 40, "{s}");
    assert_eq!(s.decode_failed, 0, "{s}");
    assert_eq!(c.completed, s.received, "{s}");
    // Every frame took many chunks: at least 15 each.
    assert!(c.stored >= 15 * s.received, "{s}");
    assert_eq!(c.refused, 0, "{s}");
    assert_eq!(srv.server.stats.bad_acks.load(Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_chunks_off_sends_whole_datagrams_to_a_client_that_asks() {
    let srv = start_server(ServerOpts {
        config: Config {
            mtu: None,
            ..Config::default()
        },
        ..vga()
    })
    .await
    .unwrap();
    let old = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    assert_eq!(old.params.as_ref().unwrap().mtu, None, "no mtu= offered");
    drop(old);
    let s = surv_client::run(client_config(srv.addr, 1.5), None, CancellationToken::new())
        .await
        .unwrap();
    assert!(s.chunks.is_none(), "{s}");
    assert!(s.received >= 30, "{s}");
    assert_eq!(s.decode_failed, 0, "{s}");
}

/// A chunk's datagram again, from its header and payload (as [`ChunkViewer::next`] split it).
fn wire(h: &ChunkHeader, payload: &[u8]) -> Vec<u8> {
    let mut d = h.encode().to_vec();
    d.extend_from_slice(payload);
    d
}

/// A viewer that says `hello mtu=1200` by hand and reads raw chunks.
struct ChunkViewer {
    raw: RawViewer,
    to: SocketAddr,
    key: u64,
    buf: Vec<u8>,
}

impl ChunkViewer {
    async fn start(server: SocketAddr) -> ChunkViewer {
        // Registered as an older client would be; its plain hello is not sent before ours
        // (RawViewer sends it at once: the first hello fixes the form, so send ours first by
        // registering without it).
        let raw = register_without_hello(server).await;
        let p = raw.params.clone().unwrap();
        let to = SocketAddr::new(server.ip(), p.udp_port.unwrap());
        let v = ChunkViewer {
            to,
            key: p.key.unwrap(),
            raw,
            buf: vec![0u8; 70_000],
        };
        v.send(Ack::HelloChunks {
            mtu: DEFAULT_MTU_BYTES,
        })
        .await;
        v
    }

    async fn send(&self, ack: Ack) {
        self.raw
            .udp
            .send_to(&ack.encode_keyed(Some(self.key)), self.to)
            .await
            .unwrap();
    }

    /// The next chunk (header and payload), or `None` after `wait` without one.
    async fn next(&mut self, wait: Duration) -> Option<(ChunkHeader, Vec<u8>)> {
        let (n, _) = timeout(wait, self.raw.udp.recv_from(&mut self.buf))
            .await
            .ok()?
            .unwrap();
        let (h, payload) = ChunkHeader::decode(&self.buf[..n]).expect("a chunk");
        assert_eq!(h.key, self.key);
        assert!(n <= usize::from(DEFAULT_MTU_BYTES), "{n} bytes");
        Some((h, payload.to_vec()))
    }

    /// The chunks of frame `seq` that arrive within `wait`, up to `want` of them, ignoring
    /// other frames'.
    async fn chunks_of(
        &mut self,
        seq: u64,
        want: usize,
        wait: Duration,
    ) -> Vec<(ChunkHeader, Vec<u8>)> {
        let until = Instant::now() + wait;
        let mut got = Vec::new();
        while got.len() < want {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.next(left).await {
                Some((h, p)) if h.seq == seq => got.push((h, p)),
                Some(_) => {}
                None => break,
            }
        }
        got
    }
}

/// Registers (SURV/1) without saying hello.
async fn register_without_hello(server: SocketAddr) -> RawViewer {
    use tokio::io::AsyncWriteExt;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut tcp = tokio::net::TcpStream::connect(server).await.unwrap();
    let line = surv_proto::Registration {
        form: Form::V1,
        udp_port: udp.local_addr().unwrap().port(),
    }
    .encode();
    tcp.write_all(&line).await.unwrap();
    let surv_proto::Reply::Accepted(p) = surv_tests::read_reply(&mut tcp).await.unwrap() else {
        panic!("refused");
    };
    RawViewer {
        tcp,
        udp,
        params: Some(p),
    }
}

/// How long the repair test waits for a frame's chunks: they leave in one burst, and loopback
/// delivers in microseconds.
const WAIT: Duration = Duration::from_millis(40);
/// How long it waits for the chunks a nack asks for: the server answers at once or never.
const REPAIR_WAIT: Duration = Duration::from_millis(250);
/// Tries of the repair: a machine busy enough to hold the test past the server's 200 ms repair
/// window makes the server refuse the nack (as it should); that try says nothing of the repair
/// itself and is made again with a new viewer.
const REPAIR_TRIES: usize = 4;

/// The server sends each chunk a `nack` names twice (`REPAIR_COPIES`), three times when it
/// names at least 1 in 20 of the frame's `k` chunks (`HEAVY_LOSS_*`), four times when at least
/// 1 in 10 (`HEAVIEST_LOSS_*`).
fn copies(named: usize, k: u8) -> usize {
    let k = usize::from(k);
    if named * 10 >= k {
        4
    } else if named * 20 >= k {
        3
    } else {
        2
    }
}

/// Frame n's chunks 2, 5 and 9 are "lost"; the viewer nacks them and gets exactly those again,
/// flagged as resent; the first resend of 5 is "lost" too, and a second nack brings it. The
/// frame then reassembles into its tagged JPEG. A third nack of the frame, and a nack naming a
/// chunk the frame does not have, are refused (counted), and nothing is resent for them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nack_brings_the_lost_chunks_again_within_the_repair_limits() {
    let srv = start_server(vga()).await.unwrap();
    let chunk_bytes = chunk_bytes_for_mtu(DEFAULT_MTU_BYTES);
    let now = std::time::Instant::now;
    let stats = &srv.server.stats;
    // Whether the server refused a nack that brought nothing: then the try is made again.
    let too_late = |got: &[(ChunkHeader, Vec<u8>)], refused_before: u64, tries: usize| {
        let late = got.is_empty() && stats.nacks_refused.load(Relaxed) > refused_before;
        if late {
            eprintln!("try {tries}: the nack came after the repair window (a busy machine); again");
        }
        late && tries < REPAIR_TRIES
    };
    let mut tries = 0;
    let (mut v, seq, k, resent_before) = loop {
        tries += 1;
        let resent_before = stats.chunks_resent.load(Relaxed);
        let mut v = ChunkViewer::start(srv.addr).await;
        let mut r = Reassembler::new(v.key, chunk_bytes);
        // The first chunk of a frame with at least 10 chunks, and that frame.
        let (first, payload) = loop {
            let (h, p) = v.next(IO_TIMEOUT).await.expect("chunks arrive");
            if h.index == 0 && h.data_chunks >= 10 {
                break (h, p);
            }
        };
        let seq = first.seq;
        let k = first.data_chunks;
        assert!(matches!(
            r.push(&wire(&first, &payload), now()),
            Push::Pending { .. }
        ));
        // Chunks leave in one burst: the frame's rest, then (the viewer acks nothing, so its
        // window of 4 frames shuts) a few more frames, then nothing until a probe.
        let mut rest = v.chunks_of(seq, usize::from(k) - 1, WAIT).await;
        assert_eq!(
            rest.len(),
            usize::from(k) - 1,
            "every chunk of frame {seq} came once"
        );
        assert!(rest.iter().all(|(h, _)| !h.resent));
        let lost = [2u8, 5, 9];
        rest.retain(|(h, _)| !lost.contains(&h.index));
        for (h, p) in &rest {
            assert!(matches!(r.push(&wire(h, p), now()), Push::Pending { .. }));
        }
        let inc = r.incomplete().next().unwrap();
        assert_eq!(inc.missing, 1 << 2 | 1 << 5 | 1 << 9);
        assert_eq!(inc.need, 3);

        let refused_before = stats.nacks_refused.load(Relaxed);
        v.send(Ack::Nack(Nack {
            seq,
            need: inc.need,
            missing: inc.missing,
        }))
        .await;
        let copies_1 = copies(3, k);
        let resent = v.chunks_of(seq, 3 * copies_1, REPAIR_WAIT).await;
        if too_late(&resent, refused_before, tries) {
            continue;
        }
        let indexes: Vec<u8> = resent.iter().map(|(h, _)| h.index).collect();
        assert_eq!(
            indexes,
            lost.repeat(copies_1),
            "exactly the lost chunks again, {copies_1} times (k = {k})"
        );
        assert!(resent.iter().all(|(h, _)| h.resent), "flagged as resent");
        // Both resends of 5 are lost as well.
        for (h, p) in resent[..3].iter().filter(|(h, _)| h.index != 5) {
            assert!(matches!(r.push(&wire(h, p), now()), Push::Pending { .. }));
        }
        for (h, p) in resent[3..].iter().filter(|(h, _)| h.index != 5) {
            assert_eq!(
                r.push(&wire(h, p), now()),
                Push::Rejected(surv_proto::Rejected::Duplicate)
            );
        }
        let inc = r.incomplete().next().unwrap();
        assert_eq!((inc.missing, inc.need), (1 << 5, 1));
        let refused_before = stats.nacks_refused.load(Relaxed);
        v.send(Ack::Nack(Nack {
            seq,
            need: 1,
            missing: inc.missing,
        }))
        .await;
        let copies_2 = copies(1, k);
        let again = v.chunks_of(seq, copies_2, REPAIR_WAIT).await;
        if too_late(&again, refused_before, tries) {
            continue;
        }
        assert_eq!(again.len(), copies_2);
        assert!(again.iter().all(|(h, _)| h.index == 5));
        let frame = match r.push(&wire(&again[0].0, &again[0].1), now()) {
            Push::Complete { frame, .. } => frame.to_vec(),
            other => panic!("{other:?}"),
        };
        assert_eq!(FrameTag::decode(&frame).unwrap().seq, seq);
        assert!(frame.starts_with(&[0xFF, 0xD8]) && frame.ends_with(&[0xFF, 0xD9]));
        break (v, seq, k, resent_before);
    };
    // This try's two repairs: 3 + 1 chunks (counted just after they are sent: the viewer may
    // hold them before the count moves).
    let until = Instant::now() + IO_TIMEOUT;
    while stats.chunks_resent.load(Relaxed) - resent_before < 4 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(stats.chunks_resent.load(Relaxed) - resent_before, 4);

    // A third repair of the frame, and a chunk it does not have: refused, nothing resent.
    let refused_before = stats.nacks_refused.load(Relaxed);
    for missing in [1u128 << 5, 1u128 << k] {
        v.send(Ack::Nack(Nack {
            seq,
            need: 1,
            missing,
        }))
        .await;
    }
    assert!(v.chunks_of(seq, 1, REPAIR_WAIT).await.is_empty());
    assert_eq!(stats.nacks_refused.load(Relaxed), refused_before + 2);
    assert_eq!(stats.chunks_resent.load(Relaxed) - resent_before, 4);
}

/// A chunked session makes its socket's acks waited for (its nacks are answered at once, not
/// at the next frame), counted on the data path while it lasts and no longer once it leaves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chunked_session_is_counted_while_it_lasts() {
    let srv = start_server(vga()).await.unwrap();
    let data = || srv.server.first_camera().data.chunked_sessions();
    let mut whole = RawViewer::register(srv.addr, Form::V1).await.unwrap();
    whole
        .receive(Duration::from_millis(300), 2, AckStyle::Seq, 0)
        .await
        .unwrap();
    assert_eq!(data(), 0, "a whole-datagram session is not chunked");
    let mut v = ChunkViewer::start(srv.addr).await;
    assert!(v.next(IO_TIMEOUT).await.is_some(), "a chunk comes");
    assert_eq!(data(), 1);
    drop(v);
    let until = Instant::now() + IO_TIMEOUT;
    while data() != 0 && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(data(), 0, "its leaving is counted");
    assert_eq!(srv.server.watchers.len(), 1, "the other session streams on");
}

/// What a scripted viewer that reports `loss` saw in `secs`: frames whole (their tags read),
/// frames restored by parity, and the parity count of every frame sent with some.
struct ParityRun {
    whole: usize,
    restored: u64,
    parity_counts: Vec<(u8, u8)>,
    fec_offered: bool,
}

/// A viewer that reports `loss` ‰ in every `continue` and, of each frame sent with parity,
/// loses data chunks 1 and 3 (as the path would).
async fn report_loss(server: SocketAddr, loss: u16, secs: u64) -> ParityRun {
    let mut v = ChunkViewer::start(server).await;
    let fec_offered = v.raw.params.as_ref().unwrap().fec;
    let mut r = Reassembler::new(v.key, chunk_bytes_for_mtu(DEFAULT_MTU_BYTES));
    let mut run = ParityRun {
        whole: 0,
        restored: 0,
        parity_counts: Vec::new(),
        fec_offered,
    };
    let until = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some((h, payload)) = v.next(left.min(IO_TIMEOUT)).await else {
            break;
        };
        if h.parity_chunks > 0 {
            if !run
                .parity_counts
                .contains(&(h.data_chunks, h.parity_chunks))
            {
                run.parity_counts.push((h.data_chunks, h.parity_chunks));
            }
            if [1, 3].contains(&h.index) {
                continue;
            }
        }
        let done = match r.push(&wire(&h, &payload), std::time::Instant::now()) {
            Push::Complete { seq, frame } => {
                FrameTag::decode(frame).expect("a tagged JPEG, restored or not");
                Some(seq)
            }
            _ => None,
        };
        if let Some(seq) = done {
            run.whole += 1;
            v.send(Ack::Received {
                seq,
                rx_bytes: r.bytes_through(seq) as u32,
                loss: Some(loss),
                path_kbps: None,
            })
            .await;
        }
    }
    run.restored = r.stats().restored;
    run
}

/// A viewer that reports 10 % of its chunks lost is sent parity chunks (30 % of each frame's
/// data chunks, every header of a frame saying how many), and frames that lost two data chunks
/// are restored from them, whole; a viewer that reports under 0.5 % gets none; nor does any
/// viewer of a server with `--fec false`, which does not offer it in its `OK` line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_reports_loss_gets_parity_that_restores_its_frames() {
    let srv = start_server(vga()).await.unwrap();
    let lossy = report_loss(srv.addr, 100, 2).await;
    assert!(lossy.fec_offered);
    assert!(!lossy.parity_counts.is_empty(), "no parity came");
    for &(k, m) in &lossy.parity_counts {
        assert_eq!(usize::from(m), (usize::from(k) * 30).div_ceil(100), "k {k}");
    }
    assert!(
        lossy.restored >= 10 && lossy.whole as u64 >= lossy.restored,
        "restored {} of {} whole",
        lossy.restored,
        lossy.whole
    );
    let parity_sent = srv.server.stats.parity_chunks_sent.load(Relaxed);
    assert!(parity_sent >= 10 * 5, "{parity_sent}");
    let clean = report_loss(srv.addr, 4, 1).await;
    assert!(clean.whole >= 10, "{}", clean.whole);
    assert_eq!(clean.parity_counts, [], "no parity under 0.5 %");
    srv.stop().await.unwrap();

    let srv = start_server(ServerOpts {
        config: Config {
            fec: false,
            ..Config::default()
        },
        ..vga()
    })
    .await
    .unwrap();
    let off = report_loss(srv.addr, 100, 1).await;
    assert!(!off.fec_offered);
    assert!(off.whole >= 10, "{}", off.whole);
    assert_eq!(off.parity_counts, [], "--fec false");
    assert_eq!(srv.server.stats.parity_chunks_sent.load(Relaxed), 0);
    srv.stop().await.unwrap();
}

/// What a scripted viewer that reports its path at `kbps` in every `continue` saw in `secs`:
/// whether the server offered pacing, and for each frame that came whole, how long its chunks
/// took to arrive, first to last.
async fn report_path(server: SocketAddr, kbps: Option<u32>, secs: u64) -> (bool, Vec<Duration>) {
    let mut v = ChunkViewer::start(server).await;
    let offered = v.raw.params.as_ref().unwrap().pace;
    let mut r = Reassembler::new(v.key, chunk_bytes_for_mtu(DEFAULT_MTU_BYTES));
    let mut first_at: Vec<(u64, Instant)> = Vec::new();
    let mut spreads = Vec::new();
    let mut acked = None;
    let until = Instant::now() + Duration::from_secs(secs);
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        let Some((h, payload)) = v.next(left.min(IO_TIMEOUT)).await else {
            break;
        };
        let now = Instant::now();
        if !first_at.iter().any(|&(s, _)| s == h.seq) {
            first_at.push((h.seq, now));
        }
        // A frame is whole when its last chunk comes (shown, or held behind an older one that
        // lost a chunk: this viewer asks for none, and the older one is pushed out later).
        if let Push::Complete { seq, .. } | Push::Held { seq } =
            r.push(&wire(&h, &payload), std::time::Instant::now())
        {
            if let Some(&(_, at)) = first_at.iter().find(|&&(s, _)| s == seq) {
                spreads.push(now - at);
            }
        }
        while r.pop_ready().is_some() {}
        if let Some(seq) = r.newest_done().filter(|&s| Some(s) != acked) {
            acked = Some(seq);
            v.send(Ack::Received {
                seq,
                rx_bytes: r.bytes_through(seq) as u32,
                loss: None,
                path_kbps: kbps,
            })
            .await;
        }
        first_at.retain(|&(s, _)| s + 16 > h.seq);
    }
    (offered, spreads)
}

fn median(mut d: Vec<Duration>) -> Duration {
    d.sort();
    d[d.len() / 2]
}

/// Viewers that report a path of 4 Mbit/s get each frame's chunks spread over most of the
/// frame interval (at 1.25 × 4 Mbit/s a 640x480 frame of 18 or more chunks would take 43 ms or
/// more: a 30 fps frame is spread over 26 ms at most, its chunks 1 ms apart at most), every
/// frame whole; one that reports a loopback-fast path, or none, gets its frames in one burst;
/// a server with `--pace false` offers no pacing and sends bursts whatever is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_that_reports_a_slow_path_gets_each_frame_spread() {
    let srv = start_server(vga()).await.unwrap();
    // Two at once: paced together, one send a tick for both.
    let ((offered, slow), (_, other)) = tokio::join!(
        report_path(srv.addr, Some(4_000), 2),
        report_path(srv.addr, Some(4_000), 2)
    );
    assert!(offered, "the OK line says pace=1");
    assert!(slow.len() >= 30, "{} frames whole", slow.len());
    assert!(other.len() >= 30, "{} frames whole", other.len());
    let paced = srv.server.stats.frames_paced.load(Relaxed) as usize;
    assert!(
        paced + 6 >= slow.len() + other.len(),
        "{paced} frames paced"
    );
    // A frame spread over 18-26 ms arrives over as long, unless this task read its first
    // chunk late: the median says it.
    let other = median(other);
    assert!(other >= Duration::from_millis(12), "{other:?}");
    let slow = median(slow);
    assert!(slow >= Duration::from_millis(12), "{slow:?}");
    // Sent in one burst, a frame crosses loopback in well under the paced median.
    let (_, fast) = report_path(srv.addr, Some(10_000_000), 1).await;
    assert!(fast.len() >= 10, "{} frames whole", fast.len());
    assert!(
        median(fast) < slow / 2,
        "10 Gbit/s takes a frame in microseconds"
    );
    let (_, unknown) = report_path(srv.addr, None, 1).await;
    assert!(unknown.len() >= 10, "{} frames whole", unknown.len());
    assert!(median(unknown) < slow / 2, "no figure, no pacing");
    srv.stop().await.unwrap();

    let srv = start_server(ServerOpts {
        config: Config {
            pace: false,
            ..Config::default()
        },
        ..vga()
    })
    .await
    .unwrap();
    let (offered, off) = report_path(srv.addr, Some(4_000), 1).await;
    assert!(!offered);
    assert!(off.len() >= 10, "{} frames whole", off.len());
    assert_eq!(srv.server.stats.frames_paced.load(Relaxed), 0);
    assert!(median(off) < slow / 2, "--pace false");
    srv.stop().await.unwrap();
}
