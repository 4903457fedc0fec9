//! Batched UDP for the load generator: `recvmmsg`/`sendmmsg` on one socket that stands in for
//! thousands of viewers, each a different loopback address (127.2.x.y) at the same port.
//!
//! Received datagrams say which viewer they were for (`IP_PKTINFO`) and when the kernel took them
//! in (`SO_TIMESTAMPNS`); acks leave from the viewer's own address (`IP_PKTINFO` on send), which is
//! what the server checks. Only the first [`PREFIX_BYTES`] of a frame are copied out
//! (`MSG_TRUNC` still reports the full length): the tag is all the generator needs, and copying
//! whole JPEGs would charge the generator for work a real viewer does on its own core.
//!
//! All `unsafe` of the load tool is here: libc calls on buffers this module owns, whose
//! pointers are rebuilt before every call.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::os::fd::AsRawFd;

/// Bytes of each datagram copied to user space: the JPEG SOI and the surv tag fit.
pub const PREFIX_BYTES: usize = 64;

/// Room for an `IP_PKTINFO` and an `SCM_TIMESTAMPNS` control message (8-byte aligned).
const CONTROL_WORDS: usize = 16;

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

fn sockaddr_to_v4(sa: &libc::sockaddr_in) -> SocketAddrV4 {
    SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
        u16::from_be(sa.sin_port),
    )
}

fn v4_to_sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as libc::sa_family_t;
    sa.sin_port = a.port().to_be();
    sa.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    sa
}

fn setsockopt_int(sock: &UdpSocket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live i32 and its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for destination addresses and kernel timestamps on receive, and a large receive buffer
/// (forced past `rmem_max` when root; otherwise what the limit allows).
pub fn configure(sock: &UdpSocket, rcvbuf_bytes: i32) -> io::Result<()> {
    setsockopt_int(sock, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)?;
    if setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, rcvbuf_bytes).is_err() {
        setsockopt_int(sock, libc::SOL_SOCKET, libc::SO_RCVBUF, rcvbuf_bytes)?;
    }
    Ok(())
}

/// Keeps the socket to the loopback interface (it is bound to 0.0.0.0 so that every 127.x.y.z
/// reaches it). Needs CAP_NET_RAW; without it the caller warns and goes on.
pub fn bind_to_loopback(sock: &UdpSocket) -> io::Result<()> {
    let name = b"lo\0";
    // SAFETY: passes a pointer to a live byte string and its length.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Buffers for receiving up to `capacity` datagrams per call.
pub struct RecvBatch {
    bufs: Vec<[u8; PREFIX_BYTES]>,
    names: Vec<libc::sockaddr_in>,
    control: Vec<[u64; CONTROL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl RecvBatch {
    pub fn new(capacity: usize) -> RecvBatch {
        let capacity = capacity.max(1);
        RecvBatch {
            bufs: vec![[0; PREFIX_BYTES]; capacity],
            // SAFETY: plain old data; all-zero is valid.
            names: vec![unsafe { zeroed() }; capacity],
            control: vec![[0; CONTROL_WORDS]; capacity],
            iovs: Vec::with_capacity(capacity),
            hdrs: Vec::with_capacity(capacity),
        }
    }

    /// Receives what is queued, without waiting (`WouldBlock` when nothing is), and calls `each`
    /// per datagram. Returns how many there were.
    pub fn recv(
        &mut self,
        sock: &UdpSocket,
        mut each: impl FnMut(Datagram<'_>),
    ) -> io::Result<usize> {
        let n = self.bufs.len();
        self.iovs.clear();
        for buf in &mut self.bufs {
            self.iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: PREFIX_BYTES,
            });
        }
        self.hdrs.clear();
        for i in 0..n {
            // SAFETY: plain old data; all-zero is valid, and every pointer is set below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = size_of::<[u64; CONTROL_WORDS]>() as _;
            self.hdrs.push(h);
        }
        // SAFETY: every header points into buffers owned by self, alive and unmoved for the call;
        // the lengths given are theirs.
        let got = unsafe {
            libc::recvmmsg(
                sock.as_raw_fd(),
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if got < 0 {
            return Err(io::Error::last_os_error());
        }
        let got = got as usize;
        for i in 0..got {
            let h = &self.hdrs[i];
            let len = h.msg_len as usize;
            let (to, rx_unix_ns) = parse_control(&h.msg_hdr);
            each(Datagram {
                len,
                prefix: &self.bufs[i][..len.min(PREFIX_BYTES)],
                from: sockaddr_to_v4(&self.names[i]),
                to: to.unwrap_or(Ipv4Addr::UNSPECIFIED),
                rx_unix_ns,
            });
        }
        Ok(got)
    }
}

/// Reads the destination address and the kernel timestamp from a received header.
fn parse_control(msg: &libc::msghdr) -> (Option<Ipv4Addr>, Option<u64>) {
    let mut to = None;
    let mut ts = None;
    // SAFETY: the kernel filled msg_control and set msg_controllen; the CMSG_* macros walk
    // within it, and each payload is read unaligned with the type its (level, type) promises.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            let data = libc::CMSG_DATA(c);
            match ((*c).cmsg_level, (*c).cmsg_type) {
                (libc::IPPROTO_IP, libc::IP_PKTINFO) => {
                    let info: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                    to = Some(Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)));
                }
                (libc::SOL_SOCKET, libc::SCM_TIMESTAMPNS) => {
                    let t: libc::timespec = std::ptr::read_unaligned(data.cast());
                    ts = Some(t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64);
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (to, ts)
}

/// Small datagrams (acks) queued for one `sendmmsg`, each from a chosen local address.
#[derive(Default)]
pub struct SendBatch {
    payloads: Vec<([u8; 32], usize)>,
    names: Vec<libc::sockaddr_in>,
    sources: Vec<Ipv4Addr>,
    control: Vec<[u64; CONTROL_WORDS]>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

impl SendBatch {
    /// Queues `payload` (at most 32 bytes; longer is cut) to `to`, sent from `from_ip`.
    pub fn push(&mut self, payload: &[u8], to: SocketAddrV4, from_ip: Ipv4Addr) {
        let mut p = [0u8; 32];
        let n = payload.len().min(32);
        p[..n].copy_from_slice(&payload[..n]);
        self.payloads.push((p, n));
        self.names.push(v4_to_sockaddr(to));
        self.sources.push(from_ip);
    }

    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    /// Sends everything queued (retrying the rest after a partial send, a bounded number of
    /// times) and empties the batch. Returns how many were sent.
    pub fn flush(&mut self, sock: &UdpSocket) -> io::Result<usize> {
        let n = self.payloads.len();
        self.control.clear();
        self.control.resize(n, [0; CONTROL_WORDS]);
        self.iovs.clear();
        for (p, len) in &mut self.payloads {
            self.iovs.push(libc::iovec {
                iov_base: p.as_mut_ptr().cast(),
                iov_len: *len,
            });
        }
        self.hdrs.clear();
        let space = unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;
        for i in 0..n {
            // SAFETY: plain old data; every pointer is set below to buffers owned by self.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_in).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_in>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = space as _;
            // SAFETY: the control buffer holds CONTROL_WORDS * 8 bytes, more than one
            // CMSG_SPACE(in_pktinfo); the header and payload are written inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&h.msg_hdr);
                (*c).cmsg_level = libc::IPPROTO_IP;
                (*c).cmsg_type = libc::IP_PKTINFO;
                (*c).cmsg_len = libc::CMSG_LEN(size_of::<libc::in_pktinfo>() as u32) as _;
                let mut info: libc::in_pktinfo = zeroed();
                info.ipi_spec_dst.s_addr = u32::from(self.sources[i]).to_be();
                std::ptr::write_unaligned(libc::CMSG_DATA(c).cast(), info);
            }
            self.hdrs.push(h);
        }
        let mut sent = 0;
        let mut attempts = 0;
        let result = loop {
            if sent == n || attempts == 8 {
                break Ok(sent);
            }
            attempts += 1;
            // SAFETY: headers from `sent` on point into buffers owned by self, alive for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    sock.as_raw_fd(),
                    self.hdrs.as_mut_ptr().add(sent),
                    (n - sent) as libc::c_uint,
                    libc::MSG_DONTWAIT,
                )
            };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::WouldBlock {
                    continue;
                }
                break Err(e);
            }
            sent += rc as usize;
        };
        self.payloads.clear();
        self.names.clear();
        self.sources.clear();
        result
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
