//! Incremental Internet checksum updates (RFC 1624, eqn. 3) for the XDP path, which has no
//! checksum helpers. The TC path uses the kernel's `bpf_l{3,4}_csum_replace` instead, which
//! also handle `CHECKSUM_PARTIAL` packets.

/// Adds the replacement of 16-bit big-endian words `old` -> `new` to the running
/// one's-complement sum `acc` (which starts as `!checksum`).
#[inline(always)]
pub fn replace_bytes<const N: usize>(acc: u32, old: &[u8; N], new: &[u8; N]) -> u32 {
    let mut acc = acc;
    let mut i = 0;
    while i + 1 < N {
        let o = u16::from_be_bytes([old[i], old[i + 1]]);
        let n = u16::from_be_bytes([new[i], new[i + 1]]);
        acc += u32::from(!o) + u32::from(n);
        i += 2;
    }
    acc
}

/// Folds a 32-bit one's-complement accumulator into the final (inverted) checksum.
#[inline(always)]
pub fn finish(acc: u32) -> u16 {
    let mut acc = acc;
    acc = (acc & 0xffff) + (acc >> 16);
    acc = (acc & 0xffff) + (acc >> 16);
    !(acc as u16)
}

/// The one's-complement sum `acc` of what a rewrite changed (built by `replace_bytes` from 0),
/// folded and byte-swapped into the kernel's `__wsum` form (16-bit words as a little-endian
/// load reads them), for `bpf_csum_update`.
#[inline(always)]
pub fn wsum_of(acc: u32) -> u32 {
    let folded = !finish(acc);
    u32::from(u16::from_ne_bytes(folded.to_be_bytes()))
}

/// Starts an update of checksum `check` (as read from the packet, big-endian).
#[inline(always)]
pub fn start(check: u16) -> u32 {
    u32::from(!check)
}
