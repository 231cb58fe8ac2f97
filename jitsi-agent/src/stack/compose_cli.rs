//! `stack up`, `down`, `show`: Docker Compose (v2 `docker compose`, else v1 `docker-compose`)
//! on the generated project, and the containers as the Docker Engine API reports them.

use std::process::Command;

use bollard::query_parameters::ListContainersOptions;

use crate::{
    config::Stack,
    docker,
    error::{Error, Result},
    layout::PROJECT,
};

/// `docker compose` when the v2 plugin answers, else `docker-compose`.
pub fn compose_program() -> Result<Vec<&'static str>> {
    let works = |cmd: &[&str]| Command::new(cmd[0]).args(&cmd[1..]).output().is_ok_and(|o| o.status.success());
    if works(&["docker", "compose", "version"]) {
        Ok(vec!["docker", "compose"])
    } else if works(&["docker-compose", "version"]) {
        Ok(vec!["docker-compose"])
    } else {
        Err(Error::Compose {
            what: "running Docker Compose".into(),
            problem: "neither `docker compose` nor `docker-compose` works (apt-get install docker-compose)".into(),
        })
    }
}

/// Runs Compose with `args` on the project (output goes to the terminal).
pub fn compose(stack: &Stack, args: &[&str]) -> Result<()> {
    let dir = &stack.directory;
    if !dir.join("docker-compose.yml").exists() {
        return Err(Error::Compose {
            what: format!("{}/docker-compose.yml", dir.display()),
            problem: "missing: run `jitsi-agent stack init` first".into(),
        });
    }
    let program = compose_program()?;
    let status = Command::new(program[0])
        .args(&program[1..])
        .arg("--project-directory")
        .arg(dir)
        .arg("-f")
        .arg(dir.join("docker-compose.yml"))
        .args(args)
        .status()
        .map_err(|e| Error::io(format!("running {}", program.join(" ")), e))?;
    if !status.success() {
        return Err(Error::Compose {
            what: format!("{} {}", program.join(" "), args.join(" ")),
            problem: format!("exited with {status}"),
        });
    }
    Ok(())
}

/// One container of the project.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Shown {
    /// Compose service.
    pub service: String,
    /// Container name.
    pub name: String,
    /// `running`, `exited`, ...
    pub state: String,
    /// Docker's status line (uptime, health).
    pub status: String,
    /// The healthcheck's verdict (`healthy`, `unhealthy`, `starting`), when the container has
    /// one (the images' own `healthcheck.sh`).
    pub health: Option<String>,
    /// Addresses on its networks.
    pub addresses: Vec<String>,
}

/// The project's containers (all states), by service.
pub async fn show() -> Result<Vec<Shown>> {
    let d = docker::connect().await?;
    let filters =
        std::collections::HashMap::from([("label".to_string(), vec![format!("com.docker.compose.project={PROJECT}")])]);
    let list = d
        .list_containers(Some(ListContainersOptions { all: true, filters: Some(filters), ..Default::default() }))
        .await
        .map_err(|source| Error::Docker { what: "listing the stack's containers".into(), source })?;
    let mut out: Vec<Shown> = list
        .into_iter()
        .map(|c| Shown {
            service: c.labels.as_ref().and_then(|l| l.get("com.docker.compose.service").cloned()).unwrap_or_default(),
            name: c.names.iter().flatten().next().map(|n| n.trim_start_matches('/').to_string()).unwrap_or_default(),
            state: c.state.map(|s| s.to_string()).unwrap_or_default(),
            health: c.status.as_deref().and_then(health_of),
            status: c.status.unwrap_or_default(),
            addresses: c
                .network_settings
                .iter()
                .flat_map(|n| n.networks.iter().flatten())
                .flat_map(|(_, e)| [e.ip_address.clone(), e.global_ipv6_address.clone()])
                .flatten()
                .filter(|a| !a.is_empty())
                .collect(),
        })
        .collect();
    out.sort_by(|a, b| a.service.cmp(&b.service));
    Ok(out)
}

/// The health in Docker's status line: `Up 3 minutes (healthy)`, `(health: starting)`.
fn health_of(status: &str) -> Option<String> {
    let inner = status.rsplit_once('(')?.1.strip_suffix(')')?;
    match inner {
        "healthy" | "unhealthy" => Some(inner.to_string()),
        "health: starting" => Some("starting".into()),
        _ => None,
    }
}

/// The `show` table.
pub fn table(rows: &[Shown]) -> String {
    if rows.is_empty() {
        return format!("no container of project `{PROJECT}`\n");
    }
    let mut s = format!("{:<10} {:<24} {:<10} {:<18} {}\n", "SERVICE", "CONTAINER", "STATE", "ADDRESSES", "STATUS");
    for r in rows {
        s.push_str(&format!(
            "{:<10} {:<24} {:<10} {:<18} {}\n",
            r.service,
            r.name,
            r.state,
            r.addresses.join(","),
            r.status
        ));
    }
    s
}
