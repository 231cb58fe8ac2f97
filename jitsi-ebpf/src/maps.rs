//! The datapath's maps. Userspace pins each under the pin directory by the name given here
//! (see the README's map reference); the key and value types live in `jitsi-common`.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    macros::btf_map,
};
use jitsi_common::{
    ClientKey, FloodConfig, FloodKey, FloodState, HostAddrKey, MAX_FLOOD_ALLOW, MAX_FLOOD_FLOWS, MAX_FLOOD_SOURCES,
    MAX_GENERIC_UPLINKS, MAX_HOST_ADDRS, MAX_RANGE_PREFIXES, MAX_RETURN_PATHS, MAX_RULES, MAX_SNI_ROUTES,
    MAX_SOURCE_PREFIXES, REASON_COUNT, RangeKey, ReasonStats, Reply, ReplyKey, ReplyRange, ReplyRangeKey, ReturnPath,
    Rule, RuleKey, RuleRange, RuleStats, SniRouteKey, SniRouteStats, SourcePrefix,
};

/// (protocol, family, public port) -> backend.
#[btf_map(name = "rules")]
pub static RULES: HashMap<RuleKey, Rule, { MAX_RULES as usize * 2 }> = HashMap::new();

/// (protocol, family, public port prefix) -> backend, for rules that steer a port range (looked
/// up when `rules` has no entry for the port).
#[btf_map(name = "rule_ranges")]
pub static RULE_RANGES: LpmTrie<RangeKey, RuleRange, { MAX_RANGE_PREFIXES as usize }> = LpmTrie::new();

/// (protocol, family, backend address, backend port prefix) -> public ports, for the replies of
/// rules that steer a port range (looked up when `replies` has no entry).
#[btf_map(name = "reply_ranges")]
pub static REPLY_RANGES: LpmTrie<ReplyRangeKey, ReplyRange, { MAX_RANGE_PREFIXES as usize }> = LpmTrie::new();

/// Addresses of the uplink that steered packets must be addressed to.
#[btf_map(name = "host_addrs")]
pub static HOST_ADDRS: HashMap<HostAddrKey, u32, { MAX_HOST_ADDRS as usize }> = HashMap::new();

/// (protocol, family, backend address, backend port) -> public port, for replies.
#[btf_map(name = "replies")]
pub static REPLIES: HashMap<ReplyKey, Reply, { MAX_RULES as usize * 2 }> = HashMap::new();

/// Client address -> how to send replies back to it (learned on the uplink).
#[btf_map(name = "return_paths")]
pub static RETURN_PATHS: LruHashMap<ClientKey, ReturnPath, { MAX_RETURN_PATHS as usize }> = LruHashMap::new();

/// Per family (`FALLBACK_V4`, `FALLBACK_V6`): the path through the uplink's default gateway,
/// set by the agent; `ifindex == 0` while unknown.
#[btf_map(name = "fallback_paths")]
pub static FALLBACK_PATHS: Array<ReturnPath, 2> = Array::new();

/// The uplinks `steer_in` runs on in generic (skb) mode (ifindex -> 1, written by the agent):
/// their steered packets are redirected by `redirect_in` at the uplink's TC ingress.
#[btf_map(name = "generic_uplinks")]
pub static GENERIC_UPLINKS: HashMap<u32, u32, { MAX_GENERIC_UPLINKS as usize }> = HashMap::new();

/// What the agent knows about source prefixes (`SOURCE_SPOOFED`, `SOURCE_ON_LINK`); IPv4
/// IPv4-mapped.
#[cfg(not(feature = "upgrade-test"))]
#[btf_map(name = "source_prefixes")]
pub static SOURCE_PREFIXES: LpmTrie<SourcePrefix, u32, { MAX_SOURCE_PREFIXES as usize }> = LpmTrie::new();

/// The upgrade test's build: a map `steer_in` reads, of another size, so that an upgrade to it
/// has one to fill before the programs are swapped.
#[cfg(feature = "upgrade-test")]
#[btf_map(name = "source_prefixes")]
pub static SOURCE_PREFIXES: LpmTrie<SourcePrefix, u32, { 2 * MAX_SOURCE_PREFIXES as usize }> = LpmTrie::new();

/// The per-source flood limits (one entry, written by the agent; all zero: off).
#[btf_map(name = "flood_config")]
pub static FLOOD_CONFIG: Array<FloodConfig, 1> = Array::new();

/// Source (IPv6: its /64) -> its token buckets. A common LRU, not a per-CPU one: a source's
/// packets spread over the receive queues by flow, and per-CPU buckets would multiply its
/// limit by the number of queues.
#[btf_map(name = "flood_sources")]
pub static FLOOD_SOURCES: LruHashMap<FloodKey, FloodState, { MAX_FLOOD_SOURCES as usize }> = LruHashMap::new();

/// UDP flows (source address and port) admitted as new by the flood limits: a packet of a flow
/// not here is a new flow.
#[btf_map(name = "flood_flows")]
pub static FLOOD_FLOWS: LruHashMap<ClientKey, u32, { MAX_FLOOD_FLOWS as usize }> = LruHashMap::new();

/// Networks the flood limits never apply to (value 1), IPv4 IPv4-mapped as in
/// `source_prefixes`.
#[btf_map(name = "flood_allow")]
pub static FLOOD_ALLOW: LpmTrie<SourcePrefix, u32, { MAX_FLOOD_ALLOW as usize }> = LpmTrie::new();

/// Per-rule counters, indexed by `Rule::slot`.
#[btf_map(name = "rule_stats")]
pub static RULE_STATS: PerCpuArray<RuleStats, { MAX_RULES as usize }> = PerCpuArray::new();

/// Per-reason counters of what was passed or dropped, indexed by `jitsi_common::Reason`.
#[btf_map(name = "reason_stats")]
pub static REASON_STATS: PerCpuArray<ReasonStats, { REASON_COUNT as usize }> = PerCpuArray::new();

/// The SNI splitter's per-route counters, written by the agent (no program uses them; they
/// live here so that they are pinned and inspected like the datapath's own).
#[btf_map(name = "sni_routes")]
pub static SNI_ROUTES: HashMap<SniRouteKey, SniRouteStats, { MAX_SNI_ROUTES as usize }> = HashMap::new();

/// The SNI splitter's accepted and refused connection counts, written by the agent.
#[btf_map(name = "sni_counters")]
pub static SNI_COUNTERS: Array<u64, { jitsi_common::SNI_COUNTERS as usize }> = Array::new();

/// The agent's periodic tasks' failures, written by the agent (see `jitsi_common::TASK_SLOTS`).
#[cfg(not(feature = "upgrade-test"))]
#[btf_map(name = "task_health")]
pub static TASK_HEALTH: Array<u64, { jitsi_common::TASK_SLOTS as usize }> = Array::new();

/// The upgrade test's build (`--features upgrade-test`, never shipped): `task_health` with
/// another size, so that an upgrade to it has a map to recreate, and its last slot counts the
/// packets `steer_in` sees, so that the test knows which programs run.
#[cfg(feature = "upgrade-test")]
#[btf_map(name = "task_health")]
pub static TASK_HEALTH: Array<u64, { 2 * jitsi_common::TASK_SLOTS as usize }> = Array::new();

/// Which build of the datapath the pins hold and its maps' schema versions
/// (`jitsi_common::Manifest`), written by the agent after it loaded or swapped in the
/// programs (no program uses it).
#[btf_map(name = "manifest")]
pub static MANIFEST: Array<jitsi_common::Manifest, 1> = Array::new();

/// The upgrade test's marker (see `TASK_HEALTH`): one more packet seen by this build.
#[inline(always)]
pub fn count_upgrade_test_marker() {
    #[cfg(feature = "upgrade-test")]
    if let Some(p) = TASK_HEALTH.get_ptr_mut(2 * jitsi_common::TASK_SLOTS - 1) {
        // SAFETY: a valid, aligned u64 in the map. Not atomic (the target has no 64-bit atomics
        // in `core`): CPUs racing may lose an increment, which the test allows for.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub fn count_reason(reason: jitsi_common::Reason, bytes: u64) {
    if let Some(s) = REASON_STATS.get_ptr_mut(reason as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*s).packets += 1;
            (*s).bytes += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rule_in(slot: u32, bytes: u64) {
    if let Some(s) = RULE_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets_in += 1;
            (*s).bytes_in += bytes;
        }
    }
}

#[inline(always)]
pub fn count_rule_out(slot: u32, bytes: u64) {
    if let Some(s) = RULE_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot.
        unsafe {
            (*s).packets_out += 1;
            (*s).bytes_out += bytes;
        }
    }
}
