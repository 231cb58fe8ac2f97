//! Two trivial XDP programs for `cargo xtask bench` only (the agent never loads them): the
//! ceiling of the UDP benchmark (`bench_drop` on the uplink: what the sender can push) and the
//! baseline of the per-packet cost (`bench_pass`, an empty program, under BPF_PROG_TEST_RUN).

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

/// Drops every frame.
#[xdp]
pub fn bench_drop(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_DROP
}

/// Passes every frame.
#[xdp]
pub fn bench_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
