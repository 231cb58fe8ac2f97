//! `reply_out` (TC ingress on the backends' bridge): a packet from a rule's backend
//! `ip:port` to a client the uplink has seen leaves with the host address the client used and
//! the rule's public port, with the MACs of the client's own path, redirected out of the
//! uplink (a flow the uplink has not seen, e.g. the videobridge's own connectivity checks,
//! leaves through the default gateway from the first host address). A packet from a rule's
//! backend to a host address and a steered port is turned around into that rule's backend
//! (hairpin), from the host address and the sender's public port. No FIB lookup and no forwarding are involved, so the reply path works with
//! `ip_forward=0` and no iptables rules (the kernel's `bpf_fib_lookup` refuses to resolve
//! when forwarding is disabled on the device). Checksums are updated with the kernel's
//! helpers, which also handle `CHECKSUM_PARTIAL` packets from veth TX offload.

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_OK},
    helpers::{bpf_csum_diff, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use jitsi_common::{
    ClientKey, FALLBACK_V4, FALLBACK_V6, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, REPLY_MARK_LOCAL, Reason, Reply,
    ReturnPath, Rule, SOURCE_SPOOFED,
};

use crate::{
    lookup::{is_local, reply_for, rule_for},
    maps::{FALLBACK_PATHS, RETURN_PATHS, SOURCE_PREFIXES, count_reason, count_rule_in, count_rule_out},
    packet::*,
};

#[classifier]
pub fn reply_out(ctx: TcContext) -> i32 {
    match try_reply_out(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_reason(reason, u64::from(ctx.len()));
            TC_ACT_OK
        }
    }
}

#[inline(always)]
fn try_reply_out(ctx: &TcContext) -> Result<i32, Reason> {
    let ether_type = u16::from_be(ctx.load::<u16>(12).map_err(|_| Reason::OutTruncated)?);
    match ether_type {
        ETH_P_IP => reply_v4(ctx),
        ETH_P_IPV6 => reply_v6(ctx),
        _ => Err(Reason::OutNotIp),
    }
}

/// Where a backend's packet goes.
enum Target {
    /// Out of the uplink to a client, by this path.
    Client(Reply, ReturnPath),
    /// Back in to the backend of the rule that steers its destination: it was sent to a host
    /// address and a steered port (a TURN relay sending to another relay address of the host,
    /// the videobridge to a participant's relay address). It arrives from the host address and
    /// the sender's public port, as if it had gone out and come back in.
    Hairpin(Reply, &'static Rule, u16),
}

/// Where the packet from `src:sport` to `dst:dport` goes: to a steered port of a host
/// address, to that rule's backend; else to the client by the flow's learned path, else by the
/// family's fallback path (through the default gateway, from the first host address). A
/// packet from an SNI backend is marked for local delivery instead (`Err(OutSniReply)`:
/// passed).
#[inline(always)]
fn lookup(
    ctx: &TcContext,
    (src, sport): ([u8; 16], u16),
    protocol: u8,
    family: u8,
    (dst, dport): ([u8; 16], u16),
) -> Result<Target, Reason> {
    let reply_val = reply_for(src, sport, protocol, family).ok_or(Reason::OutNotBackend)?;
    if reply_val.flags & REPLY_MARK_LOCAL != 0 {
        ctx.set_mark(reply_val.mark);
        return Err(Reason::OutSniReply);
    }
    if is_local(dst, family)
        && let Ok((rule, backend_port)) = rule_for(protocol, family, dport)
    {
        return Ok(Target::Hairpin(reply_val, rule, backend_port));
    }
    let learned = RETURN_PATHS.get_ptr(ClientKey { addr: dst, port: dport, protocol, family });
    if let Some(path) = learned {
        // SAFETY: valid map value pointer, copied out.
        let path = unsafe { *path };
        if !is_host_addr_only(&path) {
            return Ok(Target::Client(reply_val, path));
        }
    }
    // The fallback path, only towards an address that could be a client: never a martian, the
    // host itself or a backends' subnet.
    let mapped = if family == FAMILY_V4 { mapped_v4(addr4(&dst)) } else { dst };
    if let Some(&SOURCE_SPOOFED) = SOURCE_PREFIXES.get(&Key::new(128, mapped)) {
        return Err(Reason::OutUnknownClient);
    }
    let index = if family == FAMILY_V4 { FALLBACK_V4 } else { FALLBACK_V6 };
    let fallback = match FALLBACK_PATHS.get(index) {
        Some(path) if path.ifindex != 0 => *path,
        _ => return Err(Reason::OutUnknownClient),
    };
    match learned {
        // SAFETY: valid map value pointer (a host-address-only path: the gateway as it is now).
        Some(path) => Ok(Target::Client(reply_val, ReturnPath { host_addr: unsafe { (*path).host_addr }, ..fallback })),
        None => Ok(Target::Client(reply_val, fallback)),
    }
}

impl Target {
    /// The new (source, destination) addresses: the host address the client used, or for a
    /// hairpin the host address it was sent to and the rule's backend.
    #[inline(always)]
    fn addrs(&self, dst: [u8; 16]) -> ([u8; 16], [u8; 16]) {
        match self {
            Target::Client(_, path) => (path.host_addr, dst),
            Target::Hairpin(_, rule, _) => (dst, rule.backend_addr),
        }
    }
}

/// Flags for `bpf_l4_csum_replace`: UDP keeps a zero ("no") checksum and never produces one.
#[inline(always)]
fn l4_flags(protocol: u8) -> u64 {
    if protocol == PROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 }
}

/// Replaces the 2-byte port at `off` (`old` -> `new`) and its share of the L4 checksum.
#[inline(always)]
fn set_port(ctx: &TcContext, l4_off: usize, off: usize, protocol: u8, old: u16, new: u16) -> Result<(), Reason> {
    let check_off = l4_off + l4_check_off(protocol);
    let o = u64::from(u16::from_ne_bytes(old.to_be_bytes()));
    let n = u64::from(u16::from_ne_bytes(new.to_be_bytes()));
    ctx.l4_csum_replace(check_off, o, n, 2 | l4_flags(protocol)).map_err(|_| Reason::OutTruncated)?;
    ctx.store(l4_off + off, &new.to_be_bytes(), 0).map_err(|_| Reason::OutTruncated)
}

/// Rewrites the ports and the MACs and redirects: out of the client's uplink, or for a hairpin
/// into the rule's backend.
#[inline(always)]
fn finish(
    ctx: &TcContext,
    l4_off: usize,
    protocol: u8,
    (sport, dport): (u16, u16),
    target: &Target,
) -> Result<i32, Reason> {
    let reply = match target {
        Target::Client(reply, _) | Target::Hairpin(reply, ..) => reply,
    };
    set_port(ctx, l4_off, 0, protocol, sport, reply.public_port)?;
    let (dst_mac, src_mac, ifindex) = match target {
        Target::Client(_, path) => (path.client_mac, path.host_mac, path.ifindex),
        Target::Hairpin(_, rule, backend_port) => {
            set_port(ctx, l4_off, 2, protocol, dport, *backend_port)?;
            count_rule_in(rule.slot, u64::from(ctx.len()));
            (rule.backend_mac, rule.bridge_mac, rule.ifindex)
        }
    };
    ctx.store(0, &dst_mac, 0).map_err(|_| Reason::OutTruncated)?;
    ctx.store(6, &src_mac, 0).map_err(|_| Reason::OutTruncated)?;
    count_rule_out(reply.slot, u64::from(ctx.len()));
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(ifindex, 0) } as i32)
}

/// Replaces an IPv4 address at `off` and its share of the IPv4 and L4 checksums.
#[inline(always)]
fn set_addr_v4(
    ctx: &TcContext,
    l4_off: usize,
    off: usize,
    protocol: u8,
    old: [u8; 4],
    new: [u8; 4],
) -> Result<(), Reason> {
    let (o, n) = (u32::from_ne_bytes(old), u32::from_ne_bytes(new));
    if o == n {
        return Ok(());
    }
    let (o, n) = (u64::from(o), u64::from(n));
    ctx.l4_csum_replace(l4_off + l4_check_off(protocol), o, n, u64::from(BPF_F_PSEUDO_HDR) | 4 | l4_flags(protocol))
        .map_err(|_| Reason::OutTruncated)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, o, n, 4).map_err(|_| Reason::OutTruncated)?;
    ctx.store(ETH_HLEN + off, &new, 0).map_err(|_| Reason::OutTruncated)
}

/// Replaces an IPv6 address at `off` and its share of the L4 checksum.
#[inline(always)]
fn set_addr_v6(
    ctx: &TcContext,
    l4_off: usize,
    off: usize,
    protocol: u8,
    mut old: [u8; 16],
    mut new: [u8; 16],
) -> Result<(), Reason> {
    if same_addr(&old, &new) {
        return Ok(());
    }
    // SAFETY: both buffers are 16-byte stack arrays, a multiple of 4 as the helper requires.
    let diff = unsafe { bpf_csum_diff(old.as_mut_ptr().cast(), 16, new.as_mut_ptr().cast(), 16, 0) };
    ctx.l4_csum_replace(
        l4_off + l4_check_off(protocol),
        0,
        diff as u64,
        u64::from(BPF_F_PSEUDO_HDR) | l4_flags(protocol),
    )
    .map_err(|_| Reason::OutTruncated)?;
    ctx.store(ETH_HLEN + off, &new, 0).map_err(|_| Reason::OutTruncated)
}

#[inline(always)]
fn reply_v4(ctx: &TcContext) -> Result<i32, Reason> {
    let vihl: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::OutTruncated)?;
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::OutTruncated);
    }
    let frags = u16::from_be(ctx.load::<u16>(ETH_HLEN + 6).map_err(|_| Reason::OutTruncated)?);
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Reason::OutFragment);
    }
    let protocol: u8 = ctx.load(ETH_HLEN + 9).map_err(|_| Reason::OutTruncated)?;
    if protocol != PROTO_UDP && protocol != PROTO_TCP {
        return Err(Reason::OutNotBackend);
    }
    let src: [u8; 4] = ctx.load(ETH_HLEN + 12).map_err(|_| Reason::OutTruncated)?;
    let dst: [u8; 4] = ctx.load(ETH_HLEN + 16).map_err(|_| Reason::OutTruncated)?;
    let l4_off = ETH_HLEN + ihl;
    let sport = u16::from_be(ctx.load::<u16>(l4_off).map_err(|_| Reason::OutTruncated)?);
    let dport = u16::from_be(ctx.load::<u16>(l4_off + 2).map_err(|_| Reason::OutTruncated)?);
    let target = lookup(ctx, (addr16_v4(src), sport), protocol, FAMILY_V4, (addr16_v4(dst), dport))?;

    let (new_src, new_dst) = target.addrs(addr16_v4(dst));
    set_addr_v4(ctx, l4_off, 12, protocol, src, addr4(&new_src))?;
    set_addr_v4(ctx, l4_off, 16, protocol, dst, addr4(&new_dst))?;
    finish(ctx, l4_off, protocol, (sport, dport), &target)
}

#[inline(always)]
fn reply_v6(ctx: &TcContext) -> Result<i32, Reason> {
    let first: u8 = ctx.load(ETH_HLEN).map_err(|_| Reason::OutTruncated)?;
    if first >> 4 != 6 {
        return Err(Reason::OutTruncated);
    }
    let next: u8 = ctx.load(ETH_HLEN + 6).map_err(|_| Reason::OutTruncated)?;
    if next != PROTO_UDP && next != PROTO_TCP {
        return Err(if next == 44 { Reason::OutFragment } else { Reason::OutNotBackend });
    }
    let src: [u8; 16] = ctx.load(ETH_HLEN + 8).map_err(|_| Reason::OutTruncated)?;
    let dst: [u8; 16] = ctx.load(ETH_HLEN + 24).map_err(|_| Reason::OutTruncated)?;
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let sport = u16::from_be(ctx.load::<u16>(l4_off).map_err(|_| Reason::OutTruncated)?);
    let dport = u16::from_be(ctx.load::<u16>(l4_off + 2).map_err(|_| Reason::OutTruncated)?);
    let target = lookup(ctx, (src, sport), next, FAMILY_V6, (dst, dport))?;

    let (new_src, new_dst) = target.addrs(dst);
    set_addr_v6(ctx, l4_off, 8, next, src, new_src)?;
    set_addr_v6(ctx, l4_off, 24, next, dst, new_dst)?;
    finish(ctx, l4_off, next, (sport, dport), &target)
}
