//! `jitsi-agent status`: rules and counters read from the pinned maps (no agent needed).

use std::{collections::BTreeMap, collections::HashMap, path::Path};

use jitsi_common::{FAMILY_V4, REASON_COUNT, RULE_HAS_BACKEND, RULE_RESOLVED, Reason};
use serde::Serialize;

use crate::{
    config::Protocol,
    datapath::Maps,
    error::{Error, Result},
    rules::{ip_from16, name_str},
};

/// The whole status, as printed by `status --json`.
#[derive(Debug, Serialize)]
pub struct Status {
    /// Where the maps were read from.
    pub pin_dir: String,
    /// Steering rules, by name.
    pub rules: Vec<RuleStatus>,
    /// Pass/drop counters by reason, in reason order.
    pub reasons: Vec<ReasonStatus>,
}

/// One `[[steer]]` rule.
#[derive(Debug, Serialize)]
pub struct RuleStatus {
    /// Name from the configuration.
    pub name: String,
    /// `udp` or `tcp`.
    pub protocol: Protocol,
    /// Public port.
    pub port: u16,
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

/// Reads the status from the maps pinned in `pin_dir`.
pub fn read(pin_dir: &Path) -> Result<Status> {
    let maps = Maps::open_pinned(pin_dir)?;
    let mut rules: BTreeMap<String, RuleStatus> = BTreeMap::new();
    for entry in maps.rules.iter() {
        let (k, v) = entry.map_err(|source| Error::Map { map: "rules", source })?;
        let name = name_str(&v.name);
        let r = rules.entry(name.clone()).or_insert_with(|| RuleStatus {
            name,
            protocol: Protocol::from_number(k.protocol).unwrap_or(Protocol::Udp),
            port: k.port,
            slot: v.slot,
            backends: vec![],
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
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
    Ok(Status { pin_dir: pin_dir.display().to_string(), rules: rules.into_values().collect(), reasons })
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "datapath pinned at {}", self.pin_dir)?;
        let backends: Vec<String> = self
            .rules
            .iter()
            .map(|r| {
                if r.backends.is_empty() {
                    "-".to_string()
                } else {
                    r.backends.iter().map(|b| format!("{} ({})", b.address, b.state)).collect::<Vec<_>>().join(", ")
                }
            })
            .collect();
        let w = backends.iter().map(String::len).max().unwrap_or(0).max("BACKEND".len());
        writeln!(
            f,
            "{:<16} {:<10} {:<w$} {:>10} {:>12} {:>10} {:>12}",
            "RULE", "PORT", "BACKEND", "PKTS IN", "BYTES IN", "PKTS OUT", "BYTES OUT"
        )?;
        for (r, b) in self.rules.iter().zip(&backends) {
            let port = format!("{}/{}", r.protocol, r.port);
            writeln!(
                f,
                "{:<16} {port:<10} {b:<w$} {:>10} {:>12} {:>10} {:>12}",
                r.name, r.packets_in, r.bytes_in, r.packets_out, r.bytes_out
            )?;
        }
        writeln!(f, "\n{:<28} {:<6} {:>12} {:>14}", "REASON", "ACTION", "PACKETS", "BYTES")?;
        for r in self.reasons.iter().filter(|r| r.packets > 0) {
            writeln!(f, "{:<28} {:<6} {:>12} {:>14}", r.reason, r.action, r.packets, r.bytes)?;
        }
        Ok(())
    }
}
