//! Every system call the server makes through `libc`, and so all of its `unsafe` (and of the
//! load tool, which uses these too): batched UDP (`sendmmsg` of one frame to many viewers,
//! `recvmmsg` of many datagrams with their senders, full lengths and, when asked, their
//! destination and kernel receive time), one segmented UDP send (GSO: a frame's RTP packets in
//! one call), a `sendmmsg` of segmented sends (a frame's chunks to many viewers), the sockaddr conversions, socket options, a bounded
//! wait on one socket, a UDP socket's registration with the runtime for reading alone, and
//! the open-file limit.
//!
//! Sending shares the frame: every message's iovec points at the same bytes, so a frame is
//! never copied in user space however many viewers get it. Every batch type owns its buffers
//! and rebuilds the raw pointers into them before each call, so no pointer outlives a call.

use std::ffi::CStr;
use std::io;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// Messages per `sendmmsg` call (the kernel's UIO_MAXIOV caps a call at 1024).
pub const SEND_BATCH: usize = 512;

/// Datagrams per `recvmmsg` call on the server.
pub const RECV_BATCH: usize = 64;

/// Control bytes per message: room for an `IP_PKTINFO` and an `SCM_TIMESTAMPNS` message
/// (32 bytes each on 64-bit Linux) with room to spare; `u64` words keep it 8-byte aligned.
const CONTROL_WORDS: usize = 16;
type Control = [u64; CONTROL_WORDS];

/// Bytes one `IP_PKTINFO` control message takes, header and padding included.
// SAFETY: CMSG_SPACE is arithmetic on its argument; it reads no memory.
const PKTINFO_SPACE: usize =
    unsafe { libc::CMSG_SPACE(size_of::<libc::in_pktinfo>() as u32) } as usize;

/// `addr` as the kernel takes it: the storage and the length of the part in use.
pub fn to_sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
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

/// The address the kernel wrote into `ss`; `None` for a family other than IPv4 and IPv6.
pub fn from_sockaddr(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    // SAFETY: the family field says which address type the kernel wrote, and the storage is
    // large and aligned enough for either.
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

/// Sets an integer socket option (`setsockopt` with a `c_int` value).
pub fn set_int_option(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
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

/// Sets a socket buffer size (`SO_SNDBUF`/`SO_RCVBUF`, or the `…FORCE` forms that pass the
/// limit when privileged); the kernel caps the plain forms at its maximum.
pub fn set_buffer(fd: RawFd, option: libc::c_int, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    set_int_option(fd, libc::SOL_SOCKET, option, value)
}

/// Sets "don't fragment" on an IPv4 socket without path-MTU discovery (`IP_PMTUDISC_PROBE`):
/// a datagram over the interface's MTU fails instead of being fragmented.
pub fn set_dont_fragment(fd: RawFd) -> io::Result<()> {
    set_int_option(
        fd,
        libc::IPPROTO_IP,
        libc::IP_MTU_DISCOVER,
        libc::IP_PMTUDISC_PROBE,
    )
}

/// Asks the kernel to say, with each datagram received on this IPv4 socket, the local address
/// it was sent to (`IP_PKTINFO`) and when it arrived (`SO_TIMESTAMPNS`); a
/// [`MmsgReceiver::with_control`] reads both.
pub fn set_destination_and_timestamp(fd: RawFd) -> io::Result<()> {
    set_int_option(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, 1)?;
    set_int_option(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
}

/// Keeps a socket to one network interface (`SO_BINDTODEVICE`); needs CAP_NET_RAW.
pub fn bind_to_device(fd: RawFd, interface: &CStr) -> io::Result<()> {
    let name = interface.to_bytes_with_nul();
    // SAFETY: passes a pointer to a live NUL-terminated byte string and its length.
    let rc = unsafe {
        libc::setsockopt(
            fd,
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
        in_batches(dests, |chunk| self.send_chunk(fd, payload, chunk))
    }

    fn send_chunk(&mut self, fd: RawFd, payload: &[u8], dests: &[SocketAddr]) -> io::Result<usize> {
        self.names.clear();
        self.names.extend(dests.iter().map(to_sockaddr));
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
        unsafe { send_messages(fd, &mut self.hdrs) }
    }
}

/// Sends `items` [`SEND_BATCH`] at a time with `send` (one `sendmmsg` each), in order, until
/// one call sends fewer than it was given. How many went (a prefix); an error only when the
/// first call failed.
fn in_batches<T>(
    items: &[T],
    mut send: impl FnMut(&[T]) -> io::Result<usize>,
) -> io::Result<usize> {
    let mut sent = 0;
    while sent < items.len() {
        let chunk = &items[sent..items.len().min(sent + SEND_BATCH)];
        let n = match send(chunk) {
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

/// One non-blocking `sendmmsg` of `hdrs`: how many went.
///
/// # Safety
/// Every pointer in every header (name, iovecs and the memory they point at, control) must be
/// valid for reads for the whole call.
unsafe fn send_messages(fd: RawFd, hdrs: &mut [libc::mmsghdr]) -> io::Result<usize> {
    // SAFETY: the caller vouches for the headers' pointers; the count is the slice's length.
    let rc = unsafe {
        libc::sendmmsg(
            fd,
            hdrs.as_mut_ptr(),
            hdrs.len() as libc::c_uint,
            libc::MSG_DONTWAIT,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Writes one `UDP_SEGMENT` control message of `size` into `control` and points `msg` at it.
///
/// # Safety
/// `msg` must not be sent after `control` moves or is freed.
unsafe fn set_segment(msg: &mut libc::msghdr, control: &mut GsoControl, size: u16) {
    // SAFETY: CMSG_SPACE/CMSG_LEN are arithmetic; the header is written into `control`, which has
    // room for one u16 message (CMSG_SPACE(2) = 24 bytes of its 32 on 64-bit Linux).
    unsafe {
        let space = libc::CMSG_SPACE(size_of::<u16>() as u32) as usize;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        let cmsg = libc::CMSG_FIRSTHDR(msg);
        (*cmsg).cmsg_level = libc::SOL_UDP;
        (*cmsg).cmsg_type = libc::UDP_SEGMENT;
        (*cmsg).cmsg_len = libc::CMSG_LEN(size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<u16>(), size);
    }
}

/// The most segments one `UDP_SEGMENT` send may carry (the kernel's `UDP_MAX_SEGMENTS`, 64
/// before Linux 6.x raised it), and the most bytes (a datagram's 16-bit length).
pub const GSO_MAX_SEGMENTS: usize = 64;
pub const GSO_MAX_BYTES: usize = 65_000;

/// Control bytes for one `UDP_SEGMENT` message (a u16), `u64` words for alignment.
type GsoControl = [u64; 4];

/// One `sendmsg` of the bytes of `iovs` to `dest`, without blocking. With `segment`, as UDP
/// generic segmentation offload (`UDP_SEGMENT`): the kernel cuts the bytes into datagrams of
/// `segment` bytes (the last may be shorter), one system call and one trip down the stack for
/// them all; the caller keeps within [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`]. Without, the
/// bytes are one datagram. The bytes sent, or the error (`WouldBlock` when the socket buffer is
/// full; `EIO`/`EINVAL` where the route or kernel cannot segment).
pub fn send_segments(
    fd: RawFd,
    dest: &SocketAddr,
    iovs: &[io::IoSlice<'_>],
    segment: Option<u16>,
) -> io::Result<usize> {
    let (mut ss, len) = to_sockaddr(dest);
    let mut control: GsoControl = [0; 4];
    // SAFETY: plain old data; the pointers are set right below.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_name = (&mut ss as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = len;
    // IoSlice is ABI-compatible with iovec (std guarantees it on Unix); the kernel only reads.
    msg.msg_iov = iovs.as_ptr() as *mut libc::iovec;
    msg.msg_iovlen = iovs.len() as _;
    if let Some(size) = segment {
        // SAFETY: `msg` is sent below, while `control` lives.
        unsafe { set_segment(&mut msg, &mut control, size) };
    }
    // SAFETY: `msg` points at `ss`, `control` and the caller's iovecs, all alive and unmoved
    // during the call.
    let rc = unsafe { libc::sendmsg(fd, &msg, libc::MSG_DONTWAIT) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc as usize)
}

/// Cleared the first time the kernel or a route refuses a segmented send: from then on the
/// senders that use UDP GSO (RTP over UDP, chunked SURV/1) send one datagram per packet.
pub static GSO_WORKS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// The errors of a kernel or route that cannot segment (an old kernel, a device without
/// checksum offload), as opposed to a failed send.
pub fn cannot_segment(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EOPNOTSUPP)
    )
}

/// One message of a [`GsoBatch`]: the bytes of `iovs` (a range of the batch's iovecs) to
/// `dest`, cut by the kernel into datagrams of `segment` bytes (the last may be shorter), or
/// one datagram without.
#[derive(Debug, Clone)]
pub struct GsoMessage {
    pub dest: SocketAddr,
    pub iovs: std::ops::Range<usize>,
    pub segment: Option<u16>,
}

/// Reusable buffers for one `sendmmsg` of many segmented messages, each to its own address
/// with its own `UDP_SEGMENT` size: one viewer's chunks of a frame are one message, and every
/// viewer's messages one call.
#[derive(Default)]
pub struct GsoBatch {
    names: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    control: Vec<GsoControl>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as for `BatchSender`: pointers are rebuilt before every call.
unsafe impl Send for GsoBatch {}

impl GsoBatch {
    /// Sends `messages` (their bytes in `iovs`) in order, without blocking, [`SEND_BATCH`] a
    /// call. Returns how many went (a prefix of `messages`): fewer when the socket buffer filled
    /// or on an error after some were sent; an error only when the first one failed. The caller
    /// keeps each message within [`GSO_MAX_SEGMENTS`] and [`GSO_MAX_BYTES`].
    pub fn send(
        &mut self,
        fd: RawFd,
        iovs: &[io::IoSlice<'_>],
        messages: &[GsoMessage],
    ) -> io::Result<usize> {
        in_batches(messages, |chunk| self.send_chunk(fd, iovs, chunk))
    }

    fn send_chunk(
        &mut self,
        fd: RawFd,
        iovs: &[io::IoSlice<'_>],
        messages: &[GsoMessage],
    ) -> io::Result<usize> {
        self.names.clear();
        self.names
            .extend(messages.iter().map(|m| to_sockaddr(&m.dest)));
        self.control.clear();
        self.control.resize(messages.len(), [0; 4]);
        self.hdrs.clear();
        for (i, m) in messages.iter().enumerate() {
            let Some(slices) = iovs.get(m.iovs.clone()) else {
                return Err(io::Error::from(io::ErrorKind::InvalidInput));
            };
            // SAFETY: plain old data; the pointers are set right below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.names[i].1;
            // IoSlice is ABI-compatible with iovec (std guarantees it on Unix); the kernel
            // only reads.
            h.msg_hdr.msg_iov = slices.as_ptr() as *mut libc::iovec;
            h.msg_hdr.msg_iovlen = slices.len() as _;
            if let Some(size) = m.segment {
                // SAFETY: sent below, while `self.control` is neither moved nor freed.
                unsafe { set_segment(&mut h.msg_hdr, &mut self.control[i], size) };
            }
            self.hdrs.push(h);
        }
        // SAFETY: every header points at an address in `self.names`, a control buffer in
        // `self.control` and the caller's iovecs, none moved or freed during the call.
        unsafe { send_messages(fd, &mut self.hdrs) }
    }
}

/// Small datagrams queued for one `sendmmsg`, each to its own address and each from its own
/// local address (an `IP_PKTINFO` control message per datagram): one socket bound to 0.0.0.0
/// speaks for many addresses.
#[derive(Default)]
pub struct SourcedSender {
    /// Every queued payload, back to back; `spans` says where each one is.
    bytes: Vec<u8>,
    spans: Vec<(usize, usize)>,
    names: Vec<(libc::sockaddr_storage, libc::socklen_t)>,
    sources: Vec<Ipv4Addr>,
    control: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as for `BatchSender`: pointers are rebuilt before every call.
unsafe impl Send for SourcedSender {}

impl SourcedSender {
    /// `sendmmsg` calls one flush makes at most: a full socket buffer is retried this often,
    /// then the rest is dropped as the network would drop it.
    pub const MAX_ATTEMPTS: usize = 8;

    /// Queues `payload` to `to`, to be sent from the local address `from_ip`.
    pub fn push(&mut self, payload: &[u8], to: SocketAddr, from_ip: Ipv4Addr) {
        self.spans.push((self.bytes.len(), payload.len()));
        self.bytes.extend_from_slice(payload);
        self.names.push(to_sockaddr(&to));
        self.sources.push(from_ip);
    }

    /// Datagrams queued.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Sends everything queued without blocking, retrying the rest after a partial send or a
    /// full buffer up to [`Self::MAX_ATTEMPTS`] calls in all, and empties the batch. Returns
    /// how many were sent; an error other than "would block" ends the flush.
    pub fn flush(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.spans.len();
        self.control.clear();
        self.control.resize(n, [0; CONTROL_WORDS]);
        self.iovs.clear();
        for &(start, len) in &self.spans {
            self.iovs.push(libc::iovec {
                // The kernel only reads it.
                iov_base: self.bytes[start..].as_ptr() as *mut libc::c_void,
                iov_len: len,
            });
        }
        self.hdrs.clear();
        for i in 0..n {
            // SAFETY: plain old data; every pointer is set below to buffers owned by self.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i].0 as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = self.names[i].1;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.control[i].as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = PKTINFO_SPACE as _;
            // SAFETY: the control buffer (CONTROL_WORDS * 8 bytes, 8-byte aligned) holds more
            // than PKTINFO_SPACE, the msg_controllen given, so CMSG_FIRSTHDR is not null and the
            // header and payload written are inside it.
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
            if sent == n || attempts == Self::MAX_ATTEMPTS {
                break Ok(sent);
            }
            attempts += 1;
            // SAFETY: headers from `sent` on (n - sent of them) point into buffers owned by
            // self, alive and unmoved for the call.
            let rc = unsafe {
                libc::sendmmsg(
                    fd,
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
        self.bytes.clear();
        self.spans.clear();
        self.names.clear();
        self.sources.clear();
        result
    }
}

/// One datagram as [`MmsgReceiver`] received it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    /// Its first bytes, as many as the receiver keeps.
    pub bytes: &'a [u8],
    /// Its full length (more than `bytes.len()` when it was cut).
    pub len: usize,
    pub from: SocketAddr,
    /// The local address it was sent to (`IP_PKTINFO`), when control messages were asked for.
    pub to: Option<Ipv4Addr>,
    /// When the kernel took it in, ns since the Unix epoch (`SO_TIMESTAMPNS`), likewise.
    pub rx_unix_ns: Option<u64>,
}

/// Reusable buffers for receiving up to `capacity` datagrams per `recvmmsg`, each cut to
/// `datagram_bytes` (`MSG_TRUNC` still reports its full length), with or without control
/// messages.
pub struct MmsgReceiver {
    datagram_bytes: usize,
    /// `capacity` buffers of `datagram_bytes`, back to back.
    bufs: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    /// Empty, or one per message.
    control: Vec<Control>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<libc::mmsghdr>,
}

// SAFETY: as for `BatchSender`: pointers are rebuilt before every call.
unsafe impl Send for MmsgReceiver {}

impl MmsgReceiver {
    /// Room for `capacity` datagrams per call, keeping `datagram_bytes` of each (at least one
    /// of each).
    pub fn new(capacity: usize, datagram_bytes: usize) -> MmsgReceiver {
        let capacity = capacity.max(1);
        let datagram_bytes = datagram_bytes.max(1);
        MmsgReceiver {
            datagram_bytes,
            bufs: vec![0; capacity * datagram_bytes],
            // SAFETY: plain old data; all-zero is valid.
            names: vec![unsafe { zeroed() }; capacity],
            control: Vec::new(),
            iovs: Vec::with_capacity(capacity),
            hdrs: Vec::with_capacity(capacity),
        }
    }

    /// Also takes each datagram's control messages, and reports the destination and receive
    /// time they carry (the socket asks for them: [`set_destination_and_timestamp`]).
    pub fn with_control(mut self) -> MmsgReceiver {
        self.control = vec![[0; CONTROL_WORDS]; self.names.len()];
        self
    }

    /// Datagrams per call.
    pub fn capacity(&self) -> usize {
        self.names.len()
    }

    /// Receives what is queued without blocking (`WouldBlock` when nothing is) and calls
    /// `each` per datagram; returns how many there were (a datagram from an address of another
    /// family than IPv4 and IPv6 is counted, not passed on).
    pub fn recv(&mut self, fd: RawFd, mut each: impl FnMut(Received<'_>)) -> io::Result<usize> {
        let capacity = self.names.len();
        self.iovs.clear();
        for buf in self.bufs.chunks_exact_mut(self.datagram_bytes) {
            self.iovs.push(libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: self.datagram_bytes,
            });
        }
        self.hdrs.clear();
        for i in 0..capacity {
            // SAFETY: plain old data; the pointers are set right below.
            let mut h: libc::mmsghdr = unsafe { zeroed() };
            h.msg_hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            if let Some(c) = self.control.get_mut(i) {
                h.msg_hdr.msg_control = c.as_mut_ptr().cast();
                h.msg_hdr.msg_controllen = size_of::<Control>() as _;
            }
            self.hdrs.push(h);
        }
        // SAFETY: every header points into buffers owned by self, alive and unmoved for the
        // call; the lengths given are theirs.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                capacity as libc::c_uint,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for i in 0..n {
            let Some(from) = from_sockaddr(&self.names[i]) else {
                continue;
            };
            let len = self.hdrs[i].msg_len as usize;
            let (to, rx_unix_ns) = if self.control.is_empty() {
                (None, None)
            } else {
                parse_control(&self.hdrs[i].msg_hdr)
            };
            let start = i * self.datagram_bytes;
            each(Received {
                bytes: &self.bufs[start..start + len.min(self.datagram_bytes)],
                len,
                from,
                to,
                rx_unix_ns,
            });
        }
        Ok(n)
    }
}

/// Reads the destination address and the kernel receive time from a received header.
fn parse_control(msg: &libc::msghdr) -> (Option<Ipv4Addr>, Option<u64>) {
    let mut to = None;
    let mut rx_unix_ns = None;
    // SAFETY: the kernel filled msg_control (a buffer of ours) and set msg_controllen; the
    // CMSG_* macros walk within it, and each payload is read unaligned as the type its
    // (level, type) promises.
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
                    rx_unix_ns = u64::try_from(t.tv_sec)
                        .ok()
                        .and_then(|s| s.checked_mul(1_000_000_000))
                        .and_then(|ns| ns.checked_add(u64::try_from(t.tv_nsec).ok()?));
                }
                _ => {}
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    (to, rx_unix_ns)
}

/// The server's ack inbox: [`RECV_BATCH`] datagrams per call, [`Self::DATAGRAM_BYTES`] kept
/// of each, no control messages.
pub struct BatchReceiver(MmsgReceiver);

impl Default for BatchReceiver {
    fn default() -> Self {
        BatchReceiver(MmsgReceiver::new(RECV_BATCH, BatchReceiver::DATAGRAM_BYTES))
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
        self.0.recv(fd, |d| each(d.bytes, d.from, d.len))
    }
}

/// Reads what is already queued on a socket without waiting (`MSG_DONTWAIT`), whatever the
/// async runtime believes of its readiness: `WouldBlock` when nothing is there, `Ok(0)` at end.
pub fn recv_now(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length for the duration of the call.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// Waits until `fd` has room to send or `wait` has passed, whichever comes first.
pub fn wait_writable(fd: RawFd, wait: Duration) {
    poll_one(fd, libc::POLLOUT, wait);
}

/// Waits until `fd` has something to read or `wait` has passed, whichever comes first.
pub fn wait_readable(fd: RawFd, wait: Duration) {
    poll_one(fd, libc::POLLIN, wait);
}

fn poll_one(fd: RawFd, events: libc::c_short, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = libc::c_int::try_from(wait.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one pollfd, alive for the call.
    unsafe { libc::poll(&mut pfd, 1, ms) };
}

/// Registers a socket that others share with the async runtime for reading alone (tokio's
/// `UdpSocket` registers for writing too, and the kernel wakes a socket's writers each time it
/// lets go of a datagram sent: every datagram sent woke the runtime's reactor, whether or not
/// anyone waited to write). The registration holds a share of the socket, so its descriptor
/// stays open as long.
pub fn register_shared(
    socket: Arc<std::net::UdpSocket>,
) -> io::Result<AsyncFd<Arc<std::net::UdpSocket>>> {
    // SAFETY: the registration holds the socket (shared), so its descriptor stays open and the
    // same for as long as the registration lives.
    let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) };
    registered.map_err(|e| e.into_parts().1)
}

/// The IP addresses of this host's interfaces that are up (`getifaddrs`): WebRTC's ICE host
/// candidates when the server listens on every address. Loopback and link-local addresses are
/// left out (a remote player cannot reach them); so are IPv6 addresses when `v6` is false and
/// IPv4 ones when it is true.
pub fn interface_addresses(v6: bool) -> io::Result<Vec<std::net::IpAddr>> {
    let mut found = Vec::new();
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `list` with a linked list the C library owns until freeifaddrs;
    // each entry is read only while the list lives, and its address as the type its family
    // says.
    unsafe {
        if libc::getifaddrs(&mut list) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut at = list;
        while !at.is_null() {
            let entry = &*at;
            at = entry.ifa_next;
            let up = entry.ifa_flags & (libc::IFF_UP as libc::c_uint) != 0;
            if !up || entry.ifa_addr.is_null() {
                continue;
            }
            let ip: std::net::IpAddr = match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET if !v6 => {
                    let sin: libc::sockaddr_in = std::ptr::read_unaligned(entry.ifa_addr.cast());
                    Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).into()
                }
                libc::AF_INET6 if v6 => {
                    let sin6: libc::sockaddr_in6 = std::ptr::read_unaligned(entry.ifa_addr.cast());
                    Ipv6Addr::from(sin6.sin6_addr.s6_addr).into()
                }
                _ => continue,
            };
            let link_local = match ip {
                std::net::IpAddr::V4(v4) => v4.is_link_local(),
                std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
            };
            if !ip.is_loopback() && !link_local && !found.contains(&ip) {
                found.push(ip);
            }
        }
        libc::freeifaddrs(list);
    }
    Ok(found)
}

/// Raises this process's open-file limit to its hard limit (each viewer holds a TCP connection)
/// and returns the limit now in force.
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

/// Hands the allocator's free memory back to the system: glibc's `malloc_trim(0)`, which
/// returns the free pages inside every thread's arena, not only the top of the main heap. After
/// a flood of connections, the memory they used is free again but glibc keeps most of it mapped,
/// so RSS would stay near the flood's peak. Returns whether anything was released; with another
/// C library, does nothing.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers; glibc locks each arena while it trims it.
    return unsafe { libc::malloc_trim(0) } == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

/// The largest block glibc serves from its heap arenas once [`fix_mmap_threshold`] is called.
pub const MMAP_THRESHOLD_BYTES: usize = 2 << 20;

/// Fixes glibc's mmap threshold at [`MMAP_THRESHOLD_BYTES`]: larger blocks get a mapping of
/// their own, which goes back to the system as soon as they are freed. By default glibc raises
/// the threshold (up to 32 MiB) to the size of each such block freed, so that later blocks up to
/// that size come from its heap arenas, one per thread, where they stay resident once freed
/// until [`release_free_memory`]. An RTSP connection's read buffer grows to 16 MiB for an access
/// unit near retina's 8 MiB bound: once one was freed, each reconnection's grew in an arena, and
/// a camera sending endless access units took the process to 43 to 78 MiB in its first seconds,
/// against 24 to 31 MiB with the threshold fixed (`tests/tests/source_rtsp_hostile.rs`). Blocks
/// under the threshold (frames, the encoder's buffers) are served as before. Call once at
/// startup. Returns whether it was set; with another C library, does nothing.
pub fn fix_mmap_threshold() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt takes no pointers; glibc sets its parameter under its own lock.
    return unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES as libc::c_int) }
        == 1;
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    false
}

#[cfg(test)]
mod tests;
