//! `reply_out` (TC ingress on the backends' bridge): a packet from a rule's backend
//! `ip:port` to a client the uplink has seen leaves with the host address the client used and
//! the rule's public port, with the MACs of the client's own path, redirected out of the
//! uplink (a flow the uplink has not seen, e.g. the videobridge's own connectivity checks,
//! leaves through the default gateway from the first host address). No FIB lookup and no forwarding are involved, so the reply path works with
//! `ip_forward=0` and no iptables rules (the kernel's `bpf_fib_lookup` refuses to resolve
//! when forwarding is disabled on the device). Checksums are updated with the kernel's
//! helpers, which also handle `CHECKSUM_PARTIAL` packets from veth TX offload.

use aya_ebpf::maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, TC_ACT_UNSPEC},
    helpers::{bpf_csum_diff, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use jitsi_common::{
    ClientKey, FALLBACK_V4, FALLBACK_V6, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, REPLY_MARK_LOCAL, Reason, Reply,
    ReturnPath, SOURCE_SPOOFED,
};

use crate::{
    lookup::reply_for,
    maps::{FALLBACK_PATHS, RETURN_PATHS, SOURCE_PREFIXES, count_reason, count_rule_out},
    packet::*,
};

#[classifier]
pub fn reply_out(ctx: TcContext) -> i32 {
    match try_reply_out(&ctx) {
        Ok(action) => action,
        Err(reason) => {
            count_reason(reason, u64::from(ctx.len()));
            // On to the next program or filter at this hook (TCX's "next"), not the end of
            // the chain: other tools' programs on the bridge still see what is not ours.
            TC_ACT_UNSPEC
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

/// The rule and the client path for a packet from `src:sport` to `dst:dport`: the flow's
/// learned path, else the family's fallback path (through the default gateway, from the first
/// host address). A packet from an SNI backend is marked for local delivery instead
/// (`Err(OutSniReply)`: passed).
#[inline(always)]
fn lookup(
    ctx: &TcContext,
    (src, sport): ([u8; 16], u16),
    protocol: u8,
    family: u8,
    (dst, dport): ([u8; 16], u16),
) -> Result<(Reply, ReturnPath), Reason> {
    // A rule for one port, or a range's (the public port keeps the offset from its first).
    let reply_val = reply_for(src, sport, protocol, family).ok_or(Reason::OutNotBackend)?;
    if reply_val.flags & REPLY_MARK_LOCAL != 0 {
        ctx.set_mark(reply_val.mark);
        return Err(Reason::OutSniReply);
    }
    let learned = RETURN_PATHS.get_ptr(ClientKey { addr: dst, port: dport, protocol, family });
    if let Some(path) = learned {
        // SAFETY: valid map value pointer, copied out.
        let path = unsafe { *path };
        if !is_host_addr_only(&path) {
            return Ok((reply_val, path));
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
        Some(path) => Ok((reply_val, ReturnPath { host_addr: unsafe { (*path).host_addr }, ..fallback })),
        None => Ok((reply_val, fallback)),
    }
}

/// Flags for `bpf_l4_csum_replace`: UDP keeps a zero ("no") checksum and never produces one.
#[inline(always)]
fn l4_flags(protocol: u8) -> u64 {
    if protocol == PROTO_UDP { u64::from(BPF_F_MARK_MANGLED_0) } else { 0 }
}

/// Rewrites the source port, the MACs and redirects out of the client's uplink.
#[inline(always)]
fn finish(
    ctx: &TcContext,
    l4_off: usize,
    protocol: u8,
    sport: u16,
    reply: &Reply,
    path: &ReturnPath,
) -> Result<i32, Reason> {
    let check_off = l4_off + l4_check_off(protocol);
    let old = u64::from(u16::from_ne_bytes(sport.to_be_bytes()));
    let new = u64::from(u16::from_ne_bytes(reply.public_port.to_be_bytes()));
    ctx.l4_csum_replace(check_off, old, new, 2 | l4_flags(protocol)).map_err(|_| Reason::OutTruncated)?;
    ctx.store(l4_off, &reply.public_port.to_be_bytes(), 0).map_err(|_| Reason::OutTruncated)?;
    ctx.store(0, &path.client_mac, 0).map_err(|_| Reason::OutTruncated)?;
    ctx.store(6, &path.host_mac, 0).map_err(|_| Reason::OutTruncated)?;
    count_rule_out(reply.slot, u64::from(ctx.len()));
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(path.ifindex, 0) } as i32)
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
    let (reply, path) = lookup(ctx, (addr16_v4(src), sport), protocol, FAMILY_V4, (addr16_v4(dst), dport))?;

    let new_src = addr4(&path.host_addr);
    let old = u64::from(u32::from_ne_bytes(src));
    let new = u64::from(u32::from_ne_bytes(new_src));
    ctx.l4_csum_replace(
        l4_off + l4_check_off(protocol),
        old,
        new,
        u64::from(BPF_F_PSEUDO_HDR) | 4 | l4_flags(protocol),
    )
    .map_err(|_| Reason::OutTruncated)?;
    ctx.l3_csum_replace(ETH_HLEN + 10, old, new, 4).map_err(|_| Reason::OutTruncated)?;
    ctx.store(ETH_HLEN + 12, &new_src, 0).map_err(|_| Reason::OutTruncated)?;
    finish(ctx, l4_off, protocol, sport, &reply, &path)
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
    let mut src: [u8; 16] = ctx.load(ETH_HLEN + 8).map_err(|_| Reason::OutTruncated)?;
    let dst: [u8; 16] = ctx.load(ETH_HLEN + 24).map_err(|_| Reason::OutTruncated)?;
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let sport = u16::from_be(ctx.load::<u16>(l4_off).map_err(|_| Reason::OutTruncated)?);
    let dport = u16::from_be(ctx.load::<u16>(l4_off + 2).map_err(|_| Reason::OutTruncated)?);
    let (reply, path) = lookup(ctx, (src, sport), next, FAMILY_V6, (dst, dport))?;

    let mut new_src = path.host_addr;
    // SAFETY: both buffers are 16-byte stack arrays, a multiple of 4 as the helper requires.
    let diff = unsafe { bpf_csum_diff(src.as_mut_ptr().cast(), 16, new_src.as_mut_ptr().cast(), 16, 0) };
    ctx.l4_csum_replace(l4_off + l4_check_off(next), 0, diff as u64, u64::from(BPF_F_PSEUDO_HDR) | l4_flags(next))
        .map_err(|_| Reason::OutTruncated)?;
    ctx.store(ETH_HLEN + 8, &new_src, 0).map_err(|_| Reason::OutTruncated)?;
    finish(ctx, l4_off, next, sport, &reply, &path)
}
