//! What a browser may do on an admin listener without a token: only what
//! the dashboard's own page, opened at an address, does.
//!
//! Owns: the check of `Origin`, `Sec-Fetch-Site` and `Host` that
//! `admin::handle` applies to every request but the page's files when no
//! token is set. Must not: refuse a client that is not a browser (it sends
//! neither header), nor look at anything once a token is set.

use http::header::{self, HeaderMap};

/// Why a browser's request is refused by an admin listener without a token,
/// or `None` for any other request.
///
/// Without a token, whatever reaches the listener may use it, but a browser
/// on the operator's machine also runs other sites' scripts, and browsers
/// let any page send a form `POST` (a drain, a reload) or open a WebSocket
/// (the live feed) to any address. So a request a browser marks as made
/// by another origin (its `Origin` header naming another host than `Host`,
/// or `Sec-Fetch-Site` other than `same-origin` or `none`) is refused; and
/// so is any browser request addressed to a host *name*, since another
/// site can point its own name at this listener (DNS rebinding) and then
/// be same-origin. curl, Prometheus and other clients send neither header
/// and are not affected; with a token set, the token is the protection.
pub fn refusal(headers: &HeaderMap) -> Option<&'static str> {
    let origin = headers.get(header::ORIGIN);
    let fetch_site = headers.get("sec-fetch-site");
    if origin.is_none() && fetch_site.is_none() {
        return None;
    }
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let host_is_address = host
        .and_then(|h| h.parse::<http::uri::Authority>().ok())
        .is_some_and(|a| {
            let name = a.host().trim_start_matches('[').trim_end_matches(']');
            name.eq_ignore_ascii_case("localhost") || name.parse::<std::net::IpAddr>().is_ok()
        });
    if !host_is_address {
        return Some(
            "without an admin token, browsers are answered only at an IP address or localhost \
             (another site could point a name at this listener): open the dashboard by address, \
             or set [admin] token_file",
        );
    }
    let same_origin = origin.is_none_or(|o| {
        o.to_str()
            .ok()
            .and_then(|o| o.parse::<http::Uri>().ok())
            .is_some_and(|o| {
                matches!(o.scheme_str(), Some("http" | "https"))
                    && o.authority()
                        .zip(host)
                        .is_some_and(|(a, h)| a.as_str().eq_ignore_ascii_case(h))
            })
    });
    let fetched_here = fetch_site.is_none_or(|s| s == "same-origin" || s == "none");
    if !(same_origin && fetched_here) {
        return Some(
            "a page from another origin may not use an admin listener without a token: \
             set [admin] token_file",
        );
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().expect("value"));
        }
        h
    }

    #[test]
    fn clients_that_are_not_browsers_pass() {
        assert_eq!(refusal(&headers(&[("host", "admin.internal:9090")])), None);
        assert_eq!(refusal(&headers(&[])), None);
    }

    #[test]
    fn the_page_itself_passes_at_an_address() {
        for (host, origin) in [
            ("127.0.0.1:9090", "http://127.0.0.1:9090"),
            ("[::1]:9090", "http://[::1]:9090"),
            ("LOCALHOST:9090", "http://localhost:9090"),
            ("10.0.0.5", "https://10.0.0.5"),
        ] {
            let h = headers(&[
                ("host", host),
                ("origin", origin),
                ("sec-fetch-site", "same-origin"),
            ]);
            assert_eq!(refusal(&h), None, "{host} {origin}");
        }
        let typed = headers(&[("host", "127.0.0.1:9090"), ("sec-fetch-site", "none")]);
        assert_eq!(refusal(&typed), None);
    }

    #[test]
    fn other_origins_and_host_names_are_refused() {
        let cases: &[&[(&str, &str)]] = &[
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://evil.example"),
            ],
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:8080"),
            ],
            &[("host", "127.0.0.1:9090"), ("origin", "null")],
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "ftp://127.0.0.1:9090"),
            ],
            &[
                ("host", "127.0.0.1:9090"),
                ("origin", "http://127.0.0.1:9090@evil"),
            ],
            &[("host", "127.0.0.1:9090"), ("sec-fetch-site", "cross-site")],
            &[("host", "127.0.0.1:9090"), ("sec-fetch-site", "same-site")],
            &[
                ("host", "evil.example:9090"),
                ("origin", "http://evil.example:9090"),
            ],
            &[
                ("host", "evil.example:9090"),
                ("sec-fetch-site", "same-origin"),
            ],
            &[
                ("host", "127.0.0.1.evil.example"),
                ("sec-fetch-site", "same-origin"),
            ],
            &[("origin", "http://127.0.0.1:9090")],
        ];
        for case in cases {
            let mut h = HeaderMap::new();
            for (k, v) in *case {
                h.append(*k, v.parse().expect("value"));
            }
            assert!(refusal(&h).is_some(), "{case:?}");
        }
    }
}
