//! From the configuration and what was resolved to the exact contents of the `rules`,
//! `replies` and `host_addrs` maps, and stable counter slots per rule name. Pure functions:
//! unit tested without root.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
};

use jitsi_common::{
    FAMILY_V4, FAMILY_V6, HostAddrKey, MAX_RULES, PROTO_TCP, RANGE_KEY_FIXED_BITS, REPLY_MARK_LOCAL,
    REPLY_RANGE_KEY_FIXED_BITS, RULE_HAS_BACKEND, RULE_NAME_LEN, RULE_RESOLVED, RangeKey, Reply, ReplyKey, ReplyRange,
    ReplyRangeKey, Rule, RuleKey, RuleRange,
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

/// Everything the configuration maps should contain.
#[derive(Debug, Default, PartialEq)]
pub struct Desired {
    /// `rules`: a rule for one port, and the first port of a range (the rule's entry that
    /// `status` reads).
    pub rules: Vec<(RuleKey, Rule)>,
    /// `replies`, likewise.
    pub replies: Vec<(ReplyKey, Reply)>,
    /// `rule_ranges`: (prefix length, key) of each prefix of a range.
    pub rule_ranges: Vec<((u32, RangeKey), RuleRange)>,
    /// `reply_ranges`: (prefix length, key) of each prefix of a range's backend ports.
    pub reply_ranges: Vec<((u32, ReplyRangeKey), ReplyRange)>,
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
        let range = (!rule.port.is_single()).then_some(rule.port);
        for (family, backend) in [(FAMILY_V4, rule.backend.v4()), (FAMILY_V6, rule.backend.v6())] {
            let key = RuleKey { port: rule.port.min, protocol, family };
            let value = rule_value(&rule.name, slot, backend, resolved);
            d.rules.push((key, value));
            for (start, bits) in range.iter().flat_map(|r| r.prefixes()) {
                let key = RangeKey { protocol, family, port: start.to_be_bytes() };
                let v = RuleRange { rule: value, public_min: rule.port.min, public_max: rule.port.max };
                d.rule_ranges.push(((RANGE_KEY_FIXED_BITS + bits, key), v));
            }
            // A container that is down has the unspecified address: no replies to expect.
            if let Some(b) = backend.filter(|b| !b.ip().is_unspecified()) {
                let (addr, family) = addr16(b.ip());
                let reply = Reply { public_port: rule.port.min, flags: 0, slot, mark: 0 };
                d.replies.push((ReplyKey { addr, port: b.port(), protocol, family }, reply));
                // Validation made sure the backend's ports fit below 65536.
                for (start, bits) in range.and_then(|r| r.moved_to(b.port())).iter().flat_map(|r| r.prefixes()) {
                    let key = ReplyRangeKey { protocol, family, addr, port: start.to_be_bytes() };
                    let v = ReplyRange { reply, backend_min: b.port(), _pad: [0; 2] };
                    d.reply_ranges.push(((REPLY_RANGE_KEY_FIXED_BITS + bits, key), v));
                }
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
        config::{OneOrMany, PortRange, Protocol},
        netlink::Link,
    };

    fn rule(name: &str, port: u16, backends: &[&str]) -> SteerRule {
        SteerRule {
            name: name.into(),
            protocol: Protocol::Udp,
            port: PortRange::one(port),
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
    fn a_range_is_its_first_port_in_rules_and_its_prefixes_in_the_tries() {
        let mut relay = rule("turn-relay", 0, &["192.0.2.11:40000"]);
        relay.port = PortRange { min: 61000, max: 65535 };
        let slots = BTreeMap::from([("turn-relay".to_string(), 5)]);
        let d = desired(&[relay], None, &[], 4, &slots, &HashMap::new());
        let v4 = d.rules.iter().find(|(k, _)| k.family == FAMILY_V4).unwrap();
        assert_eq!((v4.0.port, v4.1.backend_port, v4.1.slot), (61000, 40000, 5));
        // 61000-65535: 61000/13, 61008/12, ... 61440/4 (6 prefixes), per family.
        let prefixes = PortRange { min: 61000, max: 65535 }.prefixes();
        assert_eq!(d.rule_ranges.len(), 2 * prefixes.len());
        let covered: u32 =
            d.rule_ranges.iter().filter(|(k, _)| k.1.family == FAMILY_V4).map(|(k, _)| 1 << (32 - k.0)).sum();
        assert_eq!(covered, 4536);
        assert!(d.rule_ranges.iter().all(|(_, v)| v.public_min == 61000 && v.public_max == 65535));
        // Replies: the backend's 40000-44535, leaving from 61000 + offset.
        let (k, v) = d.reply_ranges.iter().find(|(k, _)| u16::from_be_bytes(k.1.port) == 40000).unwrap();
        assert_eq!(
            (k.0, v.backend_min, v.reply.public_port, v.reply.slot),
            (REPLY_RANGE_KEY_FIXED_BITS + 10, 40000, 61000, 5)
        );
        let last =
            d.reply_ranges.iter().map(|(k, _)| u32::from(u16::from_be_bytes(k.1.port)) + (1 << (160 - k.0))).max();
        assert_eq!(last, Some(44536), "the backend's range ends at 44535");
        assert_eq!(d.replies.len(), 1, "no IPv6 backend: no IPv6 reply entries");
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
