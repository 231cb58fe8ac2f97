//! The splitter's counters: kept in atomics while it runs, written to the pinned `sni_routes`
//! and `sni_counters` maps every second and at exit (so `status` and `bpftool` see them without
//! the agent), and read back at start so a restart continues them.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{Array, HashMap, MapData};
use jitsi_common::{SniRouteKey, SniRouteStats};
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::{
    error::{Error, Result},
    rules::{name_bytes, name_str},
};

/// Why a connection was not relayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Over `max_connections`.
    OverLimit,
    /// Over `max_connections_per_client` (per IPv4 address or IPv6 /64).
    OverClientLimit,
    /// Over `max_connections_per_ipv6_48`.
    OverSiteLimit,
    /// Closed before its hello or head was complete to make room in a full pending pool
    /// (`max_pending_connections`): the oldest pending connection goes first.
    EvictedPending,
    /// The hello did not arrive within `hello_timeout_secs`.
    HelloTimeout,
    /// The hello exceeded `max_hello_bytes`.
    HelloTooLarge,
    /// Bytes that start like TLS but are not a ClientHello.
    MalformedHello,
    /// The client closed (or reset) before a complete hello.
    ClosedEarly,
    /// No route and no default: TLS got an `unrecognized_name` alert, other bytes a close.
    NoRoute,
    /// The backend did not accept within `connect_timeout_secs`.
    ConnectTimeout,
    /// The backend refused or was unreachable.
    ConnectFailed,
    /// Port 80: a malformed request head or a bad `Host` (answered `400`).
    BadRequest,
    /// Port 80: a request head over `max_head_bytes` (answered `431`).
    HeadTooLarge,
    /// Port 80: the head did not arrive within `head_timeout_secs`.
    HeadTimeout,
    /// Port 80: no route for the host and no default (answered `421`).
    NoHostRoute,
}

/// Every refusal, in `sni_counters` slot order (slot = index + 1; at most `SNI_COUNTERS` - 1).
pub const REFUSALS: [Refusal; 15] = [
    Refusal::OverLimit,
    Refusal::OverClientLimit,
    Refusal::HelloTimeout,
    Refusal::HelloTooLarge,
    Refusal::MalformedHello,
    Refusal::ClosedEarly,
    Refusal::NoRoute,
    Refusal::ConnectTimeout,
    Refusal::ConnectFailed,
    Refusal::BadRequest,
    Refusal::HeadTooLarge,
    Refusal::HeadTimeout,
    Refusal::NoHostRoute,
    Refusal::OverSiteLimit,
    Refusal::EvictedPending,
];

const _: () = assert!(REFUSALS.len() < jitsi_common::SNI_COUNTERS as usize, "sni_counters has no slot left");

impl Refusal {
    /// The name used in logs, `status` and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Refusal::OverLimit => "over_limit",
            Refusal::OverClientLimit => "over_client_limit",
            Refusal::HelloTimeout => "hello_timeout",
            Refusal::HelloTooLarge => "hello_too_large",
            Refusal::MalformedHello => "malformed_hello",
            Refusal::ClosedEarly => "closed_before_hello",
            Refusal::NoRoute => "no_route",
            Refusal::ConnectTimeout => "connect_timeout",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::BadRequest => "http_bad_request",
            Refusal::HeadTooLarge => "http_head_too_large",
            Refusal::HeadTimeout => "http_head_timeout",
            Refusal::NoHostRoute => "http_no_route",
            Refusal::OverSiteLimit => "over_site_limit",
            Refusal::EvictedPending => "evicted_pending",
        }
    }

    fn index(self) -> usize {
        REFUSALS.iter().position(|r| *r == self).expect("listed")
    }
}

/// Counters of one route (kept by name, so they survive a reload that reorders routes).
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Connections relayed to the route.
    pub connections: AtomicU64,
    /// Of those, open now.
    pub open: AtomicU64,
    /// Client -> backend bytes, hello included.
    pub bytes_up: AtomicU64,
    /// Backend -> client bytes.
    pub bytes_down: AtomicU64,
}

/// A route's counters at one instant.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RouteSnapshot {
    /// Connections relayed.
    pub connections: u64,
    /// Open now.
    pub open: u64,
    /// Client -> backend bytes.
    pub bytes_up: u64,
    /// Backend -> client bytes.
    pub bytes_down: u64,
}

impl RouteStats {
    fn snapshot(&self) -> RouteSnapshot {
        RouteSnapshot {
            connections: self.connections.load(Ordering::Relaxed),
            open: self.open.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

/// All of the splitter's counters.
#[derive(Debug)]
pub struct Stats {
    /// Accepted connections.
    pub accepted: AtomicU64,
    /// Connections open now, reading a hello or relayed.
    pub open: AtomicU64,
    /// Failed accepts (out of descriptors or memory...).
    pub accept_errors: AtomicU64,
    /// Transparent connections that could not use the client's own port (a TIME_WAIT or live
    /// connection from that address and port to the backend) and used an ephemeral one.
    pub ephemeral_port_retries: AtomicU64,
    /// Clients on a backends' subnet (a container reaching the host's public name), connected
    /// from the host's address: from their own, the backend's reply would bypass the agent.
    pub hairpin_connections: AtomicU64,
    /// Connections taken up from a previous agent at this start (a restart's handover).
    pub handover_adopted: AtomicU64,
    /// Connections a previous agent handed over that could not be taken up (closed).
    pub handover_lost: AtomicU64,
    refused: [AtomicU64; REFUSALS.len()],
    routes: Mutex<BTreeMap<String, Arc<RouteStats>>>,
    /// Time from accept to a complete ClientHello, in seconds.
    pub hello_seconds: Histogram,
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            accepted: AtomicU64::new(0),
            open: AtomicU64::new(0),
            accept_errors: AtomicU64::new(0),
            ephemeral_port_retries: AtomicU64::new(0),
            hairpin_connections: AtomicU64::new(0),
            handover_adopted: AtomicU64::new(0),
            handover_lost: AtomicU64::new(0),
            refused: Default::default(),
            routes: Mutex::default(),
            // 100 µs .. ~6.5 s.
            hello_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 17)),
        }
    }
}

impl Stats {
    /// The counters of route `name`, created at zero if new.
    pub fn route(&self, name: &str) -> Arc<RouteStats> {
        self.routes.lock().expect("stats lock").entry(name.to_owned()).or_default().clone()
    }

    /// Counts a refusal.
    pub fn refuse(&self, r: Refusal) {
        self.refused[r.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Refusals so far, by reason (every reason, zeros included).
    pub fn refusals(&self) -> Vec<(&'static str, u64)> {
        REFUSALS.iter().map(|r| (r.name(), self.refused[r.index()].load(Ordering::Relaxed))).collect()
    }

    /// Every route's counters, by name.
    pub fn routes(&self) -> BTreeMap<String, RouteSnapshot> {
        self.routes.lock().expect("stats lock").iter().map(|(k, v)| (k.clone(), v.snapshot())).collect()
    }

    /// Continues the counters left in the pinned maps by a previous agent (`open` is not carried:
    /// that agent's connections are gone).
    pub fn seed(&self, maps: &SniMaps) -> Result<()> {
        let accepted = maps.counters.get(&0, 0).map_err(|source| Error::Map { map: "sni_counters", source })?;
        self.accepted.store(accepted, Ordering::Relaxed);
        for (i, c) in self.refused.iter().enumerate() {
            let v =
                maps.counters.get(&(i as u32 + 1), 0).map_err(|source| Error::Map { map: "sni_counters", source })?;
            c.store(v, Ordering::Relaxed);
        }
        for entry in maps.routes.iter() {
            let (k, v) = entry.map_err(|source| Error::Map { map: "sni_routes", source })?;
            let r = self.route(&name_str(&k.name));
            r.connections.store(v.connections, Ordering::Relaxed);
            r.bytes_up.store(v.bytes_up, Ordering::Relaxed);
            r.bytes_down.store(v.bytes_down, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Writes the counters to the pinned maps; routes not in `current` are removed from them.
    pub fn flush(&self, maps: &mut SniMaps, current: &[String]) -> Result<()> {
        let err = |map| move |source| Error::Map { map, source };
        maps.counters.set(0, self.accepted.load(Ordering::Relaxed), 0).map_err(err("sni_counters"))?;
        for (i, c) in self.refused.iter().enumerate() {
            maps.counters.set(i as u32 + 1, c.load(Ordering::Relaxed), 0).map_err(err("sni_counters"))?;
        }
        let routes = self.routes();
        for name in current {
            let s = routes.get(name).copied().unwrap_or_default();
            let v = SniRouteStats {
                connections: s.connections,
                open: s.open,
                bytes_up: s.bytes_up,
                bytes_down: s.bytes_down,
            };
            maps.routes.insert(SniRouteKey { name: name_bytes(name) }, v, 0).map_err(err("sni_routes"))?;
        }
        let stale: Vec<SniRouteKey> = maps
            .routes
            .keys()
            .filter_map(|k| k.ok())
            .filter(|k| !current.iter().any(|n| name_bytes(n) == k.name))
            .collect();
        for k in stale {
            maps.routes.remove(&k).map_err(err("sni_routes"))?;
        }
        Ok(())
    }
}

/// The pinned maps the splitter's counters are kept in.
pub struct SniMaps {
    /// `sni_routes`: route name -> counters.
    pub routes: HashMap<MapData, SniRouteKey, SniRouteStats>,
    /// `sni_counters`: 0 accepted, 1.. refusals in [`REFUSALS`] order.
    pub counters: Array<MapData, u64>,
}
