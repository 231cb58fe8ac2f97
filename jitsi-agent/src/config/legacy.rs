//! `[sni]`, the former single section of the TLS splitter and its connection settings: read
//! with its own keys (so an error in it names `sni.<key>` at its line), then split into
//! `[tls]` and `[splitter]` with a deprecation warning.

use std::net::SocketAddr;

use serde::Deserialize;

use super::{RelayMode, Secs, Splitter, Tls, TlsRoute, default_hello_timeout, default_max_hello, default_tls_listen};

/// `[sni]` as it was written: `[tls]`'s keys and `[splitter]`'s.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacySni {
    #[serde(default = "default_tls_listen")]
    listen: Vec<SocketAddr>,
    default: Option<String>,
    #[serde(default = "default_max_hello")]
    max_hello_bytes: usize,
    #[serde(default = "default_hello_timeout")]
    hello_timeout_secs: Secs,
    #[serde(default, rename = "route")]
    routes: Vec<TlsRoute>,
    connect_timeout_secs: Option<Secs>,
    idle_timeout_secs: Option<Secs>,
    drain_timeout_secs: Option<Secs>,
    max_connections: Option<usize>,
    max_connections_per_client: Option<usize>,
    max_connections_per_ipv6_48: Option<usize>,
    max_pending_connections: Option<usize>,
    reply_mark: Option<u32>,
    socket_mark: Option<u32>,
    route_table: Option<u32>,
    rule_priority: Option<u32>,
    relay: Option<RelayMode>,
}

impl LegacySni {
    /// The `[tls]` section, the `[splitter]` section if the old one set any of its keys, and
    /// the warning naming what moved.
    pub fn split(self) -> (Tls, Option<Splitter>, String) {
        let mut s = Splitter::default();
        let mut moved = Vec::new();
        macro_rules! take {
            ($($key:ident),*) => {$(
                if let Some(v) = self.$key {
                    s.$key = v;
                    moved.push(concat!("`", stringify!($key), "`"));
                }
            )*};
        }
        take!(
            connect_timeout_secs,
            idle_timeout_secs,
            drain_timeout_secs,
            max_connections,
            max_connections_per_client,
            max_connections_per_ipv6_48,
            max_pending_connections,
            reply_mark,
            socket_mark,
            route_table,
            rule_priority,
            relay
        );
        let tls = Tls {
            listen: self.listen,
            default: self.default,
            max_hello_bytes: self.max_hello_bytes,
            hello_timeout_secs: self.hello_timeout_secs,
            routes: self.routes,
        };
        let also = if moved.is_empty() { String::new() } else { format!(", and {} to `[splitter]`", moved.join(", ")) };
        let warning = format!(
            "`[sni]` is deprecated and will be refused by a later release: rename it `[tls]` \
             (`[[sni.route]]` becomes `[[tls.route]]`){also}"
        );
        (tls, (!moved.is_empty()).then_some(s), warning)
    }
}
