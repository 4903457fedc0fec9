//! `surv-netdelay`: a fixed one-way delay for every IP packet routed through a TUN device, where
//! netem cannot load (these kernels). Root only; for `scripts/loss-netns.sh link` and
//! `scripts/webrtc-rtt.sh`, which run it (`scripts/netns-link.sh`) in a router namespace between
//! the server's and the viewer's: policy routing sends every packet
//! the router gets from either side into the TUN device, this program holds each one
//! `--delay-ms` and writes it back, and the router forwards it on by its main table. So TCP,
//! UDP, IP fragments and acks all cross with the same delay each way, as on a real path.
//!
//! ```text
//! server ns ── veth ──▶ router ns: iif veth-* ──▶ tun ──▶ surv-netdelay (hold D ms) ──▶ tun
//!                                   ──▶ main table ──▶ veth ──▶ viewer ns        (and back)
//! ```
//!
//! The delay is constant, so packets leave in the order they came. The queue is bounded
//! (`--max-queue-bytes`); a packet that would pass it is dropped and counted, as a router's full
//! buffer would. Runs for `--seconds` at most (or until SIGINT or SIGTERM), then prints what it
//! relayed.
//!
//! ```text
//! ip tuntap add dev tun0 mode tun && ip link set tun0 up
//! surv-netdelay --tun tun0 --delay-ms 20 --seconds 120
//! ```

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;

/// Holds every packet through a TUN device for a fixed time (see the module doc).
#[derive(Debug, Parser)]
#[command(name = "surv-netdelay", about)]
struct Args {
    /// The TUN device to attach to (made with `ip tuntap add dev NAME mode tun`).
    #[arg(long)]
    tun: String,
    /// One-way delay, ms, for every packet.
    #[arg(long)]
    delay_ms: u64,
    /// Stop after this long.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
    /// Bytes held at most; a packet past it is dropped.
    #[arg(long, default_value_t = 32 << 20)]
    max_queue_bytes: usize,
}

/// Set by SIGINT or SIGTERM: the loop ends and the summary is printed.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, std::sync::atomic::Ordering::Relaxed);
}

/// The largest IP packet read from the device.
const MAX_PACKET: usize = 65_535;

/// A FIFO of packets, each due a fixed time after it came; bounded in bytes.
struct Line {
    delay: Duration,
    max_bytes: usize,
    held: VecDeque<(Instant, Vec<u8>)>,
    bytes: usize,
    relayed: u64,
    relayed_bytes: u64,
    dropped: u64,
    most_held_bytes: usize,
}

impl Line {
    fn new(delay: Duration, max_bytes: usize) -> Line {
        Line {
            delay,
            max_bytes,
            held: VecDeque::new(),
            bytes: 0,
            relayed: 0,
            relayed_bytes: 0,
            dropped: 0,
            most_held_bytes: 0,
        }
    }

    /// A packet came at `now`: held until `now + delay`, or dropped if the line is full.
    fn hold(&mut self, packet: &[u8], now: Instant) {
        if self.bytes + packet.len() > self.max_bytes {
            self.dropped += 1;
            return;
        }
        self.bytes += packet.len();
        self.most_held_bytes = self.most_held_bytes.max(self.bytes);
        self.held.push_back((now + self.delay, packet.to_vec()));
    }

    /// The oldest packet, if it is due at `now`.
    fn pop_due(&mut self, now: Instant) -> Option<Vec<u8>> {
        if self.held.front()?.0 > now {
            return None;
        }
        let (_, packet) = self.held.pop_front()?;
        self.bytes -= packet.len();
        self.relayed += 1;
        self.relayed_bytes += packet.len() as u64;
        Some(packet)
    }

    /// How long until the oldest packet is due (`None`: nothing held).
    fn next_due(&self, now: Instant) -> Option<Duration> {
        self.held
            .front()
            .map(|(due, _)| due.saturating_duration_since(now))
    }
}

/// Attaches to TUN device `name`, without the packet-information prefix.
fn open_tun(name: &str) -> anyhow::Result<File> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        bail!("bad TUN device name {name:?}");
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .context("opening /dev/net/tun (root needed)")?;
    // SAFETY: ifreq is plain data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = (libc::IFF_TUN | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one ifreq, alive for the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context(format!("TUNSETIFF {name}"));
    }
    // Reads must not block the loop: it polls, then drains.
    // SAFETY: fcntl on a descriptor this function owns.
    unsafe {
        let flags = libc::fcntl(file.as_raw_fd(), libc::F_GETFL);
        libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK);
    }
    Ok(file)
}

/// Waits at most `wait` for the device to be readable, to the microsecond (ppoll).
fn wait_readable(fd: i32, wait: Duration) {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: wait.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
    };
    // SAFETY: one pollfd and one timespec, alive for the call; no signal mask.
    unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut tun = open_tun(&args.tun)?;
    let fd = tun.as_raw_fd();
    let mut line = Line::new(Duration::from_millis(args.delay_ms), args.max_queue_bytes);
    let mut buf = vec![0u8; MAX_PACKET];
    let (start, until) = (
        Instant::now(),
        Instant::now() + Duration::from_secs(args.seconds),
    );
    let mut write_errors = 0u64;
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    while Instant::now() < until && !STOP.load(std::sync::atomic::Ordering::Relaxed) {
        let now = Instant::now();
        while let Some(packet) = line.pop_due(now) {
            if tun.write(&packet).is_err() {
                write_errors += 1;
            }
        }
        let wait = line
            .next_due(Instant::now())
            .unwrap_or(Duration::from_millis(100))
            .min(Duration::from_millis(100));
        wait_readable(fd, wait);
        // Drain what came, a bounded number before releasing what is due again.
        for _ in 0..256 {
            match tun.read(&mut buf) {
                Ok(n) if n > 0 => line.hold(&buf[..n], Instant::now()),
                _ => break,
            }
        }
    }
    println!(
        "surv-netdelay: {} ms each way for {:.0} s: relayed {} packets ({} bytes), dropped {} (queue over {} bytes), most held {} bytes, write errors {}",
        args.delay_ms,
        start.elapsed().as_secs_f64(),
        line.relayed,
        line.relayed_bytes,
        line.dropped,
        args.max_queue_bytes,
        line.most_held_bytes,
        write_errors
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_leave_in_order_after_the_delay_and_a_full_line_drops() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut line = Line::new(Duration::from_millis(20), 5);
        line.hold(b"ab", t0);
        line.hold(b"cd", ms(1));
        line.hold(b"ef", ms(2)); // 6 bytes > 5: dropped
        assert_eq!(line.dropped, 1);
        assert_eq!(line.next_due(t0), Some(Duration::from_millis(20)));
        assert_eq!(line.pop_due(ms(19)), None);
        assert_eq!(line.pop_due(ms(20)).as_deref(), Some(&b"ab"[..]));
        assert_eq!(line.pop_due(ms(20)), None);
        assert_eq!(line.pop_due(ms(25)).as_deref(), Some(&b"cd"[..]));
        assert_eq!(line.next_due(ms(25)), None);
        assert_eq!((line.relayed, line.relayed_bytes, line.bytes), (2, 4, 0));
        assert_eq!(line.most_held_bytes, 4);
    }
}
