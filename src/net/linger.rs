//! Lingering close: after wsgate ends a client connection on its own
//! initiative (an answer with `Connection: close`: a 400, 408, 413, or any
//! refusal before a request body was read), it goes on reading and
//! discarding what the client still sends, for at most `timeouts.linger`.
//!
//! Why: a client still uploading a body that wsgate refused would
//! otherwise meet a closed socket; the kernel answers its next bytes with a
//! reset, its sends fail, and it never reads the answer that was waiting
//! for it (browsers and HTTP libraries report "connection reset", not 413).
//! nginx does the same (`lingering_close`).
//!
//! Owns: [`Lingering`], the wrapper that notices the write side being shut
//! down, and the discarding task its drop starts.
//!
//! Must not: linger after a 101 (the tunnel takes the stream out with
//! [`Lingering::into_inner`]), when the client closed first, or past a
//! drain or shutdown.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where a lingering close runs, and for how long.
#[derive(Clone)]
pub struct LingerPlan {
    /// `timeouts.linger`.
    pub linger: Duration,
    /// Lingering tasks are tracked like every task.
    pub tasks: TaskTracker,
    /// A drain or shutdown ends them at once.
    pub stop: CancellationToken,
}

/// A client stream that lingers when dropped after its write side was shut
/// down.
pub struct Lingering<S: AsyncRead + Unpin + Send + 'static> {
    /// `None` only once taken by `into_inner` or the drop.
    inner: Option<S>,
    /// wsgate shut its write side down: it ended the connection.
    shut: bool,
    /// The client's EOF was read: nothing more will come.
    eof: bool,
    plan: LingerPlan,
}

impl<S: AsyncRead + Unpin + Send + 'static> Lingering<S> {
    /// Wraps `inner`.
    pub fn new(inner: S, plan: LingerPlan) -> Self {
        Self {
            inner: Some(inner),
            shut: false,
            eof: false,
            plan,
        }
    }

    /// The stream underneath, never lingering (the tunnel's, after a 101).
    pub fn into_inner(mut self) -> Option<S> {
        self.inner.take()
    }

    fn inner(&mut self) -> io::Result<Pin<&mut S>> {
        self.inner
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<S: AsyncRead + Unpin + Send + 'static> Drop for Lingering<S> {
    fn drop(&mut self) {
        if !self.shut || self.eof || self.plan.stop.is_cancelled() {
            return;
        }
        let Some(mut stream) = self.inner.take() else {
            return;
        };
        let (linger, stop) = (self.plan.linger, self.plan.stop.clone());
        self.plan.tasks.spawn(async move {
            let mut scratch = vec![0u8; 8 * 1024];
            let discard = async { while let Ok(1..) = stream.read(&mut scratch).await {} };
            tokio::select! {
                _ = tokio::time::timeout(linger, discard) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = self.inner()?.poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            self.eof |= buf.filled().len() == before && buf.remaining() > 0;
        }
        r
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.inner()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shut = true;
        self.inner()?.poll_shutdown(cx)
    }
}
