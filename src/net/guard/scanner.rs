//! [`Scanner`]: the byte-by-byte state machine over one client
//! connection's request stream (heads, bodies, trailers), its pause around
//! upgrade requests, and the facts it reads from each head.
//!
//! Must not: change a byte of a well-formed request, or buffer anything but
//! the current header line.

use tokio_util::sync::CancellationToken;

use super::chunked::{chunk_byte, Chunk};
use super::Malformed;

/// Where in the request stream the scanner is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Request line and header fields.
    Head,
    /// A `Content-Length` body: bytes left.
    Length(u64),
    /// A chunked body.
    Chunk(Chunk),
    /// Trailer fields after the last chunk.
    Trailer,
    /// After a refusal: hyper closes the connection.
    Stopped,
}

/// Facts gathered from one request head.
#[derive(Debug, Default)]
struct Head {
    /// The request line has been read.
    started: bool,
    /// The request line ends in `HTTP/1.0`.
    http10: bool,
    content_length: Option<u64>,
    chunked: bool,
    /// The request carries an `Upgrade` header.
    upgrade: bool,
}

/// The framing state machine over one client connection's bytes.
#[derive(Debug)]
pub struct Scanner {
    state: State,
    head: Head,
    /// The current head or trailer line, without its CRLF.
    line: Vec<u8>,
    /// The previous byte was a CR.
    cr: bool,
    /// Longest line accepted (`limits.max_request_headers`): a longer one
    /// is refused, as hyper refuses (431) a head that contains it.
    max_line: usize,
    verdict: Option<Malformed>,
    /// Cancelled at a refusal.
    refused: CancellationToken,
    /// Request heads seen so far.
    heads: u64,
    /// Responses given so far: HTTP/1.1 answers in request order.
    answers: u64,
    /// Indices of upgrade requests not yet answered: while one is
    /// pending, what follows may be frames.
    upgrades: std::collections::VecDeque<u64>,
    /// A refusal met while paused: it counts only if no upgrade succeeds.
    deferred: Option<(Malformed, u64)>,
    /// Index of the request whose bytes were refused.
    refused_at: Option<u64>,
}

impl Scanner {
    /// A scanner at the start of a connection. `max_line` bounds the one
    /// buffer it keeps (the current line).
    pub fn new(max_line: usize) -> Self {
        Self {
            state: State::Head,
            head: Head::default(),
            line: Vec::new(),
            cr: false,
            max_line,
            verdict: None,
            refused: CancellationToken::new(),
            heads: 0,
            answers: 0,
            upgrades: std::collections::VecDeque::new(),
            deferred: None,
            refused_at: None,
        }
    }

    /// Why the stream was refused, once it was.
    pub fn verdict(&self) -> Option<Malformed> {
        self.verdict
    }

    /// Cancelled when the stream is refused: then ask [`Scanner::refused_in`]
    /// whether it was the request at hand.
    pub fn refused(&self) -> CancellationToken {
        self.refused.clone()
    }

    /// Index of the request being handled now (0 for the first): hyper
    /// hands requests over one at a time, and each is answered (see
    /// [`Scanner::answered`]) before the next.
    pub fn current_request(&self) -> u64 {
        self.answers
    }

    /// Whether the refusal fell in request `index` (its head or body): a
    /// refusal of a later, pipelined request must not fail this one.
    pub fn refused_in(&self, index: u64) -> bool {
        self.refused_at == Some(index)
    }

    fn paused(&self) -> bool {
        !self.upgrades.is_empty()
    }

    fn refuse(&mut self, m: Malformed, request: u64) {
        self.verdict = Some(m);
        self.refused_at = Some(request);
        self.refused.cancel();
    }

    /// Checks bytes just read, in place. At a refusal, one byte is
    /// overwritten so that hyper's parser fails at that point.
    pub fn scan(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            match self.state {
                State::Stopped => return,
                State::Length(left) | State::Chunk(Chunk::Data(left)) => {
                    let take = left.min((buf.len() - i) as u64);
                    i += take as usize;
                    let left = left - take;
                    self.state = match (self.state, left) {
                        (State::Length(_), 0) => self.end_of_message(),
                        (State::Length(_), _) => State::Length(left),
                        (_, 0) => State::Chunk(Chunk::DataCr),
                        _ => State::Chunk(Chunk::Data(left)),
                    };
                    continue;
                }
                State::Head | State::Trailer if !self.cr && !self.line.is_empty() => {
                    // Inside a line every byte up to the next CR, LF or
                    // control byte is kept as it is: one copy for the run
                    // rather than a call per byte. A line's first byte (an
                    // obs-fold?) and whatever ends the run go byte by byte.
                    let rest = &buf[i..];
                    let run = rest.iter().position(|&b| !in_line(b)).unwrap_or(rest.len());
                    let take = run.min(self.max_line.saturating_sub(self.line.len()));
                    if take > 0 {
                        self.line.extend_from_slice(&rest[..take]);
                        i += take;
                        continue;
                    }
                }
                _ => {}
            }
            let before = self.state;
            if let Err(m) = self.byte(buf[i]) {
                self.state = State::Stopped;
                self.line = Vec::new();
                if self.paused() {
                    // Perhaps WebSocket frames after a 101: leave them be.
                    self.deferred = Some((m, self.message_of(before)));
                    return;
                }
                // A LF is what hyper refuses inside a chunk extension; NUL
                // everywhere else. A line longer than the whole head may be
                // is left as it is: hyper, whose header size limit is the
                // same, answers it 431 whatever its reads' sizes.
                if m != Malformed::LineTooLong {
                    buf[i] = if matches!(before, State::Chunk(Chunk::Extension(_))) {
                        b'\n'
                    } else {
                        0
                    };
                }
                self.refuse(m, self.message_of(before));
                return;
            }
            i += 1;
        }
    }

    /// Called for every response that is not a 101, in order: the
    /// connection goes on as HTTP. Returns false when it must close after
    /// this response: when what the client sent after an upgrade request,
    /// without waiting for its answer (as RFC 6455 requires), was refused
    /// and no later upgrade is pending to make it frames. hyper has those
    /// bytes already, unaltered, so it must not read another request.
    pub fn answered(&mut self) -> bool {
        let index = self.answers;
        self.answers += 1;
        if self.upgrades.front() == Some(&index) {
            self.upgrades.pop_front();
        }
        if self.paused() {
            // A later upgrade is pending: what was refused may be its frames.
            return true;
        }
        match self.deferred.take() {
            Some((m, request)) => {
                self.refuse(m, request);
                false
            }
            // A refusal in place: hyper fails at the byte and answers 400 itself.
            None => true,
        }
    }

    /// Index of the request a byte read in `state` belongs to: a head not
    /// yet counted, or the body of the last head.
    fn message_of(&self, state: State) -> u64 {
        match state {
            State::Head => self.heads,
            _ => self.heads.saturating_sub(1),
        }
    }

    fn byte(&mut self, b: u8) -> Result<(), Malformed> {
        match self.state {
            State::Head | State::Trailer => {
                if self.line_byte(b)? {
                    self.end_of_line()?;
                }
                Ok(())
            }
            State::Chunk(c) => {
                self.state = State::Chunk(chunk_byte(c, b)?);
                if self.state == State::Chunk(Chunk::Data(0)) {
                    // The last chunk: trailers (or the empty line) follow.
                    self.state = State::Trailer;
                    self.cr = false;
                }
                Ok(())
            }
            State::Length(_) | State::Stopped => Ok(()),
        }
    }

    /// One byte of a head or trailer line; true at the line's end.
    fn line_byte(&mut self, b: u8) -> Result<bool, Malformed> {
        if self.cr {
            self.cr = false;
            return if b == b'\n' {
                Ok(true)
            } else {
                Err(Malformed::BareCr)
            };
        }
        match b {
            b'\r' => self.cr = true,
            b'\n' => return Err(Malformed::BareLf),
            b' ' | b'\t' if self.line.is_empty() && self.folds() => return Err(Malformed::ObsFold),
            b'\t' => self.push(b)?,
            0..=0x1f | 0x7f => return Err(Malformed::Control),
            _ => self.push(b)?,
        }
        Ok(false)
    }

    /// Whether a line starting with whitespace would continue the previous
    /// field: anywhere after the request line.
    fn folds(&self) -> bool {
        self.state == State::Trailer || self.head.started
    }

    /// Keeps one byte of the current line. A line is never cut short: the
    /// rest of a cut `Content-Length` would be read as a different number.
    fn push(&mut self, b: u8) -> Result<(), Malformed> {
        if self.line.len() >= self.max_line {
            return Err(Malformed::LineTooLong);
        }
        self.line.push(b);
        Ok(())
    }

    fn end_of_line(&mut self) -> Result<(), Malformed> {
        let line = std::mem::take(&mut self.line);
        let result = if self.state == State::Trailer {
            if line.is_empty() {
                self.state = self.end_of_message();
            }
            Ok(())
        } else if !self.head.started {
            // Empty lines before the request line are allowed (RFC 9112 2.2).
            if !line.is_empty() {
                self.head.started = true;
                self.head.http10 = line.ends_with(b"HTTP/1.0");
            }
            Ok(())
        } else if line.is_empty() {
            self.state = self.end_of_head();
            Ok(())
        } else {
            self.field(&line)
        };
        // Keep the allocation for the next line of this head only.
        if matches!(self.state, State::Head | State::Trailer) && self.head.started {
            self.line = line;
            self.line.clear();
        }
        result
    }

    fn field(&mut self, line: &[u8]) -> Result<(), Malformed> {
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            // hyper refuses a field without a colon itself.
            return Ok(());
        };
        let name = &line[..colon];
        let value = trim(&line[colon + 1..]);
        if name.eq_ignore_ascii_case(b"content-length") {
            if self.head.content_length.is_some() {
                return Err(Malformed::RepeatedLength);
            }
            if self.head.chunked {
                return Err(Malformed::LengthAndChunked);
            }
            self.head.content_length = Some(parse_length(value)?);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if self.head.content_length.is_some() {
                return Err(Malformed::LengthAndChunked);
            }
            if self.head.chunked || self.head.http10 || !value.eq_ignore_ascii_case(b"chunked") {
                return Err(Malformed::TransferEncoding);
            }
            self.head.chunked = true;
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.head.upgrade = true;
        }
        Ok(())
    }

    fn end_of_head(&mut self) -> State {
        let head = std::mem::take(&mut self.head);
        let index = self.heads;
        self.heads += 1;
        if head.chunked {
            State::Chunk(Chunk::Size(0, false))
        } else if let Some(n @ 1..) = head.content_length {
            State::Length(n)
        } else {
            if head.upgrade {
                self.upgrades.push_back(index);
            }
            State::Head
        }
    }

    fn end_of_message(&mut self) -> State {
        self.head = Head::default();
        self.line = Vec::new();
        self.cr = false;
        State::Head
    }
}

/// A byte that [`Scanner::scan`] keeps inside a head or trailer line, past
/// its first byte: tab, visible ASCII, space, and obs-text.
fn in_line(b: u8) -> bool {
    b == b'\t' || (b >= 0x20 && b != 0x7f)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

fn parse_length(v: &[u8]) -> Result<u64, Malformed> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return Err(Malformed::BadLength);
    }
    v.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(d - b'0')))
            .ok_or(Malformed::BadLength)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Scans `input` in pieces of `step` bytes; returns the verdict, the
    /// bytes as hyper would see them, and the final state.
    fn run(input: &[u8], step: usize) -> (Option<Malformed>, Vec<u8>, State) {
        let mut s = Scanner::new(16384);
        let mut out = input.to_vec();
        for piece in out.chunks_mut(step) {
            s.scan(piece);
        }
        (s.verdict(), out, s.state)
    }

    fn every_split(input: &[u8]) -> Option<Malformed> {
        let (first, ..) = run(input, input.len());
        for step in 1..input.len().min(40) {
            assert_eq!(run(input, step).0, first, "split every {step} bytes");
        }
        first
    }

    const GOOD: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n\n\r\0\x01xGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: Chunked\r\n\r\n5\r\n\n\r\0\x01x\r\nA;x=y\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\ntransfer-encoding:  chunked \r\n\r\n3 \r\nabc\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nX: caf\xc3\xa9\t1\r\nContent-Length: 0\r\n\r\n",
    ];

    #[test]
    fn well_formed_streams_pass_unchanged() {
        for input in GOOD {
            for step in 1..input.len() {
                let (verdict, out, state) = run(input, step);
                assert_eq!(
                    verdict,
                    None,
                    "{:?} split {step}",
                    String::from_utf8_lossy(input)
                );
                assert_eq!(&out, input, "bytes changed");
                assert_eq!(state, State::Head, "ends at a request boundary");
            }
        }
    }

    #[test]
    fn each_smuggling_pattern_is_refused_at_every_split() {
        let cases: &[(&[u8], Malformed)] = &[
            (b"GET / HTTP/1.1\nHost: a\r\n\r\n", Malformed::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\n\r\n", Malformed::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\r\n\n", Malformed::BareLf),
            (b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n", Malformed::BareCr),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n", Malformed::ObsFold),
            (b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", Malformed::ObsFold),
            (b"GET / HTTP/1.1\r\nHost: a\0b\r\n\r\n", Malformed::Control),
            (b"GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n", Malformed::Control),
            (b"GET / HTTP/1.1\r\nHost: a\x7f\r\n\r\n", Malformed::Control),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", Malformed::LengthAndChunked),
            (b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n", Malformed::RepeatedLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 3, 3\r\n\r\n", Malformed::BadLength),
            (b"POST / HTTP/1.1\r\nContent-Length: +3\r\n\r\n", Malformed::BadLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 0x3\r\n\r\n", Malformed::BadLength),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n", Malformed::BadLength),
            (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", Malformed::BadLength),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", Malformed::TransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, identity\r\n\r\n", Malformed::TransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::TransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: xchunked\r\n\r\n", Malformed::TransferEncoding),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", Malformed::TransferEncoding),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\n", Malformed::ChunkSize),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n\r\n", Malformed::Chunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n", Malformed::Chunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n", Malformed::Chunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcd\r\n", Malformed::Chunked),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: 1\n\r\n", Malformed::BareLf),
            // The second request of a keep-alive connection is checked too.
            (b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n\r\nGET / HTTP/1.1\nHost: a\r\n\r\n", Malformed::BareLf),
        ];
        for (input, expected) in cases {
            assert_eq!(
                every_split(input),
                Some(*expected),
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn the_refused_byte_is_one_hyper_rejects() {
        let (_, out, _) = run(b"GET / HTTP/1.1\nHost: a\r\n\r\n", 100);
        assert_eq!(&out[..15], b"GET / HTTP/1.1\0");
        let (_, out, _) = run(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x01\r\n",
            100,
        );
        assert!(out.ends_with(b"3;a\n\r\n"), "{out:?}");
        // Nothing after a refusal is touched.
        let (_, out, state) = run(
            b"GET / HTTP/1.1\r\nX: \x01\r\n\r\nGET / HTTP/1.1\nX: y\r\n\r\n",
            100,
        );
        assert_eq!(state, State::Stopped);
        assert_eq!(out.iter().filter(|&&b| b == 0).count(), 1);
        assert!(out.ends_with(b"GET / HTTP/1.1\nX: y\r\n\r\n"));
    }

    #[test]
    fn an_upgrade_request_pauses_until_answered() {
        let frames = b"\x81\x85\x01\x02\x03\x04\n\x00\r\x01\x02";
        let mut input =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\r\n"
                .to_vec();
        let head_len = input.len();
        input.extend_from_slice(frames);
        let mut s = Scanner::new(1024);
        let mut out = input.clone();
        s.scan(&mut out);
        assert_eq!(s.verdict(), None);
        assert_eq!(
            out, input,
            "frames after an upgrade request are not touched"
        );
        assert!(!s.refused().is_cancelled(), "maybe frames: not yet refused");
        assert!(!s.answered(), "refused, these bytes end the connection");
        assert!(s.verdict().is_some());
        assert!(s.refused().is_cancelled());

        // A well-formed request pipelined after the upgrade request goes on.
        let mut input = input[..head_len].to_vec();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        let mut s = Scanner::new(1024);
        let mut out = input.clone();
        s.scan(&mut out);
        assert!(s.answered());
        assert_eq!((s.verdict(), s.state), (None, State::Head));

        let mut s = Scanner::new(1024);
        let mut out = input[..head_len].to_vec();
        s.scan(&mut out);
        assert!(s.answered());
        let mut next = b"GET / HTTP/1.1\nHost: a\r\n\r\n".to_vec();
        s.scan(&mut next);
        assert_eq!(
            s.verdict(),
            Some(Malformed::BareLf),
            "checked again once answered"
        );
        assert!(s.refused().is_cancelled());
    }

    #[test]
    fn any_upgrade_header_pauses_whatever_its_spelling() {
        // `classify` would not call this WebSocket (not visible ASCII); the
        // guard pauses anyway, and the answer, whatever it is, resumes it.
        let mut s = Scanner::new(1024);
        let mut out = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, \xff\r\n\r\nPOST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        s.scan(&mut out);
        assert_eq!(s.verdict(), None);
        assert!(!s.answered(), "the pipelined request was refused");
        assert_eq!(s.verdict(), Some(Malformed::LengthAndChunked));
    }

    #[test]
    fn each_pipelined_upgrade_keeps_the_pause_until_its_own_answer() {
        let up = b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\n\r\n";
        let mut input = up.to_vec();
        input.extend_from_slice(b"GET /plain HTTP/1.1\r\nHost: a\r\n\r\n");
        input.extend_from_slice(up);
        let mut s = Scanner::new(1024);
        s.scan(&mut input);
        assert!(s.answered(), "first upgrade refused");
        assert!(s.answered(), "the plain request answered");
        // The second upgrade is still pending: what follows may be frames.
        let frames = b"\x81\x81\x00\x00\x00\x00\n";
        let mut out = frames.to_vec();
        s.scan(&mut out);
        assert_eq!(&out, frames, "frames are not touched");
        assert!(!s.answered(), "its refusal makes them a bad request");
    }

    #[test]
    fn a_line_longer_than_max_line_is_refused_not_cut() {
        for step in [1, 7, 100, 100_000] {
            let mut head = b"POST / HTTP/1.1\r\nContent-Length: ".to_vec();
            head.extend(std::iter::repeat_n(b'0', 40));
            head.extend_from_slice(b"5\r\n\r\nGET /x HTTP/1.1\nHost: a\r\n\r\n");
            let mut s = Scanner::new(48);
            let mut out = head.clone();
            for piece in out.chunks_mut(step) {
                s.scan(piece);
            }
            assert_eq!(s.verdict(), Some(Malformed::LineTooLong), "split {step}");
            assert_eq!(out, head, "left for hyper to answer 431");
            assert!(s.line.len() <= 48);
            // Exactly max_line bytes is still a line.
            let mut s = Scanner::new(48);
            let mut ok = b"GET / HTTP/1.1\r\nX: ".to_vec();
            ok.extend(std::iter::repeat_n(b'a', 45));
            ok.extend_from_slice(b"\r\n\r\n");
            for piece in ok.chunks_mut(step) {
                s.scan(piece);
            }
            assert_eq!((s.verdict(), s.state), (None, State::Head), "split {step}");
        }
    }
}
