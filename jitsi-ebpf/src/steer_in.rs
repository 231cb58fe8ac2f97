//! `steer_in` (XDP, uplink): a TCP/UDP packet for a host address and a steered port gets its
//! destination rewritten to the rule's backend (address, port, MACs, IPv4 header and L4
//! checksums) and is redirected into the backend's bridge port, bypassing the host stack (on an
//! uplink in generic mode, by `redirect_in` at its TC ingress: see `deliver`).
//! Everything else passes untouched, counted by reason. A packet for a steered port from a
//! source that cannot arrive on the uplink (martian, host address, backends' subnet) is
//! dropped, and so is one over its source's flood limits (`flood.rs`), a SYN to a splitter's
//! port included. Every byte counter counts the frame as received, not what its headers claim.

use aya_ebpf::{
    bindings::{BPF_NOEXIST, xdp_action},
    helpers::{bpf_redirect, bpf_xdp_adjust_meta},
    macros::xdp,
    maps::lpm_trie::Key,
    programs::XdpContext,
};
use jitsi_common::{
    ClientKey, FALLBACK_V4, FALLBACK_V6, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, Reason, ReturnPath, Rule,
    SOURCE_ON_LINK, SOURCE_SPOOFED, STEER_META_MAGIC, SteerMeta,
};
use network_types::{eth::EthHdr, ip::Ipv4Hdr, ip::Ipv6Hdr};

use crate::{
    csum,
    flood::{self, Flow, Source},
    lookup::{is_local, rule_for},
    maps::{FALLBACK_PATHS, GENERIC_UPLINKS, RETURN_PATHS, SOURCE_PREFIXES, count_reason, count_rule_in},
    packet::*,
};

/// Not steered: why.
type Miss = Reason;

#[xdp]
pub fn steer_in(ctx: XdpContext) -> u32 {
    let frame = (ctx.data_end() - ctx.data()) as u64;
    crate::maps::count_upgrade_test_marker();
    match try_steer_in(&ctx, frame) {
        Ok(action) => action,
        Err(reason) => {
            count_reason(reason, frame);
            if reason.is_drop() { xdp_action::XDP_DROP } else { xdp_action::XDP_PASS }
        }
    }
}

#[inline(always)]
fn try_steer_in(ctx: &XdpContext, frame: u64) -> Result<u32, Miss> {
    let eth: *mut EthHdr = ptr_at(ctx, 0).ok_or(Reason::InTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    match u16::from_be(unsafe { (*eth).ether_type }) {
        ETH_P_IP => steer_v4(ctx, eth, frame),
        ETH_P_IPV6 => steer_v6(ctx, eth, frame),
        ETH_P_8021Q | ETH_P_8021AD => Err(Reason::InVlan),
        _ => Err(Reason::InNotIp),
    }
}

/// What `source_prefixes` says about `src` (IPv4 given IPv4-mapped): `SOURCE_SPOOFED` is a
/// miss; otherwise whether the source is on the uplink's own subnet.
#[inline(always)]
fn source_on_link(src: [u8; 16]) -> Result<bool, Miss> {
    match SOURCE_PREFIXES.get(&Key::new(128, src)) {
        Some(&SOURCE_SPOOFED) => Err(Reason::InSpoofedSource),
        Some(&SOURCE_ON_LINK) => Ok(true),
        _ => Ok(false),
    }
}

/// `::ffff:0:0/96`: an IPv4-mapped IPv6 source never comes off the wire (RFC 4291 2.5.5.2).
/// Checked here because `source_prefixes` holds IPv4 prefixes in that form.
#[inline(always)]
fn is_v4_mapped(a: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 10 {
        if a[i] != 0 {
            return false;
        }
        i += 1;
    }
    a[10] == 0xff && a[11] == 0xff
}

/// Records how to reach the flow `key` (the frame's sender) for the TC reply path, once: an
/// entry is never overwritten (a spoofed packet cannot redirect a live flow's replies), and a
/// flow whose path is the family's fallback path is not written at all (a flood through the
/// gateway cannot flush the table). A client off the uplink's subnet is only ever reached
/// through the gateway, whatever MAC its frame came from: only the host address it used is
/// recorded, and the reply takes the gateway's MAC as it is then (a replaced router is
/// followed).
#[inline(always)]
fn learn_return_path(ctx: &XdpContext, eth: *const EthHdr, key: ClientKey, on_link: bool, host_addr: [u8; 16]) {
    if RETURN_PATHS.get_ptr(key).is_some() {
        return;
    }
    // SAFETY: eth was bounds checked by the caller.
    let mut path = unsafe {
        ReturnPath {
            host_addr,
            ifindex: ctx.ingress_ifindex() as u32,
            client_mac: (*eth).src_addr,
            host_mac: (*eth).dst_addr,
        }
    };
    let index = if key.family == FAMILY_V4 { FALLBACK_V4 } else { FALLBACK_V6 };
    if let Some(fallback) = FALLBACK_PATHS.get(index)
        && fallback.ifindex != 0
    {
        if !on_link {
            if same_addr(&fallback.host_addr, &host_addr) {
                return;
            }
            path = ReturnPath { host_addr, ifindex: 0, client_mac: [0; 6], host_mac: [0; 6] };
        } else if same_path(fallback, &path) {
            return;
        }
    }
    let _ = RETURN_PATHS.insert(key, path, u64::from(BPF_NOEXIST));
}

#[inline(always)]
fn same_addr(a: &[u8; 16], b: &[u8; 16]) -> bool {
    let mut i = 0;
    while i < 16 {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[inline(always)]
fn same_path(a: &ReturnPath, b: &ReturnPath) -> bool {
    if !same_addr(&a.host_addr, &b.host_addr) {
        return false;
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
/// stays 0; a computed 0 is sent as 0xFFFF. Returns what the two fields' change adds to the
/// packet's one's-complement sum (`csum::replace_bytes` from 0).
#[inline(always)]
fn rewrite_l4<const N: usize>(
    ctx: &XdpContext,
    l4_off: usize,
    protocol: u8,
    old_addr: &[u8; N],
    new_addr: &[u8; N],
    new_port: u16,
) -> Result<u32, Miss> {
    let port: *mut [u8; 2] = ptr_at(ctx, l4_off + 2).ok_or(Reason::InTruncated)?;
    let check: *mut [u8; 2] = ptr_at(ctx, l4_off + l4_check_off(protocol)).ok_or(Reason::InTruncated)?;
    // SAFETY: both bounds checked above.
    unsafe {
        let old_port = *port;
        let new_port = new_port.to_be_bytes();
        let old_bytes = *check;
        let old_check = u16::from_be_bytes(old_bytes);
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
        Ok(csum::replace_bytes(csum::replace_bytes(0, &old_port, &new_port), &old_bytes, &*check))
    }
}

/// Sends the rewritten packet to the backend's bridge port `ifindex`. On an uplink in generic
/// mode (listed in `generic_uplinks`) it is passed on to `redirect_in` at the uplink's TC
/// ingress instead, with `delta` (what the rewrite changed, from the IP header on) in the
/// metadata: generic XDP leaves an skb's `CHECKSUM_COMPLETE` sum as it was, and a redirect from
/// here would hand the backend a packet whose sum no longer matches (it drops UDP as
/// `InCsumErrors`); TC's redirect keeps the sum right once `bpf_csum_update` has added `delta`.
/// Without room for the metadata the packet is redirected from here.
#[inline(always)]
fn deliver(ctx: &XdpContext, ifindex: u32, delta: u32) -> u32 {
    let uplink = ctx.ingress_ifindex() as u32;
    const META: usize = core::mem::size_of::<SteerMeta>();
    // SAFETY: plain helper call; it moves only the metadata start, checked below.
    if GENERIC_UPLINKS.get_ptr(uplink).is_some() && unsafe { bpf_xdp_adjust_meta(ctx.ctx, -(META as i32)) } == 0 {
        let meta = ctx.metadata();
        if meta + META <= ctx.data() {
            let value = SteerMeta { magic: STEER_META_MAGIC, ifindex, csum_delta: csum::wsum_of(delta) };
            // SAFETY: META bytes of metadata, bounds checked against the packet start above.
            unsafe { core::ptr::write_unaligned(meta as *mut SteerMeta, value) };
            return xdp_action::XDP_PASS;
        }
    }
    // SAFETY: plain helper call.
    unsafe { bpf_redirect(ifindex, 0) as u32 }
}

/// The rule that steers `port`, as `rule_for`; a TCP segment to a port no rule steers is
/// first put to the flood limits (a SYN to a splitter's port takes a new-flow token).
#[inline(always)]
fn steered(
    ctx: &XdpContext,
    l4_off: usize,
    protocol: u8,
    family: u8,
    port: u16,
    source: Source,
) -> Result<(&'static Rule, u16), Miss> {
    match rule_for(protocol, family, port) {
        Err(Reason::InNoRule) if protocol == PROTO_TCP => {
            flood::admit_unsteered_tcp(source, port, flow_of(ctx, l4_off, protocol, 0)?)?;
            Err(Reason::InNoRule)
        }
        found => found,
    }
}

/// TCP flags: SYN and ACK.
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
/// Offset of the flags byte in the TCP header.
const TCP_FLAGS_OFF: usize = 13;

/// What the packet is to the flood limits' new-flow bucket.
#[inline(always)]
fn flow_of(ctx: &XdpContext, l4_off: usize, protocol: u8, sport: u16) -> Result<Flow, Miss> {
    if protocol == PROTO_UDP {
        return Ok(Flow::Udp(sport));
    }
    let flags: *const u8 = ptr_at(ctx, l4_off + TCP_FLAGS_OFF).ok_or(Reason::InTruncated)?;
    // SAFETY: bounds checked above.
    let flags = unsafe { *flags };
    Ok(if flags & (TCP_SYN | TCP_ACK) == TCP_SYN { Flow::Syn } else { Flow::Known })
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
fn steer_v4(ctx: &XdpContext, eth: *mut EthHdr, frame: u64) -> Result<u32, Miss> {
    let ip: *mut Ipv4Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::InTruncated)?;
    // SAFETY: the fixed 20-byte header is bounds checked; options are checked below.
    let (vihl, frags, protocol, src, dst) =
        unsafe { ((*ip).vihl, u16::from_be_bytes((*ip).frags), (*ip).proto, (*ip).src_addr, (*ip).dst_addr) };
    let ihl = usize::from(vihl & 0x0f) * 4;
    if vihl >> 4 != 4 || ihl < 20 {
        return Err(Reason::InMalformed);
    }
    if !is_local(addr16_v4(dst), FAMILY_V4) {
        return Err(Reason::InNotLocal);
    }
    if frags & (IP_MF | IP_OFFSET) != 0 {
        return Err(Reason::InFragment);
    }
    if protocol != PROTO_UDP && protocol != PROTO_TCP {
        return Err(Reason::InOtherProtocol);
    }
    // IHL > 5: the L4 header starts after the options; it must be wholly present.
    let l4_off = ETH_HLEN + ihl;
    let ports: *const [u8; 4] = ptr_at(ctx, l4_off).ok_or(Reason::InTruncated)?;
    if ptr_at::<u8>(ctx, l4_off + l4_min_len(protocol) - 1).is_none() {
        return Err(Reason::InTruncated);
    }
    // SAFETY: bounds checked above.
    let (sport, port) = unsafe {
        let p = *ports;
        (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
    };
    let source = Source { addr: addr16_v4(src), family: FAMILY_V4, mapped: mapped_v4(src) };
    let (rule, backend_port) = steered(ctx, l4_off, protocol, FAMILY_V4, port, source)?;
    let on_link = source_on_link(source.mapped)?;
    flood::admit_steered(source, flow_of(ctx, l4_off, protocol, sport)?)?;
    let new_dst = addr4(&rule.backend_addr);

    let key = ClientKey { addr: addr16_v4(src), port: sport, protocol, family: FAMILY_V4 };
    learn_return_path(ctx, eth, key, on_link, addr16_v4(dst));
    let mut delta = rewrite_l4(ctx, l4_off, protocol, &dst, &new_dst, backend_port)?;
    // SAFETY: the IPv4 header is bounds checked above.
    unsafe {
        let old_check = (*ip).check;
        let acc = csum::replace_bytes(csum::start(u16::from_be_bytes(old_check)), &dst, &new_dst);
        (*ip).check = csum::finish(acc).to_be_bytes();
        (*ip).dst_addr = new_dst;
        delta = csum::replace_bytes(csum::replace_bytes(delta, &dst, &new_dst), &old_check, &(*ip).check);
    }
    set_macs(eth, rule);
    count_rule_in(rule.slot, frame);
    Ok(deliver(ctx, rule.ifindex, delta))
}

/// IPv6 next-header values that are extension headers (RFC 8200 and the IANA registry).
#[inline(always)]
fn is_ipv6_ext_header(next: u8) -> bool {
    matches!(next, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[inline(always)]
fn steer_v6(ctx: &XdpContext, eth: *mut EthHdr, frame: u64) -> Result<u32, Miss> {
    let ip: *mut Ipv6Hdr = ptr_at(ctx, ETH_HLEN).ok_or(Reason::InTruncated)?;
    // SAFETY: bounds checked by ptr_at.
    let (version, next, src, dst) = unsafe { ((*ip).vcf[0] >> 4, (*ip).next_hdr, (*ip).src_addr, (*ip).dst_addr) };
    if version != 6 {
        return Err(Reason::InMalformed);
    }
    if !is_local(dst, FAMILY_V6) {
        return Err(Reason::InNotLocal);
    }
    if is_ipv6_ext_header(next) {
        return Err(Reason::InIpv6ExtHeader);
    }
    if next != PROTO_UDP && next != PROTO_TCP {
        return Err(Reason::InOtherProtocol);
    }
    let l4_off = ETH_HLEN + IPV6_HLEN;
    let ports: *const [u8; 4] = ptr_at(ctx, l4_off).ok_or(Reason::InTruncated)?;
    if ptr_at::<u8>(ctx, l4_off + l4_min_len(next) - 1).is_none() {
        return Err(Reason::InTruncated);
    }
    if next == PROTO_UDP {
        let check: *const [u8; 2] = ptr_at(ctx, l4_off + UDP_CHECK_OFF).ok_or(Reason::InTruncated)?;
        // SAFETY: bounds checked above.
        if unsafe { *check } == [0, 0] {
            return Err(Reason::InUdp6ZeroChecksum);
        }
    }
    // SAFETY: bounds checked above.
    let (sport, port) = unsafe {
        let p = *ports;
        (u16::from_be_bytes([p[0], p[1]]), u16::from_be_bytes([p[2], p[3]]))
    };
    if is_v4_mapped(&src) {
        // Dropped if the port is steered, passed (unlimited: it names no IPv6 source) if not.
        rule_for(next, FAMILY_V6, port)?;
        return Err(Reason::InSpoofedSource);
    }
    let source = Source { addr: src, family: FAMILY_V6, mapped: src };
    let (rule, backend_port) = steered(ctx, l4_off, next, FAMILY_V6, port, source)?;
    let on_link = source_on_link(src)?;
    flood::admit_steered(source, flow_of(ctx, l4_off, next, sport)?)?;
    let new_dst = rule.backend_addr;

    let key = ClientKey { addr: src, port: sport, protocol: next, family: FAMILY_V6 };
    learn_return_path(ctx, eth, key, on_link, dst);
    let delta = csum::replace_bytes(rewrite_l4(ctx, l4_off, next, &dst, &new_dst, backend_port)?, &dst, &new_dst);
    // SAFETY: bounds checked above.
    unsafe { (*ip).dst_addr = new_dst };
    set_macs(eth, rule);
    count_rule_in(rule.slot, frame);
    Ok(deliver(ctx, rule.ifindex, delta))
}
