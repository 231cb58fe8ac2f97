//! Bounds-checked access to packet headers and the parsed shape of an IPv4/IPv6 TCP/UDP packet.

use aya_ebpf::programs::XdpContext;

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88a8;
pub const IPV6_HLEN: usize = 40;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
/// Offset of the checksum field in the UDP and TCP headers.
pub const UDP_CHECK_OFF: usize = 6;
pub const TCP_CHECK_OFF: usize = 16;
/// IPv4 "more fragments" flag and fragment-offset mask in the `frags` field (host order).
pub const IP_MF: u16 = 0x2000;
pub const IP_OFFSET: u16 = 0x1fff;

/// A pointer to a `T` at `offset` in the XDP packet, if the packet is long enough.
#[inline(always)]
pub fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*mut T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + core::mem::size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *mut T)
}

/// Offset of the L4 checksum for `protocol`.
#[inline(always)]
pub fn l4_check_off(protocol: u8) -> usize {
    if protocol == jitsi_common::PROTO_UDP { UDP_CHECK_OFF } else { TCP_CHECK_OFF }
}

/// Minimum L4 header length for `protocol`.
#[inline(always)]
pub fn l4_min_len(protocol: u8) -> usize {
    if protocol == jitsi_common::PROTO_UDP { UDP_HLEN } else { TCP_HLEN }
}

/// Widens an IPv4 address to the 16-byte layout used in map keys.
#[inline(always)]
pub fn addr16_v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[0] = a[0];
    out[1] = a[1];
    out[2] = a[2];
    out[3] = a[3];
    out
}

/// The first four bytes of a 16-byte address (its IPv4 address).
#[inline(always)]
pub fn addr4(a: &[u8; 16]) -> [u8; 4] {
    [a[0], a[1], a[2], a[3]]
}

/// `a` IPv4-mapped (`::ffff:a.b.c.d`), as `source_prefixes` holds IPv4.
#[inline(always)]
pub fn mapped_v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[10] = 0xff;
    out[11] = 0xff;
    out[12] = a[0];
    out[13] = a[1];
    out[14] = a[2];
    out[15] = a[3];
    out
}

/// A path learned for a client off the uplink's subnet: only the host address it used is its
/// own (`ifindex` 0); the rest is the family's fallback path at the time of the reply.
#[inline(always)]
pub fn is_host_addr_only(path: &jitsi_common::ReturnPath) -> bool {
    path.ifindex == 0
}
