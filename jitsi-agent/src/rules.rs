//! From the configuration and what was resolved to the exact contents of the `rules`,
//! `replies` and `host_addrs` maps, and stable counter slots per rule name. Pure functions:
//! unit tested without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use jitsi_common::{
    FAMILY_V4, FAMILY_V6, HostAddrKey, MAX_RULES, PROTO_TCP, REPLY_MARK_LOCAL, RULE_HAS_BACKEND, RULE_NAME_LEN,
    RULE_RESOLVED, Reply, ReplyKey, Rule, RuleKey,
};

use crate::{config::SteerRule, resolve::Resolved};

/// An address in the 16-byte map layout, and its family tag.
pub fn addr16(ip: IpAddr) -> ([u8; 16], u8) {
    match ip {
        IpAddr::V4(a) => {
            let mut out = [0u8; 16];
            out[..4].copy_from_slice(&a.octets());
            (out, FAMILY_V4)
        }
        IpAddr::V6(a) => (a.octets(), FAMILY_V6),
    }
}

/// Back from the 16-byte layout.
pub fn ip_from16(addr: [u8; 16], family: u8) -> IpAddr {
    if family == FAMILY_V4 { IpAddr::from([addr[0], addr[1], addr[2], addr[3]]) } else { IpAddr::from(addr) }
}

/// A rule name in its NUL-padded map form.
pub fn name_bytes(name: &str) -> [u8; RULE_NAME_LEN] {
    let mut out = [0u8; RULE_NAME_LEN];
    let n = name.len().min(RULE_NAME_LEN - 1);
    out[..n].copy_from_slice(&name.as_bytes()[..n]);
    out
}

/// The rule name from its map form.
pub fn name_str(bytes: &[u8; RULE_NAME_LEN]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// Keeps the slots of rules that already have one (counters continue across restarts and
/// reloads) and gives new rules the lowest free slots. Returns the assignment and the slots
/// that are newly taken (whose counters must be zeroed).
pub fn assign_slots<'a>(
    existing: &HashMap<String, u32>,
    names: impl IntoIterator<Item = &'a str>,
) -> (BTreeMap<String, u32>, Vec<u32>) {
    let names: Vec<&str> = names.into_iter().collect();
    let mut out = BTreeMap::new();
    let mut used = BTreeSet::new();
    for n in &names {
        if let Some(&s) = existing.get(*n) {
            out.insert((*n).to_string(), s);
            used.insert(s);
        }
    }
    let mut fresh = Vec::new();
    let mut free = (0..MAX_RULES).filter(|s| !used.contains(s));
    for n in names {
        if !out.contains_key(n) {
            let s = free.next().expect("config validation caps the number of rules at MAX_RULES");
            out.insert(n.to_string(), s);
            fresh.push(s);
        }
    }
    (out, fresh)
}

/// Everything the three configuration maps should contain.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// `rules`.
    pub rules: Vec<(RuleKey, Rule)>,
    /// `replies`.
    pub replies: Vec<(ReplyKey, Reply)>,
    /// `host_addrs` (value: the uplink's ifindex).
    pub host_addrs: Vec<(HostAddrKey, u32)>,
}

/// Builds the map contents. A backend missing from `resolved` is down: its rule entry is
/// present without [`RULE_RESOLVED`], so its packets are dropped and counted, never passed
/// on to something else. The splitters' transparent backends (`marked`: the reply mark and
/// the backends) get `replies` entries that mark their packets for local delivery (loopback
/// backends never cross the TC program).
pub fn desired(
    steer: &[SteerRule],
    marked: Option<(u32, Vec<SocketAddr>)>,
    host_addrs: &[IpAddr],
    uplink_ifindex: u32,
    slots: &BTreeMap<String, u32>,
    resolved: &HashMap<IpAddr, Resolved>,
) -> Desired {
    let mut d = Desired::default();
    for ip in host_addrs {
        let (addr, family) = addr16(*ip);
        d.host_addrs.push((HostAddrKey { addr, family, _pad: [0; 3] }, uplink_ifindex));
    }
    for rule in steer {
        let slot = slots[&rule.name];
        let protocol = rule.protocol.number();
        for (family, backend) in [(FAMILY_V4, rule.backend.v4()), (FAMILY_V6, rule.backend.v6())] {
            let key = RuleKey { port: rule.port, protocol, family };
            d.rules.push((key, rule_value(&rule.name, slot, backend, resolved)));
            // A container that is down has the unspecified address: no replies to expect.
            if let Some(b) = backend.filter(|b| !b.ip().is_unspecified()) {
                let (addr, family) = addr16(b.ip());
                d.replies.push((
                    ReplyKey { addr, port: b.port(), protocol, family },
                    Reply { public_port: rule.port, flags: 0, slot, mark: 0 },
                ));
            }
        }
    }
    if let Some((mark, backends)) = marked {
        for b in backends.into_iter().filter(|b| !b.ip().is_loopback() && !b.ip().is_unspecified()) {
            let (addr, family) = addr16(b.ip());
            d.replies.push((
                ReplyKey { addr, port: b.port(), protocol: PROTO_TCP, family },
                Reply { public_port: 0, flags: REPLY_MARK_LOCAL, slot: 0, mark },
            ));
        }
    }
    d
}

fn rule_value(name: &str, slot: u32, backend: Option<SocketAddr>, resolved: &HashMap<IpAddr, Resolved>) -> Rule {
    let mut rule = Rule {
        backend_addr: [0; 16],
        backend_port: 0,
        flags: 0,
        ifindex: 0,
        backend_mac: [0; 6],
        bridge_mac: [0; 6],
        slot,
        name: name_bytes(name),
    };
    if let Some(b) = backend {
        rule.backend_addr = addr16(b.ip()).0;
        rule.backend_port = b.port();
        rule.flags = RULE_HAS_BACKEND;
        if let Some(r) = resolved.get(&b.ip()) {
            rule.flags |= RULE_RESOLVED;
            rule.ifindex = r.port_ifindex;
            rule.backend_mac = r.backend_mac;
            rule.bridge_mac = r.gateway_mac;
        }
    }
    rule
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{OneOrMany, Protocol},
        netlink::Link,
    };

    fn rule(name: &str, port: u16, backends: &[&str]) -> SteerRule {
        SteerRule {
            name: name.into(),
            protocol: Protocol::Udp,
            port,
            backend: OneOrMany::Many(backends.iter().map(|b| b.parse().unwrap()).collect()),
            container: None,
            container_port: None,
        }
    }

    #[test]
    fn slots_are_stable_and_reused_lowest_first() {
        let existing = HashMap::from([("jvb".to_string(), 3), ("gone".to_string(), 0)]);
        let (slots, fresh) = assign_slots(&existing, ["turn", "jvb", "web"]);
        assert_eq!(slots["jvb"], 3);
        assert_eq!(slots["turn"], 0, "the slot of a removed rule is reused");
        assert_eq!(slots["web"], 1);
        assert_eq!(fresh, vec![0, 1]);
    }

    #[test]
    fn builds_entries_per_family_with_down_and_missing_backends() {
        let steer = vec![
            rule("jvb", 10000, &["192.0.2.10:10000", "[2001:db8::10]:10000"]),
            rule("turn", 3478, &["192.0.2.11:3478"]),
        ];
        let slots = BTreeMap::from([("jvb".to_string(), 0), ("turn".to_string(), 1)]);
        let link = Link { index: 7, name: "br0".into(), mac: [2, 0, 0, 0, 0, 1], is_bridge: true, xdp: Vec::new() };
        let resolved = HashMap::from([(
            "192.0.2.10".parse().unwrap(),
            Resolved { port_ifindex: 9, backend_mac: [2, 0, 0, 0, 0, 0x10], gateway_mac: link.mac, gateway: link },
        )]);
        let d = desired(&steer, None, &["203.0.113.1".parse().unwrap()], 4, &slots, &resolved);
        assert_eq!(d.host_addrs.len(), 1);
        assert_eq!(d.host_addrs[0].0.addr[..4], [203, 0, 113, 1]);
        assert_eq!(d.rules.len(), 4);
        let jvb4 = d.rules.iter().find(|(k, _)| k.port == 10000 && k.family == FAMILY_V4).unwrap().1;
        assert_eq!(jvb4.flags, RULE_HAS_BACKEND | RULE_RESOLVED);
        assert_eq!((jvb4.ifindex, jvb4.backend_port, jvb4.slot), (9, 10000, 0));
        assert_eq!(name_str(&jvb4.name), "jvb");
        let jvb6 = d.rules.iter().find(|(k, _)| k.port == 10000 && k.family == FAMILY_V6).unwrap().1;
        assert_eq!(jvb6.flags, RULE_HAS_BACKEND, "unresolved backend: present but down");
        let turn6 = d.rules.iter().find(|(k, _)| k.port == 3478 && k.family == FAMILY_V6).unwrap().1;
        assert_eq!(turn6.flags, 0, "no IPv6 backend");
        assert_eq!(d.replies.len(), 3);
        assert!(d.replies.iter().any(|(k, v)| k.port == 3478 && v.public_port == 3478 && v.slot == 1));
    }

    #[test]
    fn addresses_round_trip() {
        for s in ["192.0.2.1", "2001:db8::1"] {
            let ip: IpAddr = s.parse().unwrap();
            let (a, f) = addr16(ip);
            assert_eq!(ip_from16(a, f), ip);
        }
    }
}
