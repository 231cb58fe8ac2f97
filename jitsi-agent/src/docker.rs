//! Backends named by container: their addresses from the Docker Engine API (bollard), kept
//! current by its event stream, so that a restarted or re-addressed container is followed at
//! once and a stopped one is known to be down.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use bollard::{
    Docker,
    query_parameters::{EventsOptions, ListContainersOptions},
};
use futures::StreamExt;
use tokio::{sync::watch, task::JoinHandle};
use tracing::{info, warn};

use crate::{
    config::{Config, OneOrMany},
    error::{Error, Result},
    layout::{Layout, PROJECT},
};

/// Where a running container can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerAddrs {
    /// Container id (short).
    pub id: String,
    /// IPv4 address on the chosen network.
    pub v4: Option<Ipv4Addr>,
    /// IPv6 address on the chosen network.
    pub v6: Option<Ipv6Addr>,
}

/// Each referenced container: its addresses, or `None` while it does not run.
pub type Containers = BTreeMap<String, Option<ContainerAddrs>>;

/// The containers a configuration names.
pub fn referenced(config: &Config) -> Vec<String> {
    let mut names: Vec<String> = config
        .steer
        .iter()
        .filter_map(|r| r.container.clone())
        .chain(config.tls.iter().flat_map(|s| s.routes.iter().filter_map(|r| r.container.clone())))
        .chain(config.http.iter().flat_map(|h| h.routes.iter().filter_map(|r| r.container.clone())))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn docker_err(what: &str) -> impl FnOnce(bollard::errors::Error) -> Error + '_ {
    move |source| Error::Docker { what: what.to_owned(), source }
}

/// Connects to the engine (`DOCKER_HOST`, else `/var/run/docker.sock`) and agrees on an API
/// version it supports.
pub async fn connect() -> Result<Docker> {
    let docker = Docker::connect_with_local_defaults().map_err(docker_err("connecting"))?;
    docker.negotiate_version().await.map_err(docker_err("negotiating the API version"))
}

/// Looks every name up among the running containers: a Compose service of that name (label
/// `com.docker.compose.service`), else a container of that name. The address is the one in
/// `subnet` when given (the stack's network), else on the first network by name.
///
/// With `subnet` (a `[stack]`), a container counts only if it has an address on the stack's
/// network, and a Compose service only if it belongs to the stack's project (label
/// `com.docker.compose.project`): another project's `web` or `coturn` on the same engine is
/// never steered to nor signalled.
pub async fn resolve(docker: &Docker, names: &[String], subnet: Option<Layout>) -> Result<Containers> {
    let running = docker
        .list_containers(Some(ListContainersOptions { all: false, ..Default::default() }))
        .await
        .map_err(docker_err("listing containers"))?;
    let mut out = Containers::new();
    for name in names {
        let mut matches: Vec<_> = running
            .iter()
            .filter(|c| {
                let label = |k: &str| c.labels.as_ref().and_then(|l| l.get(k));
                let ours = subnet.is_none() || label("com.docker.compose.project").is_some_and(|p| p == PROJECT);
                let service = label("com.docker.compose.service").is_some_and(|s| s == name) && ours;
                let named = c.names.iter().flatten().any(|n| n.trim_start_matches('/') == name);
                (service || named) && (subnet.is_none() || v4_in(c, subnet).is_some())
            })
            .collect();
        matches.sort_by_key(|c| c.names.clone());
        let found = matches.first().map(|c| {
            let v6 = networks(c).values().find_map(|e| e.global_ipv6_address.as_deref().and_then(|a| a.parse().ok()));
            ContainerAddrs { id: c.id.clone().unwrap_or_default().chars().take(12).collect(), v4: v4_in(c, subnet), v6 }
        });
        if matches.len() > 1 {
            warn!(container = %name, count = matches.len(), "several running containers match; using the first by name");
        }
        out.insert(name.clone(), found);
    }
    Ok(out)
}

/// Container `c`'s networks, by name.
fn networks(c: &bollard::models::ContainerSummary) -> BTreeMap<&String, &bollard::models::EndpointSettings> {
    c.network_settings.iter().flat_map(|n| n.networks.iter().flatten()).collect()
}

/// Container `c`'s IPv4 address in `subnet` (without one: on its first network by name).
fn v4_in(c: &bollard::models::ContainerSummary, subnet: Option<Layout>) -> Option<Ipv4Addr> {
    networks(c)
        .values()
        .filter_map(|e| e.ip_address.as_deref().and_then(|a| a.parse::<Ipv4Addr>().ok()))
        .find(|ip| subnet.is_none_or(|l| l.contains(*ip)))
}

/// Sends `signal` (`SIGUSR2`...) to the running container `name` (Compose service or
/// container name; with `subnet`, the stack's own, as [`resolve`] finds it). Returns the
/// container's short id, or `None` if it is not running.
pub async fn signal(name: &str, signal: &str, subnet: Option<Layout>) -> Result<Option<String>> {
    let docker = connect().await?;
    let found = resolve(&docker, &[name.to_owned()], subnet).await?;
    let Some(Some(c)) = found.get(name) else { return Ok(None) };
    let options = bollard::query_parameters::KillContainerOptionsBuilder::new().signal(signal).build();
    docker.kill_container(&c.id, Some(options)).await.map_err(docker_err("signalling a container"))?;
    Ok(Some(c.id.clone()))
}

/// Where the watcher reports whether the engine can be reached and the containers looked up
/// (the agent's health: `docker_engine`).
pub type Report = std::sync::Arc<dyn Fn(Result<()>) + Send + Sync>;

/// The running watcher: the latest [`Containers`] in a watch channel.
pub struct DockerWatch {
    /// Updated on every change.
    pub rx: watch::Receiver<Containers>,
    /// The sender, until [`DockerWatch::follow`] hands it to the follower.
    tx: Option<watch::Sender<Containers>>,
    names: Vec<String>,
    subnet: Option<Layout>,
    /// Whether the engine has answered a lookup: until then the containers are unknown, not
    /// known to be down.
    answered: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Drop for DockerWatch {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// How long to wait before reconnecting to an engine that went away.
const RECONNECT: Duration = Duration::from_secs(1);
/// A full re-resolution at least this often, events or not.
const RESYNC: Duration = Duration::from_secs(10);
/// The first lookup's limit (an engine that accepts and hangs must not hold up a start or a
/// reload; bollard's own timeout is two minutes).
const FIRST_LOOKUP: Duration = Duration::from_secs(3);

impl DockerWatch {
    /// Looks `names` up once and returns the watch (not following yet: see
    /// [`DockerWatch::follow`]) with the lookup's outcome. An engine that cannot be reached
    /// leaves every container unknown (`None`, and [`DockerWatch::answered`] false).
    pub async fn start(names: Vec<String>, subnet: Option<Layout>) -> (Self, Result<()>) {
        let lookup = async {
            let docker = connect().await?;
            resolve(&docker, &names, subnet).await
        };
        let first = match tokio::time::timeout(FIRST_LOOKUP, lookup).await {
            Ok(r) => r,
            Err(_) => Err(Error::io(
                "docker: looking the containers up (is the Docker engine running? DOCKER_HOST)",
                std::io::Error::new(std::io::ErrorKind::TimedOut, format!("no answer within {FIRST_LOOKUP:?}")),
            )),
        };
        let answered = Arc::new(AtomicBool::new(first.is_ok()));
        let (found, outcome) = match first {
            Ok(found) => {
                log_changes(&Containers::new(), &found);
                (found, Ok(()))
            }
            Err(e) => (names.iter().map(|n| (n.clone(), None)).collect(), Err(e)),
        };
        let (tx, rx) = watch::channel(found);
        (DockerWatch { rx, tx: Some(tx), names, subnet, answered, task: None }, outcome)
    }

    /// Starts following the engine's container and network events, reporting whether it can
    /// be reached into `report`.
    pub fn follow(&mut self, report: Report) {
        if let Some(tx) = self.tx.take() {
            let (names, answered) = (self.names.clone(), self.answered.clone());
            self.task = Some(tokio::spawn(follow(names, self.subnet, tx, report, answered)));
        }
    }

    /// Whether the engine has answered a lookup since the watch started.
    pub fn answered(&self) -> bool {
        self.answered.load(Ordering::Relaxed)
    }
}

/// Follows the engine: a lookup after every burst of events and every [`RESYNC`]; a lost or
/// unreachable engine is reported and reconnected to every [`RECONNECT`], the last known
/// addresses staying meanwhile.
async fn follow(
    names: Vec<String>,
    subnet: Option<Layout>,
    tx: watch::Sender<Containers>,
    report: Report,
    answered: Arc<AtomicBool>,
) {
    loop {
        if let Err(e) = follow_once(&names, subnet, &tx, &report, &answered).await {
            report(Err(e));
        }
        tokio::time::sleep(RECONNECT).await;
    }
}

/// One connection to the engine, until it fails.
async fn follow_once(
    names: &[String],
    subnet: Option<Layout>,
    tx: &watch::Sender<Containers>,
    report: &Report,
    answered: &AtomicBool,
) -> Result<()> {
    let docker = connect().await?;
    let filters = HashMap::from([("type".to_string(), vec!["container".to_string(), "network".to_string()])]);
    let mut events = docker.events(Some(EventsOptions { filters: Some(filters), ..Default::default() }));
    // Resolve after subscribing, so that nothing between the two is missed.
    let now = resolve(&docker, names, subnet).await?;
    // The first answer is sent changed or not: what was unknown is known now.
    publish(tx, now, !answered.swap(true, Ordering::Relaxed));
    report(Ok(()));
    loop {
        match tokio::time::timeout(RESYNC, events.next()).await {
            Ok(Some(Ok(_event))) => {
                // Coalesce a burst (die, stop, start...) into one lookup.
                tokio::time::sleep(Duration::from_millis(20)).await;
                while let Ok(Some(Ok(_))) = tokio::time::timeout(Duration::from_millis(1), events.next()).await {}
                refresh(&docker, names, subnet, tx).await?;
            }
            Err(_) => refresh(&docker, names, subnet, tx).await?,
            Ok(Some(Err(e))) => return Err(docker_err("following events")(e)),
            Ok(None) => return Err(Error::DockerEventsEnded),
        }
    }
}

async fn refresh(
    docker: &Docker,
    names: &[String],
    subnet: Option<Layout>,
    tx: &watch::Sender<Containers>,
) -> Result<()> {
    publish(tx, resolve(docker, names, subnet).await?, false);
    Ok(())
}

/// Sends `now` if it differs from what was sent (logging what changed), or `always`.
fn publish(tx: &watch::Sender<Containers>, now: Containers, always: bool) {
    let before = tx.borrow().clone();
    if always || now != before {
        log_changes(&before, &now);
        let _ = tx.send(now);
    }
}

fn log_changes(before: &Containers, now: &Containers) {
    for (name, c) in now {
        if before.get(name) == Some(c) {
            continue;
        }
        match c {
            Some(a) => info!(container = %name, id = %a.id, v4 = ?a.v4, v6 = ?a.v6, "docker: container up"),
            None => warn!(container = %name, "docker: container not running; its traffic is dropped (backend down)"),
        }
    }
}

/// The backend a container reference stands for: its addresses with `port`, or (not running)
/// nothing.
pub fn backend_of(c: Option<&ContainerAddrs>, port: u16) -> OneOrMany {
    let addrs: Vec<SocketAddr> = c
        .iter()
        .flat_map(|c| [c.v4.map(IpAddr::V4), c.v6.map(IpAddr::V6)])
        .flatten()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    OneOrMany::Many(addrs)
}

/// `config` with every container reference replaced by the container's current addresses. A
/// steering rule whose container does not run gets the unspecified addresses as its backend:
/// the datapath then drops and counts its packets as `in_backend_down` instead of passing
/// them to the host. A splitter route's gets no address: its connections are refused.
///
/// `unknown` (while the engine has not answered): a steering rule whose container is not
/// known keeps these backends, by rule name (what the pinned maps said), instead of going down.
pub fn effective(
    config: &Config,
    containers: &Containers,
    unknown: Option<&HashMap<String, Vec<SocketAddr>>>,
) -> Config {
    let mut out = config.clone();
    let lookup = |name: &str| containers.get(name).and_then(Option::as_ref);
    for r in &mut out.steer {
        if let Some(name) = &r.container {
            let port = r.container_first_port();
            r.backend = backend_of(lookup(name), port);
            if let (true, Some(kept)) = (r.backend.as_slice().is_empty(), unknown.and_then(|u| u.get(&r.name))) {
                r.backend = OneOrMany::Many(kept.clone());
            }
            if r.backend.as_slice().is_empty() {
                let down = [IpAddr::V4(Ipv4Addr::UNSPECIFIED), IpAddr::V6(Ipv6Addr::UNSPECIFIED)];
                r.backend = OneOrMany::Many(down.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
            }
        }
    }
    let sni =
        out.tls.iter_mut().flat_map(|s| s.routes.iter_mut()).map(|r| (&r.container, r.container_port, &mut r.backend));
    let http =
        out.http.iter_mut().flat_map(|h| h.routes.iter_mut()).map(|r| (&r.container, r.container_port, &mut r.backend));
    for (container, port, backend) in sni.chain(http) {
        if let (Some(name), Some(port)) = (container, port) {
            *backend = backend_of(lookup(name), port);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn containers_become_backends_and_absent_ones_are_down() {
        let text = "[uplink]\ninterface = \"eth0\"\n\
            [[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\ncontainer = \"jvb\"\n\
            [[steer]]\nname = \"turn\"\nprotocol = \"udp\"\nport = 3478\ncontainer = \"coturn\"\n\
            [tls]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.org\"]\ncontainer = \"web\"\ncontainer_port = 8443\n";
        let config = Config::parse(text, Path::new("t.toml")).unwrap();
        assert_eq!(referenced(&config), ["coturn", "jvb", "web"]);
        let containers = Containers::from([
            ("jvb".into(), Some(ContainerAddrs { id: "a".into(), v4: Some(Ipv4Addr::new(172, 18, 0, 10)), v6: None })),
            ("coturn".into(), None),
            ("web".into(), Some(ContainerAddrs { id: "b".into(), v4: Some(Ipv4Addr::new(172, 18, 0, 12)), v6: None })),
        ]);
        let e = effective(&config, &containers, None);
        assert_eq!(e.steer[0].backend.as_slice(), ["172.18.0.10:10000".parse().unwrap()]);
        assert!(e.steer[1].backend.as_slice().iter().all(|a| a.ip().is_unspecified() && a.port() == 3478));
        assert_eq!(e.tls.unwrap().routes[0].backend.as_slice(), ["172.18.0.12:8443".parse().unwrap()]);
        let e = effective(&config, &Containers::new(), None);
        assert!(e.tls.unwrap().routes[0].backend.as_slice().is_empty());
        // Docker has not answered: what the pinned maps steer to stays (unknown is not down);
        // a rule the maps had no backend for is down.
        let pinned = HashMap::from([("jvb".to_string(), vec!["172.18.0.10:10000".parse().unwrap()])]);
        let unknown: Containers = [("jvb".into(), None), ("coturn".into(), None), ("web".into(), None)].into();
        let e = effective(&config, &unknown, Some(&pinned));
        assert_eq!(e.steer[0].backend.as_slice(), ["172.18.0.10:10000".parse().unwrap()]);
        assert!(e.steer[1].backend.as_slice().iter().all(|a| a.ip().is_unspecified()));
        // Answered: the container is down.
        let e = effective(&config, &unknown, None);
        assert!(e.steer[0].backend.as_slice().iter().all(|a| a.ip().is_unspecified()));
    }

    #[test]
    fn a_container_needs_its_port_and_excludes_backend() {
        let base = "[uplink]\ninterface = \"eth0\"\n[tls]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"a.org\"]\n";
        let e = Config::parse(&format!("{base}container = \"web\"\n"), Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("`tls.route[0].container_port`"), "{e}");
        let both = format!("{base}container = \"web\"\ncontainer_port = 1\nbackend = \"10.0.0.1:1\"\n");
        let e = Config::parse(&both, Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains("not both"), "{e}");
        let neither = Config::parse(base, Path::new("t.toml")).unwrap_err().to_string();
        assert!(neither.contains("needs `backend` (ADDRESS:PORT) or `container`"), "{neither}");
    }
}
