//! From a ClientHello to a backend: exact names, then wildcards, then the default route.
//! A backend is only ever one from the configuration, never derived from client input.

use super::hello::Hello;
use crate::{config::Tls, names::NameTable, splitter::target::Target};

/// What to do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Relay to this route.
    Route(usize),
    /// No route: a TLS client gets an `unrecognized_name` alert, then the connection closes.
    Alert,
    /// No route for non-TLS bytes: close.
    Close,
}

/// The compiled routing table.
#[derive(Debug, Clone)]
pub struct Router {
    table: NameTable,
    /// Routes, in configuration order.
    pub routes: Vec<Target>,
    default: Option<usize>,
}

impl crate::splitter::table::Router for Router {
    type Settings = Tls;

    fn compile(tls: &Tls) -> Self {
        Router::new(tls)
    }

    fn route_names(&self) -> Vec<&str> {
        self.routes.iter().map(|r| r.name.as_str()).collect()
    }
}

impl Router {
    /// Compiles a validated `[tls]` section.
    pub fn new(tls: &Tls) -> Self {
        let table = NameTable::compile(tls.routes.iter().map(|r| r.server_names.as_slice()));
        let routes: Vec<Target> = tls
            .routes
            .iter()
            .map(|r| Target {
                name: r.name.clone(),
                v4: r.backend.v4(),
                v6: r.backend.v6(),
                transparent: r.transparent,
            })
            .collect();
        let default = tls.default.as_ref().and_then(|d| routes.iter().position(|r| &r.name == d));
        Router { table, routes, default }
    }

    /// Decides for `hello`.
    pub fn decide(&self, hello: &Hello) -> Decision {
        let routed = match hello {
            Hello::Tls { server_name: Some(n), .. } => self.table.lookup(n).or(self.default),
            Hello::Tls { .. } | Hello::NotTls => self.default,
        };
        match (routed, hello) {
            (Some(i), _) => Decision::Route(i),
            (None, Hello::Tls { .. }) => Decision::Alert,
            (None, Hello::NotTls) => Decision::Close,
        }
    }
}

/// A fatal TLS alert record: `unrecognized_name` (112), TLS 1.2 record version.
pub const ALERT_UNRECOGNIZED_NAME: [u8; 7] = [21, 3, 3, 0, 2, 2, 112];

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;
    use crate::{config::Config, names::ServerName};

    fn router(default: bool) -> Router {
        let d = if default { "default = \"web\"\n" } else { "" };
        let text = format!(
            "[uplink]\ninterface=\"eth0\"\n[tls]\n{d}[[tls.route]]\nname=\"web\"\nserver_names=[\"meet.example.org\"]\n\
             backend=[\"192.0.2.12:8443\",\"[2001:db8::12]:8443\"]\n[[tls.route]]\nname=\"turn\"\n\
             server_names=[\"turn.example.org\",\"*.turn.example.org\"]\nbackend=\"192.0.2.11:5349\"\n"
        );
        Router::new(Config::parse(&text, "t.toml".as_ref()).unwrap().tls.as_ref().unwrap())
    }

    fn tls(name: Option<&str>) -> Hello {
        Hello::Tls { server_name: name.map(|n| ServerName::parse(n.as_bytes()).unwrap()), invalid_name: None, len: 1 }
    }

    #[test]
    fn decisions() {
        let r = router(true);
        assert_eq!(r.decide(&tls(Some("MEET.example.org"))), Decision::Route(0));
        assert_eq!(r.decide(&tls(Some("a.turn.example.org"))), Decision::Route(1));
        assert_eq!(r.decide(&tls(Some("unknown.example.org"))), Decision::Route(0), "unknown -> default");
        assert_eq!(r.decide(&tls(None)), Decision::Route(0), "no SNI -> default");
        assert_eq!(r.decide(&Hello::NotTls), Decision::Route(0), "non-TLS -> default");
        let r = router(false);
        assert_eq!(r.decide(&tls(Some("unknown.example.org"))), Decision::Alert);
        assert_eq!(r.decide(&tls(None)), Decision::Alert);
        assert_eq!(r.decide(&Hello::NotTls), Decision::Close);
    }

    #[test]
    fn family_of_the_client_picks_the_backend() {
        let r = router(true);
        let v4: SocketAddr = "203.0.113.2:1000".parse().unwrap();
        let v6: SocketAddr = "[2001:db8:c::2]:1000".parse().unwrap();
        assert_eq!(r.routes[0].backend_for(v4), Some(("192.0.2.12:8443".parse().unwrap(), true)));
        assert_eq!(r.routes[0].backend_for(v6), Some(("[2001:db8::12]:8443".parse().unwrap(), true)));
        // No IPv6 backend: a plain (non-transparent) connection to the IPv4 one.
        assert_eq!(r.routes[1].backend_for(v6), Some(("192.0.2.11:5349".parse().unwrap(), false)));
    }
}
