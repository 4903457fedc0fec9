//! The server's hot paths, one frame at a time: encoding under the datagram cap, fanning one
//! frame out to N viewers (the `sendmmsg` path, on loopback), and taking acks in (`recvmmsg`,
//! decode, settle in the window).
//!
//! Also motion analysis per frame (1/8-scale decode + compare).
//!
//! `cargo bench -p surv-server`. The fan-out figures include the kernel's loopback delivery
//! into the receiving socket, as the server's CPU figure in surv-load does.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use surv_proto::Ack;
use surv_server::encoder::{Encoder, EncoderConfig};
use surv_server::motion::{thumbnail, Detector, MotionConfig};
use surv_server::sources::{FrameReader, PixelFormat, RawFrame, TestPattern};
use surv_server::sys::{self, BatchReceiver, BatchSender};
use surv_server::watchers::udp::window::Window;

fn frame(width: u32, height: u32) -> RawFrame {
    let mut pattern = TestPattern::new(width, height, 30).expect("test pattern");
    let mut raw = RawFrame {
        width,
        height,
        format: PixelFormat::I420,
        data: Vec::new(),
        capture_unix_us: 0,
    };
    pattern.next_frame(&mut raw).expect("a frame");
    raw
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode_under_cap");
    for (w, h, cap) in [(160, 90, 65_000), (640, 480, 65_000), (640, 480, 1400)] {
        let raw = frame(w, h);
        let mut enc = Encoder::new(EncoderConfig {
            max_datagram_bytes: cap,
            quality: 80,
        })
        .expect("encoder");
        // Let the quality settle first, as it does after the first frames of a stream.
        for seq in 0..30 {
            let _ = enc.encode(&raw, seq);
        }
        let mut seq = 30;
        g.bench_function(
            BenchmarkId::from_parameter(format!("{w}x{h}_cap{cap}")),
            |b| {
                b.iter(|| {
                    seq += 1;
                    enc.encode(&raw, seq).expect("fits")
                })
            },
        );
    }
    g.finish();
}

/// One receiving socket stands in for N viewers at 127.3.x.y (root keeps it on lo with a big buffer).
fn viewers(n: usize) -> (UdpSocket, Vec<SocketAddr>) {
    let rx = UdpSocket::bind("0.0.0.0:0").expect("bind");
    rx.set_nonblocking(true).expect("nonblocking");
    let _ = sys::set_buffer(rx.as_raw_fd(), libc::SO_RCVBUFFORCE, 64 << 20);
    let port = rx.local_addr().expect("addr").port();
    let dests = (0..n)
        .map(|i| {
            SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::new(127, 3, (i / 250) as u8, (i % 250 + 1) as u8),
                port,
            ))
        })
        .collect();
    (rx, dests)
}

fn drain(inbox: &mut BatchReceiver, rx: &UdpSocket) {
    for _ in 0..100_000 {
        if inbox.recv(rx.as_raw_fd(), |_, _, _| {}).is_err() {
            break;
        }
    }
}

fn fan_out(c: &mut Criterion) {
    let mut g = c.benchmark_group("fan_out_one_frame");
    let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let _ = sys::set_buffer(tx.as_raw_fd(), libc::SO_SNDBUF, 8 << 20);
    let mut enc = Encoder::new(EncoderConfig::default()).expect("encoder");
    let encoded = enc.encode(&frame(160, 90), 1).expect("fits");
    let datagram = encoded.jpeg().expect("a JPEG").clone();
    let mut inbox = BatchReceiver::default();
    for n in [10usize, 100, 1000] {
        let (rx, dests) = viewers(n);
        let mut fanout = BatchSender::default();
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::new("160x90_sendmmsg", n), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    let sent = fanout
                        .send(tx.as_raw_fd(), &datagram, &dests)
                        .expect("send");
                    spent += t.elapsed();
                    assert_eq!(sent, n);
                    drain(&mut inbox, &rx);
                }
                spent
            })
        });
        // The design it replaced: one send_to per viewer.
        g.bench_function(BenchmarkId::new("160x90_send_to_each", n), |b| {
            b.iter_custom(|iters| {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    let t = Instant::now();
                    for d in &dests {
                        tx.send_to(&datagram, d).expect("send");
                    }
                    spent += t.elapsed();
                    drain(&mut inbox, &rx);
                }
                spent
            })
        });
    }
    g.finish();
}

fn acks(c: &mut Criterion) {
    let mut g = c.benchmark_group("acks");
    // Parse and settle: what the ack task does per ack once it has the bytes.
    let mut window = Window::new(4);
    let mut seq = 0u64;
    let start = tokio::time::Instant::now();
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode_and_settle", |b| {
        b.iter(|| {
            seq += 1;
            let now = start + Duration::from_micros(seq * 33);
            window.on_send(seq, now);
            let text = format!("continue {seq}");
            if let Ok(Ack::Continue(s)) = Ack::decode(text.as_bytes()) {
                window.on_ack(s, now);
            }
            window.can_send(now)
        })
    });
    // recvmmsg of a batch of 64 acks from 64 viewers (sent outside the timing).
    let server = UdpSocket::bind("127.0.0.1:0").expect("bind");
    server.set_nonblocking(true).expect("nonblocking");
    let _ = sys::set_buffer(server.as_raw_fd(), libc::SO_RCVBUF, 4 << 20);
    let senders: Vec<UdpSocket> = (0..64)
        .map(|_| UdpSocket::bind("127.0.0.1:0").expect("bind"))
        .collect();
    let to = server.local_addr().expect("addr");
    let mut inbox = BatchReceiver::default();
    g.throughput(Throughput::Elements(64));
    g.bench_function("recvmmsg_64_acks", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                for s in &senders {
                    s.send_to(b"continue 12345", to).expect("send");
                }
                let t = Instant::now();
                let mut got = 0;
                while got < 64 {
                    got += inbox
                        .recv(server.as_raw_fd(), |b, _, _| {
                            std::hint::black_box(Ack::decode(b).is_ok());
                        })
                        .unwrap_or(0);
                }
                spent += t.elapsed();
            }
            spent
        })
    });
    g.finish();
}

/// Motion analysis of one frame as the server does it: the JPEG decoded at 1/8 in grayscale,
/// compared with the previous picture (issue 10's budget: 0.3 ms at 640x480, 1 ms at 1080p).
fn motion(c: &mut Criterion) {
    let mut g = c.benchmark_group("motion_per_frame");
    for (w, h) in [(640u32, 480u32), (1920, 1080)] {
        let raw = frame(w, h);
        let mut enc = Encoder::new(EncoderConfig::default()).expect("encoder");
        let jpegs: Vec<Vec<u8>> = (0..2)
            .map(|seq| {
                let mut f = frame(w, h);
                f.data[seq * 1000] ^= 0xFF;
                enc.encode(&f, seq as u64)
                    .expect("encode")
                    .jpeg()
                    .expect("a JPEG")
                    .to_vec()
            })
            .collect();
        drop(raw);
        let mut detector = Detector::new(MotionConfig::default());
        let mut decompressor = surv_server::jpeg::JpegReader::new();
        let mut thumb = Vec::new();
        let mut i = 0u64;
        g.bench_function(BenchmarkId::from_parameter(format!("{w}x{h}")), |b| {
            b.iter(|| {
                i += 1;
                let jpeg = &jpegs[(i % 2) as usize];
                let (tw, th) = thumbnail(&mut decompressor, jpeg, &mut thumb).expect("thumbnail");
                detector.analyse(&thumb, tw, th, i * 66_000)
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = encode, fan_out, acks, motion
}
criterion_main!(benches);
