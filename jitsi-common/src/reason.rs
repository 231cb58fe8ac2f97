//! Why a packet was passed to the stack or dropped instead of being steered.

/// Index into the `reason_stats` per-CPU array. `in_*` reasons are counted by the XDP program
/// on the uplink, `out_*` by the TC program on the bridge side.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed.
    InNotIp = 0,
    /// VLAN-tagged frame: passed.
    InVlan = 1,
    /// Ethernet, IP or L4 header shorter than its fixed part: passed.
    InTruncated = 2,
    /// IP version or header length field invalid: passed.
    InMalformed = 3,
    /// IPv4 fragment (first or later): passed.
    InFragment = 4,
    /// IPv6 with an extension header before the L4 header: passed.
    InIpv6ExtHeader = 5,
    /// Destination is not one of the host addresses: passed.
    InNotLocal = 6,
    /// Neither TCP nor UDP (ICMP, ...): passed.
    InOtherProtocol = 7,
    /// TCP/UDP to a host address on a port without a rule: passed.
    InNoRule = 8,
    /// The rule has no backend for this address family: passed.
    InNoBackendForFamily = 9,
    /// IPv6 UDP with checksum 0 (invalid per RFC 8200): passed.
    InUdp6ZeroChecksum = 10,
    /// The rule's backend is not resolved (down): dropped, never sent elsewhere.
    InBackendDown = 11,
    /// Bridge side: not IPv4/IPv6: passed.
    OutNotIp = 12,
    /// Bridge side: truncated or malformed header: passed.
    OutTruncated = 13,
    /// Bridge side: IPv4 fragment or IPv6 extension header: passed.
    OutFragment = 14,
    /// Bridge side: not from a rule's backend address and port: passed.
    OutNotBackend = 15,
    /// Bridge side: from a backend, but no path learned for the destination flow and no
    /// fallback path for its family (no default gateway on the uplink): passed.
    OutUnknownClient = 16,
    /// Bridge side: from an SNI route's backend: marked for local delivery to the agent's
    /// transparent connection, passed.
    OutSniReply = 17,
    /// A packet to a steered port from a source that cannot arrive on the uplink: a martian
    /// (0/8, 127/8, multicast, class E, `::`, `::1`, `ff00::/8`, IPv4-mapped), a host address
    /// or a backends' subnet (`source_prefixes`): dropped, never learned, never steered.
    InSpoofedSource = 18,
    /// A packet to a steered port from a source over its packet rate (`[flood]`): dropped.
    InFloodPackets = 19,
    /// A new flow to a steered port from a source over its new-flow rate (`[flood]`): dropped.
    InFloodFlows = 20,
    /// A TCP SYN to a splitter's port from a source over its new-flow rate (`[flood]`):
    /// dropped.
    InFloodConnections = 21,
}

/// Number of [`Reason`]s (size of `reason_stats`).
pub const REASON_COUNT: u32 = 22;

impl Reason {
    /// All reasons, in index order.
    pub const ALL: [Reason; REASON_COUNT as usize] = [
        Reason::InNotIp,
        Reason::InVlan,
        Reason::InTruncated,
        Reason::InMalformed,
        Reason::InFragment,
        Reason::InIpv6ExtHeader,
        Reason::InNotLocal,
        Reason::InOtherProtocol,
        Reason::InNoRule,
        Reason::InNoBackendForFamily,
        Reason::InUdp6ZeroChecksum,
        Reason::InBackendDown,
        Reason::OutNotIp,
        Reason::OutTruncated,
        Reason::OutFragment,
        Reason::OutNotBackend,
        Reason::OutUnknownClient,
        Reason::OutSniReply,
        Reason::InSpoofedSource,
        Reason::InFloodPackets,
        Reason::InFloodFlows,
        Reason::InFloodConnections,
    ];

    /// Stable snake-case name used by `status` and the README.
    pub const fn name(self) -> &'static str {
        match self {
            Reason::InNotIp => "in_not_ip",
            Reason::InVlan => "in_vlan",
            Reason::InTruncated => "in_truncated",
            Reason::InMalformed => "in_malformed",
            Reason::InFragment => "in_fragment",
            Reason::InIpv6ExtHeader => "in_ipv6_ext_header",
            Reason::InNotLocal => "in_not_local",
            Reason::InOtherProtocol => "in_other_protocol",
            Reason::InNoRule => "in_no_rule",
            Reason::InNoBackendForFamily => "in_no_backend_for_family",
            Reason::InUdp6ZeroChecksum => "in_udp6_zero_checksum",
            Reason::InBackendDown => "in_backend_down",
            Reason::OutNotIp => "out_not_ip",
            Reason::OutTruncated => "out_truncated",
            Reason::OutFragment => "out_fragment",
            Reason::OutNotBackend => "out_not_backend",
            Reason::OutUnknownClient => "out_unknown_client",
            Reason::OutSniReply => "out_sni_reply",
            Reason::InSpoofedSource => "in_spoofed_source",
            Reason::InFloodPackets => "in_flood_packets",
            Reason::InFloodFlows => "in_flood_flows",
            Reason::InFloodConnections => "in_flood_connections",
        }
    }

    /// Whether the packet was dropped (otherwise it was passed to the stack untouched).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Reason::InBackendDown
                | Reason::InSpoofedSource
                | Reason::InFloodPackets
                | Reason::InFloodFlows
                | Reason::InFloodConnections
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_index_order() {
        for (i, r) in Reason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i, "{} out of order", r.name());
        }
    }
}
