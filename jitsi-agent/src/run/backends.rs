//! The backends' link-layer paths, re-resolved every tick (a container that restarts gets a
//! new veth and MAC); only changes are logged.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
};

use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    config::Config,
    peer_napi::{self, PeerNapi},
    resolve::{self, Resolved, fmt_mac},
};

/// The backends' current resolution, logging only changes.
#[derive(Default)]
pub(super) struct Backends {
    pub(super) resolved: HashMap<IpAddr, Resolved>,
    failed: HashMap<IpAddr, String>,
}

impl Backends {
    /// Re-resolves every backend; returns whether anything changed.
    pub(super) async fn refresh(&mut self, h: &Handle, config: &Config) -> bool {
        let ips: HashSet<IpAddr> = config
            .steer
            .iter()
            .flat_map(|r| r.backend.as_slice().iter().map(|b| b.ip()))
            .filter(|ip| !ip.is_unspecified())
            .collect();
        // Backends a reload removed are forgotten.
        let before = self.resolved.len();
        self.resolved.retain(|ip, _| ips.contains(ip));
        self.failed.retain(|ip, _| ips.contains(ip));
        let mut changed = self.resolved.len() != before;
        for ip in ips {
            match resolve::backend(h, ip).await {
                Ok(r) => {
                    self.failed.remove(&ip);
                    if self.resolved.get(&ip) != Some(&r) {
                        info!(backend = %ip, via = %r.gateway.name, port_ifindex = r.port_ifindex, mac = %fmt_mac(&r.backend_mac), "backend resolved");
                        match peer_napi::ensure(h, r.port_ifindex).await {
                            Ok(PeerNapi::Enabled(ns)) => {
                                info!(backend = %ip, netns = %ns.display(), "turned GRO on at the backend's veth peer (XDP redirects need its NAPI)")
                            }
                            Ok(PeerNapi::AlreadyOn | PeerNapi::NotVeth) => {}
                            Err(e) => {
                                warn!(backend = %ip, error = %e.report(), "steered packets may be dropped at the backend's veth")
                            }
                        }
                        self.resolved.insert(ip, r);
                        changed = true;
                    }
                }
                Err(e) => {
                    let msg = e.report();
                    if self.failed.get(&ip) != Some(&msg) {
                        if self.resolved.contains_key(&ip) {
                            // Keep steering to the last known path: a stale neighbour or FDB entry
                            // must not take a working backend down.
                            warn!(backend = %ip, error = %msg, "cannot re-resolve backend; keeping its last known path");
                        } else {
                            warn!(backend = %ip, error = %msg, "backend unresolved; its traffic is dropped (in_backend_down)");
                        }
                        self.failed.insert(ip, msg);
                    }
                }
            }
        }
        changed
    }
}
