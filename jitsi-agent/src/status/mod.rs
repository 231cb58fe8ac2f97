//! `jitsi-agent status`: attach modes, rules, splitter routes and counters read from the pins (no
//! running agent needed), with rates from two readings.

mod attach;
mod table;

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
    time::Duration,
};

use jitsi_common::{FAMILY_V4, MAX_FLOOD_SOURCES, REASON_COUNT, RULE_HAS_BACKEND, RULE_RESOLVED, Reason};
use serde::Serialize;

use crate::{
    config::Protocol,
    datapath::Maps,
    error::{Error, Result},
    rules::{ip_from16, name_str},
    splitter::stats::REFUSALS,
};

/// The whole status, as printed by `status --json` (stable within a release series: fields are
/// only ever added).
#[derive(Debug, Serialize)]
pub struct Status {
    /// Where the maps were read from.
    pub pin_dir: String,
    /// The build of the pinned programs (the first 12 hex digits of the eBPF object's SHA-256,
    /// as the agent logs it when it starts), if recorded.
    pub build: Option<String>,
    /// Where the programs are attached, from the pinned links.
    pub attachments: Vec<attach::Attachment>,
    /// Seconds between the two readings the rates come from (0: no rates).
    pub interval_secs: f64,
    /// Steering rules, by name.
    pub rules: Vec<RuleStatus>,
    /// The splitter's counters, both fronts (as last written by the agent).
    pub splitter: SplitterStatus,
    /// Pass/drop counters by reason, in reason order.
    pub reasons: Vec<ReasonStatus>,
    /// The certificates of `[acme]` (with `--config`): expiry from the files, the last error
    /// from what the agent recorded.
    pub certificates: Vec<crate::acme::CertState>,
    /// The agent's periodic tasks: failures so far and whether each is failing now (as last
    /// written by the agent).
    pub tasks: Vec<TaskStatus>,
    /// The flood limits in force (as the agent last wrote them) and the sources they track.
    pub flood: FloodStatus,
}

/// The per-source flood limits (`[flood]`), read from `flood_config`, `flood_allow` and
/// `flood_sources`.
#[derive(Debug, Default, Serialize)]
pub struct FloodStatus {
    /// Whether they apply.
    pub enabled: bool,
    /// Packets per second to steered ports, per source.
    pub packets_per_second: u64,
    /// Their burst.
    pub packets_burst: u64,
    /// New flows per second, per source.
    pub flows_per_second: u64,
    /// Their burst.
    pub flows_burst: u64,
    /// The splitters' TCP ports whose SYNs count as new flows.
    pub guarded_ports: Vec<u16>,
    /// Networks never limited.
    pub allowed: Vec<String>,
    /// Sources (addresses, IPv6 /64s) with buckets in `flood_sources` now.
    pub sources: usize,
}

/// One periodic task of the agent.
#[derive(Debug, Serialize)]
pub struct TaskStatus {
    /// Its name (`attach_tc`, `follow_containers`...).
    pub task: &'static str,
    /// Failed runs so far.
    pub failures: u64,
    /// Whether its last run failed (it is retried every second).
    pub failing: bool,
}

/// Counters read from the maps, without attachments or rates.
#[derive(Debug)]
pub struct Counters {
    /// Steering rules, by name.
    pub rules: Vec<RuleStatus>,
    /// Splitter counters.
    pub splitter: SplitterStatus,
    /// Reasons.
    pub reasons: Vec<ReasonStatus>,
    /// The periodic tasks.
    pub tasks: Vec<TaskStatus>,
    /// The flood limits.
    pub flood: FloodStatus,
}

/// The splitter's counters (`[tls]` and `[http]`).
#[derive(Debug, Default, Serialize)]
pub struct SplitterStatus {
    /// Connections accepted on the listeners.
    pub accepted: u64,
    /// Per route, by name.
    pub routes: Vec<RouteStatus>,
    /// Refusals by reason (every reason, zeros included).
    pub refused: Vec<Refused>,
}

/// One `[[tls.route]]` or `[[http.route]]`.
#[derive(Debug, Serialize)]
pub struct RouteStatus {
    /// Name from the configuration.
    pub name: String,
    /// Connections relayed.
    pub connections: u64,
    /// Open when last written (0 once the agent stopped).
    pub open: u64,
    /// Client -> backend bytes (hello included).
    pub bytes_up: u64,
    /// Backend -> client bytes.
    pub bytes_down: u64,
    /// New connections per second.
    pub connections_per_sec: f64,
}

/// Refusals of one reason.
#[derive(Debug, Serialize)]
pub struct Refused {
    /// Reason name (see the README).
    pub reason: &'static str,
    /// Connections.
    pub connections: u64,
}

/// One `[[steer]]` rule.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    /// Name from the configuration.
    pub name: String,
    /// `udp` or `tcp`.
    pub protocol: Protocol,
    /// Public port (the first of a range).
    pub port: u16,
    /// Last public port of a range (`port` for one port).
    pub port_last: u16,
    /// Counter slot (index into `rule_stats`).
    pub slot: u32,
    /// One entry per address family the rule has a backend for.
    pub backends: Vec<BackendStatus>,
    /// Packets steered to the backend.
    pub packets_in: u64,
    /// Bytes steered to the backend.
    pub bytes_in: u64,
    /// Reply packets sent out of the uplink.
    pub packets_out: u64,
    /// Reply bytes sent out of the uplink.
    pub bytes_out: u64,
    /// Packets per second steered in, over the interval.
    pub packets_in_per_sec: f64,
    /// Bits per second steered in.
    pub bits_in_per_sec: f64,
    /// Reply packets per second.
    pub packets_out_per_sec: f64,
    /// Reply bits per second.
    pub bits_out_per_sec: f64,
}

/// A rule's backend for one family.
#[derive(Debug, Serialize)]
pub struct BackendStatus {
    /// `ipv4` or `ipv6`.
    pub family: &'static str,
    /// `ip:port`.
    pub address: String,
    /// `up` (resolved, steering) or `down` (packets dropped and counted as `in_backend_down`).
    pub state: &'static str,
    /// Interface index packets are redirected into (0 when down).
    pub ifindex: u32,
}

/// One pass/drop reason.
#[derive(Debug, Serialize)]
pub struct ReasonStatus {
    /// Reason name (see the README).
    pub reason: &'static str,
    /// `pass` or `drop`.
    pub action: &'static str,
    /// Packets.
    pub packets: u64,
    /// Bytes.
    pub bytes: u64,
}

/// Rule name -> counter slot, from the `rules` map.
pub fn existing_slots(maps: &Maps) -> HashMap<String, u32> {
    maps.rules.iter().filter_map(|r| r.ok()).map(|(_, v)| (name_str(&v.name), v.slot)).collect()
}

/// Rule name -> the backends the `rules` map pinned in `pin_dir` steers to (none for a rule
/// that is down; nothing without a pinned map).
pub fn pinned_backends(pin_dir: &Path) -> HashMap<String, Vec<std::net::SocketAddr>> {
    let mut out: HashMap<String, Vec<std::net::SocketAddr>> = HashMap::new();
    let rules = aya::maps::MapData::from_pin(pin_dir.join("rules"))
        .ok()
        .and_then(|d| aya::maps::Map::from_map_data(d).ok())
        .and_then(|m| aya::maps::HashMap::<_, jitsi_common::RuleKey, jitsi_common::Rule>::try_from(m).ok());
    let Some(rules) = rules else { return out };
    for (k, v) in rules.iter().filter_map(|r| r.ok()) {
        let ip = ip_from16(v.backend_addr, k.family);
        if v.flags & RULE_HAS_BACKEND != 0 && !ip.is_unspecified() {
            out.entry(name_str(&v.name)).or_default().push(std::net::SocketAddr::new(ip, v.backend_port));
        }
    }
    for addrs in out.values_mut() {
        addrs.sort();
    }
    out
}

/// Reads the status: attachments, and counters read twice `interval` apart for the rates.
pub async fn read(pin_dir: &Path, interval: Duration) -> Result<Status> {
    let first = read_maps(pin_dir)?;
    let attachments = attach::read(pin_dir).await?;
    let build = crate::datapath::pinned_build(pin_dir).map(|b| crate::datapath::build_name(&b));
    let mut st = Status {
        pin_dir: pin_dir.display().to_string(),
        build,
        attachments,
        interval_secs: interval.as_secs_f64(),
        rules: first.rules,
        splitter: first.splitter,
        reasons: first.reasons,
        certificates: Vec::new(),
        tasks: first.tasks,
        flood: first.flood,
    };
    if interval.is_zero() {
        return Ok(st);
    }
    let before: HashMap<String, [u64; 4]> =
        st.rules.iter().map(|r| (r.name.clone(), [r.packets_in, r.bytes_in, r.packets_out, r.bytes_out])).collect();
    let conns: HashMap<String, u64> = st.splitter.routes.iter().map(|r| (r.name.clone(), r.connections)).collect();
    tokio::time::sleep(interval).await;
    let second = read_maps(pin_dir)?;
    let secs = interval.as_secs_f64();
    let rate = |now: u64, then: u64| now.saturating_sub(then) as f64 / secs;
    st.rules = second.rules;
    for r in &mut st.rules {
        let b = before.get(&r.name).copied().unwrap_or([r.packets_in, r.bytes_in, r.packets_out, r.bytes_out]);
        r.packets_in_per_sec = rate(r.packets_in, b[0]);
        r.bits_in_per_sec = rate(r.bytes_in, b[1]) * 8.0;
        r.packets_out_per_sec = rate(r.packets_out, b[2]);
        r.bits_out_per_sec = rate(r.bytes_out, b[3]) * 8.0;
    }
    st.splitter = second.splitter;
    for r in &mut st.splitter.routes {
        r.connections_per_sec = rate(r.connections, conns.get(&r.name).copied().unwrap_or(r.connections));
    }
    st.reasons = second.reasons;
    st.tasks = second.tasks;
    st.flood = second.flood;
    Ok(st)
}

/// Reads the counters from the maps pinned in `pin_dir` (no rates).
pub fn read_maps(pin_dir: &Path) -> Result<Counters> {
    let maps = Maps::open_pinned(pin_dir)?;
    let mut rules: BTreeMap<String, RuleStatus> = BTreeMap::new();
    for entry in maps.rules.iter() {
        let (k, v) = entry.map_err(|source| Error::Map { map: "rules", source })?;
        let name = name_str(&v.name);
        let r = rules.entry(name.clone()).or_insert_with(|| RuleStatus {
            name,
            protocol: Protocol::from_number(k.protocol).unwrap_or(Protocol::Udp),
            port: k.port,
            port_last: k.port,
            slot: v.slot,
            backends: vec![],
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            packets_in_per_sec: 0.0,
            bits_in_per_sec: 0.0,
            packets_out_per_sec: 0.0,
            bits_out_per_sec: 0.0,
        });
        if v.flags & RULE_HAS_BACKEND != 0 {
            let ip = ip_from16(v.backend_addr, k.family);
            r.backends.push(BackendStatus {
                family: if k.family == FAMILY_V4 { "ipv4" } else { "ipv6" },
                address: std::net::SocketAddr::new(ip, v.backend_port).to_string(),
                state: if v.flags & RULE_RESOLVED != 0 { "up" } else { "down" },
                ifindex: v.ifindex,
            });
            r.backends.sort_by_key(|b| b.family);
        }
    }
    for entry in maps.rule_ranges.iter() {
        let (_, v) = entry.map_err(|source| Error::Map { map: "rule_ranges", source })?;
        if let Some(r) = rules.get_mut(&name_str(&v.rule.name)) {
            r.port_last = r.port_last.max(v.public_max);
        }
    }
    for r in rules.values_mut() {
        let per_cpu = maps.rule_stats.get(&r.slot, 0).map_err(|source| Error::Map { map: "rule_stats", source })?;
        for s in per_cpu.iter() {
            r.packets_in += s.packets_in;
            r.bytes_in += s.bytes_in;
            r.packets_out += s.packets_out;
            r.bytes_out += s.bytes_out;
        }
    }
    let mut reasons = Vec::with_capacity(REASON_COUNT as usize);
    for reason in Reason::ALL {
        let per_cpu =
            maps.reason_stats.get(&(reason as u32), 0).map_err(|source| Error::Map { map: "reason_stats", source })?;
        reasons.push(ReasonStatus {
            reason: reason.name(),
            action: if reason.is_drop() { "drop" } else { "pass" },
            packets: per_cpu.iter().map(|s| s.packets).sum(),
            bytes: per_cpu.iter().map(|s| s.bytes).sum(),
        });
    }
    Ok(Counters {
        rules: rules.into_values().collect(),
        splitter: read_splitter(&maps)?,
        reasons,
        tasks: read_tasks(&maps)?,
        flood: read_flood(&maps)?,
    })
}

fn read_flood(maps: &Maps) -> Result<FloodStatus> {
    let c = maps.flood_config.get(&0, 0).map_err(|source| Error::Map { map: "flood_config", source })?;
    let mut allowed = Vec::new();
    for entry in maps.flood_allow.iter() {
        let (k, _) = entry.map_err(|source| Error::Map { map: "flood_allow", source })?;
        let (ip, len) = crate::sources::from_trie_key(k.prefix_len(), k.data());
        allowed.push(format!("{ip}/{len}"));
    }
    Ok(FloodStatus {
        enabled: c.enabled != 0,
        packets_per_second: c.packets_per_second,
        packets_burst: c.packets_burst,
        flows_per_second: c.flows_per_second,
        flows_burst: c.flows_burst,
        guarded_ports: c.guarded_ports.iter().copied().filter(|p| *p != 0).collect(),
        allowed,
        // Walking a hash map that changes under the walk starts again from its first key when
        // the key in hand is evicted: under a flood of new sources the walk would never end.
        // It stops at the map's size (the count is then approximate).
        sources: maps.flood_sources.keys().take(MAX_FLOOD_SOURCES as usize).filter(Result::is_ok).count(),
    })
}

fn read_tasks(maps: &Maps) -> Result<Vec<TaskStatus>> {
    let slot =
        |i: usize| maps.task_health.get(&(i as u32), 0).map_err(|source| Error::Map { map: "task_health", source });
    crate::health::TASKS
        .iter()
        .enumerate()
        .map(|(i, t)| Ok(TaskStatus { task: t.name(), failures: slot(2 * i)?, failing: slot(2 * i + 1)? != 0 }))
        .collect()
}

fn read_splitter(maps: &Maps) -> Result<SplitterStatus> {
    let counter = |i: u32| maps.sni.counters.get(&i, 0).map_err(|source| Error::Map { map: "sni_counters", source });
    let mut routes = Vec::new();
    for entry in maps.sni.routes.iter() {
        let (k, v) = entry.map_err(|source| Error::Map { map: "sni_routes", source })?;
        routes.push(RouteStatus {
            name: name_str(&k.name),
            connections: v.connections,
            open: v.open,
            bytes_up: v.bytes_up,
            bytes_down: v.bytes_down,
            connections_per_sec: 0.0,
        });
    }
    routes.sort_by(|a, b| a.name.cmp(&b.name));
    let mut refused = Vec::new();
    for (i, r) in REFUSALS.iter().enumerate() {
        refused.push(Refused { reason: r.name(), connections: counter(i as u32 + 1)? });
    }
    Ok(SplitterStatus { accepted: counter(0)?, routes, refused })
}
