//! The request head (request line and headers) of an HTTP/1.x request, read incrementally:
//! how long it is, the method, the target, the version and the host the client asked for.
//! Bytes after the head (a body, pipelined requests) are not looked at.

use std::net::IpAddr;

use crate::names::ServerName;

pub use crate::config::DEFAULT_MAX_HEAD;
/// Most header lines accepted.
pub const MAX_HEADERS: usize = 100;

/// The host of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A DNS name (lower-cased, port and trailing dot removed).
    Name(ServerName),
    /// An IP address literal (never matches a route's names).
    Address(IpAddr),
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Name(n) => write!(f, "{n}"),
            Host::Address(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Address(a) => write!(f, "{a}"),
        }
    }
}

/// A complete request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, the blank line included.
    pub len: usize,
    /// `GET`, `POST`...
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// HTTP/1.`minor`.
    pub minor: u8,
    /// From the `Host` header; `None` for an HTTP/1.0 request without one (or an empty one).
    pub host: Option<Host>,
}

impl Head {
    /// The path and query of the target (`/` for `*`, the part after the authority for an
    /// absolute URL).
    pub fn path(&self) -> &str {
        let t = self.target.as_str();
        if t.starts_with('/') {
            return t;
        }
        if let Some(rest) = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")) {
            return rest.find('/').map_or("/", |i| &rest[i..]);
        }
        "/"
    }
}

/// Where reading stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The head is not complete yet.
    NeedMore,
    /// The head is complete.
    Done(Head),
}

/// Why a head is refused (answered with `400`, or `431` when too large).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Longer than the limit without ending.
    #[error("request head larger than {limit} bytes")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not an HTTP/1.x request head.
    #[error("malformed request head: {0}")]
    Malformed(String),
    /// A missing (HTTP/1.1), repeated or invalid `Host`.
    #[error("bad Host: {0}")]
    BadHost(String),
}

/// Looks at the bytes read so far.
pub fn examine(buf: &[u8], max: usize) -> Result<Progress, HeadError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > max => return Err(HeadError::TooLarge { limit: max }),
        Ok(httparse::Status::Partial) => return Ok(Progress::NeedMore),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(HeadError::Malformed(format!("more than {MAX_HEADERS} header lines")));
        }
        Err(e) => return Err(HeadError::Malformed(e.to_string())),
    };
    if len > max {
        return Err(HeadError::TooLarge { limit: max });
    }
    let minor = req.version.unwrap_or(1);
    let mut hosts = req.headers.iter().filter(|h| h.name.eq_ignore_ascii_case("host"));
    let host = match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(HeadError::BadHost("more than one Host header".into())),
        (None, _) if minor >= 1 => return Err(HeadError::BadHost("an HTTP/1.1 request needs a Host header".into())),
        (None, _) => None,
        (Some(h), None) => parse_host(h.value)?,
    };
    Ok(Progress::Done(Head {
        len,
        method: req.method.unwrap_or_default().to_owned(),
        target: req.path.unwrap_or_default().to_owned(),
        minor,
        host,
    }))
}

/// A `Host` value: `name[:port]`, `v4[:port]` or `[v6][:port]`; empty is `None`.
fn parse_host(raw: &[u8]) -> Result<Option<Host>, HeadError> {
    let bad = |why: &str| HeadError::BadHost(format!("`{}`: {why}", String::from_utf8_lossy(raw)));
    let v = raw.trim_ascii();
    if v.is_empty() {
        return Ok(None);
    }
    let (host, port) = if let Some(rest) = v.strip_prefix(b"[") {
        let end = rest.iter().position(|&b| b == b']').ok_or_else(|| bad("unclosed `[`"))?;
        let port = &rest[end + 1..];
        let port = match port {
            [] => None,
            [b':', p @ ..] => Some(p),
            _ => return Err(bad("junk after `]`")),
        };
        let addr = std::str::from_utf8(&rest[..end])
            .ok()
            .and_then(|s| s.parse::<std::net::Ipv6Addr>().ok())
            .ok_or_else(|| bad("not an IPv6 address"))?;
        (Host::Address(IpAddr::V6(addr)), port)
    } else {
        let (h, port) = match v.iter().rposition(|&b| b == b':') {
            Some(i) => (&v[..i], Some(&v[i + 1..])),
            None => (v, None),
        };
        let host = match std::str::from_utf8(h).ok().and_then(|s| s.parse::<std::net::Ipv4Addr>().ok()) {
            Some(a) => Host::Address(IpAddr::V4(a)),
            None => Host::Name(ServerName::parse(h).map_err(|e| bad(&e.to_string()))?),
        };
        (host, port)
    };
    if let Some(p) = port {
        let ok = !p.is_empty() && p.len() <= 5 && p.iter().all(u8::is_ascii_digit);
        if !ok || std::str::from_utf8(p).ok().and_then(|s| s.parse::<u16>().ok()).is_none() {
            return Err(bad("the port must be 0 to 65535"));
        }
    }
    Ok(Some(host))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(buf: &[u8]) -> Head {
        match examine(buf, DEFAULT_MAX_HEAD) {
            Ok(Progress::Done(h)) => h,
            other => panic!("{other:?} for {:?}", String::from_utf8_lossy(buf)),
        }
    }

    fn name(s: &str) -> Option<Host> {
        Some(Host::Name(ServerName::parse(s.as_bytes()).unwrap()))
    }

    const REQ: &[u8] = b"GET /a/b?c=d HTTP/1.1\r\nHost: Meet.Example.ORG:80\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";

    #[test]
    fn a_request_split_at_every_byte_needs_more_until_its_last() {
        for cut in 0..REQ.len() {
            assert_eq!(examine(&REQ[..cut], DEFAULT_MAX_HEAD), Ok(Progress::NeedMore), "cut at {cut}");
        }
        let h = done(REQ);
        assert_eq!(h.len, REQ.len());
        assert_eq!((h.method.as_str(), h.target.as_str(), h.minor), ("GET", "/a/b?c=d", 1));
        assert_eq!(h.host, name("meet.example.org"), "port stripped, lower-cased");
    }

    #[test]
    fn bytes_after_the_head_are_left_alone() {
        let mut buf = REQ.to_vec();
        let pipelined = b"GET /second HTTP/1.1\r\nHost: other.example.org\r\n\r\nPOST /x HTTP/1.1\r\nContent-Le";
        buf.extend_from_slice(pipelined);
        let h = done(&buf);
        assert_eq!(h.len, REQ.len(), "only the first head is measured");
        assert_eq!(&buf[h.len..], pipelined);
        assert_eq!(h.host, name("meet.example.org"), "the first request routes");
    }

    #[test]
    fn oversized_heads_are_refused_complete_or_not() {
        let mut big = b"GET / HTTP/1.1\r\nHost: a.example\r\nX-Pad: ".to_vec();
        big.extend(std::iter::repeat_n(b'a', 2000));
        assert_eq!(examine(&big, 1024), Err(HeadError::TooLarge { limit: 1024 }), "partial, past the limit");
        assert_eq!(examine(&big, 4096), Ok(Progress::NeedMore));
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(examine(&big, 1024), Err(HeadError::TooLarge { limit: 1024 }), "complete, past the limit");
        assert!(matches!(examine(&big, 4096), Ok(Progress::Done(_))));
        let mut many = b"GET / HTTP/1.1\r\nHost: a.example\r\n".to_vec();
        for i in 0..MAX_HEADERS {
            many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert!(matches!(examine(&many, 65536), Err(HeadError::Malformed(m)) if m.contains("header lines")));
    }

    #[test]
    fn missing_host() {
        assert!(
            matches!(examine(b"GET / HTTP/1.1\r\n\r\n", 4096), Err(HeadError::BadHost(m)) if m.contains("needs a Host"))
        );
        assert_eq!(done(b"GET / HTTP/1.0\r\n\r\n").host, None, "HTTP/1.0 may omit it");
        assert_eq!(done(b"GET / HTTP/1.0\r\nHost:  \r\n\r\n").host, None, "empty Host");
    }

    #[test]
    fn bad_hosts_are_refused() {
        for bad in [
            "a..example",
            "a_b.example",
            "-a.example",
            "a.example:99999",
            "a.example:",
            "a.example:8x",
            "[2001:db8::1",
            "[2001:db8::1]x",
            "[zz]",
            "a.example, b.example",
            "ex\u{e4}mple.org",
        ] {
            let req = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
            assert!(matches!(examine(req.as_bytes(), 4096), Err(HeadError::BadHost(_))), "{bad}");
        }
        let two = b"GET / HTTP/1.1\r\nHost: a.example\r\nhost: b.example\r\n\r\n";
        assert!(matches!(examine(two, 4096), Err(HeadError::BadHost(m)) if m.contains("more than one")));
    }

    #[test]
    fn address_hosts_and_trailing_dots() {
        let h = |v: &str| done(format!("GET / HTTP/1.1\r\nHost: {v}\r\n\r\n").as_bytes()).host;
        assert_eq!(h("192.0.2.1:8080"), Some(Host::Address("192.0.2.1".parse().unwrap())));
        assert_eq!(h("[2001:db8::1]:80"), Some(Host::Address("2001:db8::1".parse().unwrap())));
        assert_eq!(h("[2001:db8::1]"), Some(Host::Address("2001:db8::1".parse().unwrap())));
        assert_eq!(h("meet.example.org."), name("meet.example.org"));
        assert_eq!(Host::Address("2001:db8::1".parse().unwrap()).to_string(), "[2001:db8::1]");
    }

    #[test]
    fn malformed_heads_fail_early() {
        // A TLS ClientHello on port 80, garbage, a bad version: refused without waiting for more.
        for bad in
            [&b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..], b"GET / HTTP/2.0\r\n", b"G\x00T / HTTP/1.1\r\n"]
        {
            assert!(matches!(examine(bad, 4096), Err(HeadError::Malformed(_))), "{bad:?}");
        }
    }

    #[test]
    fn paths_of_targets() {
        let p =
            |t: &str| Head { len: 0, method: "GET".into(), target: t.into(), minor: 1, host: None }.path().to_owned();
        assert_eq!(p("/x?y"), "/x?y");
        assert_eq!(p("http://a.example/x?y"), "/x?y");
        assert_eq!(p("http://a.example"), "/");
        assert_eq!(p("*"), "/");
    }
}
