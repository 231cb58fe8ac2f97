//! What is known about source addresses on the uplink, in the form of the `source_prefixes`
//! LPM trie: martians, the host's own addresses and the backends' subnets never arrive there
//! legitimately (spoofed); the uplink's own subnets are on-link. Pure functions.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use aya::maps::lpm_trie::Key;
use jitsi_common::{SOURCE_ON_LINK, SOURCE_SPOOFED, SourcePrefix};

/// A prefix: its network address and length.
pub type Prefix = (IpAddr, u8);

/// Sources that never arrive from the internet on a steered port, and destinations a reply
/// never goes to: "this network", loopback, link-local, multicast and the reserved class E
/// with the limited broadcast (IANA IPv4 Special-Purpose Address Registry, RFC 6890; link-local
/// RFC 3927), the unspecified and loopback IPv6 addresses, IPv6 link-local and multicast
/// (RFC 4291). IPv4-mapped IPv6 sources are refused by the program itself.
pub const MARTIANS: [(IpAddr, u8); 8] = [
    (IpAddr::V4(Ipv4Addr::new(0, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 0)), 8),
    (IpAddr::V4(Ipv4Addr::new(169, 254, 0, 0)), 16),
    (IpAddr::V4(Ipv4Addr::new(224, 0, 0, 0)), 3),
    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 128),
    (IpAddr::V6(Ipv6Addr::LOCALHOST), 128),
    (IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10),
    (IpAddr::V6(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0)), 8),
];

/// The source prefixes: on-link subnets, then what is spoofed (a longer prefix wins in the
/// trie, so a host address inside the uplink's subnet is still spoofed).
pub fn source_prefixes(
    uplink_nets: &[Prefix],
    host_addrs: &[IpAddr],
    backend_nets: &[Prefix],
) -> BTreeMap<Prefix, u32> {
    let mut out = BTreeMap::new();
    for p in uplink_nets {
        out.insert(*p, SOURCE_ON_LINK);
    }
    for p in MARTIANS.iter().chain(backend_nets) {
        out.insert(*p, SOURCE_SPOOFED);
    }
    for a in host_addrs {
        out.insert((*a, if a.is_ipv4() { 32 } else { 128 }), SOURCE_SPOOFED);
    }
    out
}

/// The trie key of a prefix (IPv4 IPv4-mapped).
pub fn trie_key((ip, len): Prefix) -> Key<SourcePrefix> {
    match ip {
        IpAddr::V4(a) => Key::new(96 + u32::from(len), a.to_ipv6_mapped().octets()),
        IpAddr::V6(a) => Key::new(u32::from(len), a.octets()),
    }
}

/// Back from a trie key's prefix length and data.
pub fn from_trie_key(len: u32, data: SourcePrefix) -> Prefix {
    let v6 = Ipv6Addr::from(data);
    match v6.to_ipv4_mapped() {
        Some(v4) if len >= 96 => (IpAddr::V4(v4), (len - 96) as u8),
        _ => (IpAddr::V6(v6), len as u8),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_addresses_and_backend_subnets_are_spoofed_the_uplink_subnet_is_on_link() {
        let host: IpAddr = "203.0.113.1".parse().unwrap();
        let p = source_prefixes(
            &[("203.0.113.0".parse().unwrap(), 24)],
            &[host, "2001:db8:c::1".parse().unwrap()],
            &[("192.0.2.0".parse().unwrap(), 24)],
        );
        assert_eq!(p[&("203.0.113.0".parse().unwrap(), 24)], SOURCE_ON_LINK);
        assert_eq!(p[&(host, 32)], SOURCE_SPOOFED);
        assert_eq!(p[&("2001:db8:c::1".parse().unwrap(), 128)], SOURCE_SPOOFED);
        assert_eq!(p[&("192.0.2.0".parse().unwrap(), 24)], SOURCE_SPOOFED);
        assert_eq!(p[&("127.0.0.0".parse().unwrap(), 8)], SOURCE_SPOOFED);
    }

    #[test]
    fn ipv4_keys_are_ipv4_mapped_and_read_back() {
        let k = trie_key(("10.1.0.0".parse().unwrap(), 16));
        assert_eq!({ k.prefix_len() }, 112);
        assert_eq!(k.data()[10..], [0xff, 0xff, 10, 1, 0, 0]);
        for p in MARTIANS.iter().chain(&[("2001:db8::".parse().unwrap(), 32)]) {
            let k = trie_key(*p);
            assert_eq!(from_trie_key(k.prefix_len(), k.data()), *p);
        }
    }
}
