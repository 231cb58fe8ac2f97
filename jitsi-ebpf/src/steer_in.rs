//! `steer_in` (XDP, uplink): a TCP/UDP packet for a host address and a steered port gets its
//! destination rewritten to the rule's backend (address, port, MACs, IPv4 header and L4
//! checksums) and is redirected into the backend's bridge port, bypassing the host stack.
//! Everything else passes untouched, counted by reason.

use aya_ebpf::{bindings::xdp_action, helpers::bpf_redirect, macros::xdp, programs::XdpContext};
use jitsi_common::{
    ClientKey, FAMILY_V4, FAMILY_V6, HostAddrKey, PROTO_TCP, PROTO_UDP, RULE_HAS_BACKEND, RULE_RESOLVED, Reason,
    ReturnPath, Rule, RuleKey,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    csum,
    maps::{HOST_ADDRS, RETURN_PATHS, RULES, count_reason, count_rule_in},
    packet::*,
};

/// Not steered: why, and the frame length where it is known.
type Miss = (Reason, u64);

#[xdp]
pub fn steer_in(ctx: XdpContext) -> u32 {
    match try_steer_in(&ctx) {
        Ok(action) => action,
        Err((reason, bytes)) => {
            count_reason(reason, bytes);
            if reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
        }
    }
}

#[inline(always)]
fn try_steer_in(ctx: &XdpContext) -> Result<u32, Miss> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or((Reason::InTruncated, 0))?;
    // SAFETY: bounds checked by ptr_at.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => steer_v4(ctx, eth),
        ETH_P_IPV6 => steer_v6(ctx, eth),
        ETH_P_8021Q | ETH_P_8021AD => Err((Reason::InVlan, 0)),
        _ => Err((Reason::InNotIp, 0)),
    }
}

#[inline(always)]
fn is_local(addr: [u8; 16], family: u8) -> bool {
    HOST_ADDRS.get_ptr(HostAddrKey { addr, family, _pad: [0; 3] }).is_some()
}

/// The rule for (protocol, family, port) if it can steer; otherwise why not.
#[inline(always)]
fn rule_for(protocol: u8, family: u8, port: u16, bytes: u64) -> Result<Rule, Miss> {
    let ptr = RULES.get_ptr(RuleKey { port, protocol, family }).ok_or((Reason::InNoRule, bytes))?;
    // SAFETY: a valid map value pointer; copied out before any map update.
    let rule = unsafe { *ptr };
    if rule.flags & RULE_HAS_BACKEND == 0 {
        return Err((Reason::InNoBackendForFamily, bytes));
    }
    if rule.flags & RULE_RESOLVED == 0 {
        return Err((Reason::InBackendDown, bytes));
    }
    Ok(rule)
}

/// Records how to reach `client` (the frame's sender) for the TC reply path, writing the
/// LRU entry only when it changed so a steady flow costs one lookup per packet.
#[inline(always)]
fn learn_return_path(ctx: &XdpContext, eth: *const EthHdr, client: [u8; 16], family: u8, host_addr: [u8; 16]) {
    let key = ClientKey { addr: client, family, _pad: [0; 3] };
    // SAFETY: eth was bounds checked by the caller.
    let path = unsafe {
        ReturnPath {
            host_addr,
            ifindex: ctx.ingress_ifindex() as u32,
            client_mac: (*eth).src_addr,
            host_mac: (*eth).dst_addr,
        }
    };
    if let Some(old) = RETURN_PATHS.get_ptr(key) {
        // SAFETY: valid map value pointer.
        if same_path(unsafe { &*old }, &path) {
            return;
        }
    }
    let _ = RETURN_PATHS.insert(key, path, 0);
}

#[inline(always)]
fn same_path(a: &ReturnPath, b: &ReturnPath) -> bool {
    let mut i = 0;
    while i < 16 {
        if a.host_addr[i] != b.host_addr[i] {
            return false;
        }
        i += 1;
    }
    let mut j = 0;
    while j < 6 {
        if a.client_mac[j] != b.client_mac[j] || a.host_mac[j] != b.host_mac[j] {
            return false;
        }
        j += 1;
    }
    a.ifindex == b.ifindex
}

/// Rewrites the L4 destination port and checksum (for an address change `old_addr` ->
/// `new_addr` in the pseudo header plus the port change). UDP checksum 0 ("none", IPv4 only)
/// stays 0; a computed 0 is sent as 0xFFFF.
#[inline(always)]
fn rewrite_l4<const N: usize>(
    ctx: &XdpContext,
    l4_off: usize,
    protocol: u8,
    old_addr: &[u8; N],
    new_addr: &[u8; N],
    new_port: u16,
) -> Result<(), Miss> {
    let port: *mut [u8; 2] = ptr_at(ctx, l4_off + 2).ok_or((Reason::InTruncated, 0))?;
    let check: *mut [u8; 2] = ptr_at(ctx, l4_off + l4_check_off(protocol)).ok_or((Reason::InTruncated, 0))?;
    // SAFETY: both bounds checked above.
    unsafe {
        let old_port = *port;
        let new_port = new_port.to_be_bytes();
        let old_check = u16::from_be_bytes(*check);
        if !(protocol == PROTO_UDP && old_check == 0) {
            let mut acc = csum::start(old_check);
            acc = csum::replace_bytes(acc, old_addr, new_addr);
            acc = csum::replace_bytes(acc, &old_port, &new_port);
            let mut new_check = csum::finish(acc);
            if protocol == PROTO_UDP && new_check == 0 {
                new_check = 0xffff;
            }
            *check = new_check.to_be_bytes();
        }
        *port = new_port;
    }
    Ok(())
}

#[inline(always)]
fn set_macs(eth: *mut EthHdr, rule: &Rule) {
    // SAFETY: eth was bounds checked by the caller.
    unsafe {
        (*eth).dst_addr = rule.backend_mac;
        (*eth).src_addr = rule.bridge_mac;
    }
}

#[inline(always)]
fn steer_v4(ctx: &XdpContext, eth: *mut EthHdr) -> Result<u32, Miss> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or((Reason::InTruncated, 0))?;
    // SAFETY: the fixed 20-byte header is bounds checked; options are checked below.
    let (vihl, bytes, frags, protocol, src, dst) = unsafe {
        (
            (*ip).vihl,
            u64::from(u16::from_be_bytes((*ip).tot_len)) + ETH_HLEN as u64,
            u16::from_be_bytes((*ip).frags),
            (*ip).proto,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err((Reason::InMalformed, bytes));
    }
    if !is_local(addr16_v4(dst), FAMILY_V4) {
        return Err((Reason::InNotLocal, bytes));
    }
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err((Reason::InFragment, bytes));
    }
    if protocol != PROTO_UDP && protocol != PROTO_TCP {
        return Err((Reason::InOtherProtocol, bytes));
    }
    // IHL > 5: the L4 header starts after the options; it must be wholly present.
    let l4_off = ETH_HLEN + ihl;
    let dport: *const [u8; 2] = ptr_at(ctx, l4_off + 2).ok_or((Reason::InTruncated, bytes))?;
    if ptr_at::<u8>(ctx, l4_off + l4_min_len(protocol) - 1).is_none() {
        return Err((Reason::InTruncated, bytes));
    }
    // SAFETY: bounds checked above.
    let port = u16::from_be_bytes(unsafe { *dport });
    let rule = rule_for(protocol, FAMILY_V4, port, bytes)?;
    let new_dst = addr4(&rule.backend_addr);

    learn_return_path(ctx, eth, addr16_v4(src), FAMILY_V4, addr16_v4(dst));
    rewrite_l4(ctx, l4_off, protocol, &dst, &new_dst, rule.backend_port)?;
    // SAFETY: the IPv4 header is bounds checked above.
    unsafe {
        let acc = csum::replace_bytes(csum::start(u16::from_be_bytes((*ip).check)), &dst, &new_dst);
        (*ip).check = csum::finish(acc).to_be_bytes();
        (*ip).dst_addr = new_dst;
    }
    set_macs(eth, &rule);
    count_rule_in(rule.slot, bytes);
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(rule.ifindex, 0) } as u32)
}

/// IPv6 next-header values that are extension headers (RFC 8200 and the IANA registry).
#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[inline(always)]
fn steer_v6(ctx: &XdpContext, eth: *mut EthHdr) -> Result<u32, Miss> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or((Reason::InTruncated, 0))?;
    // SAFETY: bounds checked by ptr_at.
    let (version, bytes, next, src, dst) = unsafe {
        (
            (*ip).vcf[0] >> 4,
            u64::from(u16::from_be_bytes((*ip).payload_len)) + (ETH_HLEN + IPV6_HLEN) as u64,
            (*ip).next_hdr,
            (*ip).src_addr,
            (*ip).dst_addr,
        )
    };
    if version != 6 {
        return Err((Reason::InMalformed, bytes));
    }
    if !is_local(dst, FAMILY_V6) {
        return Err((Reason::InNotLocal, bytes));
    }
    if is_ipv6_ext_header(next) {
        return Err((Reason::InIpv6ExtHeader, bytes));
    }
    if next != PROTO_UDP && next != PROTO_TCP {
        return Err((Reason::InOtherProtocol, bytes));
    }
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let dport: *const [u8; 2] = ptr_at(ctx, l4_off + 2).ok_or((Reason::InTruncated, bytes))?;
    if ptr_at::<u8>(ctx, l4_off + l4_min_len(next) - 1).is_none() {
        return Err((Reason::InTruncated, bytes));
    }
    if next == PROTO_UDP {
        let check: *const [u8; 2] = ptr_at(ctx, l4_off + UDP_CHECK_OFF).ok_or((Reason::InTruncated, bytes))?;
        // SAFETY: bounds checked above.
        if unsafe { *check } == [0, 0] {
            return Err((Reason::InUdp6ZeroChecksum, bytes));
        }
    }
    // SAFETY: bounds checked above.
    let port = u16::from_be_bytes(unsafe { *dport });
    let rule = rule_for(next, FAMILY_V6, port, bytes)?;
    let new_dst = rule.backend_addr;

    learn_return_path(ctx, eth, src, FAMILY_V6, dst);
    rewrite_l4(ctx, l4_off, next, &dst, &new_dst, rule.backend_port)?;
    // SAFETY: bounds checked above.
    unsafe { (*ip).dst_addr = new_dst };
    set_macs(eth, &rule);
    count_rule_in(rule.slot, bytes);
    // SAFETY: plain helper call.
    Ok(unsafe { bpf_redirect(rule.ifindex, 0) } as u32)
}
