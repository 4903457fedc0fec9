//! A port forward on loopback, as a home router or a cloud's 1:1 NAT does it: players reach a
//! "public" address (another loopback address, `127.0.0.2`) and each of them appears to the
//! server as a new source on the inside. What a server behind it must get right is the address
//! it tells players (`--webrtc-host`) against the one its datagrams arrive at.
//!
//! UDP: one inside socket per player, as a NAT keeps a mapping per flow. TCP: each connection
//! is joined to a new one to the server. Both end when the [`PortForward`] is dropped.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinSet;

/// The forward's counters.
#[derive(Debug, Default)]
pub struct Forwarded {
    /// UDP datagrams from players to the server, and back.
    pub udp_in: AtomicU64,
    pub udp_out: AtomicU64,
    /// TCP connections joined to the server.
    pub tcp_connections: AtomicU64,
}

/// A running forward from `public` to `inside`; dropped, it stops.
pub struct PortForward {
    pub public: SocketAddr,
    pub counts: Arc<Forwarded>,
    _tasks: JoinSet<()>,
}

/// Players' flows a UDP forward keeps at most (a test has a few).
const MAX_FLOWS: usize = 64;

impl PortForward {
    /// Forwards UDP datagrams sent to `public` on to `inside`, and the answers back; with
    /// `tcp`, connections to `public` too. `udp: false` leaves `public`'s UDP port bound and
    /// silent: a firewall that drops UDP.
    pub async fn start(
        public: SocketAddr,
        inside: SocketAddr,
        udp: bool,
        tcp: bool,
    ) -> std::io::Result<PortForward> {
        let counts = Arc::new(Forwarded::default());
        let mut tasks = JoinSet::new();
        let outer = Arc::new(UdpSocket::bind(public).await?);
        if udp {
            tasks.spawn(forward_udp(outer, inside, counts.clone()));
        } else {
            tasks.spawn(async move {
                let mut buf = vec![0u8; 2048];
                // Taken and dropped, as a firewall's rule would.
                while outer.recv_from(&mut buf).await.is_ok() {}
            });
        }
        if tcp {
            let listener = TcpListener::bind(public).await?;
            tasks.spawn(forward_tcp(listener, inside, counts.clone()));
        }
        Ok(PortForward {
            public,
            counts,
            _tasks: tasks,
        })
    }
}

async fn forward_udp(outer: Arc<UdpSocket>, inside: SocketAddr, counts: Arc<Forwarded>) {
    let mut flows: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut backs = JoinSet::new();
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((n, player)) = outer.recv_from(&mut buf).await else {
            return;
        };
        let flow = match flows.get(&player) {
            Some(f) => f.clone(),
            None if flows.len() < MAX_FLOWS => {
                let Ok(f) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                if f.connect(inside).await.is_err() {
                    continue;
                }
                let f = Arc::new(f);
                flows.insert(player, f.clone());
                let (back, outer, counts) = (f.clone(), outer.clone(), counts.clone());
                backs.spawn(async move {
                    let mut buf = vec![0u8; 65_536];
                    while let Ok(n) = back.recv(&mut buf).await {
                        if outer.send_to(&buf[..n], player).await.is_ok() {
                            counts.udp_out.fetch_add(1, Relaxed);
                        }
                    }
                });
                f
            }
            None => continue,
        };
        if flow.send(&buf[..n]).await.is_ok() {
            counts.udp_in.fetch_add(1, Relaxed);
        }
    }
}

async fn forward_tcp(listener: TcpListener, inside: SocketAddr, counts: Arc<Forwarded>) {
    let mut joined = JoinSet::new();
    while let Ok((mut player, _)) = listener.accept().await {
        let Ok(mut server) = TcpStream::connect(inside).await else {
            continue;
        };
        counts.tcp_connections.fetch_add(1, Relaxed);
        joined.spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut player, &mut server).await;
        });
    }
}
