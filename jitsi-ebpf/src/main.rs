//! Kernel half of jitsi-agent: `steer_in` (XDP, uplink) rewrites and redirects steered packets
//! to their backend; `reply_out` (TC ingress, bridge) sends the backends' replies back out of
//! the uplink from the host's address and public port; `redirect_in` (TC ingress, an uplink
//! in generic mode) finishes `steer_in`'s redirect there.
#![no_std]
#![no_main]

mod bench;
mod csum;
mod flood;
mod lookup;
mod maps;
mod packet;
mod redirect_in;
mod reply_out;
mod steer_in;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any program that could reach this.
    loop {}
}

/// Programs using GPL-only helpers (bpf_redirect, bpf_l4_csum_replace's friends) need this.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
