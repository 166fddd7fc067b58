//! The request-framing guard: a check of the client's raw bytes before
//! hyper parses them, so wsgate and its backends can never disagree on where
//! one request ends and the next begins (request smuggling).
//!
//! Owns: [`Scanner`], a byte-by-byte state machine over the request stream
//! (head, `Content-Length` body, chunked body, trailers) that refuses what
//! hyper would accept or silently repair: a bare LF or CR, obs-fold, control
//! bytes, `Content-Length` together with `Transfer-Encoding`, a repeated or
//! non-numeric `Content-Length`, a `Transfer-Encoding` other than one
//! `chunked`, an overflowing chunk size; and [`Guarded`], the I/O wrapper
//! that runs it on every read of a client connection.
//!
//! How a refusal reaches the client: the scanner overwrites the offending
//! byte with one hyper's parser rejects at that position (NUL, or LF inside
//! a chunk extension). hyper then answers 400 and closes the connection
//! through its own error path, before any service code runs, so nothing of
//! that request can reach a backend. The reason is kept for the log line.
//!
//! Legal transitions: `Head` → (`Length` | `Chunk` → `Trailer`) → `Head`;
//! any state → `Stopped` at a refusal. After a request that carries an
//! `Upgrade` header (any protocol, so that no spelling of `websocket` can
//! slip past) and no body, the scanner is *paused* until that request is
//! answered: what follows a 101 is frames, which must pass untouched, and
//! what follows any other answer is the next request. So while paused the
//! bytes are still scanned as HTTP, but a refusal only marks the connection:
//! [`Scanner::answered`], called for every response in order, then says it
//! must close. A 101 hands the inner stream to the tunnel and drops the
//! guard.
//!
//! A refusal also cancels [`Scanner::refused`], so that code waiting on a
//! request body (which hyper may never finish, e.g. after a bad trailer)
//! learns of it at once.
//!
//! Must not: change a byte of a well-formed request, or buffer anything but
//! the current header line.
//!
//! - `scanner.rs`: [`Scanner`], the state machine, and the request heads it
//!   reads.
//! - `chunked.rs`: one byte of a chunked body's framing at a time.
//! - `malformed.rs`: [`Malformed`], each reason for a refusal.
//! - `guarded.rs`: [`Guarded`], the client stream that runs the scanner on
//!   every read.

mod chunked;
mod guarded;
mod malformed;
#[cfg(test)]
mod props;
mod scanner;

pub use guarded::Guarded;
pub use malformed::Malformed;
pub use scanner::Scanner;
