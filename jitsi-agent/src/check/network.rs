//! The uplink: present, addressed, and whether XDP runs there in driver mode.

use aya::programs::XdpMode;

use super::Check;
use crate::{
    config::{Config, XdpModeSetting},
    datapath, netlink,
};

/// The uplink and its XDP mode.
pub(super) async fn uplink(config: &Config) -> Vec<Check> {
    let name = &config.uplink.interface;
    let what = format!("uplink {name}");
    let h = match netlink::connect() {
        Ok(h) => h,
        Err(e) => return vec![Check::fail(what, e.report(), "run as root (netlink)")],
    };
    let link = match netlink::link_by_name(&h, name).await {
        Ok(l) => l,
        Err(_) => {
            return vec![Check::fail(
                what,
                "no such interface",
                "set [uplink] interface to the interface public traffic arrives on (see `ip -br link`)",
            )];
        }
    };
    let mut out = Vec::new();
    let addrs = if config.uplink.addresses.is_empty() {
        netlink::global_addresses(&h, link.index).await.unwrap_or_default()
    } else {
        config.uplink.addresses.clone()
    };
    out.push(if addrs.is_empty() {
        Check::fail(what, "has no global address", "configure an address, or set [uplink] addresses")
    } else {
        let list: Vec<String> = addrs.iter().map(ToString::to_string).collect();
        Check::ok(what, format!("index {}, steering packets sent to {}", link.index, list.join(", ")))
    });
    let ours = datapath::pinned_steer_in_ids(&config.pin_dir, &link.name);
    out.push(foreign_xdp(&link, &ours).unwrap_or_else(|| xdp_mode(&link, &ours, config.uplink.xdp_mode)));
    out
}

/// Another XDP program on the uplink than the agent's pinned `steer_in`: one in driver or
/// generic mode keeps `steer_in` out (the kernel takes one program in those, never both
/// modes at once), one offloaded to the NIC sees packets first.
fn foreign_xdp(link: &netlink::Link, ours: &[u32]) -> Option<Check> {
    let what = format!("xdp on {}", link.name);
    let (id, mode) = link.xdp.iter().copied().find(|(id, _)| !ours.contains(id))?;
    let detach = format!(
        "detach it with the tool that attached it (`bpftool net` shows it; `ip link set dev {} xdp{} off` removes one attached through netlink)",
        link.name,
        match mode {
            "generic" => "generic",
            "offload" => "offload",
            _ => "drv",
        }
    );
    Some(match link.xdp_among(ours) {
        Some((o, m)) => Check::warn(
            what,
            format!("program #{id} in {mode} mode beside the agent's steer_in (#{o}, {m} mode) sees packets first"),
            detach,
        ),
        None if mode == "offload" => Check::warn(
            what,
            format!(
                "program #{id} is offloaded to the NIC and is not the agent's: it will see packets before steer_in"
            ),
            detach,
        ),
        None => Check::fail(
            what,
            format!(
                "program #{id} attached in {mode} mode is not the agent's steer_in: the agent cannot attach beside it"
            ),
            detach,
        ),
    })
}

/// Driver (native) XDP, or only generic, against `[uplink] xdp_mode`. With the agent's
/// program already attached, its mode is reported; otherwise a fresh, unpinned copy of
/// `steer_in` (empty maps: it passes every packet) is attached in driver mode and detached at
/// once. `generic` chosen in the file is not a warning.
fn xdp_mode(link: &netlink::Link, ours: &[u32], setting: XdpModeSetting) -> Check {
    let what = format!("xdp on {}", link.name);
    const NATIVE: &str =
        "generic XDP works but costs more CPU per packet; a virtio-net/veth/mlx5/i40e/ixgbe NIC runs it natively";
    let attached = link.xdp_among(ours);
    if setting == XdpModeSetting::Generic {
        return match attached {
            Some((id, mode)) if mode != "generic" => Check::warn(
                what,
                format!(
                    "program #{id} attached in {mode} mode; xdp_mode = \"generic\" re-attaches it at the next start"
                ),
                "restart the agent",
            ),
            Some((id, _)) => Check::ok(what, format!("program #{id} attached in generic mode, as xdp_mode asks")),
            None => Check::ok(what, "nothing attached yet; the agent attaches in generic mode, as xdp_mode asks"),
        };
    }
    if let Some((id, mode)) = attached {
        return match mode {
            "driver" => Check::ok(what, format!("program #{id} attached in driver mode")),
            _ if setting == XdpModeSetting::Driver => Check::warn(
                what,
                format!(
                    "program #{id} attached in {mode} mode; xdp_mode = \"driver\" re-attaches it at the next start"
                ),
                "restart the agent",
            ),
            _ => Check::warn(what, format!("program #{id} attached in {mode} mode"), NATIVE),
        };
    }
    let mut bpf = match datapath::load_unattached() {
        Ok(b) => b,
        Err(e) => {
            return Check::fail(
                what,
                e.report(),
                "run as root; the kernel must accept the program (see `check` kernel line)",
            );
        }
    };
    let prog = match datapath::xdp_program(&mut bpf) {
        Ok(p) => p,
        Err(e) => return Check::fail(what, e.report(), "rebuild the agent with `cargo xtask build`"),
    };
    match prog.attach_to_if_index(link.index, XdpMode::Driver) {
        Ok(id) => {
            let _ = prog.detach(id);
            Check::ok(what, "the driver runs XDP natively")
        }
        Err(e) if setting == XdpModeSetting::Driver => Check::fail(
            what,
            format!("driver mode refused ({e}); xdp_mode = \"driver\" does not fall back"),
            "set xdp_mode = \"auto\" or \"generic\" in [uplink]",
        ),
        Err(e) => Check::warn(what, format!("driver mode refused ({e}); the agent falls back to generic mode"), NATIVE),
    }
}
