//! [`Guarded`]: a client stream whose every read passes through the
//! connection's [`Scanner`] before hyper sees the bytes.
//!
//! Must not: touch what is written to the client, or hold the scanner's
//! lock beyond one read.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::Scanner;
use crate::net::admission::Admitted;

/// A client stream whose reads pass through a [`Scanner`] shared with the
/// connection's request handler (which tells it of every answer
/// and reads its verdict).
pub struct Guarded<S> {
    inner: S,
    scanner: Arc<Mutex<Scanner>>,
    /// The connection's place under the connection limits: it lives as
    /// long as the stream, and goes with it to a tunnel.
    place: Option<Admitted>,
}

impl<S> Guarded<S> {
    /// Wraps `inner`, holding its `place` under the connection limits.
    pub fn new(inner: S, scanner: Arc<Mutex<Scanner>>, place: Option<Admitted>) -> Self {
        Self {
            inner,
            scanner,
            place,
        }
    }

    /// The stream underneath and its place: after a 101, the tunnel reads
    /// it unchecked.
    pub fn into_inner(self) -> (S, Option<Admitted>) {
        (self.inner, self.place)
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.inner).poll_read(cx, buf))?;
        // A panic elsewhere cannot leave the scanner half-updated.
        let mut scanner = self.scanner.lock().unwrap_or_else(|e| e.into_inner());
        scanner.scan(&mut buf.filled_mut()[before..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
