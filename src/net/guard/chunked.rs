//! The framing of a chunked request body (RFC 9112 section 7.1), one byte
//! at a time: chunk size lines, extensions, data and the CRLF after it.
//!
//! Must not: keep any bytes; a chunk's size is all it remembers. Trailers
//! after the last chunk are header lines, read by the scanner.

use super::Malformed;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Chunk {
    /// Hex digits of the size so far, and whether there was one.
    Size(u64, bool),
    /// Whitespace after the size.
    Space(u64),
    /// A chunk extension, ignored up to its CR.
    Extension(u64),
    /// The LF ending the size line.
    SizeLf(u64),
    /// Data bytes left.
    Data(u64),
    DataCr,
    DataLf,
}

pub(super) fn chunk_byte(state: Chunk, b: u8) -> Result<Chunk, Malformed> {
    let next = match (state, b) {
        (Chunk::Size(n, _), b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F') => {
            let digit = u64::from(match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => b - b'A' + 10,
            });
            let n = n
                .checked_mul(16)
                .and_then(|n| n.checked_add(digit))
                .ok_or(Malformed::ChunkSize)?;
            Chunk::Size(n, true)
        }
        (Chunk::Size(n, true) | Chunk::Space(n), b' ' | b'\t') => Chunk::Space(n),
        (Chunk::Size(n, true) | Chunk::Space(n), b';') => Chunk::Extension(n),
        (Chunk::Size(n, true) | Chunk::Space(n) | Chunk::Extension(n), b'\r') => Chunk::SizeLf(n),
        (Chunk::Extension(_), b'\n' | 0..=0x08 | 0x0a..=0x1f | 0x7f) => {
            return Err(Malformed::Chunked)
        }
        (Chunk::Extension(n), _) => Chunk::Extension(n),
        (Chunk::SizeLf(n), b'\n') => Chunk::Data(n),
        (Chunk::DataCr, b'\r') => Chunk::DataLf,
        (Chunk::DataLf, b'\n') => Chunk::Size(0, false),
        _ => return Err(Malformed::Chunked),
    };
    Ok(next)
}
