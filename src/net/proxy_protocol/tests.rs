//! Dense tests of the PROXY protocol parser and encoders, and of taking a
//! header off a real socket.

use super::*;

fn addr(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

const V1_TCP4: &[u8] = b"PROXY TCP4 203.0.113.7 10.0.0.1 56324 443\r\n";
const V1_TCP6: &[u8] = b"PROXY TCP6 2001:db8::7 2001:db8::1 56324 443\r\n";
const V1_UNKNOWN: &[u8] = b"PROXY UNKNOWN\r\n";

fn v2_tcp4() -> Vec<u8> {
    encode(Version::V2, addr("203.0.113.7:56324"), addr("10.0.0.1:443"))
}

fn v2_tcp6() -> Vec<u8> {
    encode(
        Version::V2,
        addr("[2001:db8::7]:56324"),
        addr("[2001:db8::1]:443"),
    )
}

/// A v2 TCP4 header with `tlv` bytes of TLVs after its addresses.
fn v2_with_tlvs(tlv: usize) -> Vec<u8> {
    let mut h = v2_tcp4();
    let len = 12 + tlv;
    h[14..16].copy_from_slice(&u16::try_from(len).expect("small").to_be_bytes());
    h.extend(std::iter::repeat_n(0xEE, tlv));
    h
}

fn complete(buf: &[u8]) -> (ProxyHeader, usize) {
    match parse(buf) {
        Parsed::Complete { header, consumed } => (header, consumed),
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

fn invalid(buf: &[u8]) -> Invalid {
    match parse(buf) {
        Parsed::Invalid(e) => e,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// What a header carries: `(source, destination)`, or none.
type Carried = Option<(SocketAddr, SocketAddr)>;

/// Every valid header used below, with the addresses it carries.
fn valid() -> Vec<(Vec<u8>, Carried)> {
    let tcp4 = Some((addr("203.0.113.7:56324"), addr("10.0.0.1:443")));
    let tcp6 = Some((addr("[2001:db8::7]:56324"), addr("[2001:db8::1]:443")));
    vec![
        (V1_TCP4.to_vec(), tcp4),
        (V1_TCP6.to_vec(), tcp6),
        (V1_UNKNOWN.to_vec(), None),
        (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n".to_vec(), None),
        (v2_tcp4(), tcp4),
        (v2_tcp6(), tcp6),
        (v2_with_tlvs(40), tcp4),
        (encode_local(Version::V1), None),
        (encode_local(Version::V2), None),
    ]
}

#[test]
fn every_prefix_of_a_valid_header_is_incomplete_and_the_whole_is_complete() {
    for (h, addresses) in valid() {
        for cut in 0..h.len() {
            assert_eq!(
                parse(&h[..cut]),
                Parsed::Incomplete,
                "{:?} cut at {cut}",
                String::from_utf8_lossy(&h)
            );
        }
        let (header, consumed) = complete(&h);
        assert_eq!((header.addresses, consumed), (addresses, h.len()));
    }
}

#[test]
fn bytes_after_the_header_are_never_consumed() {
    for (h, addresses) in valid() {
        // A TLS ClientHello and an HTTP request, as they follow a header.
        for tail in [
            &b"\x16\x03\x01\x02\x00\x01"[..],
            b"GET / HTTP/1.1\r\n\r\n",
            b"\r\n",
        ] {
            let mut buf = h.clone();
            buf.extend_from_slice(tail);
            let (header, consumed) = complete(&buf);
            assert_eq!(header.addresses, addresses);
            assert_eq!(&buf[consumed..], tail, "the tail is left whole");
        }
    }
}

#[test]
fn versions_are_told_apart() {
    assert_eq!(complete(V1_TCP4).0.version, Version::V1);
    assert_eq!(complete(&v2_tcp4()).0.version, Version::V2);
}

#[test]
fn what_is_not_a_header_is_refused_at_its_first_byte() {
    for bad in [
        &b"GET / HTTP/1.1\r\n"[..],
        b"\x16\x03\x01",
        b"proxy TCP4",
        b"X",
    ] {
        assert_eq!(invalid(bad), Invalid::Signature, "{bad:?}");
    }
    // A wrong byte inside either signature.
    assert_eq!(invalid(b"PROXZ"), Invalid::Signature);
    assert_eq!(invalid(b"\r\n\r\n\0\r\nQUIT\r"), Invalid::Signature);
    assert_eq!(invalid(b"\r\r"), Invalid::Signature);
}

#[test]
fn v1_grammar_is_exact() {
    for bad in [
        &b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n"[..],
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 ::1 5.6.7.8 1 2\r\n",
        b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",
        b"PROXY TCP4 1.2.3.4\t5.6.7.8 1 2\r\n",
        b"PROXY \r\n",
    ] {
        assert!(
            matches!(invalid(bad), Invalid::V1Syntax(_)),
            "{:?}",
            String::from_utf8_lossy(bad)
        );
    }
    let (h, _) = complete(b"PROXY TCP4 1.2.3.4 5.6.7.8 0 65535\r\n");
    assert_eq!(
        h.addresses,
        Some((addr("1.2.3.4:0"), addr("5.6.7.8:65535")))
    );
}

#[test]
fn a_bad_byte_is_refused_however_the_line_is_split() {
    let bad = b"PROXY UNKNOWN \x01\r\n";
    for cut in 15..=bad.len() {
        assert!(
            matches!(parse(&bad[..cut]), Parsed::Invalid(Invalid::V1Syntax(_))),
            "cut at {cut}"
        );
    }
}

#[test]
fn v1_is_at_most_107_bytes() {
    // The longest legal line: two full IPv6 addresses and five-digit ports.
    let longest = b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
    assert_eq!(longest.len(), 104);
    assert_eq!(complete(longest).1, 104);
    let mut unknown = b"PROXY UNKNOWN ".to_vec();
    unknown.resize(V1_MAX - 2, b'a');
    unknown.extend_from_slice(b"\r\n");
    assert_eq!(complete(&unknown).1, V1_MAX);
    // One byte more: refused once 107 bytes have come without a CRLF.
    let mut over = b"PROXY UNKNOWN ".to_vec();
    over.resize(V1_MAX - 1, b'a');
    assert_eq!(parse(&over), Parsed::Incomplete);
    over.push(b'a');
    assert_eq!(invalid(&over), Invalid::V1TooLong);
    over.extend_from_slice(b"\r\n");
    assert_eq!(invalid(&over), Invalid::V1TooLong);
}

#[test]
fn v2_command_and_family_are_checked_as_they_arrive() {
    let mut h = v2_tcp4();
    h[12] = 0x22;
    assert_eq!(invalid(&h[..13]), Invalid::V2Command(0x22));
    h[12] = 0x11; // version 1 in the binary form
    assert_eq!(invalid(&h[..13]), Invalid::V2Command(0x11));
    for family in [0x12, 0x22, 0x31, 0x32, 0x41, 0x13] {
        let mut h = v2_tcp4();
        h[13] = family;
        assert_eq!(invalid(&h[..14]), Invalid::V2Family(family), "{family:#x}");
    }
}

#[test]
fn v2_length_is_bounded_and_must_fit_its_family() {
    let mut h = v2_tcp4();
    let too_long = u16::try_from(V2_MAX - 16 + 1).expect("fits");
    h[14..16].copy_from_slice(&too_long.to_be_bytes());
    assert_eq!(invalid(&h[..16]), Invalid::V2TooLong(V2_MAX + 1));
    h[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(invalid(&h[..16]), Invalid::V2TooLong(16 + 65535));
    let longest = v2_with_tlvs(V2_MAX - 16 - 12);
    assert_eq!(complete(&longest).1, V2_MAX);
    let mut short = v2_tcp4();
    short[15] = 11;
    assert_eq!(invalid(&short[..16]), Invalid::V2AddressLength(11));
    let mut short6 = v2_tcp6();
    short6[15] = 35;
    assert_eq!(invalid(&short6[..16]), Invalid::V2AddressLength(35));
}

#[test]
fn v2_local_and_unspec_keep_the_peer_address() {
    // LOCAL with addresses (which are ignored) and TLVs.
    let mut local = v2_with_tlvs(8);
    local[12] = 0x20;
    let (h, n) = complete(&local);
    assert_eq!((h.addresses, n), (None, local.len()));
    // LOCAL with a family no PROXY header may use.
    let mut unix = encode_local(Version::V2);
    unix[13] = 0x31;
    assert_eq!(complete(&unix).0.addresses, None);
    // PROXY with UNSPEC: the sender knows no addresses.
    let mut unspec = encode_local(Version::V2);
    unspec[12] = 0x21;
    assert_eq!(complete(&unspec).0.addresses, None);
}

#[test]
fn encoding_round_trips_and_mixes_families_as_ipv6() {
    for v in [Version::V1, Version::V2] {
        for (src, dst) in [
            ("203.0.113.7:1", "10.0.0.1:2"),
            ("[2001:db8::7]:1", "[::1]:2"),
        ] {
            let bytes = encode(v, addr(src), addr(dst));
            let (h, n) = complete(&bytes);
            assert_eq!((h.version, n), (v, bytes.len()));
            assert_eq!(h.addresses, Some((addr(src), addr(dst))));
        }
        // A mapped IPv4 client is IPv4 again.
        let mapped = encode(v, addr("[::ffff:203.0.113.7]:1"), addr("10.0.0.1:2"));
        assert_eq!(
            complete(&mapped).0.addresses,
            Some((addr("203.0.113.7:1"), addr("10.0.0.1:2")))
        );
        let mixed = encode(v, addr("203.0.113.7:1"), addr("[::1]:2"));
        assert_eq!(
            complete(&mixed).0.addresses,
            Some((addr("[::ffff:203.0.113.7]:1"), addr("[::1]:2")))
        );
    }
    assert_eq!(
        encode(Version::V1, addr("1.2.3.4:5"), addr("6.7.8.9:10")),
        b"PROXY TCP4 1.2.3.4 6.7.8.9 5 10\r\n"
    );
}

// === read_header, on real sockets ===

async fn pair() -> (TcpStream, TcpStream) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let client = TcpStream::connect(listener.local_addr().expect("addr"))
        .await
        .expect("connect");
    let (server, _) = listener.accept().await.expect("accept");
    (client, server)
}

#[tokio::test]
async fn a_header_and_what_follows_in_one_write_are_kept_apart() {
    use tokio::io::AsyncWriteExt;
    for (h, addresses) in valid() {
        let (mut client, mut server) = pair().await;
        let mut all = h.clone();
        all.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        client.write_all(&all).await.expect("write");
        let header = read_header(&mut server).await.expect("header");
        assert_eq!(header.addresses, addresses);
        let mut rest = [0u8; 18];
        server.read_exact(&mut rest).await.expect("rest");
        assert_eq!(&rest, b"GET / HTTP/1.1\r\n\r\n");
    }
}

#[tokio::test]
async fn a_header_split_over_many_writes_is_read_whole() {
    use tokio::io::AsyncWriteExt;
    let mut all = v2_tcp6();
    all.extend_from_slice(b"tail");
    let (mut client, mut server) = pair().await;
    let reader = tokio::spawn(async move {
        let h = read_header(&mut server).await;
        let mut rest = [0u8; 4];
        server.read_exact(&mut rest).await.expect("rest");
        (h.expect("header"), rest)
    });
    for b in &all {
        client.write_all(&[*b]).await.expect("write");
        client.flush().await.expect("flush");
        tokio::task::yield_now().await;
    }
    let (h, rest) = reader.await.expect("reader");
    assert_eq!(h.addresses, complete(&v2_tcp6()).0.addresses);
    assert_eq!(&rest, b"tail");
}

#[tokio::test]
async fn a_header_cut_short_or_invalid_is_an_error() {
    use tokio::io::AsyncWriteExt;
    let (mut client, mut server) = pair().await;
    client.write_all(&V1_TCP4[..20]).await.expect("write");
    client.shutdown().await.expect("shutdown");
    assert!(matches!(
        read_header(&mut server).await,
        Err(ReadError::Truncated(20))
    ));
    let (mut client, mut server) = pair().await;
    client
        .write_all(b"GET / HTTP/1.1\r\n")
        .await
        .expect("write");
    assert!(matches!(
        read_header(&mut server).await,
        Err(ReadError::Invalid(Invalid::Signature))
    ));
}
