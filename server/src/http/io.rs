//! A connection's socket with a write deadline: a write (or flush) that makes no progress for
//! the deadline fails with `TimedOut`, so hyper drops a peer that stopped reading instead of
//! holding its connection, and what it buffered, for good.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{sleep, Sleep};

use super::WriteStalled;

pub(crate) struct DeadlineIo<T> {
    inner: T,
    deadline: Duration,
    /// Set when the deadline passed.
    stalled: WriteStalled,
    /// Armed while a write waits for room in the socket.
    waiting: Option<Pin<Box<Sleep>>>,
}

impl<T> DeadlineIo<T> {
    pub(crate) fn new(inner: T, deadline: Duration, stalled: WriteStalled) -> DeadlineIo<T> {
        DeadlineIo {
            inner,
            deadline,
            stalled,
            waiting: None,
        }
    }

    /// Counts a write that could not go: Pending until the deadline, then `TimedOut`.
    fn check_stall<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.waiting = None;
            return polled;
        }
        let deadline = self.deadline;
        let timer = self
            .waiting
            .get_or_insert_with(|| Box::pin(sleep(deadline)));
        ready!(timer.as_mut().poll(cx));
        self.stalled.0.store(true, Relaxed);
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took nothing for {deadline:?}"),
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for DeadlineIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for DeadlineIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.check_stall(cx, polled)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.check_stall(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_flush(cx);
        this.check_stall(cx, polled)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.check_stall(cx, polled)
    }
}
