//! The few WebSocket frames a `websocket` health check needs, as a client:
//! masked Ping and Close out, the server's frame headers in.
//!
//! Hand-written rather than borrowed: `tunnel::frames` sits above
//! `upstream` (and tracks frames it relays, never builds a conversation),
//! and a WebSocket library would be a whole client for three frames.
//!
//! Must not: allocate per frame beyond a control frame's payload (at most
//! 125 bytes); data frames are skipped without being kept.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Close (RFC 6455 section 5.5.1).
pub const OP_CLOSE: u8 = 0x8;
/// Ping.
pub const OP_PING: u8 = 0x9;
/// Pong.
pub const OP_PONG: u8 = 0xA;
/// Longest control-frame payload.
pub const MAX_CONTROL: usize = 125;

/// A frame the server sent that no server may send.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading failed, or the stream ended inside a frame.
    #[error("read failed: {0}")]
    Io(#[from] std::io::Error),
    /// Server frames are never masked (RFC 6455 section 5.1).
    #[error("the server sent a masked frame")]
    Masked,
    /// Reserved bits set though no extension was negotiated.
    #[error("the server set reserved bits (RSV) without an extension")]
    Reserved,
    /// An opcode RFC 6455 does not define.
    #[error("the server sent unknown opcode {0:#x}")]
    Opcode(u8),
    /// A control frame fragmented or longer than 125 bytes.
    #[error("the server sent a fragmented or oversized control frame")]
    Control,
}

/// A server frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Last frame of its message.
    pub fin: bool,
    /// Its opcode.
    pub opcode: u8,
    /// Payload length.
    pub len: u64,
}

/// A whole masked frame (FIN set) with `payload` of at most 125 bytes.
pub fn masked(opcode: u8, payload: &[u8], key: [u8; 4]) -> Vec<u8> {
    debug_assert!(payload.len() <= MAX_CONTROL);
    let len = payload.len().min(MAX_CONTROL);
    let mut out = Vec::with_capacity(6 + len);
    out.push(0x80 | opcode);
    // Lossless: at most 125.
    out.push(0x80 | len as u8);
    out.extend_from_slice(&key);
    out.extend(
        payload[..len]
            .iter()
            .zip(key.iter().cycle())
            .map(|(b, k)| b ^ k),
    );
    out
}

/// A Close frame's payload: the code, big-endian.
pub fn close_payload(code: u16) -> [u8; 2] {
    code.to_be_bytes()
}

/// Reads one server frame's header.
///
/// # Errors
/// [`FrameError`] for a read failure or a header no server may send.
pub async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<Header, FrameError> {
    let mut two = [0u8; 2];
    r.read_exact(&mut two).await?;
    let (fin, rsv, opcode) = (two[0] & 0x80 != 0, two[0] & 0x70, two[0] & 0x0F);
    if two[1] & 0x80 != 0 {
        return Err(FrameError::Masked);
    }
    if rsv != 0 {
        return Err(FrameError::Reserved);
    }
    if !matches!(opcode, 0x0..=0x2 | OP_CLOSE | OP_PING | OP_PONG) {
        return Err(FrameError::Opcode(opcode));
    }
    let len = match two[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    if opcode >= OP_CLOSE && (!fin || len > MAX_CONTROL as u64) {
        return Err(FrameError::Control);
    }
    Ok(Header { fin, opcode, len })
}

/// Reads a control frame's payload (at most 125 bytes, checked by
/// [`read_header`]).
///
/// # Errors
/// [`FrameError::Io`] when the stream ends first.
pub async fn read_control<R: AsyncRead + Unpin>(
    r: &mut R,
    h: Header,
) -> Result<Vec<u8>, FrameError> {
    let mut payload = vec![
        0u8;
        usize::try_from(h.len)
            .unwrap_or(MAX_CONTROL)
            .min(MAX_CONTROL)
    ];
    r.read_exact(&mut payload).await?;
    Ok(payload)
}

/// Reads past a frame's payload without keeping it.
///
/// # Errors
/// [`FrameError::Io`] when the stream ends first.
pub async fn skip<R: AsyncRead + Unpin>(r: &mut R, h: Header) -> Result<(), FrameError> {
    let n = tokio::io::copy(&mut r.take(h.len), &mut tokio::io::sink()).await?;
    if n < h.len {
        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn header(bytes: &[u8]) -> Result<Header, FrameError> {
        read_header(&mut &bytes[..]).await
    }

    #[test]
    fn masked_frames_follow_rfc_6455() {
        // RFC 6455 section 5.7: a masked "Hello".
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let f = masked(0x1, b"Hello", key);
        assert_eq!(
            f,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let close = masked(OP_CLOSE, &close_payload(1000), [0; 4]);
        assert_eq!(close, [0x88, 0x82, 0, 0, 0, 0, 0x03, 0xE8]);
        let ping = masked(OP_PING, &[], key);
        assert_eq!(ping, [0x89, 0x80, 0x37, 0xfa, 0x21, 0x3d]);
    }

    #[tokio::test]
    async fn server_headers_are_read_with_every_length_form() {
        let h = header(&[0x8A, 0x05]).await.expect("pong");
        assert_eq!(
            h,
            Header {
                fin: true,
                opcode: OP_PONG,
                len: 5
            }
        );
        let h = header(&[0x02, 126, 0x01, 0x00])
            .await
            .expect("binary, 16-bit length");
        assert_eq!(
            h,
            Header {
                fin: false,
                opcode: 0x2,
                len: 256
            }
        );
        let h = header(&[0x81, 127, 0, 0, 0, 1, 0, 0, 0, 0])
            .await
            .expect("text, 64-bit length");
        assert_eq!(h.len, 1 << 32);
    }

    #[tokio::test]
    async fn headers_no_server_may_send_are_refused() {
        assert!(matches!(
            header(&[0x8A, 0x85]).await,
            Err(FrameError::Masked)
        ));
        assert!(matches!(
            header(&[0xC1, 0x00]).await,
            Err(FrameError::Reserved)
        ));
        assert!(matches!(
            header(&[0x83, 0x00]).await,
            Err(FrameError::Opcode(3))
        ));
        assert!(matches!(
            header(&[0x0A, 0x00]).await,
            Err(FrameError::Control)
        ));
        assert!(matches!(
            header(&[0x89, 126, 0, 126]).await,
            Err(FrameError::Control)
        ));
        assert!(matches!(header(&[0x81]).await, Err(FrameError::Io(_))));
    }

    #[tokio::test]
    async fn payloads_are_read_or_skipped() {
        let bytes = [0x82, 3, 1, 2, 3, 0x8A, 2, b'o', b'k'];
        let mut r = &bytes[..];
        let h = read_header(&mut r).await.expect("binary");
        skip(&mut r, h).await.expect("skipped");
        let h = read_header(&mut r).await.expect("pong");
        assert_eq!(read_control(&mut r, h).await.expect("payload"), b"ok");
        let short = [0x82, 3, 1];
        let mut r = &short[..];
        let h = read_header(&mut r).await.expect("binary");
        assert!(matches!(skip(&mut r, h).await, Err(FrameError::Io(_))));
    }
}
