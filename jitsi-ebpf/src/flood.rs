//! Per-source flood limits (`[flood]`): two token buckets per source address (an IPv6 source
//! per /64) in the `flood_sources` LRU, one for packets to steered ports and one for new flows
//! (a TCP SYN to a steered port or to a splitter's port, a UDP packet to a steered port of a
//! flow not in the `flood_flows` LRU, which holds the flows admitted as new). Over a limit the packet is dropped here, before
//! it is steered or reaches the host's stack, unless its source is in `flood_allow`. A dropped
//! packet takes no token, and a source seen for the first time (or again after eviction) starts
//! with full buckets.
//!
//! The buckets are read and written without atomics: two CPUs handling the same source at the
//! same instant can each take the same token, so a source spread over several receive queues
//! can get slightly more than its limit, never less.

use aya_ebpf::{bindings::BPF_ANY, helpers::bpf_ktime_get_coarse_ns, maps::lpm_trie::Key};
use jitsi_common::{
    ClientKey, FAMILY_V6, FLOOD_TOKEN, FloodConfig, FloodKey, FloodState, MAX_GUARDED_PORTS, PROTO_UDP, Reason,
};

use crate::maps::{FLOOD_ALLOW, FLOOD_CONFIG, FLOOD_FLOWS, FLOOD_SOURCES};

/// What a packet is, for the new-flow bucket.
#[derive(Clone, Copy)]
pub enum Flow {
    /// Part of a flow already admitted (a TCP segment other than a SYN).
    Known,
    /// A TCP SYN: always a new flow.
    Syn,
    /// A UDP packet from this source port: a new flow unless `flood_flows` holds it.
    Udp(u16),
}

/// The source of a packet: its address (IPv4 widened), family, and the address in
/// `flood_allow`'s form (IPv4 IPv4-mapped).
#[derive(Clone, Copy)]
pub struct Source {
    pub addr: [u8; 16],
    pub family: u8,
    pub mapped: [u8; 16],
}

/// The limits in force, or `None` while they are off.
#[inline(always)]
fn config() -> Option<&'static FloodConfig> {
    FLOOD_CONFIG.get(0).filter(|c| c.enabled != 0)
}

/// Admits a packet to a steered port, or says why it is dropped.
#[inline(always)]
pub fn admit_steered(source: Source, flow: Flow) -> Result<(), Reason> {
    match config() {
        Some(cfg) => admit(cfg, source, true, flow),
        None => Ok(()),
    }
}

/// Admits a TCP segment to a port no rule steers: a SYN to one of the splitters' ports takes a
/// new-flow token; anything else is not looked at.
#[inline(always)]
pub fn admit_unsteered_tcp(source: Source, port: u16, flow: Flow) -> Result<(), Reason> {
    if !matches!(flow, Flow::Syn) {
        return Ok(());
    }
    let Some(cfg) = config() else { return Ok(()) };
    let mut guarded = false;
    let mut i = 0;
    while i < MAX_GUARDED_PORTS {
        if cfg.guarded_ports[i] == port && port != 0 {
            guarded = true;
        }
        i += 1;
    }
    if guarded { admit(cfg, source, false, flow) } else { Ok(()) }
}

#[inline(always)]
#[expect(
    clippy::needless_borrows_for_generic_args,
    reason = "passed by value, the keys and the fresh state are copied again and steer_in overflows its 512-byte stack"
)]
fn admit(cfg: &FloodConfig, source: Source, packet: bool, flow: Flow) -> Result<(), Reason> {
    let mut key = FloodKey { addr: source.addr, family: source.family, _pad: [0; 3] };
    if source.family == FAMILY_V6 {
        let mut i = 8;
        while i < 16 {
            key.addr[i] = 0;
            i += 1;
        }
    }
    // SAFETY: plain helper call.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let state = match FLOOD_SOURCES.get_ptr_mut(&key) {
        Some(p) => p,
        None => {
            let fresh = FloodState {
                refilled_ns: now,
                packets: cfg.packets_burst * FLOOD_TOKEN,
                flows: cfg.flows_burst * FLOOD_TOKEN,
            };
            let _ = FLOOD_SOURCES.insert(&key, &fresh, u64::from(BPF_ANY));
            // No entry to be had (the kernel could not allocate one): admitted, as without
            // limits.
            match FLOOD_SOURCES.get_ptr_mut(&key) {
                Some(p) => p,
                None => return Ok(()),
            }
        }
    };
    // SAFETY: a valid map value pointer, live until the program returns.
    let s = unsafe { &mut *state };
    let elapsed = now.wrapping_sub(s.refilled_ns);
    // Another CPU may have refilled at a later `now`: then there is nothing to add.
    if elapsed > 0 && elapsed < u64::MAX / 2 {
        s.packets = refill(s.packets, elapsed, cfg.packets_per_second, cfg.packets_burst);
        s.flows = refill(s.flows, elapsed, cfg.flows_per_second, cfg.flows_burst);
        s.refilled_ns = now;
    }
    if packet && s.packets < FLOOD_TOKEN {
        return over(cfg, source, Reason::InFloodPackets);
    }
    let (new_flow, udp_flow) = match flow {
        Flow::Known => (false, None),
        Flow::Syn => (true, None),
        Flow::Udp(port) => {
            let key = ClientKey { addr: source.addr, port, protocol: PROTO_UDP, family: source.family };
            (FLOOD_FLOWS.get_ptr(&key).is_none(), Some(key))
        }
    };
    if new_flow && s.flows < FLOOD_TOKEN {
        return over(cfg, source, if packet { Reason::InFloodFlows } else { Reason::InFloodConnections });
    }
    if packet {
        // Saturating: another CPU may have taken the token since the check (the buckets are not
        // locked), and a wrap would give the source a full bucket.
        s.packets = s.packets.saturating_sub(FLOOD_TOKEN);
    }
    if new_flow {
        s.flows = s.flows.saturating_sub(FLOOD_TOKEN);
        if let Some(key) = udp_flow {
            let _ = FLOOD_FLOWS.insert(&key, &1, u64::from(BPF_ANY));
        }
    }
    Ok(())
}

/// `tokens` after `elapsed_ns` at `per_second`, at most `burst` tokens. The product is taken
/// only while it cannot pass what the bucket has room for (so it never overflows).
#[inline(always)]
fn refill(tokens: u64, elapsed_ns: u64, per_second: u64, burst: u64) -> u64 {
    let cap = burst * FLOOD_TOKEN;
    if tokens >= cap {
        return cap;
    }
    if per_second == 0 {
        return tokens;
    }
    let room = cap - tokens;
    if elapsed_ns > room / per_second { cap } else { tokens + elapsed_ns * per_second }
}

/// A source over a limit: admitted if `flood_allow` holds it, else dropped for `reason`.
#[inline(always)]
fn over(cfg: &FloodConfig, source: Source, reason: Reason) -> Result<(), Reason> {
    if cfg.allowed != 0 && FLOOD_ALLOW.get(&Key::new(128, source.mapped)).is_some() { Ok(()) } else { Err(reason) }
}
