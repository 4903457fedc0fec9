//! `surv-edge-conf DIR ORIGIN LISTEN CONNECTIONS`: writes an nginx HLS edge's configuration
//! into DIR as the tests make it (`surv_tests::nginx::write_config`: deploy/nginx-edge.conf
//! with ORIGIN, LISTEN and DIR/cache put in, and a main configuration of one worker of
//! CONNECTIONS connections around it), for `scripts/hls-netns.sh`'s edges on hosts of their
//! own. Start it with `nginx -p DIR -c DIR/nginx.conf -e DIR/error.log`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, origin, listen, connections] = &args[..] else {
        anyhow::bail!("usage: surv-edge-conf DIR ORIGIN LISTEN CONNECTIONS (addresses as IP:PORT)");
    };
    let origin: SocketAddr = origin.parse().context("ORIGIN: IP:PORT")?;
    let listen: SocketAddr = listen.parse().context("LISTEN: IP:PORT")?;
    let connections: usize = connections.parse().context("CONNECTIONS: a number")?;
    surv_tests::nginx::write_config(&PathBuf::from(dir), origin, listen, connections)
}
