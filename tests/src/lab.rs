//! The lab topology.
//!
//! ```text
//!  inet ns                  host ns                                  backend ns (one each)
//!  eth0 203.0.113.2/24 ---- up0 203.0.113.1/24   (XDP steer_in)
//!       2001:db8:c::2/64        2001:db8:c::1/64
//!  (TX checksum offload         br0 192.0.2.1/24  (TC reply_out) --- vb-<name> ==== eth0 192.0.2.1x/24
//!   off, like a real NIC)           2001:db8:b::1/64                                   2001:db8:b::1x/64
//!                               ip_forward=0, no nftables/iptables rules    (GRO off, as in Docker)
//! ```
//! All addresses are documentation prefixes. The pin directory lives on a private bpffs
//! instance mounted in the lab's directory under /tmp (removed with the lab, together with
//! the agent's configuration and logs), so nothing under /sys/fs/bpf is touched.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    netns::{NetNs, run, unique_name},
    tap::Tap,
};

/// The host's uplink address (what clients send to).
pub const HOST_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);
/// The client's address.
pub const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 2);
/// The host's uplink IPv6 address.
pub const HOST_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 1);
/// The client's IPv6 address.
pub const CLIENT_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xc, 0, 0, 0, 0, 2);
/// The `[flood]` section [`Lab::write_config`] adds: the client's addresses are never limited.
pub const CLIENT_ALLOWED: &str = "[flood]\nallow = [\"203.0.113.2\", \"2001:db8:c::2\"]\n";
/// The bridge's addresses (the backends' gateway).
pub const BRIDGE_V4: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
/// See [`BRIDGE_V4`].
pub const BRIDGE_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 1);

/// A backend namespace on the bridge.
pub struct Backend {
    /// Role name ("jvb", "turn", "web").
    pub name: String,
    /// Its namespace.
    pub ns: NetNs,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
}

impl Backend {
    /// `v4:port`.
    pub fn addr4(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(self.v4), port)
    }

    /// `[v6]:port`.
    pub fn addr6(&self, port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(self.v6), port)
    }
}

/// The lab's temporary directory: a private bpffs mounted at `bpffs/`, the agent's
/// configuration and logs. Unmounted and removed on drop.
pub struct WorkDir {
    dir: PathBuf,
}

impl WorkDir {
    fn new() -> Result<Self> {
        let dir = std::env::temp_dir().join(unique_name("jitsi-lab"));
        std::fs::create_dir_all(dir.join("bpffs"))?;
        let work = WorkDir { dir };
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(work.bpffs()))?;
        Ok(work)
    }

    fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.bpffs()).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The whole topology. Dropping it removes every namespace, the bpffs and the pins.
pub struct Lab {
    /// The "internet" client namespace.
    pub inet: NetNs,
    /// The host namespace (uplink `up0`, bridge `br0`); the agent runs here.
    pub host: NetNs,
    /// Backends, in the order given to [`Lab::new`].
    pub backends: Vec<Backend>,
    /// The agent's pin directory (on a private bpffs).
    pub pin_dir: PathBuf,
    // Declared last: dropped after the namespaces (and so after the links' interfaces).
    work: WorkDir,
}

/// One TLS route: the meet name to the web backend's TLS port, transparent (the default
/// listen address, 443).
pub const SNI_WEB: &str = r#"
[tls]
[[tls.route]]
name = "web"
server_names = ["meet.example.test"]
backend = "192.0.2.12:8443"
"#;

/// The lab's standard steering rules: jvb (udp/10000), coturn (udp/3478) and web
/// (tcp/80 -> 8000), each with an IPv4 and an IPv6 backend.
pub const LAB_RULES: &str = r#"[[steer]]
name = "jvb"
protocol = "udp"
port = 10000
backend = ["192.0.2.10:10000", "[2001:db8:b::10]:10000"]

[[steer]]
name = "turn"
protocol = "udp"
port = 3478
backend = ["192.0.2.11:3478", "[2001:db8:b::11]:3478"]

[[steer]]
name = "web"
protocol = "tcp"
port = 80
backend = ["192.0.2.12:8000", "[2001:db8:b::12]:8000"]
"#;

/// What the uplink `up0` is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Uplink {
    /// A veth pair to the "internet" namespace.
    Veth,
    /// A tap device the test writes to.
    Tap,
    /// A VXLAN tunnel to the "internet" namespace over a veth pair.
    Vxlan,
}

/// The uplink's name in the host namespace.
pub const UPLINK: &str = "up0";
/// The bridge's name in the host namespace.
pub const BRIDGE: &str = "br0";

impl Lab {
    /// Builds the topology with one backend per name; backend `i` gets 192.0.2.(10+i) and
    /// 2001:db8:b::(10+i), i.e. jvb, turn, web -> .10/::10, .11/::11, .12/::12.
    pub fn new(backends: &[&str]) -> Result<Self> {
        Ok(Self::build(backends, Uplink::Veth)?.0)
    }

    /// The lab with a tap device as the uplink `up0` instead of the veth: the test writes the
    /// frames the host receives, each in the checksum state it chooses, and reads the frames
    /// the host sends (see [`Tap`]). The "internet" namespace is left empty.
    pub fn with_tap_uplink(backends: &[&str]) -> Result<(Self, Tap)> {
        let (lab, tap) = Self::build(backends, Uplink::Tap)?;
        Ok((lab, tap.context("no tap")?))
    }

    /// The lab with a VXLAN device as the uplink `up0`, its underlay a veth pair `ul0`
    /// (198.51.100.1/24 here, .2/24 in the "internet" namespace, whose `eth0` is the other
    /// VXLAN end with the client's addresses). Both ends checksum the outer UDP header
    /// (`udpcsum`) and the client's end completes its checksums in software (TX offload off):
    /// once the host has verified an outer checksum, the inner packet reaches `up0` as
    /// `CHECKSUM_COMPLETE` (computed in software, so that a sum that does not match is a drop,
    /// where a NIC's would be summed again first). Both VXLAN devices have an MTU of 1450, so
    /// that no outer packet is fragmented.
    pub fn with_vxlan_uplink(backends: &[&str]) -> Result<Self> {
        Ok(Self::build(backends, Uplink::Vxlan)?.0)
    }

    fn build(backends: &[&str], uplink: Uplink) -> Result<(Self, Option<Tap>)> {
        if !is_root() {
            bail!("the lab needs root");
        }
        let work = WorkDir::new()?;
        let inet = NetNs::new("jl-inet")?;
        let host = NetNs::new("jl-host")?;
        for ns in [&inet, &host] {
            no_dad(ns)?;
        }
        let tap = match uplink {
            Uplink::Tap => Some(Tap::create(&host, UPLINK)?),
            Uplink::Vxlan => {
                host.ip(&["link", "add", "ul0", "type", "veth", "peer", "name", "ul0", "netns", inet.name()])?;
                for (ns, name, local, remote) in
                    [(&host, UPLINK, "198.51.100.1", "198.51.100.2"), (&inet, "eth0", "198.51.100.2", "198.51.100.1")]
                {
                    ns.ip(&["addr", "add", &format!("{local}/24"), "dev", "ul0"])?;
                    ns.ip(&["link", "set", "ul0", "up"])?;
                    ns.ip(&[
                        "link", "add", name, "mtu", "1450", "type", "vxlan", "id", "42", "local", local, "remote",
                        remote, "dstport", "4789", "udpcsum",
                    ])?;
                }
                for dev in ["eth0", "ul0"] {
                    inet.exec("ethtool", &["-K", dev, "tx", "off"])?;
                }
                None
            }
            Uplink::Veth => {
                // Uplink: up0 (host) <-> eth0 (inet).
                host.ip(&["link", "add", UPLINK, "type", "veth", "peer", "name", "eth0", "netns", inet.name()])?;
                // A real NIC delivers full checksums; veth TX offload would leave CHECKSUM_PARTIAL
                // packets whose checksum XDP cannot see. Turn it off on the "internet" side.
                inet.exec("ethtool", &["-K", "eth0", "tx", "off"])?;
                None
            }
        };
        if uplink != Uplink::Tap {
            // The client's end of the uplink: `eth0` in the "internet" namespace.
            inet.ip(&["addr", "add", "203.0.113.2/24", "dev", "eth0"])?;
            inet.ip(&["addr", "add", "2001:db8:c::2/64", "dev", "eth0", "nodad"])?;
            inet.ip(&["link", "set", "eth0", "up"])?;
        }
        host.ip(&["addr", "add", "203.0.113.1/24", "dev", UPLINK])?;
        host.ip(&["addr", "add", "2001:db8:c::1/64", "dev", UPLINK, "nodad"])?;
        host.ip(&["link", "set", UPLINK, "up"])?;
        // The bridge for the backends.
        host.ip(&["link", "add", BRIDGE, "type", "bridge"])?;
        host.ip(&["addr", "add", "192.0.2.1/24", "dev", BRIDGE])?;
        host.ip(&["addr", "add", "2001:db8:b::1/64", "dev", BRIDGE, "nodad"])?;
        host.ip(&["link", "set", BRIDGE, "up"])?;
        // The reply path must not depend on forwarding: make sure it is off here.
        host.sysctl("net.ipv4.ip_forward", "0")?;
        host.sysctl("net.ipv6.conf.all.forwarding", "0")?;

        let mut out = Vec::new();
        for (i, name) in backends.iter().enumerate() {
            let ns = NetNs::new(&format!("jl-{name}"))?;
            no_dad(&ns)?;
            let port = format!("vb-{i}");
            host.ip(&["link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns", ns.name()])?;
            host.ip(&["link", "set", &port, "master", BRIDGE])?;
            host.ip(&["link", "set", &port, "up"])?;
            let last = 10 + i as u8;
            let v4 = Ipv4Addr::new(192, 0, 2, last);
            // Written like the IPv4 one: backend 0 is 2001:db8:b::10 (the group 0x10).
            let v6 = Ipv6Addr::new(0x2001, 0xdb8, 0xb, 0, 0, 0, 0, 0x10 + i as u16);
            ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", "eth0"])?;
            ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", "eth0", "nodad"])?;
            ns.ip(&["link", "set", "eth0", "up"])?;
            ns.ip(&["route", "add", "default", "via", "192.0.2.1"])?;
            ns.ip(&["-6", "route", "add", "default", "via", "2001:db8:b::1"])?;
            // GRO stays off here, as Docker leaves it: the agent must turn it on (XDP_REDIRECT
            // into a veth delivers only if the peer has NAPI), and the lab tests check it does.
            out.push(Backend { name: (*name).to_string(), ns, v4, v6 });
        }
        let pin_dir = work.bpffs().join("jitsi-agent");
        Ok((Lab { inet, host, backends: out, pin_dir, work }, tap))
    }

    /// The lab's temporary directory (removed with the lab).
    pub fn work_dir(&self) -> &std::path::Path {
        &self.work.dir
    }

    /// The backend called `name`.
    pub fn backend(&self, name: &str) -> &Backend {
        self.backends.iter().find(|b| b.name == name).unwrap_or_else(|| panic!("no backend {name} in the lab"))
    }

    /// `jitsi-agent status --json` run in the host namespace (where the uplink and bridge are),
    /// reading this lab's pins; no rates.
    pub fn status(&self) -> Result<serde_json::Value> {
        let mut cmd = crate::agent::command_in(&self.host, &crate::agent::agent_bin())?;
        cmd.args(["status", "--json", "--interval", "0", "--pin-dir"]).arg(&self.pin_dir);
        let out = run(&mut cmd)?;
        serde_json::from_str(&out).with_context(|| format!("status --json is not JSON: {out}"))
    }

    /// `status` as a person reads it (the table).
    pub fn status_text(&self) -> Result<String> {
        let mut cmd = crate::agent::command_in(&self.host, &crate::agent::agent_bin())?;
        cmd.args(["status", "--interval", "0", "--pin-dir"]).arg(&self.pin_dir);
        run(&mut cmd)
    }

    /// A splitter refusal count from `status --json`.
    pub fn splitter_refused(&self, reason: &str) -> u64 {
        let st = self.status().expect("status");
        st["splitter"]["refused"]
            .as_array()
            .expect("splitter.refused")
            .iter()
            .find(|r| r["reason"] == reason)
            .and_then(|r| r["connections"].as_u64())
            .unwrap_or_else(|| panic!("no refusal reason {reason} in {st}"))
    }

    /// The refusal count for `reason` once it reaches `n`, or after 3 s (the splitter's
    /// counters reach the pins every second): the caller asserts it.
    pub fn refused_after_wait(&self, reason: &str, n: u64) -> u64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
        while self.splitter_refused(reason) < n && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        self.splitter_refused(reason)
    }

    /// Writes an agent configuration for this lab: `rules` are TOML `[[steer]]` blocks.
    pub fn write_config(&self, rules: &str) -> Result<PathBuf> {
        self.write_config_xdp(None, rules)
    }

    /// [`Lab::write_config`] with `[uplink] xdp_mode = mode` (`auto`, `driver`, `generic`).
    ///
    /// Unless `rules` has a `[flood]` section of its own, the client's addresses are in
    /// `[flood] allow`: the tests load the agent from that one address (connections back to back,
    /// thousands a second) far beyond what one address of a conference sends. The limits still
    /// count its packets (`flood_sources`); they apply in full to every other source, and
    /// `lab_flood` tests them with sections of its own.
    pub fn write_config_xdp(&self, mode: Option<&str>, rules: &str) -> Result<PathBuf> {
        let path = self.work.dir.join("agent.toml");
        let mode = mode.map(|m| format!("xdp_mode = \"{m}\"\n")).unwrap_or_default();
        let flood = if rules.contains("[flood]") { String::new() } else { CLIENT_ALLOWED.to_string() };
        let text = format!(
            "pin_dir = \"{}\"\n[uplink]\ninterface = \"{UPLINK}\"\n{mode}\n{rules}\n{flood}",
            self.pin_dir.display()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// Asserts the host namespace forwards nothing by itself: forwarding off, and no
    /// nftables or iptables rules.
    pub fn assert_host_is_plain(&self) -> Result<()> {
        let fwd4 = self.host.sysctl_get("net.ipv4.ip_forward")?;
        let fwd6 = self.host.sysctl_get("net.ipv6.conf.all.forwarding")?;
        if fwd4 != "0" || fwd6 != "0" {
            bail!("host namespace forwards: ip_forward={fwd4} ipv6 forwarding={fwd6}");
        }
        let nft = self.host.exec("nft", &["list", "ruleset"])?;
        if !nft.trim().is_empty() {
            bail!("host namespace has nftables rules:\n{nft}");
        }
        for cmd in ["iptables-legacy-save", "ip6tables-legacy-save"] {
            let out = self.host.exec_output(cmd, &[])?;
            let rules: Vec<_> = String::from_utf8_lossy(&out.stdout)
                .lines()
                .filter(|l| l.starts_with("-A"))
                .map(str::to_owned)
                .collect();
            if !rules.is_empty() {
                bail!("host namespace has {cmd} rules: {rules:?}");
            }
        }
        Ok(())
    }

    /// Whether GRO is on at backend `name`'s eth0 (the agent must turn it on).
    pub fn backend_gro_on(&self, name: &str) -> Result<bool> {
        let out = self.backend(name).ns.exec("ethtool", &["-k", "eth0"])?;
        Ok(out.lines().any(|l| l.trim() == "generic-receive-offload: on"))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Unpinning the links detaches the programs; then the namespaces go.
        let _ = jitsi_agent::datapath::remove_pins(&self.pin_dir);
    }
}

/// Turns IPv6 duplicate address detection off in a fresh lab namespace (before its
/// interfaces exist), so that link-local addresses are usable at once: with DAD, a bridge
/// just created has only a tentative link-local address for a second and cannot send
/// neighbour solicitations, which would make the first backend resolution fail.
fn no_dad(ns: &NetNs) -> Result<()> {
    ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
    ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
}

/// Whether we run as root.
pub fn is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}
