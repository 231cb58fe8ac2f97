//! A route's backend as the core connects to it. A backend is only ever one from the
//! configuration, never derived from client input.

use std::net::SocketAddr;

/// One route of either front, ready to connect to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The route's name (its counters are kept by it).
    pub name: String,
    /// IPv4 backend.
    pub v4: Option<SocketAddr>,
    /// IPv6 backend.
    pub v6: Option<SocketAddr>,
    /// Connect from the client's address.
    pub transparent: bool,
}

impl Target {
    /// The backend for a client of `client`'s family, and whether the connection can be
    /// transparent (a client is only ever connected transparently within its own family).
    /// `None` while the route has no backend (its container is not running).
    pub fn backend_for(&self, client: SocketAddr) -> Option<(SocketAddr, bool)> {
        let (same, other) = if client.is_ipv4() { (self.v4, self.v6) } else { (self.v6, self.v4) };
        match same {
            Some(b) => Some((b, self.transparent)),
            None => other.map(|b| (b, false)),
        }
    }
}
