//! Tests of the system calls, on loopback sockets.

use super::*;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::time::{SystemTime, UNIX_EPOCH};

fn recv_all(
    inbox: &mut BatchReceiver,
    sock: &UdpSocket,
    want: usize,
) -> Vec<(Vec<u8>, SocketAddr, usize)> {
    let mut got = Vec::new();
    for _ in 0..100 {
        let _ = inbox.recv(sock.as_raw_fd(), |b, from, len| {
            got.push((b.to_vec(), from, len))
        });
        if got.len() >= want {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    got
}

fn v4(sock: &UdpSocket) -> SocketAddrV4 {
    match sock.local_addr().unwrap() {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("{a} is not IPv4"),
    }
}

#[test]
fn one_payload_reaches_every_destination_whole() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let viewers: Vec<UdpSocket> = (0..5)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let dests: Vec<SocketAddr> = viewers.iter().map(|v| v.local_addr().unwrap()).collect();
    let payload: Vec<u8> = (0..50_000u32).map(|i| i as u8).collect();
    let sent = BatchSender::default()
        .send(server.as_raw_fd(), &payload, &dests)
        .unwrap();
    assert_eq!(sent, 5);
    for v in &viewers {
        v.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = vec![0u8; 65_536];
        let (n, from) = v.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &payload[..]);
        assert_eq!(from, server.local_addr().unwrap());
    }
}

#[test]
fn more_destinations_than_one_call_takes_all_go() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let viewer = UdpSocket::bind("127.0.0.1:0").unwrap();
    set_buffer(viewer.as_raw_fd(), libc::SO_RCVBUF, 1 << 20).unwrap();
    let dests = vec![viewer.local_addr().unwrap(); SEND_BATCH + 3];
    let sent = BatchSender::default()
        .send(server.as_raw_fd(), b"x", &dests)
        .unwrap();
    assert_eq!(sent, SEND_BATCH + 3);
    viewer.set_nonblocking(true).unwrap();
    let got = recv_all(&mut BatchReceiver::default(), &viewer, SEND_BATCH + 3);
    assert_eq!(got.len(), SEND_BATCH + 3);
}

#[test]
fn acks_come_in_batches_with_their_senders_and_true_lengths() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    server.set_nonblocking(true).unwrap();
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.local_addr().unwrap();
    a.send_to(b"continue", to).unwrap();
    b.send_to(b"continue 17", to).unwrap();
    a.send_to(&[b'x'; 1000], to).unwrap();
    let mut inbox = BatchReceiver::default();
    let got = recv_all(&mut inbox, &server, 3);
    assert_eq!(got.len(), 3);
    assert_eq!(got[0], (b"continue".to_vec(), a.local_addr().unwrap(), 8));
    assert_eq!(
        got[1],
        (b"continue 17".to_vec(), b.local_addr().unwrap(), 11)
    );
    assert_eq!(
        got[2].0.len(),
        BatchReceiver::DATAGRAM_BYTES,
        "cut to the buffer"
    );
    assert_eq!(got[2].2, 1000, "the real length is reported");
    let err = inbox.recv(server.as_raw_fd(), |_, _, _| {}).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn control_messages_say_where_a_datagram_went_and_when_it_came() {
    // One socket on 0.0.0.0 stands in for many addresses, as the load tool's does.
    let many = UdpSocket::bind("0.0.0.0:0").unwrap();
    set_destination_and_timestamp(many.as_raw_fd()).unwrap();
    let port = v4(&many).port();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    let viewer = Ipv4Addr::new(127, 2, 0, 7);
    let before_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    sender
        .send_to(&[7u8; 1000], SocketAddrV4::new(viewer, port))
        .unwrap();
    sender
        .send_to(
            b"short",
            SocketAddrV4::new(Ipv4Addr::new(127, 2, 0, 8), port),
        )
        .unwrap();
    many.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut rx = MmsgReceiver::new(8, 64).with_control();
    assert_eq!(rx.capacity(), 8);
    let mut seen = Vec::new();
    for _ in 0..100 {
        let _ = rx.recv(many.as_raw_fd(), |d| {
            seen.push((d.bytes.to_vec(), d.len, d.from, d.to, d.rx_unix_ns))
        });
        if seen.len() >= 2 {
            break;
        }
        wait_readable(many.as_raw_fd(), Duration::from_millis(20));
    }
    let after_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert_eq!(seen.len(), 2);
    let (bytes, len, from, to, rx_ns) = &seen[0];
    assert_eq!(bytes, &vec![7u8; 64], "only the first 64 bytes are kept");
    assert_eq!(*len, 1000, "the full length is reported");
    assert_eq!(*from, sender.local_addr().unwrap());
    assert_eq!(*to, Some(viewer));
    let rx_ns = rx_ns.expect("a kernel receive time");
    assert!(
        (before_ns..=after_ns).contains(&rx_ns),
        "{rx_ns} not within {before_ns}..={after_ns}"
    );
    assert_eq!(seen[1].0, b"short");
    assert_eq!(seen[1].1, 5);
    assert_eq!(seen[1].3, Some(Ipv4Addr::new(127, 2, 0, 8)));
    let err = rx.recv(many.as_raw_fd(), |_| {}).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
}

#[test]
fn without_control_buffers_no_destination_or_time_is_reported() {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    // Asked for on the socket, but the receiver keeps no room for them.
    set_destination_and_timestamp(sock.as_raw_fd()).unwrap();
    let sender = UdpSocket::bind("127.0.0.1:0").unwrap();
    sender
        .send_to(b"continue", sock.local_addr().unwrap())
        .unwrap();
    let mut rx = MmsgReceiver::new(4, 128);
    let mut seen = Vec::new();
    for _ in 0..100 {
        let _ = rx.recv(sock.as_raw_fd(), |d| seen.push((d.len, d.to, d.rx_unix_ns)));
        if !seen.is_empty() {
            break;
        }
        wait_readable(sock.as_raw_fd(), Duration::from_millis(20));
    }
    assert_eq!(seen, vec![(8, None, None)]);
}

#[test]
fn sourced_datagrams_leave_from_their_chosen_addresses() {
    let many = UdpSocket::bind("0.0.0.0:0").unwrap();
    let port = v4(&many).port();
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let to = server.local_addr().unwrap();
    let mut out = SourcedSender::default();
    out.push(b"continue 1", to, Ipv4Addr::new(127, 2, 0, 7));
    out.push(
        b"continue 18446744073709551615",
        to,
        Ipv4Addr::new(127, 2, 0, 8),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(out.flush(many.as_raw_fd()).unwrap(), 2);
    assert!(out.is_empty(), "a flush empties the batch");
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"continue 1");
    assert_eq!(
        from,
        SocketAddrV4::new(Ipv4Addr::new(127, 2, 0, 7), port).into()
    );
    let (n, from) = server.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"continue 18446744073709551615");
    assert_eq!(
        from,
        SocketAddrV4::new(Ipv4Addr::new(127, 2, 0, 8), port).into()
    );
    assert_eq!(
        out.flush(many.as_raw_fd()).unwrap(),
        0,
        "nothing left to send"
    );
}

#[test]
fn the_fd_limit_is_raised_to_the_hard_limit() {
    let limit = raise_fd_limit().unwrap();
    // SAFETY: getrlimit on a local struct.
    let hard = unsafe {
        let mut lim: libc::rlimit = zeroed();
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        lim.rlim_max
    };
    assert_eq!(limit, hard);
}

#[test]
fn ipv6_addresses_round_trip() {
    let a: SocketAddr = "[::1]:4242".parse().unwrap();
    let b: SocketAddr = "127.0.0.1:9".parse().unwrap();
    for addr in [a, b] {
        let (ss, _) = to_sockaddr(&addr);
        assert_eq!(from_sockaddr(&ss), Some(addr));
    }
}
