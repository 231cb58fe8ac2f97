//! `jitsi-agent run`: attach or adopt the datapath, keep its maps in line with the
//! configuration and the backends' current link-layer paths, until asked to stop.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    future::Future,
    net::IpAddr,
    time::Duration,
};

use aya::maps::PerCpuValues;
use jitsi_common::RuleStats;
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    config::{Config, Sni},
    datapath::{Attach, Datapath, Maps},
    error::{Error, Result},
    netlink::{self, Link},
    peer_napi::{self, PeerNapi},
    policy_routing::PolicyRouting,
    resolve::{self, Resolved, fmt_mac},
    rules::{self, Desired},
    sni::proxy::{self, Proxy},
    status::existing_slots,
};

/// How often backends are re-resolved (a container that restarts gets a new veth and MAC).
const REFRESH: Duration = Duration::from_secs(2);

/// Runs the agent until `shutdown` completes. The datapath stays attached afterwards.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> Result<()> {
    let h = netlink::connect()?;
    let uplink = netlink::link_by_name(&h, &config.uplink.interface).await.map_err(|e| match e {
        Error::NoSuchInterface(name) => Error::NoUplink(name),
        e => e,
    })?;
    let host_addrs = if config.uplink.addresses.is_empty() {
        netlink::global_addresses(&h, uplink.index).await?
    } else {
        config.uplink.addresses.clone()
    };
    if host_addrs.is_empty() {
        return Err(Error::NoHostAddress(config.uplink.interface.clone()));
    }
    info!(uplink = %uplink.name, addresses = ?host_addrs, "host addresses");

    let mut dp = Datapath::open(&config.pin_dir)?;
    let mut backends = Backends::default();
    backends.refresh(&h, &config).await;
    sync_maps(&mut dp.maps, &config, &host_addrs, uplink.index, &backends.resolved)?;
    match dp.ensure_xdp(&uplink)? {
        Attach::Attached(mode) => info!(interface = %uplink.name, mode, "attached steer_in (XDP)"),
        Attach::Adopted => {
            info!(interface = %uplink.name, mode = uplink.xdp.map(|x| x.1), "adopted attached steer_in (XDP)")
        }
    }
    let mut tc_done = HashSet::new();
    attach_tc(&mut dp, backends.resolved.values().map(|r| &r.gateway), &mut tc_done)?;
    let sni = match &config.sni {
        Some(sni) => Some(SniRunning::start(&h, sni, &mut dp, &mut tc_done).await?),
        None => None,
    };
    info!(
        rules = config.steer.len(),
        sni_routes = config.sni.as_ref().map_or(0, |s| s.routes.len()),
        adopted = dp.adopted,
        "ready"
    );

    // Whatever ends the loop (a signal or an error), the splitter stops and its routing goes.
    let ended = async {
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(REFRESH) => {
                    if backends.refresh(&h, &config).await {
                        sync_maps(&mut dp.maps, &config, &host_addrs, uplink.index, &backends.resolved)?;
                        attach_tc(&mut dp, backends.resolved.values().map(|r| &r.gateway), &mut tc_done)?;
                    }
                    if let Some(sni) = &config.sni {
                        attach_tc(&mut dp, &sni_gateways(&h, sni).await, &mut tc_done)?;
                    }
                }
            }
        }
    }
    .await;
    if let Some(s) = sni {
        s.stop(&h).await?;
    }
    ended?;
    info!("stopping; the datapath stays attached and keeps forwarding");
    Ok(())
}

fn attach_tc<'a>(
    dp: &mut Datapath,
    gateways: impl IntoIterator<Item = &'a Link>,
    done: &mut HashSet<u32>,
) -> Result<()> {
    for g in gateways {
        if done.insert(g.index) {
            match dp.ensure_tc(g)? {
                Attach::Attached(mode) => info!(interface = %g.name, mode, "attached reply_out (TC ingress)"),
                Attach::Adopted => info!(interface = %g.name, "adopted attached reply_out (TC ingress)"),
            }
        }
    }
    Ok(())
}

/// The interfaces the SNI routes' transparent backends are reached through (their replies
/// arrive there and must be marked by `reply_out`); loopback backends need none.
async fn sni_gateways(h: &Handle, sni: &Sni) -> Vec<Link> {
    let mut out: Vec<Link> = Vec::new();
    for b in sni.transparent_backends().filter(|b| !b.ip().is_loopback()) {
        match netlink::route_oif(h, b.ip()).await {
            Ok(oif) => match netlink::link_by_index(h, oif).await {
                Ok(link) if link.index != 1 && !out.iter().any(|l| l.index == link.index) => out.push(link),
                Ok(_) => {}
                Err(e) => warn!(backend = %b, error = %e.report(), "sni: cannot find the backend's interface"),
            },
            Err(e) => warn!(backend = %b, error = %e.report(), "sni: no route to the backend"),
        }
    }
    out
}

/// The running SNI splitter and the routing installed for it.
struct SniRunning {
    routing: PolicyRouting,
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl SniRunning {
    async fn start(h: &Handle, sni: &Sni, dp: &mut Datapath, tc_done: &mut HashSet<u32>) -> Result<Self> {
        attach_tc(dp, &sni_gateways(h, sni).await, tc_done)?;
        let loopback = sni.transparent_backends().any(|b| b.ip().is_loopback());
        // Bind first: if 443 is taken, nothing has been installed yet.
        let mut listeners = Vec::new();
        for addr in &sni.listen {
            let l = proxy::bind(*addr).map_err(|e| Error::io(format!("sni: listening on {addr}"), e))?;
            listeners.push(l);
        }
        let routing =
            PolicyRouting { mark: sni.reply_mark, table: sni.route_table, priority: sni.rule_priority, loopback };
        routing.install(h).await?;
        info!(listen = ?sni.listen, routes = sni.routes.len(), mark = format!("{:#x}", sni.reply_mark), table = sni.route_table, "sni: listening; policy routing installed");
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(Proxy::new(sni.clone()).serve(listeners, rx));
        Ok(SniRunning { routing, stop, task })
    }

    async fn stop(self, h: &Handle) -> Result<()> {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.routing.remove(h).await?;
        info!("sni: stopped accepting; policy routing removed");
        Ok(())
    }
}

/// The backends' current resolution, logging only changes.
#[derive(Default)]
struct Backends {
    resolved: HashMap<IpAddr, Resolved>,
    failed: HashMap<IpAddr, String>,
}

impl Backends {
    /// Re-resolves every backend; returns whether anything changed.
    async fn refresh(&mut self, h: &Handle, config: &Config) -> bool {
        let ips: HashSet<IpAddr> =
            config.steer.iter().flat_map(|r| r.backend.as_slice().iter().map(|b| b.ip())).collect();
        let mut changed = false;
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

/// Brings the `rules`, `replies` and `host_addrs` maps in line with the configuration. New
/// and changed entries are written first, stale ones removed last; entries that are already
/// right are not touched, so their traffic never sees a gap.
pub fn sync_maps(
    maps: &mut Maps,
    config: &Config,
    host_addrs: &[IpAddr],
    uplink_ifindex: u32,
    resolved: &HashMap<IpAddr, Resolved>,
) -> Result<()> {
    let existing = existing_slots(maps);
    let (slots, fresh) = rules::assign_slots(&existing, config.steer.iter().map(|r| r.name.as_str()));
    zero_rule_stats(maps, &fresh)?;
    let Desired { rules, replies, host_addrs } =
        rules::desired(&config.steer, config.sni.as_ref(), host_addrs, uplink_ifindex, &slots, resolved);
    sync_hash("rules", &mut maps.rules, rules)?;
    sync_hash("replies", &mut maps.replies, replies)?;
    sync_hash("host_addrs", &mut maps.host_addrs, host_addrs)?;
    Ok(())
}

fn zero_rule_stats(maps: &mut Maps, slots: &[u32]) -> Result<()> {
    let cpus = aya::util::nr_cpus().map_err(|(what, e)| Error::io(what, e))?;
    for &slot in slots {
        let zero = PerCpuValues::try_from(vec![RuleStats::default(); cpus])
            .map_err(|source| Error::Map { map: "rule_stats", source: aya::maps::MapError::from(source) })?;
        maps.rule_stats.set(slot, zero, 0).map_err(|source| Error::Map { map: "rule_stats", source })?;
    }
    Ok(())
}

fn sync_hash<K, V>(
    name: &'static str,
    map: &mut aya::maps::HashMap<aya::maps::MapData, K, V>,
    want: Vec<(K, V)>,
) -> Result<()>
where
    K: aya::Pod + Eq + std::hash::Hash + Ord,
    V: aya::Pod + PartialEq,
{
    let err = |source| Error::Map { map: name, source };
    let have: BTreeMap<K, V> = map.iter().collect::<Result<_, _>>().map_err(err)?;
    let wanted: HashSet<K> = want.iter().map(|(k, _)| *k).collect();
    for (k, v) in &want {
        if have.get(k) != Some(v) {
            map.insert(k, v, 0).map_err(err)?;
        }
    }
    for k in have.keys().filter(|k| !wanted.contains(k)) {
        map.remove(k).map_err(err)?;
    }
    Ok(())
}
