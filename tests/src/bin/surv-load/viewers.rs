//! The viewers' TCP side: each viewer's own loopback address (127.2.x.y), its registration
//! form, and registering many of them in batches, reading SURV/1 replies as surv-client does.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use surv_proto::{Form, Registration, Reply, ReplyError};

use crate::mmsg::SendBatch;
use crate::receiver::SessionKeys;

/// Viewer addresses are 127.2.(i / 250).(i % 250 + 1): this many fit.
pub const MAX_VIEWER_INDEX: usize = 250 * 256;
/// Registrations in flight at once: under the server's 256 pending registrations.
const REGISTER_BATCH: usize = 200;

pub fn viewer_ip(index: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 2, (index / 250) as u8, (index % 250 + 1) as u8)
}

pub fn viewer_index(ip: Ipv4Addr) -> Option<usize> {
    let [a, b, c, d] = ip.octets();
    (a == 127 && b == 2 && (1..=250).contains(&d))
        .then(|| usize::from(c) * 250 + usize::from(d) - 1)
}

pub fn form_of(index: usize, seed_percent: usize) -> Form {
    // Spread evenly: with 50 %, every other viewer.
    if (index + 1) * seed_percent / 100 > index * seed_percent / 100 {
        Form::Seed
    } else {
        Form::V1
    }
}

/// A registered viewer's TCP connection.
pub struct Viewer {
    pub index: usize,
    _tcp: TcpStream,
}

/// Registers viewers `indices` (in batches under the server's pending-registration limit),
/// their frames to arrive on `udp`. SURV/1 viewers' session keys go to `keys`, and each says
/// `hello` from its own address once registered. Returns the connections and the
/// registrations refused or failed.
pub fn register_all(
    server: SocketAddrV4,
    indices: &[usize],
    udp: &UdpSocket,
    seed_percent: usize,
    keys: &SessionKeys,
) -> (Vec<Viewer>, Vec<String>) {
    register_all_for(server, indices, udp, seed_percent, keys, |_| None)
}

/// [`register_all`], each SURV/1 viewer asking for the camera `camera_of` names (`cam=`;
/// `None`: the server's first).
pub fn register_all_for(
    server: SocketAddrV4,
    indices: &[usize],
    udp: &UdpSocket,
    seed_percent: usize,
    keys: &SessionKeys,
    camera_of: impl Fn(usize) -> Option<String>,
) -> (Vec<Viewer>, Vec<String>) {
    let udp_port = udp.local_addr().map_or(0, |a| a.port());
    let mut ok = Vec::with_capacity(indices.len());
    let mut failed = Vec::new();
    let mut hellos = SendBatch::default();
    for batch in indices.chunks(REGISTER_BATCH) {
        let mut pending = Vec::with_capacity(batch.len());
        for &index in batch {
            let form = form_of(index, seed_percent);
            let camera = camera_of(index);
            match connect_and_send_for(server, index, udp_port, form, camera.as_deref()) {
                Ok(tcp) => pending.push((index, form, tcp)),
                Err(e) => failed.push(format!("viewer {index}: {e:#}")),
            }
        }
        for (index, form, tcp) in pending {
            match form {
                Form::Seed => ok.push(Viewer { index, _tcp: tcp }),
                Form::V1 => match read_reply(&tcp) {
                    Ok(Reply::Accepted(p)) => {
                        let to = p.udp_port.map(|port| SocketAddrV4::new(*server.ip(), port));
                        keys.set(index, p.key, to);
                        if let (Some(_), Some(to)) = (p.key, to) {
                            hellos.push(&keys.hello(index), to, viewer_ip(index));
                        }
                        ok.push(Viewer { index, _tcp: tcp });
                    }
                    Ok(Reply::Refused(r)) => failed.push(format!("viewer {index}: refused: {r}")),
                    Err(e) => failed.push(format!("viewer {index}: {e:#}")),
                },
            }
        }
        if let Err(e) = hellos.flush(udp) {
            failed.push(format!("hello not sent: {e}"));
        }
        // Seed registrations end with a 50 ms pause: let this batch's settle before the next.
        // (The receiving thread says hello again for every viewer still without a frame.)
        std::thread::sleep(Duration::from_millis(80));
    }
    (ok, failed)
}

pub fn connect_and_send(
    server: SocketAddrV4,
    index: usize,
    udp_port: u16,
    form: Form,
) -> anyhow::Result<TcpStream> {
    connect_and_send_for(server, index, udp_port, form, None)
}

/// [`connect_and_send`] asking for `camera` (SURV/1 only: the seed form cannot name one).
fn connect_and_send_for(
    server: SocketAddrV4,
    index: usize,
    udp_port: u16,
    form: Form,
    camera: Option<&str>,
) -> anyhow::Result<TcpStream> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    sock.bind(&SocketAddr::from(SocketAddrV4::new(viewer_ip(index), 0)).into())
        .context("binding the viewer's TCP socket")?;
    sock.connect_timeout(&SocketAddr::from(server).into(), Duration::from_secs(5))
        .context("connecting")?;
    let mut tcp: TcpStream = sock.into();
    let line = Registration { form, udp_port }
        .with_token(None)
        .with_camera(camera)
        .encode();
    tcp.write_all(&line)?;
    Ok(tcp)
}

/// Reads the server's reply byte-wise, as surv-client does: surv-proto frames it. The whole
/// line is due within 10 s, however slowly it trickles in.
pub fn read_reply(mut tcp: &TcpStream) -> anyhow::Result<Reply> {
    let until = Instant::now() + Duration::from_secs(10);
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no whole reply within 10 s");
        }
        tcp.set_read_timeout(Some(left))?;
        if tcp.read(&mut byte)? == 0 {
            bail!("closed without a reply");
        }
        line.push(byte[0]);
        match Reply::decode(&line) {
            Err(ReplyError::Incomplete) => {}
            Ok((reply, _)) => return Ok(reply),
            Err(e) => return Err(e.into()),
        }
    }
}
