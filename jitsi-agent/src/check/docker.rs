//! Docker: reachable when the configuration names containers (each one found running), and no
//! container publishing a port the agent steers or listens on.

use bollard::query_parameters::ListContainersOptions;

use super::Check;
use crate::{
    config::{Config, PortRange},
    docker,
};

/// The Docker checks (none when Docker is neither needed nor present).
pub(super) async fn docker(config: &Config) -> Vec<Check> {
    let names = docker::referenced(config);
    let d = match docker::connect().await {
        Ok(d) => d,
        Err(e) if !names.is_empty() => {
            return vec![Check::fail(
                "docker",
                e.report(),
                "start the Docker engine, or point DOCKER_HOST at its socket (the agent resolves containers through it)",
            )];
        }
        // No container named and no engine: nothing to check.
        Err(_) => return Vec::new(),
    };
    let mut out = Vec::new();
    let version = d.version().await.ok().and_then(|v| v.version).unwrap_or_else(|| "?".into());
    out.push(Check::ok("docker", format!("engine {version} reachable")));
    let subnet = config.stack.as_ref().map(|s| s.subnet);
    match docker::resolve(&d, &names, subnet).await {
        Ok(found) => {
            for (name, c) in found {
                let what = format!("container {name}");
                out.push(match c {
                    Some(c) => Check::ok(what, format!("running ({}), {:?} {:?}", c.id, c.v4, c.v6)),
                    None => Check::warn(
                        what,
                        "not running: its traffic is dropped until it starts",
                        "start it (`jitsi-agent stack up`, or docker compose up -d)",
                    ),
                });
            }
        }
        Err(e) => out.push(Check::fail("docker", e.report(), "check the Docker engine")),
    }
    let ours: Vec<(String, PortRange)> = config
        .steer
        .iter()
        .map(|r| (r.protocol.to_string(), r.port))
        .chain(config.tls.iter().flat_map(|s| s.listen.iter().map(|a| ("tcp".to_string(), PortRange::one(a.port())))))
        .collect();
    if let Ok(list) = d.list_containers(Some(ListContainersOptions::default())).await {
        for c in list {
            let name =
                c.names.iter().flatten().next().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default();
            for p in c.ports.iter().flatten() {
                let proto = p.typ.map(|t| t.to_string()).unwrap_or_default();
                if let Some(public) = p.public_port
                    && ours.iter().any(|(p, r)| *p == proto && r.contains(public))
                {
                    out.push(Check::fail(
                        format!("port {proto}/{public}"),
                        format!("published by container {name} (docker-proxy and DNAT take it from the agent)"),
                        "remove that `ports:` entry from its compose file (`jitsi-agent stack init` writes none)",
                    ));
                }
            }
        }
    }
    out
}
