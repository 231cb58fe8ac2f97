//! Ports: the SNI, HTTP and metrics listeners must be free (or already the agent's, or held by
//! systemd for it); steered ports must not also be published by Docker (a DNAT rule or a
//! docker-proxy listener) — XDP takes those packets first, so the publishing is dead at best
//! and, on the SNI port, diverts connections away from the agent.

use std::collections::BTreeSet;

use super::Check;
use crate::config::{Config, PortRange, Protocol};

/// A socket from `/proc/net/{tcp,tcp6,udp,udp6}`.
struct Bound {
    port: u16,
    inode: u64,
}

fn bound(proto: Protocol) -> Vec<Bound> {
    let (files, state) = match proto {
        // TCP: LISTEN; UDP: any bound socket (state 07, unconnected).
        Protocol::Tcp => (["/proc/net/tcp", "/proc/net/tcp6"], "0A"),
        Protocol::Udp => (["/proc/net/udp", "/proc/net/udp6"], "07"),
    };
    let mut out = Vec::new();
    for f in files {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.len() < 10 || cols[3] != state {
                continue;
            }
            let port = cols[1].rsplit(':').next().and_then(|p| u16::from_str_radix(p, 16).ok());
            if let (Some(port), Ok(inode)) = (port, cols[9].parse()) {
                out.push(Bound { port, inode });
            }
        }
    }
    out
}

/// The process holding socket `inode`: (pid, command name).
fn owner(inode: u64) -> Option<(u32, String)> {
    let want = format!("socket:[{inode}]");
    for proc in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = proc.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(fds) = std::fs::read_dir(proc.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()) {
                let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
                return Some((pid, comm.trim().to_string()));
            }
        }
    }
    None
}

fn holders(proto: Protocol, ports: PortRange) -> Vec<(u32, String)> {
    let set: BTreeSet<(u32, String)> =
        bound(proto).iter().filter(|b| ports.contains(b.port)).filter_map(|b| owner(b.inode)).collect();
    set.into_iter().collect()
}

fn names(h: &[(u32, String)]) -> String {
    h.iter().map(|(pid, c)| format!("{c} (pid {pid})")).collect::<Vec<_>>().join(", ")
}

/// Ports a DNAT/redirect rule in the nftables ruleset matches as a destination port.
fn nat_ports() -> Option<Vec<(Protocol, u16, String)>> {
    let out = std::process::Command::new("nft").args(["-j", "list", "ruleset"]).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let mut found = Vec::new();
    for item in v.get("nftables")?.as_array()? {
        let Some(rule) = item.get("rule") else { continue };
        let text = rule.to_string();
        if !(text.contains("\"dnat\"") || text.contains("\"redirect\"")) {
            continue;
        }
        let chain = format!(
            "{} {} chain {}",
            rule.get("family").and_then(|x| x.as_str()).unwrap_or("?"),
            rule.get("table").and_then(|x| x.as_str()).unwrap_or("?"),
            rule.get("chain").and_then(|x| x.as_str()).unwrap_or("?")
        );
        for m in rule.get("expr").and_then(|e| e.as_array()).into_iter().flatten() {
            let Some(m) = m.get("match") else { continue };
            let payload = m.pointer("/left/payload");
            let proto = payload.and_then(|p| p.get("protocol")).and_then(|p| p.as_str());
            let field = payload.and_then(|p| p.get("field")).and_then(|p| p.as_str());
            let proto = match proto {
                Some("udp") => Protocol::Udp,
                Some("tcp") => Protocol::Tcp,
                _ => continue,
            };
            if field != Some("dport") {
                continue;
            }
            if let Some(port) = m.get("right").and_then(|r| r.as_u64()).and_then(|p| u16::try_from(p).ok()) {
                found.push((proto, port, chain.clone()));
            }
        }
    }
    Some(found)
}

/// Every port check.
pub(super) fn ports(config: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    let nat = nat_ports();
    let dnat_on = |proto: Protocol, ports: PortRange| -> Vec<String> {
        nat.iter().flatten().filter(|(p, n, _)| *p == proto && ports.contains(*n)).map(|(_, _, c)| c.clone()).collect()
    };
    let mut listen: BTreeSet<(u16, &str)> = BTreeSet::new();
    for a in config.tls.iter().flat_map(|s| s.listen.iter()) {
        listen.insert((a.port(), "tls"));
    }
    for a in config.http.iter().flat_map(|h| h.listen.iter()) {
        listen.insert((a.port(), "http"));
    }
    for (port, splitter) in listen {
        let what = format!("port tcp/{port} ({splitter})");
        let h = holders(Protocol::Tcp, PortRange::one(port));
        let agent_or_systemd = h.iter().all(|(pid, c)| c == "jitsi-agent" || *pid == 1);
        out.push(if h.is_empty() {
            Check::ok(what.clone(), "free")
        } else if agent_or_systemd {
            Check::ok(what.clone(), format!("held by {} for the agent", names(&h)))
        } else {
            Check::fail(
                what.clone(),
                format!("taken by {}", names(&h)),
                "stop or move that service (HAProxy on 443 and nginx on 80 are what the splitters replace)",
            )
        });
        let chains = dnat_on(Protocol::Tcp, PortRange::one(port));
        if !chains.is_empty() {
            out.push(Check::fail(
                what,
                format!(
                    "an nftables DNAT rule for tcp/{port} ({}) diverts connections before the agent sees them",
                    chains.join("; ")
                ),
                "remove the port publishing (Docker `ports:`) or the rule",
            ));
        }
    }
    for r in &config.steer {
        let what = format!("port {}/{} (steer {})", r.protocol, r.port, r.name);
        let mut issues = Vec::new();
        let h = holders(r.protocol, r.port);
        if !h.is_empty() {
            issues.push(format!("{} listens on it but never receives from the uplink (XDP steers first)", names(&h)));
        }
        let chains = dnat_on(r.protocol, r.port);
        if !chains.is_empty() {
            issues.push(format!("nftables DNAT rule(s) for it ({}) are dead for uplink traffic", chains.join("; ")));
        }
        out.push(if issues.is_empty() {
            Check::ok(what, "no other listener or port publishing")
        } else {
            Check::warn(
                what,
                issues.join("; "),
                "remove Docker's port publishing for this port (`ports:` in docker-compose.yml): the agent replaces it",
            )
        });
    }
    out.extend(ephemeral_overlaps(config));
    if nat.is_none() {
        out.push(Check::ok("nftables", "`nft` not available: no nftables rules checked"));
    }
    if let Some(m) = &config.metrics {
        let what = format!("port tcp/{} (metrics)", m.listen.port());
        let h = holders(Protocol::Tcp, PortRange::one(m.listen.port()));
        out.push(if h.is_empty() || h.iter().all(|(_, c)| c == "jitsi-agent") {
            Check::ok(what, "free")
        } else {
            Check::fail(what, format!("taken by {}", names(&h)), "choose another [metrics] listen address")
        });
    }
    out
}

/// The host's ephemeral port range (`net.ipv4.ip_local_port_range`, which IPv6 shares).
fn ephemeral_range() -> Option<PortRange> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|p| p.parse::<u16>().ok());
    Some(PortRange { min: it.next()??, max: it.next()?? })
}

/// The kernel's default ephemeral range (32768-60999: `ip_local_port_range` in the kernel's
/// Documentation/networking/ip-sysctl.rst): what every container's network namespace has,
/// whatever the host sets in its own (the sysctl is per namespace).
const CONTAINER_EPHEMERAL: PortRange = PortRange { min: 32768, max: 60999 };

/// Steered ranges that overlap an ephemeral range, the host's or (with containers) the
/// containers': the steering has no connection tracking, so a reply to the host's or a
/// container's own outgoing flow on such a port (a DNS answer) would be steered to the backend.
fn ephemeral_overlaps(config: &Config) -> Vec<Check> {
    let containers = config.stack.is_some() || config.steer.iter().any(|r| r.container.is_some());
    let mut ranges: Vec<(PortRange, &str)> = ephemeral_range().map(|h| (h, "the host's")).into_iter().collect();
    if containers {
        match ranges.first_mut() {
            Some(h) if h.0 == CONTAINER_EPHEMERAL => h.1 = "the host's and the containers'",
            _ => ranges.push((CONTAINER_EPHEMERAL, "the containers'")),
        }
    }
    let mut out = Vec::new();
    for r in config.steer.iter().filter(|r| !r.port.is_single()) {
        let hits: Vec<&(PortRange, &str)> = ranges.iter().filter(|(e, _)| r.port.overlaps(e)).collect();
        if hits.is_empty() {
            continue;
        }
        let named: Vec<String> = hits.iter().map(|(e, whose)| format!("{whose} ephemeral ports {e}")).collect();
        let clear: Vec<String> = hits.iter().map(|(e, _)| e.to_string()).collect();
        out.push(Check::warn(
            format!("port {}/{} (steer {})", r.protocol, r.port, r.name),
            format!(
                "overlaps {}: replies to outgoing {} flows on those ports (a DNS answer) would be steered to \
                 the backend",
                named.join(" and "),
                r.protocol
            ),
            format!(
                "move the range clear of {}{}",
                clear.join(" and "),
                if containers {
                    " (coturn: [stack] relay_ports, default 61000-65535); containers keep 32768-60999 whatever \
                     the host's net.ipv4.ip_local_port_range says"
                } else {
                    ", or change net.ipv4.ip_local_port_range"
                }
            ),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port: &str) -> Config {
        let text = format!(
            "[uplink]\ninterface = \"eth0\"\n[[steer]]\nname = \"relay\"\nprotocol = \"udp\"\nport = {port}\n\
             container = \"coturn\"\ncontainer_port = 40000\n"
        );
        Config::parse(&text, "t.toml".as_ref()).unwrap()
    }

    #[test]
    fn a_range_over_the_containers_ephemeral_ports_is_named_whatever_the_host_says() {
        let warned = ephemeral_overlaps(&config("\"40000-40100\""));
        assert_eq!(warned.len(), 1);
        assert!(warned[0].detail.contains("the containers' ephemeral ports 32768-60999"), "{}", warned[0].detail);
        assert!(warned[0].fix.as_deref().unwrap_or_default().contains("clear of 32768-60999"), "{:?}", warned[0].fix);
        assert!(ephemeral_overlaps(&config("40000")).is_empty(), "one port is not a range");
        let host = ephemeral_range().unwrap();
        if !host.overlaps(&PortRange { min: 61000, max: 61010 }) {
            assert!(ephemeral_overlaps(&config("\"61000-61010\"")).is_empty());
        }
    }
}
