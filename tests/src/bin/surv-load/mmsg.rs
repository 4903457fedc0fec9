//! Batched UDP for the load generator: `recvmmsg`/`sendmmsg` on one socket that stands in for
//! thousands of viewers, each a different loopback address (127.2.x.y) at the same port.
//!
//! Received datagrams say which viewer they were for (`IP_PKTINFO`) and when the kernel took them
//! in (`SO_TIMESTAMPNS`); acks leave from the viewer's own address (`IP_PKTINFO` on send), which is
//! what the server checks. Only the first [`PREFIX_BYTES`] of a frame are copied out
//! (`MSG_TRUNC` still reports the full length): the tag is all the generator needs, and copying
//! whole JPEGs would charge the generator for work a real viewer does on its own core.
//!
//! Safe code: the system calls (and their `unsafe`) are the server's, in `surv_server::sys`.

use std::ffi::CStr;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

use surv_server::sys;

/// Bytes of each datagram copied to user space: the JPEG SOI and the surv tag fit.
pub const PREFIX_BYTES: usize = 64;

/// One datagram as received.
#[derive(Debug, Clone, Copy)]
pub struct Datagram<'a> {
    /// The datagram's full length (more than `prefix.len()` for a frame).
    pub len: usize,
    pub prefix: &'a [u8],
    pub from: SocketAddrV4,
    /// The local address it was sent to: which viewer it is for.
    pub to: Ipv4Addr,
    /// Kernel receive time, ns since the Unix epoch.
    pub rx_unix_ns: Option<u64>,
}

/// Asks for destination addresses and kernel timestamps on receive, and a large receive buffer
/// (forced past `rmem_max` when root; otherwise what the limit allows).
pub fn configure(sock: &UdpSocket, rcvbuf_bytes: usize) -> io::Result<()> {
    let fd = sock.as_raw_fd();
    sys::set_destination_and_timestamp(fd)?;
    if sys::set_buffer(fd, libc::SO_RCVBUFFORCE, rcvbuf_bytes).is_err() {
        sys::set_buffer(fd, libc::SO_RCVBUF, rcvbuf_bytes)?;
    }
    Ok(())
}

/// Keeps the socket to the loopback interface (it is bound to 0.0.0.0 so that every 127.x.y.z
/// reaches it). Needs CAP_NET_RAW; without it the caller warns and goes on.
pub fn bind_to_loopback(sock: &UdpSocket) -> io::Result<()> {
    const LOOPBACK: &CStr = c"lo";
    sys::bind_to_device(sock.as_raw_fd(), LOOPBACK)
}

/// Buffers for receiving up to `capacity` datagrams per call.
pub struct RecvBatch(sys::MmsgReceiver);

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        RecvBatch(sys::MmsgReceiver::new(capacity, PREFIX_BYTES).with_control())
    }

    /// Receives what is queued, without waiting (`WouldBlock` when nothing is), and calls `each`
    /// per IPv4 datagram. Returns how many there were.
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        mut each: impl FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        self.0.recv(sock.as_raw_fd(), |d| {
            // The socket is IPv4 (bound to 0.0.0.0): nothing else arrives on it.
            let SocketAddr::V4(from) = d.from else {
                return;
            };
            each(Datagram {
                len: d.len,
                prefix: d.bytes,
                from,
                to: d.to.unwrap_or(Ipv4Addr::UNSPECIFIED),
                rx_unix_ns: d.rx_unix_ns,
            });
        })
    }
}

/// Small datagrams (acks) queued for one `sendmmsg`, each from a chosen local address.
#[derive(Default)]
pub struct SendBatch(sys::SourcedSender);

impl SendBatch {
    /// Queues `payload` to `to`, sent from `from_ip`.
    pub fn push(&mut self, payload: &[u8], to: SocketAddrV4, from_ip: Ipv4Addr) {
        self.0.push(payload, to.into(), from_ip);
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Sends everything queued (retrying the rest after a partial send, a bounded number of
    /// times) and empties the batch. Returns how many were sent.
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        self.0.flush(sock.as_raw_fd())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_leave_from_the_chosen_address_and_frames_say_where_they_went() {
        let gen = UdpSocket::bind("0.0.0.0:0").unwrap();
        configure(&gen, 1 << 20).unwrap();
        let port = gen.local_addr().unwrap().port();
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let server_addr = match server.local_addr().unwrap() {
            std::net::SocketAddr::V4(a) => a,
            _ => unreachable!(),
        };
        let viewer = Ipv4Addr::new(127, 2, 0, 7);
        // A long "frame" to the viewer's address: only the prefix is copied, the length is real.
        server
            .send_to(&[7u8; 1000], SocketAddrV4::new(viewer, port))
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        let mut rb = RecvBatch::new(8);
        let mut seen = Vec::new();
        let n = rb
            .recv(&gen, |d| {
                seen.push((d.len, d.prefix.len(), d.from, d.to, d.rx_unix_ns.is_some()))
            })
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(seen[0], (1000, PREFIX_BYTES, server_addr, viewer, true));

        let mut sb = SendBatch::default();
        sb.push(b"continue 1", server_addr, viewer);
        sb.push(b"continue 2", server_addr, Ipv4Addr::new(127, 2, 0, 8));
        assert_eq!(sb.flush(&gen).unwrap(), 2);
        assert_eq!(sb.len(), 0);
        let mut buf = [0u8; 64];
        server
            .set_read_timeout(Some(std::time::Duration::from_secs(2)))
            .unwrap();
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"continue 1");
        assert_eq!(from, SocketAddrV4::new(viewer, port).into());
        let (_, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(
            from,
            SocketAddrV4::new(Ipv4Addr::new(127, 2, 0, 8), port).into()
        );
        assert!(matches!(
            rb.recv(&gen, |_| {}),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock
        ));
    }
}
