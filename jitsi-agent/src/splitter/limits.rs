//! How many connections the splitters hold, keyed so that one client cannot take them all.
//!
//! - A client is an IPv4 address or an IPv6 /64 (one home or one host gets a /64: keying by
//!   the exact IPv6 address would give it 2^64 clients), and a /48 (one site) has its own
//!   cap.
//! - A connection that has not sent its ClientHello or request head yet is *pending*; each
//!   front (443, 80) has its own pending pool, and when it is full the oldest pending
//!   connection is closed to make room: a flood of silent connections costs the flooder its
//!   oldest ones, never a new client's chance to send its hello.
//! - Once routed, a connection moves to its front's *relayed* pool (`max_connections`). An
//!   ACME validation request is not counted there (it answers one request and closes), so a
//!   full pool never blocks a certificate.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Mutex,
};

use tokio_util::sync::CancellationToken;

use super::{front::FrontKind, stats::Refusal};

/// The limits in force (from the settings at accept time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Open connections per client (IPv4 address, IPv6 /64), pending and relayed.
    pub per_client: usize,
    /// Open connections per IPv6 /48.
    pub per_v6_48: usize,
    /// Pending connections per front (the oldest is closed when full).
    pub pending: usize,
    /// Relayed connections per front.
    pub relayed: usize,
}

impl Caps {
    /// The caps `[splitter]` sets.
    pub fn of(settings: &crate::config::Splitter) -> Self {
        Caps {
            per_client: settings.max_connections_per_client,
            per_v6_48: settings.max_connections_per_ipv6_48,
            pending: settings.max_pending_connections,
            relayed: settings.max_connections,
        }
    }
}

/// Who a connection counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Client {
    V4(u32),
    /// The first 64 bits.
    V6(u64),
}

/// The client key and, for IPv6, its /48.
fn keys(ip: IpAddr) -> (Client, Option<u64>) {
    match ip.to_canonical() {
        IpAddr::V4(a) => (Client::V4(a.into()), None),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            (Client::V6((bits >> 64) as u64), Some((bits >> 80) as u64))
        }
    }
}

#[derive(Debug, Default)]
struct FrontPool {
    /// Pending connections by admission order, each with the token that closes it.
    pending: BTreeMap<u64, CancellationToken>,
    relayed: usize,
}

#[derive(Debug, Default)]
struct State {
    clients: HashMap<Client, usize>,
    sites: HashMap<u64, usize>,
    fronts: [FrontPool; 2],
    next: u64,
    open: usize,
}

impl State {
    /// Counts one more open connection for `client` (and its /48); returns its id.
    fn enter(&mut self, client: Client, site: Option<u64>) -> u64 {
        *self.clients.entry(client).or_default() += 1;
        if let Some(site) = site {
            *self.sites.entry(site).or_default() += 1;
        }
        let id = self.next;
        self.next += 1;
        self.open += 1;
        id
    }
}

/// The splitters' connection accounting.
#[derive(Debug, Default)]
pub struct Limits {
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Pending,
    Relayed,
    /// Neither pool: an ACME validation request being relayed.
    Unpooled,
}

/// One admitted connection; dropping it gives its place back.
#[derive(Debug)]
pub struct Admission<'a> {
    limits: &'a Limits,
    front: usize,
    client: Client,
    site: Option<u64>,
    id: u64,
    stage: Stage,
    /// Cancelled when the connection is evicted from the pending pool.
    pub evicted: CancellationToken,
}

fn front_index(front: FrontKind) -> usize {
    match front {
        FrontKind::Tls => 0,
        FrontKind::Http => 1,
    }
}

impl Limits {
    /// Admits a connection from `ip` on `front` as pending, closing the front's oldest pending
    /// connection if the pool is full. Returns the admission and how many were evicted.
    pub fn admit(&self, caps: &Caps, front: FrontKind, ip: IpAddr) -> Result<(Admission<'_>, usize), Refusal> {
        let (client, site) = keys(ip);
        let f = front_index(front);
        let mut s = self.state.lock().expect("limits lock");
        if s.clients.get(&client).copied().unwrap_or(0) >= caps.per_client {
            return Err(Refusal::OverClientLimit);
        }
        if let Some(site) = site
            && s.sites.get(&site).copied().unwrap_or(0) >= caps.per_v6_48
        {
            return Err(Refusal::OverSiteLimit);
        }
        let mut evicted = 0;
        while s.fronts[f].pending.len() >= caps.pending {
            let Some((_, oldest)) = s.fronts[f].pending.pop_first() else { break };
            oldest.cancel();
            evicted += 1;
        }
        let id = s.enter(client, site);
        let token = CancellationToken::new();
        s.fronts[f].pending.insert(id, token.clone());
        let admission = Admission { limits: self, front: f, client, site, id, stage: Stage::Pending, evicted: token };
        Ok((admission, evicted))
    }

    /// Counts a connection a previous agent handed over as relayed on `front`, whatever the
    /// caps (it is established: refusing it would cut it).
    pub fn adopt(&self, front: FrontKind, ip: IpAddr) -> Admission<'_> {
        let (client, site) = keys(ip);
        let f = front_index(front);
        let mut s = self.state.lock().expect("limits lock");
        let id = s.enter(client, site);
        s.fronts[f].relayed += 1;
        Admission { limits: self, front: f, client, site, id, stage: Stage::Relayed, evicted: CancellationToken::new() }
    }

    /// Connections admitted and not yet ended.
    pub fn open(&self) -> usize {
        self.state.lock().expect("limits lock").open
    }

    /// Pending connections on `front` now.
    pub fn pending(&self, front: FrontKind) -> usize {
        self.state.lock().expect("limits lock").fronts[front_index(front)].pending.len()
    }
}

impl Admission<'_> {
    /// The connection was routed: from the pending pool to the relayed one, if it has room.
    pub fn relay(&mut self, caps: &Caps) -> Result<(), Refusal> {
        let mut s = self.limits.state.lock().expect("limits lock");
        let pool = &mut s.fronts[self.front];
        if pool.relayed >= caps.relayed {
            return Err(Refusal::OverLimit);
        }
        pool.pending.remove(&self.id);
        pool.relayed += 1;
        self.stage = Stage::Relayed;
        Ok(())
    }

    /// The connection carries one ACME validation request: out of both pools.
    pub fn unpool(&mut self) {
        let mut s = self.limits.state.lock().expect("limits lock");
        s.fronts[self.front].pending.remove(&self.id);
        self.stage = Stage::Unpooled;
    }
}

fn release<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, k: &K) {
    if let Some(n) = map.get_mut(k) {
        *n -= 1;
        if *n == 0 {
            map.remove(k);
        }
    }
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        let mut s = self.limits.state.lock().expect("limits lock");
        release(&mut s.clients, &self.client);
        if let Some(site) = self.site {
            release(&mut s.sites, &site);
        }
        match self.stage {
            Stage::Pending => {
                s.fronts[self.front].pending.remove(&self.id);
            }
            Stage::Relayed => s.fronts[self.front].relayed -= 1,
            Stage::Unpooled => {}
        }
        s.open -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAPS: Caps = Caps { per_client: 2, per_v6_48: 3, pending: 4, relayed: 3 };

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_64_is_one_client_and_a_48_is_capped() {
        let l = Limits::default();
        let a = l.admit(&CAPS, FrontKind::Tls, ip("2001:db8:1:1::1")).unwrap();
        let b = l.admit(&CAPS, FrontKind::Tls, ip("2001:db8:1:1::2")).unwrap();
        assert_eq!(l.admit(&CAPS, FrontKind::Tls, ip("2001:db8:1:1:ffff::3")).unwrap_err(), Refusal::OverClientLimit);
        // Another /64 of the same /48: one more, then the site is full.
        let c = l.admit(&CAPS, FrontKind::Http, ip("2001:db8:1:2::1")).unwrap();
        assert_eq!(l.admit(&CAPS, FrontKind::Http, ip("2001:db8:1:3::1")).unwrap_err(), Refusal::OverSiteLimit);
        // Another /48 is not affected; IPv4 addresses are clients of their own.
        let _d = l.admit(&CAPS, FrontKind::Tls, ip("2001:db8:2::1")).unwrap();
        let _e = l.admit(&CAPS, FrontKind::Http, ip("198.51.100.1")).unwrap();
        let _f = l.admit(&CAPS, FrontKind::Http, ip("198.51.100.2")).unwrap();
        drop((a, b, c));
        assert!(l.admit(&CAPS, FrontKind::Tls, ip("2001:db8:1:3::1")).is_ok(), "places given back");
    }

    #[test]
    fn an_adopted_connection_counts_whatever_the_caps_and_gives_its_place_back() {
        let l = Limits::default();
        let caps = Caps { relayed: 1, ..CAPS };
        let a = l.adopt(FrontKind::Tls, ip("198.51.100.1"));
        let b = l.adopt(FrontKind::Tls, ip("198.51.100.1"));
        let c = l.adopt(FrontKind::Tls, ip("198.51.100.1"));
        assert_eq!(l.open(), 3, "over the client's cap of 2: counted all the same");
        assert_eq!(l.admit(&caps, FrontKind::Tls, ip("198.51.100.1")).unwrap_err(), Refusal::OverClientLimit);
        let (mut d, _) = l.admit(&caps, FrontKind::Tls, ip("198.51.100.2")).unwrap();
        assert_eq!(d.relay(&caps).unwrap_err(), Refusal::OverLimit, "the relayed pool holds the adopted ones");
        drop((a, b, c));
        assert_eq!(l.open(), 1);
        assert!(d.relay(&caps).is_ok(), "places given back");
    }

    #[test]
    fn a_full_pending_pool_closes_its_oldest_and_the_fronts_are_separate() {
        let l = Limits::default();
        let caps = Caps { per_client: 100, ..CAPS };
        let held: Vec<_> = (0..4).map(|_| l.admit(&caps, FrontKind::Tls, ip("198.51.100.1")).unwrap().0).collect();
        let (new, evicted) = l.admit(&caps, FrontKind::Tls, ip("198.51.100.9")).unwrap();
        assert_eq!(evicted, 1);
        assert!(held[0].evicted.is_cancelled(), "the oldest was closed");
        assert!(!held[1].evicted.is_cancelled() && !new.evicted.is_cancelled());
        assert_eq!(l.pending(FrontKind::Tls), 4);
        // Port 80 has its own pool.
        let (_http, evicted) = l.admit(&caps, FrontKind::Http, ip("198.51.100.1")).unwrap();
        assert_eq!(evicted, 0);
        drop(held);
        assert_eq!(l.pending(FrontKind::Tls), 1);
        assert_eq!(l.open(), 2);
    }

    #[test]
    fn relayed_pool_is_per_front_and_acme_requests_are_outside_it() {
        let l = Limits::default();
        let caps = Caps { per_client: 100, ..CAPS };
        let mut relayed = Vec::new();
        for _ in 0..3 {
            let (mut a, _) = l.admit(&caps, FrontKind::Tls, ip("198.51.100.1")).unwrap();
            a.relay(&caps).unwrap();
            relayed.push(a);
        }
        let (mut over, _) = l.admit(&caps, FrontKind::Tls, ip("198.51.100.2")).unwrap();
        assert_eq!(over.relay(&caps).unwrap_err(), Refusal::OverLimit);
        let (mut http, _) = l.admit(&caps, FrontKind::Http, ip("198.51.100.2")).unwrap();
        http.relay(&caps).unwrap();
        let (mut acme, _) = l.admit(&caps, FrontKind::Tls, ip("198.51.100.3")).unwrap();
        acme.unpool();
        assert_eq!(l.pending(FrontKind::Tls), 1, "only `over` is still pending");
        relayed.pop();
        over.relay(&caps).unwrap();
    }
}
