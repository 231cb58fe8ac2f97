//! The kernel, the privileges and the pin directory.

use std::path::Path;

use super::Check;
use crate::datapath::{MAP_NAMES, is_bpffs};

/// Oldest kernel with everything the agent uses (TCX links: 6.6; XDP links: 5.9; BTF maps).
const MIN_KERNEL: (u32, u32) = (6, 6);

/// Kernel version and BTF.
pub(super) fn kernel() -> Vec<Check> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mut nums = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (nums.next().unwrap_or(0), nums.next().unwrap_or(0));
    let mut out = vec![if version >= MIN_KERNEL {
        Check::ok("kernel", format!("{release} (TCX and XDP links need >= {}.{})", MIN_KERNEL.0, MIN_KERNEL.1))
    } else {
        Check::fail(
            "kernel",
            format!("{release} is older than {}.{}", MIN_KERNEL.0, MIN_KERNEL.1),
            "upgrade the kernel (Debian 12: the bookworm-backports kernel)",
        )
    }];
    out.push(if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Check::ok("btf", "/sys/kernel/btf/vmlinux present")
    } else {
        Check::fail("btf", "the kernel exposes no BTF", "use a kernel built with CONFIG_DEBUG_INFO_BTF=y")
    });
    out
}

/// Capabilities the daemon uses, by bit number.
const CAPS: [(u32, &str, &str); 5] = [
    (39, "CAP_BPF", "load programs and create maps"),
    (12, "CAP_NET_ADMIN", "attach XDP/TC, netlink routes and rules, IP_TRANSPARENT"),
    (21, "CAP_SYS_ADMIN", "mount bpffs, enter containers' namespaces, pin objects"),
    (38, "CAP_PERFMON", "pointer arithmetic the verifier allows only with it"),
    (10, "CAP_NET_BIND_SERVICE", "listen on 443 without socket activation"),
];

/// The effective capabilities.
pub(super) fn privileges() -> Check {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    let missing: Vec<String> =
        CAPS.iter().filter(|(bit, _, _)| eff & (1 << bit) == 0).map(|(_, n, why)| format!("{n} ({why})")).collect();
    if missing.is_empty() {
        Check::ok("privileges", "CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_PERFMON, CAP_NET_BIND_SERVICE")
    } else {
        Check::fail(
            "privileges",
            format!("missing {}", missing.join(", ")),
            "run as root, or through the shipped systemd unit (AmbientCapabilities)",
        )
    }
}

/// The pin directory: on a bpffs, or below `/sys/fs/bpf` where the agent mounts one.
pub(super) fn bpffs(pin_dir: &Path) -> Check {
    let what = format!("bpffs {}", pin_dir.display());
    if pin_dir.is_dir() && is_bpffs(pin_dir) {
        let pinned = MAP_NAMES.iter().filter(|m| pin_dir.join(m).exists()).count();
        return Check::ok(
            what,
            if pinned == MAP_NAMES.len() {
                "holds a pinned datapath (the agent adopts it: no interruption)".to_string()
            } else {
                "on a bpffs; the datapath is pinned at the first start".to_string()
            },
        );
    }
    let root = Path::new("/sys/fs/bpf");
    if pin_dir.starts_with(root) {
        let how = if is_bpffs(root) { "created at start" } else { "the agent mounts bpffs on /sys/fs/bpf at start" };
        return Check::ok(what, how);
    }
    let existing = pin_dir.ancestors().find(|a| a.exists()).unwrap_or(Path::new("/"));
    if is_bpffs(existing) {
        Check::ok(what, "created at start (on a bpffs)")
    } else {
        Check::fail(what, "not on a bpffs", "use a pin_dir below /sys/fs/bpf, or mount -t bpf bpf <dir>")
    }
}
