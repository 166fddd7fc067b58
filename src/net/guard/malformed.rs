//! [`Malformed`]: why the guard refused a client's raw request bytes, with
//! a fixed label per reason for the metrics.
//!
//! Must not: carry the offending bytes; a refusal's log line and metric
//! label need only the reason.

/// Why a client's raw request bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    /// A line ended by LF alone: some servers split lines there, some do not.
    #[error("bare LF in a request line, header or trailer")]
    BareLf,
    /// A CR not followed by LF.
    #[error("bare CR in a request line, header or trailer")]
    BareCr,
    /// A header line continued on the next line (RFC 9112 section 5.2).
    #[error("obsolete line folding in a header")]
    ObsFold,
    /// NUL or another control byte in the request line, a header or a trailer.
    #[error("control byte in a request line, header or trailer")]
    Control,
    /// Both framings at once: the classic desync.
    #[error("both Content-Length and Transfer-Encoding")]
    LengthAndChunked,
    /// More than one `Content-Length`, even with equal values.
    #[error("repeated Content-Length")]
    RepeatedLength,
    /// A `Content-Length` that is not one decimal number.
    #[error("Content-Length is not a number")]
    BadLength,
    /// `Transfer-Encoding` other than exactly one `chunked`, or on HTTP/1.0.
    #[error("Transfer-Encoding other than a single chunked")]
    TransferEncoding,
    /// A chunk size larger than 64 bits.
    #[error("chunk size too large")]
    ChunkSize,
    /// A chunk size line or chunk end that is not well formed.
    #[error("malformed chunked body")]
    Chunked,
    /// A request line, header or trailer longer than
    /// `limits.max_request_headers`: never cut short, where the rest of it
    /// could change its meaning.
    #[error("a line longer than limits.max_request_headers")]
    LineTooLong,
}

impl Malformed {
    /// A short fixed name, for metric labels.
    pub fn label(self) -> &'static str {
        match self {
            Malformed::BareLf => "bare_lf",
            Malformed::BareCr => "bare_cr",
            Malformed::ObsFold => "obs_fold",
            Malformed::Control => "control_byte",
            Malformed::LengthAndChunked => "length_and_chunked",
            Malformed::RepeatedLength => "repeated_length",
            Malformed::BadLength => "bad_length",
            Malformed::TransferEncoding => "transfer_encoding",
            Malformed::ChunkSize => "chunk_size",
            Malformed::Chunked => "chunked",
            Malformed::LineTooLong => "line_too_long",
        }
    }
}
