//! From a request head to what happens to the connection: the agent's own ACME challenges
//! first, then routes by exact host, wildcard, and the default route; a `redirect_https` route
//! answers `308` itself except on the ACME challenge path. A backend is only ever one from the
//! configuration.

use super::head::{Head, Host};
use crate::{acme::challenges::Challenges, config::Http, names::NameTable, splitter::target::Target};

/// The path prefix of ACME HTTP-01 challenges (RFC 8555, 8.3).
pub const ACME_PREFIX: &str = "/.well-known/acme-challenge/";

/// One `[[http.route]]`, ready to use.
#[derive(Debug, Clone)]
pub struct Route {
    /// Name and backends.
    pub target: Target,
    /// Answer `308` to `https://` (except ACME challenges).
    pub redirect_https: bool,
}

/// What to do with a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Relay the connection to this route.
    Route(usize),
    /// Relay this one request (an ACME challenge on a redirecting route) to the route, then
    /// close: nothing else on the connection reaches the backend, whose own redirect is off.
    ChallengeOnly(usize),
    /// `308` to this URL (the route's index for the counters).
    Redirect(usize, String),
    /// A challenge of a name the agent manages: `200` with this key authorization, or `404`
    /// for an unknown token.
    Challenge(Option<String>),
    /// No route takes the host: `421`.
    NoRoute,
}

/// The compiled routing table.
#[derive(Debug, Clone)]
pub struct Router {
    table: NameTable,
    /// Routes, in configuration order.
    pub routes: Vec<Route>,
    default: Option<usize>,
}

impl crate::splitter::table::Router for Router {
    type Settings = Http;

    fn compile(http: &Http) -> Self {
        Router::new(http)
    }

    fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.target.name.as_str()).collect()
    }
}

impl Router {
    /// Compiles a validated `[http]` section.
    pub fn new(http: &Http) -> Self {
        let table = NameTable::compile(http.routes.iter().map(|r| r.host_names.as_slice()));
        let routes: Vec<Route> = http
            .routes
            .iter()
            .map(|r| Route {
                target: Target {
                    name: r.name.clone(),
                    v4: r.backend.v4(),
                    v6: r.backend.v6(),
                    transparent: r.transparent,
                },
                redirect_https: r.redirect_https,
            })
            .collect();
        let default = http.default.as_ref().and_then(|d| routes.iter().position(|r| &r.target.name == d));
        Router { table, routes, default }
    }

    /// Decides for `head`.
    pub fn decide(&self, head: &Head, challenges: &Challenges) -> Decision {
        let path = head.path();
        let name = match &head.host {
            Some(Host::Name(n)) => Some(n),
            _ => None,
        };
        if let (Some(n), Some(token)) = (name, path.strip_prefix(ACME_PREFIX))
            && challenges.manages(n)
        {
            return Decision::Challenge(challenges.answer(n, token));
        }
        let Some(i) = name.and_then(|n| self.table.lookup(n)).or(self.default) else {
            return Decision::NoRoute;
        };
        match &head.host {
            Some(_) if self.routes[i].redirect_https && is_challenge(head) => Decision::ChallengeOnly(i),
            Some(host) if self.routes[i].redirect_https => Decision::Redirect(i, format!("https://{host}{path}")),
            _ => Decision::Route(i),
        }
    }
}

/// An HTTP-01 validation request: `GET` (or `HEAD`) of the challenge path with one token of
/// the base64url alphabet (RFC 8555, 8.1 and 8.3) and nothing after it.
fn is_challenge(head: &Head) -> bool {
    let Some(token) = head.path().strip_prefix(ACME_PREFIX) else { return false };
    matches!(head.method.as_str(), "GET" | "HEAD")
        && (1..=256).contains(&token.len())
        && token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A complete response that closes the connection.
pub fn response(status: u16, reason: &str, location: Option<&str>, body: &str) -> Vec<u8> {
    let location = location.map(|l| format!("Location: {l}\r\n")).unwrap_or_default();
    format!(
        "HTTP/1.1 {status} {reason}\r\n{location}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::Config, http::head::Progress, http::head::examine, names::ServerName};

    fn router(default: bool) -> Router {
        let d = if default { "default = \"site\"\n" } else { "" };
        let text = format!(
            "[uplink]\ninterface=\"eth0\"\n[http]\n{d}[[http.route]]\nname=\"meet\"\nhost_names=[\"meet.example.org\"]\n\
             backend=\"192.0.2.12:8000\"\nredirect_https=true\n[[http.route]]\nname=\"site\"\n\
             host_names=[\"*.example.net\"]\nbackend=\"192.0.2.20:80\"\n"
        );
        Router::new(Config::parse(&text, "t.toml".as_ref()).unwrap().http.as_ref().unwrap())
    }

    fn head(req: &str) -> Head {
        match examine(req.as_bytes(), 4096).unwrap() {
            Progress::Done(h) => h,
            Progress::NeedMore => panic!("incomplete"),
        }
    }

    fn get(host: &str, path: &str) -> Head {
        head(&format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n"))
    }

    #[test]
    fn routes_redirects_and_the_acme_path() {
        let r = router(false);
        let none = Challenges::default();
        assert_eq!(r.decide(&get("www.example.net", "/"), &none), Decision::Route(1));
        assert_eq!(
            r.decide(&get("MEET.example.org:80", "/room?x=1"), &none),
            Decision::Redirect(0, "https://meet.example.org/room?x=1".into())
        );
        assert_eq!(
            r.decide(&get("meet.example.org", "/.well-known/acme-challenge/Tok-1_x"), &none),
            Decision::ChallengeOnly(0)
        );
        // Not a validation request: redirected like any other path.
        for (method, path) in [
            ("POST", "/.well-known/acme-challenge/tok"),
            ("GET", "/.well-known/acme-challenge/"),
            ("GET", "/.well-known/acme-challenge/tok/../../admin"),
            ("GET", "/.well-known/acme-challenge/tok?x=1"),
            ("GET", "/.well-known/acme-challenge/t%2fk"),
        ] {
            let h = head(&format!("{method} {path} HTTP/1.1\r\nHost: meet.example.org\r\n\r\n"));
            assert!(matches!(r.decide(&h, &none), Decision::Redirect(0, _)), "{method} {path}");
        }
        assert_eq!(r.decide(&get("other.example.com", "/"), &none), Decision::NoRoute);
        assert_eq!(r.decide(&get("192.0.2.1", "/"), &none), Decision::NoRoute);
        assert_eq!(r.decide(&head("GET / HTTP/1.0\r\n\r\n"), &none), Decision::NoRoute);
        let r = router(true);
        assert_eq!(r.decide(&get("other.example.com", "/"), &none), Decision::Route(1));
        assert_eq!(r.decide(&head("GET / HTTP/1.0\r\n\r\n"), &none), Decision::Route(1), "no Host -> default");
    }

    #[test]
    fn the_agents_own_challenges_are_answered_whatever_the_routes() {
        let r = router(true);
        let c = Challenges::default();
        let turn = ServerName::parse(b"turn.example.org").unwrap();
        c.set_names(vec![turn.clone()]);
        c.add("tok1", turn, "tok1.thumb".into());
        let path = "/.well-known/acme-challenge/tok1";
        assert_eq!(r.decide(&get("turn.example.org", path), &c), Decision::Challenge(Some("tok1.thumb".into())));
        assert_eq!(r.decide(&get("turn.example.org", "/.well-known/acme-challenge/x"), &c), Decision::Challenge(None));
        assert_eq!(r.decide(&get("meet.example.org", path), &c), Decision::ChallengeOnly(0), "not a managed name");
        c.remove("tok1");
        assert_eq!(r.decide(&get("turn.example.org", path), &c), Decision::Challenge(None));
    }

    #[test]
    fn responses_are_complete() {
        let r = String::from_utf8(response(308, "Permanent Redirect", Some("https://a.example/"), "")).unwrap();
        assert!(r.starts_with("HTTP/1.1 308 Permanent Redirect\r\nLocation: https://a.example/\r\n"), "{r}");
        assert!(r.ends_with("Content-Length: 0\r\nConnection: close\r\n\r\n"), "{r}");
    }
}
