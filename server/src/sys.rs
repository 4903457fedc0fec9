//! Every system call the server makes through `libc`, and so all of its `unsafe`: batched UDP
//! (one `sendmmsg` puts a frame on the wire to many viewers, one `recvmmsg` takes in many
//! acks), socket options, a bounded wait for room to send, and the open-file limit.
//!
//! Sending shares the frame: every message's iovec points at the same bytes, so a frame is
//! never copied in user space however many viewers get it.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;

/// Messages per `sendmmsg` call (the kernel's UIO_MAXIOV caps a call at 1024).
pub const SEND_BATCH: usize = 512;

/// Datagrams per `recvmmsg` call.
pub const RECV_BATCH: usize = 64;

fn to_storage(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data, all-zero is valid; it is large and aligned
    // enough for either address type written into it below.
    unsafe {
        let mut ss: libc::sockaddr_storage = zeroed();
        let len = match addr {
            SocketAddr::V4(a) => {
                let sin =
                    &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                sin.sin_family = libc::AF_INET as libc::sa_family_t;
                sin.sin_port = a.port().to_be();
                sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
                size_of::<libc::sockaddr_in>()
            }
            SocketAddr::V6(a) => {
                let sin6 =
                    &mut *(&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                sin6.sin6_port = a.port().to_be();
                sin6.sin6_addr.s6_addr = a.ip().octets();
                sin6.sin6_flowinfo = a.flowinfo();
                sin6.sin6_scope_id = a.scope_id();
                size_of::<libc::sockaddr_in6>()
            }
        };
        (ss, len as libc::socklen_t)
    }
}

fn from_storage(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which address type the kernel wrote.
    unsafe {
        match i32::from(ss.ss_family) {
            libc::AF_INET => {
                let sin = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>();
                Some(SocketAddr::V4(SocketAddrV4::new(
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                    u16::from_be(sin.sin_port),
                )))
            }
            libc::AF_INET6 => {
                let sin6 = &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>();
                Some(SocketAddr::V6(SocketAddrV6::new(
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                    u16::from_be(sin6.sin6_port),
                    sin6.sin6_flowinfo,
                    sin6.sin6_scope_id,
                )))
            }
            _ => None,
        }
    }
}

/// Reusable buffers for sending one payload to many addresses.
#[derive(Default)]
pub struct BatchSender {
    names: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: the raw pointers in `hdrs` are rebuilt before every call and never dereferenced
// outside it; between calls the buffers are plain data.
unsafe impl Send for BatchSender {}

impl BatchSender {
    /// Sends `payload` to each of `dests` in order, without blocking. Returns how many went
    /// (a prefix of `dests`): fewer when the socket buffer filled (the rest would block) or on
    /// an error after some were sent; an error only when the first one failed.
    pub fn send(&mut self, fd: RawFd, payload: &[u8], dests: &[SocketAddr]) -> io::Result<usize> {
        let mut sent = 0;
        while sent < dests.len() {
            let chunk = &dests[sent..dests.len().min(sent + SEND_BATCH)];
            let n = match self.send_chunk(fd, payload, chunk) {
                Ok(n) => n,
                Err(e) if sent == 0 => return Err(e),
                Err(_) => return Ok(sent),
            };
            sent += n;
            if n < chunk.len() {
                break;
            }
        }
        Ok(sent)
    }

    fn send_chunk(&mut self, fd: RawFd, payload: &[u8], dests: &[SocketAddr]) -> io::Result<usize> {
        self.names.clear();
        self.names.extend(dests.iter().map(to_storage));
        // One iovec for all: the kernel only reads it.
        let mut iov = libc::iovec {
            iov_base: payload.as_ptr() as *mut libc::c_void,
            iov_len: payload.len(),
        };
        self.hdrs.clear();
        for (ss, len) in &mut self.names {
            // SAFETY: plain old data; the pointers are set right below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (ss as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = *len;
            h.msg_hdr.msg_iov = &mut iov;
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: every header points at `iov` (alive, pointing at `payload`) and at an address
        // in `self.names`, neither moved nor freed during the call.
        let rc = unsafe {
            libc::sendmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                self.hdrs.len() as libc::c_uint,
                libc::MSG_DONTWAIT,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc as usize)
    }
}

/// Reusable buffers for receiving up to [`RECV_BATCH`] small datagrams per call.
pub struct BatchReceiver {
    bufs: Vec<[u8; BatchReceiver::DATAGRAM_BYTES]>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as for `BatchSender`: pointers are rebuilt before every call.
unsafe impl Send for BatchReceiver {}

impl Default for BatchReceiver {
    fn default() -> Self {
        BatchReceiver {
            bufs: vec![[0; BatchReceiver::DATAGRAM_BYTES]; RECV_BATCH],
            // SAFETY: plain old data; all-zero is valid.
            names: vec![unsafe { zeroed() }; RECV_BATCH],
            iovs: Vec::with_capacity(RECV_BATCH),
            hdrs: Vec::with_capacity(RECV_BATCH),
        }
    }
}

impl BatchReceiver {
    /// Bytes kept of each datagram; longer ones are cut, and their length says so.
    pub const DATAGRAM_BYTES: usize = 128;

    /// Receives what is queued without blocking (`WouldBlock` when nothing is) and calls
    /// `each(bytes, from, full_len)` per datagram; returns how many there were.
    pub fn recv(
        &mut self,
        fd: RawFd,
        mut each: impl FnMut(&[u8], SocketAddr, usize),
    ) -> io::Result<usize> {
        self.iovs.clear();
        for b in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: b.as_mut_ptr().cast(),
                iov_len: b.len(),
            });
        }
        self.hdrs.clear();
        for i in 0..RECV_BATCH {
            // SAFETY: plain old data; the pointers are set right below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            self.hdrs.push(h);
        }
        // SAFETY: every header points into buffers owned by self, alive and unmoved for the call.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for i in 0..n {
            let full_len = self.hdrs[i].msg_len as usize;
            let Some(from) = from_storage(&self.names[i]) else {
                continue;
            };
            each(
                &self.bufs[i][..full_len.min(BatchReceiver::DATAGRAM_BYTES)],
                from,
                full_len,
            );
        }
        Ok(n)
    }
}

/// Sets a socket buffer size (`SO_SNDBUF`/`SO_RCVBUF`); the kernel caps it at its maximum.
pub fn set_buffer(fd: RawFd, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            option,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Sets "don't fragment" on an IPv4 socket without path-MTU discovery (`IP_PMTUDISC_PROBE`):
/// a datagram over the interface's MTU fails instead of being fragmented.
pub fn set_dont_fragment(fd: RawFd) -> io::Result<()> {
    let value: libc::c_int = libc::IP_PMTUDISC_PROBE;
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` has room to send or `wait` has passed, whichever comes first.
pub fn wait_writable(fd: RawFd, wait: std::time::Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd, alive for the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Raises this process's open-file limit to its hard limit (each viewer holds a TCP connection)
/// and returns the limit now in force. Kept here with the server's other system calls.
pub fn raise_fd_limit() -> io::Result<u64> {
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim: libc::rlimit = zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(io::Error::last_os_error());
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim = raised;
            }
        }
        Ok(lim.rlim_cur)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;
    use std::os::fd::AsRawFd;
    use std::time::Duration;

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
            let (ss, _) = to_storage(&addr);
            assert_eq!(from_storage(&ss), Some(addr));
        }
    }
}
