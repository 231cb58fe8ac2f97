//! The ABI between the jitsi-agent datapath (`jitsi-ebpf`) and userspace (`jitsi-agent`).
//!
//! This crate is the only definition of the map keys and values. Every type is `#[repr(C)]`,
//! `Copy`, has explicit padding fields (so that a zeroed key from userspace and a key built in
//! the kernel compare equal byte for byte) and uses integer flags instead of `bool`.
//! Ports are stored in host byte order; addresses as the 16 raw bytes of the IPv6 address or,
//! for IPv4, the 4 raw bytes followed by 12 zero bytes.
#![no_std]

mod reason;
pub use reason::{REASON_COUNT, Reason};

/// Address-family tags used in keys (chosen to read naturally in `bpftool` output).
pub const FAMILY_V4: u8 = 4;
/// See [`FAMILY_V4`].
pub const FAMILY_V6: u8 = 6;

/// IANA protocol numbers of the protocols a rule can steer.
pub const PROTO_TCP: u8 = 6;
/// See [`PROTO_TCP`].
pub const PROTO_UDP: u8 = 17;

/// Number of rule slots (per-rule counter array size).
pub const MAX_RULES: u32 = 256;
/// Capacity of the host-address table.
pub const MAX_HOST_ADDRS: u32 = 64;
/// Capacity of the learned return-path table (one entry per recent client address).
pub const MAX_RETURN_PATHS: u32 = 262_144;
/// Length of the rule name stored in [`Rule::name`] (NUL padded).
pub const RULE_NAME_LEN: usize = 24;

/// The rule has a backend for this key's address family.
pub const RULE_HAS_BACKEND: u16 = 1;
/// The backend's link-layer path (bridge port, MACs) is resolved: packets can be steered.
/// A rule with a backend that is not resolved drops its traffic (reason `in_backend_down`).
pub const RULE_RESOLVED: u16 = 2;

/// Key of the `rules` map: which packets arriving on the uplink are steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RuleKey {
    /// Public (uplink) destination port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Value of the `rules` map: where a steered packet goes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Backend address (see the crate docs for the IPv4 layout).
    pub backend_addr: [u8; 16],
    /// Backend port, host byte order.
    pub backend_port: u16,
    /// [`RULE_HAS_BACKEND`] | [`RULE_RESOLVED`].
    pub flags: u16,
    /// Interface to redirect into: the bridge port (host-side veth) of the backend.
    pub ifindex: u32,
    /// Destination MAC: the backend's.
    pub backend_mac: [u8; 6],
    /// Source MAC: the bridge's (the backend's gateway).
    pub bridge_mac: [u8; 6],
    /// Index into `rule_stats`.
    pub slot: u32,
    /// Rule name from the configuration, NUL padded.
    pub name: [u8; RULE_NAME_LEN],
}

/// Capacity of `rule_ranges` and of `reply_ranges`: a port range is stored as the prefixes
/// that cover it (at most 30 for any range), per address family.
pub const MAX_RANGE_PREFIXES: u32 = 8192;
/// Bits of a [`RangeKey`] before its port (protocol and family): an entry's prefix length is
/// this plus the port prefix's length.
pub const RANGE_KEY_FIXED_BITS: u32 = 16;
/// Bits of a [`ReplyRangeKey`] before its port (protocol, family and address).
pub const REPLY_RANGE_KEY_FIXED_BITS: u32 = 16 + 128;

/// Data of a `rule_ranges` LPM-trie key: a port prefix of a rule that steers a range of ports
/// (the range's first port is also in `rules`, as the rule's entry for `status`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RangeKey {
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Public port, network byte order (the prefix runs from its high bit).
    pub port: [u8; 2],
}

/// Value of `rule_ranges`: the rule, whose `backend_port` is where the range starts on the
/// backend; public port `p` goes to `backend_port + (p - public_min)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RuleRange {
    /// The rule (as in `rules`).
    pub rule: Rule,
    /// First public port of the range.
    pub public_min: u16,
    /// Last public port of the range (for `bpftool` readers; the programs do not use it).
    pub public_max: u16,
}

/// Data of a `reply_ranges` LPM-trie key: a backend address and a prefix of its port range.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyRangeKey {
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Backend address.
    pub addr: [u8; 16],
    /// Backend (source) port, network byte order.
    pub port: [u8; 2],
}

/// Value of `reply_ranges`: backend port `p` leaves from public port
/// `reply.public_port + (p - backend_min)`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReplyRange {
    /// As in `replies`, with the range's first public port.
    pub reply: Reply,
    /// First port of the range on the backend.
    pub backend_min: u16,
    /// Zero.
    pub _pad: [u8; 2],
}

/// Key of the `host_addrs` map: the uplink addresses packets must be sent to to be steered.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostAddrKey {
    /// The address.
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}

/// Key of the `replies` map: which packets leaving a backend are replies of a rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReplyKey {
    /// Backend address.
    pub addr: [u8; 16],
    /// Backend (source) port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// [`Reply::flags`]: the backend is an SNI route's; its packets are not rewritten but get
/// `skb->mark = Reply::mark` so that policy routing delivers them to the agent's transparent
/// socket.
pub const REPLY_MARK_LOCAL: u16 = 1;

/// Value of the `replies` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reply {
    /// Public port the reply leaves from, host byte order (steering rules).
    pub public_port: u16,
    /// 0 (a steering rule's backend) or [`REPLY_MARK_LOCAL`].
    pub flags: u16,
    /// Index into `rule_stats` (steering rules).
    pub slot: u32,
    /// The mark set with [`REPLY_MARK_LOCAL`].
    pub mark: u32,
}

/// Key of the `return_paths` LRU map: a client's flow seen on the uplink (its address, port and
/// protocol). Keyed by flow, not by address, so that a spoofer must know a live flow's port to
/// even name its entry; and an entry, once learned, is never overwritten by a later packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientKey {
    /// The client's address.
    pub addr: [u8; 16],
    /// The client's port, host byte order.
    pub port: u16,
    /// [`PROTO_TCP`] or [`PROTO_UDP`].
    pub protocol: u8,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
}

/// Value of the `return_paths` map, learned by the XDP program from a client's steered packet:
/// how replies to that client leave (interface, MACs) and from which host address. Only flows
/// whose path differs from the family's fallback path are learned (see [`FALLBACK_V4`]); the
/// fallback path itself is a `return_paths`-shaped value in the `fallback_paths` array, and
/// one with `ifindex == 0` is unset.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReturnPath {
    /// The host address the client sent to; replies leave from it.
    pub host_addr: [u8; 16],
    /// Uplink interface the client's packet arrived on.
    pub ifindex: u32,
    /// Source MAC of the client's frame (its router, or the client itself on a LAN).
    pub client_mac: [u8; 6],
    /// Destination MAC of the client's frame (the uplink's own MAC).
    pub host_mac: [u8; 6],
}

/// Capacity of `generic_uplinks`: the uplinks `steer_in` runs on in generic (skb) mode.
pub const MAX_GENERIC_UPLINKS: u32 = 16;

/// What `steer_in` leaves in the XDP metadata of a steered packet on an uplink in generic
/// mode (one listed in `generic_uplinks`), for `redirect_in` at the uplink's TC ingress to
/// finish: the packet is rewritten already; TC adds `csum_delta` to the skb's
/// `CHECKSUM_COMPLETE` sum (which generic XDP does not maintain) and redirects it to `ifindex`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SteerMeta {
    /// [`STEER_META_MAGIC`]: the metadata is `steer_in`'s.
    pub magic: u32,
    /// The backend's bridge port.
    pub ifindex: u32,
    /// The one's-complement sum of what the rewrite changed from the IP header on (16-bit
    /// words as the kernel loads them, folded), for `bpf_csum_update`.
    pub csum_delta: u32,
}

/// [`SteerMeta::magic`]. It names the layout: a change of [`SteerMeta`] takes a new value, so
/// that a `redirect_in` of another build (during an upgrade in place) never misreads it.
pub const STEER_META_MAGIC: u32 = 0x6a73_7431;

/// Index of the IPv4 entry of `fallback_paths`: the path of a client that came through the
/// uplink's default gateway (its MAC, the uplink, the first host address of the family), set by
/// the agent. Replies to a flow without a learned path take it.
pub const FALLBACK_V4: u32 = 0;
/// See [`FALLBACK_V4`].
pub const FALLBACK_V6: u32 = 1;

/// Capacity of `source_prefixes`, the LPM trie the agent fills with what it knows about source
/// addresses seen on the uplink.
pub const MAX_SOURCE_PREFIXES: u32 = 256;

/// `source_prefixes` value: a source that never arrives on the uplink legitimately (a martian,
/// a host address, a backends' subnet). Packets from it to a steered port are dropped
/// (`in_spoofed_source`).
pub const SOURCE_SPOOFED: u32 = 1;
/// `source_prefixes` value: a subnet the uplink is on. A client there is reached at its own
/// MAC; any other client only through the default gateway (the fallback path), whatever MAC
/// its packets came from.
pub const SOURCE_ON_LINK: u32 = 2;

/// Data of a `source_prefixes` LPM-trie key: the address as 16 bytes, IPv4 written
/// IPv4-mapped (`::ffff:a.b.c.d`, prefix length + 96), so that one trie holds both families.
pub type SourcePrefix = [u8; 16];

/// Capacity of `flood_sources`, the per-source token buckets of the flood limits. An entry
/// that is evicted comes back full, so a flood of spoofed sources that churns the table can only
/// make the limits more lenient for the sources it pushes out.
pub const MAX_FLOOD_SOURCES: u32 = 65_536;
/// Capacity of `flood_allow`, the networks the flood limits never apply to.
pub const MAX_FLOOD_ALLOW: u32 = 256;
/// TCP ports [`FloodConfig::guarded_ports`] can hold (the splitters' listen ports).
pub const MAX_GUARDED_PORTS: usize = 8;
/// One token of a flood bucket: the buckets hold nano-tokens, so that a refill of
/// `elapsed_ns * per_second` needs no division.
pub const FLOOD_TOKEN: u64 = 1_000_000_000;
/// Most a flood rate may be (per second).
pub const FLOOD_MAX_RATE: u64 = 100_000_000;
/// Capacity of `flood_flows`, the UDP flows (source address and port) the flood limits have
/// admitted as new: a packet of a flow not in it is a new flow. A flow pushed out by others
/// only counts as new once more: one token of its own source's new-flow bucket.
pub const MAX_FLOOD_FLOWS: u32 = 131_072;

/// Value of `flood_config` (one entry, written by the agent): the per-source limits.
/// Rates are per second, bursts in tokens (packets or flows); 0 in `enabled` turns the limits
/// off (no per-source state is kept).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodConfig {
    /// 1: limits apply.
    pub enabled: u32,
    /// Networks in `flood_allow` (0: the program does not look there).
    pub allowed: u32,
    /// Packets per second to steered ports, per source.
    pub packets_per_second: u64,
    /// Bucket size of the packets.
    pub packets_burst: u64,
    /// New flows per second, per source: a TCP SYN to a steered or guarded port, a UDP packet
    /// to a steered port of a flow not in `flood_flows`.
    pub flows_per_second: u64,
    /// Bucket size of the new flows.
    pub flows_burst: u64,
    /// The splitters' TCP listen ports (host order; 0: unused slot): their SYNs count as new
    /// flows (nothing else to them is limited or touched).
    pub guarded_ports: [u16; MAX_GUARDED_PORTS],
}

/// Key of `flood_sources`: a source address, IPv6 cut to its /64 (one subscriber's prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FloodKey {
    /// The address (IPv4 as in the crate docs; IPv6 with its last 8 bytes zero).
    pub addr: [u8; 16],
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u8,
    /// Zero.
    pub _pad: [u8; 3],
}

/// Value of `flood_sources`: one source's token buckets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodState {
    /// When the buckets were last refilled (`bpf_ktime_get_coarse_ns`).
    pub refilled_ns: u64,
    /// Packet tokens, in [`FLOOD_TOKEN`]s.
    pub packets: u64,
    /// Flow tokens, in [`FLOOD_TOKEN`]s.
    pub flows: u64,
}

/// Per-rule counters (`rule_stats`, per CPU, indexed by [`Rule::slot`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Packets steered from the uplink to the backend.
    pub packets_in: u64,
    /// Bytes (Ethernet frame length) steered to the backend.
    pub bytes_in: u64,
    /// Reply packets sent from the backend out of the uplink.
    pub packets_out: u64,
    /// Reply bytes (Ethernet frame length) sent out of the uplink.
    pub bytes_out: u64,
}

/// Most splitter routes (TLS and HTTP) the pinned `sni_routes` map holds.
pub const MAX_SNI_ROUTES: u32 = 256;

/// Slots of the `sni_counters` array: 0 is accepted connections, 1.. are refusal reasons in
/// the order the agent documents (`jitsi_agent::splitter::stats::REFUSALS`).
pub const SNI_COUNTERS: u32 = 16;

/// Slots of the `task_health` array, written by the agent every second (no program uses it):
/// for periodic task `i` (in the order `jitsi_agent::run::health::TASKS` lists them), slot
/// `2 i` counts its failures and slot `2 i + 1` is 1 while it is failing.
pub const TASK_SLOTS: u32 = 16;

/// Slots for maps in [`Manifest::schemas`].
pub const MANIFEST_MAPS: usize = 32;

/// Value of the `manifest` map (one entry, written by the agent): which build the pinned
/// programs are from, and the schema version of each map as that build understood it (in
/// the agent's `MAP_NAMES` order), so that a map whose size is unchanged but whose meaning
/// changed is not kept by an upgrade.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Manifest {
    /// SHA-256 of the eBPF object.
    pub build: [u8; 32],
    /// Schema version per map (0: no such map).
    pub schemas: [u32; MANIFEST_MAPS],
}

/// Key of `sni_routes`: the route's name, NUL-padded. Written only by the agent (the kernel
/// programs never touch it); pinned so that `status` and `bpftool` can read the splitter's
/// counters with or without a running agent, and a restarted agent continues them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SniRouteKey {
    /// `[[tls.route]]` or `[[http.route]]` `name`, NUL-padded.
    pub name: [u8; RULE_NAME_LEN],
}

/// Counters of one splitter route (`sni_routes` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SniRouteStats {
    /// Connections relayed to the route.
    pub connections: u64,
    /// Of those, open when the agent last wrote (0 after it stopped).
    pub open: u64,
    /// Client -> backend bytes, ClientHello included.
    pub bytes_up: u64,
    /// Backend -> client bytes.
    pub bytes_down: u64,
}

/// Per-reason counters (`reason_stats`, per CPU, indexed by [`Reason`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReasonStats {
    /// Packets.
    pub packets: u64,
    /// Bytes (Ethernet frame length where known, else 0).
    pub bytes: u64,
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all types are repr(C), Copy, and have no implicit padding (padding is explicit).
    unsafe impl aya::Pod for RuleKey {}
    unsafe impl aya::Pod for Rule {}
    unsafe impl aya::Pod for HostAddrKey {}
    unsafe impl aya::Pod for ReplyKey {}
    unsafe impl aya::Pod for Reply {}
    unsafe impl aya::Pod for ClientKey {}
    unsafe impl aya::Pod for ReturnPath {}
    unsafe impl aya::Pod for RuleStats {}
    unsafe impl aya::Pod for ReasonStats {}
    unsafe impl aya::Pod for SniRouteKey {}
    unsafe impl aya::Pod for SniRouteStats {}
    unsafe impl aya::Pod for Manifest {}
    unsafe impl aya::Pod for RangeKey {}
    unsafe impl aya::Pod for RuleRange {}
    unsafe impl aya::Pod for ReplyRangeKey {}
    unsafe impl aya::Pod for ReplyRange {}
    unsafe impl aya::Pod for FloodConfig {}
    unsafe impl aya::Pod for FloodKey {}
    unsafe impl aya::Pod for FloodState {}
}

/// Compile-time layout checks: no implicit padding anywhere.
const _: () = {
    assert!(core::mem::size_of::<Manifest>() == 32 + 4 * MANIFEST_MAPS);
    assert!(core::mem::size_of::<RuleKey>() == 4);
    assert!(core::mem::size_of::<Rule>() == 16 + 2 + 2 + 4 + 6 + 6 + 4 + RULE_NAME_LEN);
    assert!(core::mem::size_of::<HostAddrKey>() == 20);
    assert!(core::mem::size_of::<ReplyKey>() == 20);
    assert!(core::mem::size_of::<Reply>() == 12);
    assert!(core::mem::size_of::<ClientKey>() == 20);
    assert!(core::mem::size_of::<ClientKey>() == 16 + 2 + 1 + 1);
    assert!(core::mem::size_of::<ReturnPath>() == 32);
    assert!(core::mem::size_of::<SteerMeta>() == 12);
    assert!(core::mem::size_of::<RuleStats>() == 32);
    assert!(core::mem::size_of::<RangeKey>() * 8 == RANGE_KEY_FIXED_BITS as usize + 16);
    assert!(core::mem::size_of::<RuleRange>() == core::mem::size_of::<Rule>() + 4);
    assert!(core::mem::size_of::<ReplyRangeKey>() * 8 == REPLY_RANGE_KEY_FIXED_BITS as usize + 16);
    assert!(core::mem::size_of::<ReplyRange>() == 16);
    assert!(core::mem::size_of::<FloodConfig>() == 8 + 4 * 8 + 2 * MAX_GUARDED_PORTS);
    assert!(core::mem::size_of::<FloodKey>() == 20);
    assert!(core::mem::size_of::<FloodState>() == 3 * 8);
};
