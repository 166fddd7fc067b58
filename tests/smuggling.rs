//! Request smuggling, end to end: raw bytes over real sockets to a real
//! wsgate whose only upstream is an instrumented [`RawBackend`]. Every
//! framing trick (both `Content-Length` and `Transfer-Encoding`, repeated or
//! non-numeric lengths, any coding but one final `chunked`, overflowing or
//! malformed chunk sizes, obs-fold, bare LF and CR, control bytes, absolute-
//! and asterisk-form targets, a missing or doubled Host) must be answered
//! 400, close the connection, and leave the backend without a single byte.
//! A bad request pipelined after a good one must not ride along with it,
//! well-formed bodies (chunked with a trailer, and `Content-Length`) must
//! still flow, other clients must be unaffected, and each refusal must be
//! counted in `wsgate_requests_malformed_total` under its reason.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// What the backend answers to anything: a request that wrongly gets
/// through shows up as this 200 instead of wsgate's 400.
fn answer_ok(_head: &str) -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec())
}

/// A gateway (with `extra` TOML appended to the simple config) whose only
/// server is a fresh recording backend.
async fn start(extra: &str) -> (RawBackend, TestGateway) {
    let backend = RawBackend::start(answer_ok).await;
    let toml = format!("{}{extra}", simple_config(&[backend.addr]));
    let gw = TestGateway::start(&toml).await;
    (backend, gw)
}

/// Lossy text of raw bytes, for failure messages.
fn show(bytes: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(bytes))
}

/// Asserts that no connection and no byte reached the backend.
fn assert_backend_untouched(case: &str, backend: &RawBackend) {
    let received = backend.all_received();
    assert!(
        received.is_empty(),
        "{case}: the backend received {received:?}"
    );
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        0,
        "{case}: the backend was connected to"
    );
}

/// Sends `request` on a new connection and asserts the refusal: 400, the
/// connection closed by wsgate, nothing at the backend.
async fn refuse_on(case: &str, gw: &TestGateway, backend: &RawBackend, request: &[u8]) {
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    tcp.write_all(request).await.expect("write request");
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(
        status,
        400,
        "{case}: request {} got {head:?}; the backend received {:?}",
        show(request),
        backend.all_received()
    );
    wait_closed(&mut tcp).await;
    assert_backend_untouched(case, backend);
}

/// One refusal case on its own gateway and backend.
async fn assert_refused(case: &str, request: &[u8]) {
    let (backend, gw) = start("").await;
    refuse_on(case, &gw, &backend, request).await;
}

/// One `#[tokio::test]` per case, each named after it, so every case passes
/// or fails on its own and the failure names it.
macro_rules! refused {
    ($($name:ident: $request:expr;)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                assert_refused(stringify!($name), $request).await;
            }
        )*
    };
}

// === refused before anything reaches a backend ===

refused! {
    // Both framings at once, in both orders.
    length_then_chunked: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    chunked_then_length: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

    // More than one Content-Length.
    repeated_length_same: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc";
    repeated_length_different: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabcde";
    length_list: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 3, 3\r\n\r\nabc";

    // A Content-Length that is not one decimal number.
    length_letters: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: abc\r\n\r\nabc";
    length_plus: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: +3\r\n\r\nabc";
    length_hex: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 0x3\r\n\r\nabc";
    length_negative: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\nabc";
    length_empty: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nabc";
    length_overflow: b"POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999\r\n\r\nabc";

    // Transfer-Encoding other than one final chunked.
    te_gzip_chunked: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    te_chunked_identity: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    te_identity: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\nabc";
    te_xchunked: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    te_twice: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    te_on_http10: b"POST /x HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";

    // Chunk sizes: wider than 64 bits, and size lines that are not well formed.
    chunk_size_overflow: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\nabc\r\n0\r\n\r\n";
    chunk_size_bare_lf: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n";
    chunk_size_not_hex: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\nabc\r\n0\r\n\r\n";

    // Obsolete line folding.
    obs_fold_space: b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n two\r\n\r\n";
    obs_fold_tab: b"GET / HTTP/1.1\r\nHost: a\r\nX-Fold: one\r\n\ttwo\r\n\r\n";

    // Line ends other than CRLF.
    bare_lf_request_line: b"GET / HTTP/1.1\nHost: a\r\n\r\n";
    bare_lf_header_line: b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n";
    bare_lf_blank_line: b"GET / HTTP/1.1\r\nHost: a\r\n\n";
    bare_cr: b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n";

    // Control bytes in a header value and in a header name.
    nul_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    soh_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x01b\r\n\r\n";
    del_in_value: b"GET / HTTP/1.1\r\nHost: a\r\nX: a\x7fb\r\n\r\n";
    nul_in_name: b"GET / HTTP/1.1\r\nHost: a\r\nX\0Y: b\r\n\r\n";
    soh_in_name: b"GET / HTTP/1.1\r\nHost: a\r\nX\x01Y: b\r\n\r\n";
    del_in_name: b"GET / HTTP/1.1\r\nHost: a\r\nX\x7fY: b\r\n\r\n";

    // Targets that are not origin-form.
    absolute_form: b"GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n";
    asterisk_form: b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n";

    // Host on HTTP/1.1: exactly one.
    missing_host: b"GET / HTTP/1.1\r\nX: b\r\n\r\n";
    two_hosts: b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n";

    // Bodies that break after their first chunk, or in their trailer: the
    // guard's refusal is heeded before any backend is contacted, and a bad
    // trailer (which hyper would wait on) is a 400 at once, not a 408.
    chunk_breaks_after_first_chunk: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1FFFFFFFFFFFFFFFF\r\n";
    bare_lf_in_trailer: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: 1\n\r\n";
    control_byte_in_trailer: b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: \x01\r\n\r\n";
}

// === upgrade requests: the guard pauses for frames, and only for them ===

#[tokio::test]
async fn an_upgrade_header_in_any_spelling_leaves_the_guard_on() {
    // `Upgrade: websocket, \xff` is not a WebSocket handshake to wsgate (the
    // value is not visible ASCII), so it is proxied as a plain request; the
    // next request on the connection is checked all the same.
    let (backend, gw) = start("").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, _) = raw_exchange(
        &mut tcp,
        b"GET /one HTTP/1.1\r\nHost: a\r\nUpgrade: websocket, \xff\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    let bad = b"POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (status, head, _) = raw_exchange(&mut tcp, bad).await;
    assert_eq!(status, 400, "{head}");
    wait_closed(&mut tcp).await;
    let received = backend.all_received();
    assert!(received.starts_with("GET /one "), "{received:?}");
    assert!(!received.contains("/second"), "{received:?}");
}

/// Sends an upgrade-looking request and a bad request in one write: the
/// bad one is not parsed before the first is answered (it might have been
/// frames), then the connection closes, and it never reaches a backend.
async fn pipelined_after_upgrade(first: &str) {
    let (backend, gw) = start("").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let bad = "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    tcp.write_all(format!("{first}{bad}").as_bytes())
        .await
        .expect("write");
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(status, 200, "{first}: {head}");
    assert_eq!(
        header_value(&head, "connection").as_deref(),
        Some("close"),
        "{first}: {head}"
    );
    wait_closed(&mut tcp).await;
    let received = backend.all_received();
    assert!(!received.contains("/second"), "{first}: {received:?}");
    assert_eq!(backend.connections.load(Ordering::SeqCst), 1, "{first}");
}

#[tokio::test]
async fn a_bad_request_pipelined_after_a_refused_upgrade_closes_the_connection() {
    // The backend answers the handshake 200, not 101: no tunnel.
    pipelined_after_upgrade(
        "GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await;
    // Any other protocol too (proxied as plain HTTP, Upgrade dropped).
    pipelined_after_upgrade(
        "GET /h2c HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n",
    )
    .await;
}

// === what must still flow ===

/// Waits until the backend has received `needle` (it may answer before a
/// body has fully arrived).
async fn wait_received(backend: &RawBackend, needle: &str) {
    within(&format!("the backend to receive {needle:?}"), async {
        while !backend.all_received().contains(needle) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

/// A received request split into its head and the data of its chunked
/// body, once the body's last chunk has arrived.
fn chunked_message(received: &[u8]) -> Option<(String, Vec<u8>)> {
    let at = received.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&received[..at]).into_owned();
    let mut body = &received[at + 4..];
    let mut data = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = size.split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some((head, data));
        }
        data.extend_from_slice(body.get(..size)?);
        body = body.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

#[tokio::test]
async fn chunked_body_with_trailer_passes_through() {
    let (backend, gw) = start("").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let request = b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n";
    let (status, head, body) = raw_exchange(&mut tcp, request).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"ok");

    // The backend answers at the end of the head: wait for the body's end.
    let (head, data) = within("the backend to receive the whole chunked body", async {
        loop {
            let received = backend.received.lock().expect("lock").concat();
            if let Some(message) = chunked_message(&received) {
                return message;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(head.starts_with("POST /upload HTTP/1.1\r\n"), "{head}");
    assert_eq!(
        show(&data),
        show(b"hello world"),
        "body as the backend saw it"
    );
}

#[tokio::test]
async fn length_body_passes_through() {
    let (backend, gw) = start("").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let request = b"POST /form HTTP/1.1\r\nHost: a\r\nContent-Length: 11\r\n\r\nhello world";
    let (status, head, body) = raw_exchange(&mut tcp, request).await;
    assert_eq!(status, 200, "{head}");
    assert_eq!(body, b"ok");
    wait_received(&backend, "hello world").await;
    let received = backend.all_received();
    assert!(
        received.starts_with("POST /form HTTP/1.1\r\n"),
        "{received:?}"
    );
    assert_eq!(
        header_value(&received, "content-length").as_deref(),
        Some("11"),
        "{received:?}"
    );
}

#[tokio::test]
async fn bad_request_pipelined_after_a_good_one_reaches_no_backend() {
    let (backend, gw) = start("").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let good = "GET /first HTTP/1.1\r\nHost: a\r\n\r\n";
    let bad = "POST /second HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    // One write: both requests reach wsgate together.
    tcp.write_all(format!("{good}{bad}").as_bytes())
        .await
        .expect("write requests");

    let (status, head, body) = read_response(&mut tcp).await;
    assert_eq!(status, 200, "the good request: {head}");
    assert_eq!(body, b"ok");
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(
        status,
        400,
        "the bad request: {head}; the backend received {:?}",
        backend.all_received()
    );
    wait_closed(&mut tcp).await;

    let received = backend.all_received();
    assert!(
        received.starts_with("GET /first HTTP/1.1\r\n"),
        "{received:?}"
    );
    for part in ["/second", "POST", "Transfer-Encoding", "abc"] {
        assert!(
            !received.contains(part),
            "{part:?} of the bad request reached the backend: {received:?}"
        );
    }
    assert_eq!(
        backend.connections.load(Ordering::SeqCst),
        1,
        "one backend connection, for /first"
    );
}

#[tokio::test]
async fn other_clients_are_served_after_a_refusal() {
    let (backend, gw) = start("").await;
    let good = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: a\r\n\r\n");

    // A keep-alive client already connected before the bad one.
    let mut earlier = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, _) = raw_exchange(&mut earlier, good("/before").as_bytes()).await;
    assert_eq!(status, 200, "{head}");

    let mut bad = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, _) = raw_exchange(
        &mut bad,
        b"POST /bad HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    wait_closed(&mut bad).await;

    let (status, head, body) = raw_exchange(&mut earlier, good("/again").as_bytes()).await;
    assert_eq!(status, 200, "the earlier connection, again: {head}");
    assert_eq!(body, b"ok");
    let mut fresh = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let (status, head, body) = raw_exchange(&mut fresh, good("/fresh").as_bytes()).await;
    assert_eq!(status, 200, "a fresh connection: {head}");
    assert_eq!(body, b"ok");

    let received = backend.all_received();
    for path in ["/before", "/again", "/fresh"] {
        assert!(received.contains(path), "{path} missing in {received:?}");
    }
    assert!(!received.contains("/bad"), "{received:?}");
}

// === the malformed-request counter ===

/// The `/metrics` exposition of the admin listener.
async fn scrape(admin: SocketAddr) -> String {
    let mut tcp = TcpStream::connect(admin).await.expect("connect admin");
    let (status, head, body) = raw_exchange(
        &mut tcp,
        b"GET /metrics HTTP/1.1\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200, "{head}");
    String::from_utf8(body).expect("utf-8 exposition")
}

/// The value of `wsgate_requests_malformed_total` for listener `public` and
/// `reason`, if the series exists.
fn malformed_count(exposition: &str, reason: &str) -> Option<u64> {
    let reason = format!("reason=\"{reason}\"");
    exposition.lines().find_map(|l| {
        let labels = l.strip_prefix("wsgate_requests_malformed_total{")?;
        let (labels, value) = labels.split_once("} ")?;
        let wanted = labels.split(',').any(|p| p == "listener=\"public\"")
            && labels.split(',').any(|p| p == reason);
        wanted.then(|| value.trim().parse().expect("counter value"))
    })
}

#[tokio::test]
async fn refusals_are_counted_by_reason() {
    let (backend, gw) = start("\n[admin]\nbind = \"127.0.0.1:0\"\n").await;
    let admin = gw.admin.expect("the config has [admin]");
    let cases: &[(&str, &[u8])] = &[
        ("bare_lf", b"GET / HTTP/1.1\nHost: a\r\n\r\n"),
        (
            "length_and_chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ),
        ("bare_cr", b"GET / HTTP/1.1\r\nHost: a\rX: b\r\n\r\n"),
        ("obs_fold", b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n"),
        ("control_byte", b"GET / HTTP/1.1\r\nHost: a\r\nX: \x01\r\n\r\n"),
        (
            "repeated_length",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx",
        ),
        ("bad_length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\nx"),
        (
            "transfer_encoding",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "chunk_size",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n1FFFFFFFFFFFFFFFF\r\n",
        ),
        (
            "chunked",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\nabc\r\n0\r\n\r\n",
        ),
    ];

    let before = scrape(admin).await;
    for (reason, _) in cases {
        assert_eq!(
            malformed_count(&before, reason).unwrap_or(0),
            0,
            "{reason} before any traffic:\n{before}"
        );
    }
    for (i, (reason, request)) in cases.iter().enumerate() {
        refuse_on(reason, &gw, &backend, request).await;
        // Counted when wsgate is done with the connection, which may be
        // just after the client sees it close.
        within(&format!("{reason} to be counted"), async {
            while malformed_count(&scrape(admin).await, reason) != Some(1) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        // Exactly once, and under no other reason.
        let m = scrape(admin).await;
        for (j, (other, _)) in cases.iter().enumerate() {
            let expected = u64::from(j <= i);
            assert_eq!(
                malformed_count(&m, other).unwrap_or(0),
                expected,
                "after {reason}: the count for {other}\n{m}"
            );
        }
        assert_eq!(
            malformed_count(&m, "parse").unwrap_or(0),
            0,
            "after {reason}: counted as an unclassified parse error\n{m}"
        );
    }
}

#[tokio::test]
async fn a_body_refused_after_part_of_it_left_is_a_400_at_once() {
    // The first chunk goes on to a silent backend; then a bad trailer,
    // which hyper alone would wait on (for a blank line) until the client
    // gave up: the guard's refusal ends the request at once.
    let backend = RawBackend::start(|_| None).await;
    let toml = simple_config(&[backend.addr]).replace(
        "[timeouts]\n",
        "[timeouts]\nclient_body = \"1h\"\nupstream_response = \"1h\"\n",
    ) + "\n[admin]\nbind = \"127.0.0.1:0\"\n";
    let gw = TestGateway::start(&toml).await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    tcp.write_all(
        b"POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .expect("write");
    wait_received(&backend, "hello").await;
    tcp.write_all(b"0\r\nX: 1\n\r\n").await.expect("write");
    let (status, head, body) = read_response(&mut tcp).await;
    assert_eq!(status, 400, "{head}");
    assert!(
        String::from_utf8_lossy(&body).contains("bare LF"),
        "{}",
        String::from_utf8_lossy(&body)
    );
    wait_closed(&mut tcp).await;
    assert!(!backend.all_received().contains("X: 1"));
    // The five bytes that did reach the backend are counted, not zero.
    let series = "wsgate_http_body_bytes_total{listener=\"public\",direction=\"to_backend\"} 5";
    let text = scrape(gw.admin.expect("admin")).await;
    assert!(text.lines().any(|l| l == series), "{series} in\n{text}");
}

#[tokio::test]
async fn an_oversized_head_is_431_and_counted_as_too_large() {
    let (backend, gw) = start("\n[admin]\nbind = \"127.0.0.1:0\"\n").await;
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    // Many lines, each within the limit: the head as a whole is too large
    // (one line over the limit alone is `line_too_long`, in header_limits.rs).
    let fields: String = (0..20)
        .map(|i| format!("X-Big-{i}: {}\r\n", "a".repeat(1000)))
        .collect();
    let big = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
    let _ = tcp.write_all(big.as_bytes()).await;
    let (status, head, _) = read_response(&mut tcp).await;
    assert_eq!(status, 431, "{head}");
    assert_backend_untouched("oversized head", &backend);
    // Counted once the connection's task has ended: wait for it.
    let admin = gw.admin.expect("admin");
    let text = within("the too_large count", async {
        loop {
            let text = scrape(admin).await;
            if malformed_count(&text, "too_large") == Some(1) {
                return text;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert_eq!(malformed_count(&text, "parse").unwrap_or(0), 0, "{text}");
}
