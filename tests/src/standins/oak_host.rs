//! Seed 000's OAK host program (`tcp_streaming_server_host.py`), as it reads the camera's TCP
//! stream: `recv(32)` the header, `re.split(' +', header)`, check `ABCDE`, read the JPEG of the
//! size it names, decode it (the seed shows it with OpenCV; here turbojpeg).

use anyhow::{bail, Context};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::IO_TIMEOUT;

/// One frame as the host program sees it.
#[derive(Debug)]
pub struct OakFrame {
    /// The header's timestamp, seconds.
    pub ts: f64,
    pub jpeg: Vec<u8>,
    pub width: usize,
    pub height: usize,
}

/// Reads one ABCDE frame and decodes it; the header must be exactly what the host parses.
pub async fn read_frame(sock: &mut TcpStream) -> anyhow::Result<OakFrame> {
    let mut header = [0u8; 32];
    tokio::time::timeout(IO_TIMEOUT, sock.read_exact(&mut header))
        .await
        .context("no header in time")??;
    let header = std::str::from_utf8(&header).context("header is not ASCII")?;
    let chunks: Vec<&str> = header.split(' ').filter(|c| !c.is_empty()).collect();
    if chunks.first() != Some(&"ABCDE") || chunks.len() != 3 {
        bail!("not an OAK header: {header:?}");
    }
    let ts: f64 = chunks[1].parse().context("timestamp")?;
    let size: usize = chunks[2].parse().context("size")?;
    if size > 8 << 20 {
        bail!("frame of {size} bytes");
    }
    let mut jpeg = vec![0u8; size];
    tokio::time::timeout(IO_TIMEOUT, sock.read_exact(&mut jpeg))
        .await
        .context("no JPEG in time")??;
    let image = turbojpeg::decompress(&jpeg, turbojpeg::PixelFormat::RGB).context("decode")?;
    Ok(OakFrame {
        ts,
        width: image.width,
        height: image.height,
        jpeg,
    })
}
