//! `--pipe`: the received JPEGs written to standard output, one after another, as a plain MJPEG
//! stream (what `ffmpeg -f mjpeg -i -` reads), off the network path.
//!
//! A thread owns stdout and writes each frame whole; the receive loop hands frames over a
//! bounded queue and never waits: a reader slower than the stream costs frames (dropped, counted),
//! never the acks. When the reader goes away (EPIPE: Rust ignores SIGPIPE, so it is an error, not
//! a signal) the thread says so through `closed`, and the viewer ends cleanly, telling the server.

use std::io::{self, Write};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::thread::{self, JoinHandle};

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

/// Frames waiting for the writer: about two seconds at 30 fps.
const QUEUE_FRAMES: usize = 64;

/// What the pipe did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeCounts {
    /// Frames written whole to the output.
    pub written: u64,
    /// Frames not written: the queue was full (the reader is slower than the stream), or the
    /// output had closed.
    pub dropped: u64,
}

/// The receive loop's side of the pipe.
pub struct Pipe {
    tx: Option<SyncSender<Bytes>>,
    dropped: u64,
    /// Frames written, frames lost after the output failed, and how it failed.
    thread: JoinHandle<(u64, u64, Option<io::Error>)>,
}

impl Pipe {
    /// Starts writing to `out`; `closed` is cancelled when `out` fails (the reader left).
    pub fn spawn<W: Write + Send + 'static>(
        mut out: W,
        closed: CancellationToken,
    ) -> io::Result<Pipe> {
        let (tx, rx) = mpsc::sync_channel::<Bytes>(QUEUE_FRAMES);
        let thread = thread::Builder::new()
            .name("surv-pipe".into())
            .spawn(move || {
                let mut written = 0;
                let mut frames = rx.into_iter();
                for frame in frames.by_ref() {
                    if let Err(e) = out.write_all(&frame).and_then(|()| out.flush()) {
                        closed.cancel();
                        // This frame, and every one still queued or pushed until the end.
                        let lost = 1 + frames.count() as u64;
                        return (written, lost, Some(e));
                    }
                    written += 1;
                }
                (written, 0, None)
            })?;
        Ok(Pipe {
            tx: Some(tx),
            dropped: 0,
            thread,
        })
    }

    /// Queues a frame; never blocks.
    pub fn push(&mut self, frame: Bytes) {
        let Some(tx) = &self.tx else { return };
        match tx.try_send(frame) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.dropped += 1,
            Err(TrySendError::Disconnected(_)) => {
                self.dropped += 1;
                self.tx = None;
            }
        }
    }

    /// Writes what is queued (unless the output has closed) and stops the thread.
    pub fn finish(self) -> PipeCounts {
        let Pipe {
            tx,
            dropped,
            thread,
        } = self;
        drop(tx);
        let (written, lost, error) = thread.join().unwrap_or((0, 0, None));
        match error {
            Some(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                tracing::info!("the pipe's reader closed it")
            }
            Some(e) => tracing::warn!(error = %e, "writing to the pipe failed"),
            None => {}
        }
        PipeCounts {
            written,
            dropped: dropped + lost,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// An output that takes `limit` writes, then fails as a closed pipe does.
    #[derive(Clone)]
    struct Out {
        got: Arc<Mutex<Vec<u8>>>,
        limit: usize,
    }

    impl Write for Out {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let mut got = self.got.lock().unwrap();
            if got.len() + buf.len() > self.limit {
                return Err(io::ErrorKind::BrokenPipe.into());
            }
            got.extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frames_go_out_whole_and_in_order() {
        let out = Out {
            got: Arc::default(),
            limit: usize::MAX,
        };
        let closed = CancellationToken::new();
        let mut pipe = Pipe::spawn(out.clone(), closed.clone()).unwrap();
        let frames: Vec<Bytes> = (0u8..10).map(|i| Bytes::from(vec![i; 100])).collect();
        for f in &frames {
            pipe.push(f.clone());
        }
        let counts = pipe.finish();
        assert_eq!(counts.written + counts.dropped, 10);
        assert_eq!(counts.dropped, 0, "ten frames fit the queue");
        assert_eq!(*out.got.lock().unwrap(), frames.concat());
        assert!(!closed.is_cancelled());
    }

    #[test]
    fn a_closed_reader_is_told_and_nothing_blocks() {
        let out = Out {
            got: Arc::default(),
            limit: 250,
        };
        let closed = CancellationToken::new();
        let mut pipe = Pipe::spawn(out.clone(), closed.clone()).unwrap();
        for i in 0..1000u32 {
            pipe.push(Bytes::from(vec![7u8; 100]));
            if i == 10 {
                // Give the writer time to hit the closed pipe.
                let until = std::time::Instant::now() + std::time::Duration::from_secs(5);
                while !closed.is_cancelled() && std::time::Instant::now() < until {
                    std::thread::sleep(std::time::Duration::from_millis(5));
                }
            }
        }
        assert!(closed.is_cancelled());
        let counts = pipe.finish();
        assert_eq!(counts.written, 2, "two whole frames fit");
        assert_eq!(counts.written + counts.dropped, 1000, "{counts:?}");
    }
}
