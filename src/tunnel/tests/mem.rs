//! The in-memory stream the tunnel tests drive the tunnel over.

use super::*;

/// The tunnel's end of an in-memory pipe. `DuplexStream` cannot say it is
/// readable without reading, which `Splice` asks for, so this reads one
/// byte ahead when asked and hands it out first on the next read. The
/// mutex is there only because `poll_read_ready` takes `&self`.
pub(super) struct Mem(Mutex<Ahead>);

struct Ahead {
    stream: DuplexStream,
    /// The byte read to learn readiness, not yet handed out.
    byte: Option<u8>,
    /// A read that would return EOF fails with this instead: rustls says
    /// `UnexpectedEof` for a peer gone without close_notify, a socket says
    /// `ConnectionReset`.
    eof_as: Option<io::ErrorKind>,
    /// Set, writes wait here until a flush, as in a TLS stream: what the
    /// tunnel never flushes never arrives.
    held: Option<Vec<u8>>,
}

impl Mem {
    pub(super) fn new(stream: DuplexStream) -> Self {
        Mem(Mutex::new(Ahead {
            stream,
            byte: None,
            eof_as: None,
            held: None,
        }))
    }

    pub(super) fn eof_as(self, kind: Option<io::ErrorKind>) -> Self {
        let mut ahead = self.0.into_inner().expect("no test panics holding it");
        ahead.eof_as = kind;
        Mem(Mutex::new(ahead))
    }

    pub(super) fn buffered(self, yes: bool) -> Self {
        let mut ahead = self.0.into_inner().expect("no test panics holding it");
        ahead.held = yes.then(Vec::new);
        Mem(Mutex::new(ahead))
    }

    fn ahead(self: Pin<&mut Self>) -> &mut Ahead {
        self.get_mut()
            .0
            .get_mut()
            .expect("no test panics holding it")
    }
}

impl Ahead {
    /// Moves what writes left waiting into the pipe.
    fn poll_release(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(held) = self.held.as_mut().filter(|h| !h.is_empty()) {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, held))?;
            held.drain(..n);
        }
        Poll::Ready(Ok(()))
    }
}

impl Splice for Mem {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut ahead = self.0.lock().expect("no test panics holding it");
        if ahead.byte.is_some() {
            return Poll::Ready(Ok(()));
        }
        let mut one = [0u8; 1];
        let mut rb = ReadBuf::new(&mut one);
        ready!(Pin::new(&mut ahead.stream).poll_read(cx, &mut rb))?;
        // Nothing read means EOF: that is readable too, the next read says so.
        ahead.byte = rb.filled().first().copied();
        Poll::Ready(Ok(()))
    }
}

impl AsyncRead for Mem {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let Some(byte) = ahead.byte.take() else {
            let before = buf.filled().len();
            ready!(Pin::new(&mut ahead.stream).poll_read(cx, buf))?;
            return match ahead.eof_as {
                Some(kind) if buf.filled().len() == before => Poll::Ready(Err(kind.into())),
                _ => Poll::Ready(Ok(())),
            };
        };
        buf.put_slice(&[byte]);
        // Whatever else is already there comes along, as from a socket, so
        // a frame written at once is read at once. A pipe never fails a
        // read, and a Pending here only leaves a waker behind.
        let _ = Pin::new(&mut ahead.stream).poll_read(cx, buf);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Mem {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let ahead = self.ahead();
        match ahead.held.as_mut() {
            Some(held) => {
                held.extend_from_slice(buf);
                Poll::Ready(Ok(buf.len()))
            }
            None => Pin::new(&mut ahead.stream).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        ready!(ahead.poll_release(cx))?;
        Pin::new(&mut ahead.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let ahead = self.ahead();
        ready!(ahead.poll_release(cx))?;
        Pin::new(&mut ahead.stream).poll_shutdown(cx)
    }
}
