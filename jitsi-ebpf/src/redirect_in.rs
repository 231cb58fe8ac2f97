//! `redirect_in` (TC ingress, an uplink where `steer_in` runs in generic mode): finishes what
//! `steer_in` left in a steered packet's metadata (`SteerMeta`). The packet is rewritten
//! already; its `CHECKSUM_COMPLETE` sum, if it has one, gets the rewrite's change
//! (`bpf_csum_update`, a no-op in the other checksum states), and it is redirected to the
//! backend's bridge port. TC's redirect puts the MAC header into that sum as the veth takes it
//! out, where generic XDP's does not. Every other packet goes on untouched to the next program
//! or filter at this hook (`TC_ACT_UNSPEC`, TCX's "next"): `redirect_in` is attached ahead of
//! them and must not end their chain.

use aya_ebpf::{
    bindings::TC_ACT_UNSPEC,
    helpers::{bpf_csum_update, bpf_redirect},
    macros::classifier,
    programs::TcContext,
};
use jitsi_common::{STEER_META_MAGIC, SteerMeta};

#[classifier]
pub fn redirect_in(ctx: TcContext) -> i32 {
    const META: usize = core::mem::size_of::<SteerMeta>();
    let skb = ctx.skb.skb;
    // SAFETY: reads of the context's packet pointers.
    let (meta, data) = unsafe { ((*skb).data_meta as usize, (*skb).data as usize) };
    if meta + META > data {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: META bytes of metadata, bounds checked against the packet start above.
    let m = unsafe { core::ptr::read_unaligned(meta as *const SteerMeta) };
    if m.magic != STEER_META_MAGIC {
        return TC_ACT_UNSPEC;
    }
    // SAFETY: plain helper calls on this program's skb.
    unsafe {
        bpf_csum_update(skb, m.csum_delta);
        bpf_redirect(m.ifindex, 0) as i32
    }
}
