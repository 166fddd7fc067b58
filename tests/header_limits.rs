//! Request head limits at their exact boundaries: `limits.max_request_headers`
//! (bytes, whatever hyper's buffer does) and `limits.max_headers` (fields),
//! both 431; and a line longer than the byte limit is refused whole, never
//! cut short, so a padded `Content-Length` cannot smuggle a request past
//! the framing guard. A WebSocket client beside every case loses nothing.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

fn answer_ok(_head: &str) -> Option<Vec<u8>> {
    Some(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok".to_vec())
}

/// A gateway with `limits` in `[limits]`: `/ws` goes to an echo backend,
/// everything else to a recording raw backend answering 200.
async fn start(limits: &str) -> (RawBackend, TestGateway) {
    let raw = RawBackend::start(answer_ok).await;
    let echo = echo_backend().await;
    let toml = format!(
        "[limits]\n{limits}\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n\
         [[listeners]]\nname = \"public\"\nbind = \"127.0.0.1:0\"\n\n\
         [[routes]]\nupstream = \"raw\"\n\n\
         [[routes]]\npath_prefix = \"/ws\"\nupstream = \"echo\"\n\n\
         [upstreams.raw]\nservers = [\"{}\"]\n\n[upstreams.echo]\nservers = [\"{echo}\"]\n",
        raw.addr
    );
    (raw, TestGateway::start(&toml).await)
}

/// A GET head of exactly `size` bytes (its final CRLF CRLF included), with
/// `fields` header fields in all (`Host` and `fields - 1` padded ones, so
/// that no line is longer than the head's share).
fn head(size: usize, fields: usize) -> String {
    let start = "GET / HTTP/1.1\r\nHost: a\r\n";
    let names: Vec<String> = (1..fields).map(|i| format!("X-{i:04}: ")).collect();
    let bare = start.len() + names.iter().map(|n| n.len() + 2).sum::<usize>() + 2;
    let pad = size - bare;
    let mut h = String::from(start);
    for (i, n) in names.iter().enumerate() {
        let share = pad / names.len() + usize::from(i < pad % names.len());
        h.push_str(&format!("{n}{}\r\n", "p".repeat(share)));
    }
    h.push_str("\r\n");
    assert_eq!(h.len(), size);
    h
}

/// Status wsgate answers to `request` on a new connection.
async fn status_of(gw: &TestGateway, request: &[u8]) -> u16 {
    let mut tcp = TcpStream::connect(gw.addr("public"))
        .await
        .expect("connect");
    let _ = tcp.write_all(request).await;
    let (status, _, _) = read_response(&mut tcp).await;
    wait_closed(&mut tcp).await;
    status
}

/// `wsgate_requests_malformed_total{listener="public",reason}`, waited for
/// until it reaches `n` (counted when the connection's task ends).
async fn wait_malformed(gw: &TestGateway, reason: &str, n: u64) {
    let series =
        format!("wsgate_requests_malformed_total{{listener=\"public\",reason=\"{reason}\"}} ");
    let metrics = gw.gateway.shared().metrics.clone();
    within(&format!("{reason} counted {n}"), async {
        loop {
            let text = metrics.encode().expect("encode");
            let v = text
                .lines()
                .find_map(|l| l.strip_prefix(series.as_str()))
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(0);
            if v == n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

fn backend_requests(raw: &RawBackend) -> usize {
    raw.connections.load(Ordering::SeqCst)
}

async fn steady(gw: &TestGateway) -> tokio_tungstenite::WebSocketStream<TcpStream> {
    let mut ws = ws_connect(gw.addr("public"), "/ws").await;
    echo_once(&mut ws, "before").await;
    ws
}

#[tokio::test]
async fn max_request_headers_holds_at_every_size_not_only_powers_of_two() {
    let (raw, gw) = start("max_request_headers = 10000").await;
    let mut ws = steady(&gw).await;
    assert_eq!(status_of(&gw, head(10_000, 30).as_bytes()).await, 200);
    assert_eq!(backend_requests(&raw), 1);
    for size in [10_001, 12_000, 15_000, 16_384] {
        assert_eq!(
            status_of(&gw, head(size, 30).as_bytes()).await,
            431,
            "{size}"
        );
        echo_once(&mut ws, &format!("beside {size}")).await;
    }
    assert_eq!(backend_requests(&raw), 1, "nothing over the limit went on");
    wait_malformed(&gw, "too_large", 4).await;
    echo_once(&mut ws, "after").await;
}

#[tokio::test]
async fn more_header_fields_than_max_headers_get_431() {
    let (raw, gw) = start("max_headers = 10").await;
    let mut ws = steady(&gw).await;
    assert_eq!(status_of(&gw, head(400, 10).as_bytes()).await, 200);
    assert_eq!(status_of(&gw, head(400, 11).as_bytes()).await, 431);
    assert_eq!(backend_requests(&raw), 1);
    wait_malformed(&gw, "too_large", 1).await;
    echo_once(&mut ws, "beside").await;
}

/// Sends the padded-`Content-Length` request: a guard that kept only the
/// first `max_request_headers` bytes of the line would read its length as
/// 0 and take the bare-LF request behind it for the body of another.
async fn padded_length_case(raw: &RawBackend, gw: &TestGateway, pad: usize) {
    let smuggled = "GET /smuggled HTTP/1.1\nHost: a\r\n\r\n";
    let request = format!(
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: {}{}\r\n\r\n{smuggled}",
        "0".repeat(pad),
        smuggled.len()
    );
    assert_eq!(status_of(gw, request.as_bytes()).await, 431);
    let got = raw.all_received();
    assert!(
        !got.contains("smuggled") && !got.contains("POST"),
        "{got:?}"
    );
}

#[tokio::test]
async fn a_line_longer_than_the_limit_is_refused_whole_not_cut() {
    let (raw, gw) = start("max_request_headers = 10000").await;
    let mut ws = steady(&gw).await;
    for (i, pad) in [10_000usize, 12_000, 20_000, 70_000]
        .into_iter()
        .enumerate()
    {
        padded_length_case(&raw, &gw, pad).await;
        wait_malformed(&gw, "line_too_long", i as u64 + 1).await;
        echo_once(&mut ws, "beside").await;
    }
    assert_eq!(backend_requests(&raw), 0);
    // A line of exactly the limit less the rest of the head is fine.
    assert_eq!(status_of(&gw, head(10_000, 2).as_bytes()).await, 200);
    echo_once(&mut ws, "after").await;
}
