//! `jitsi-agent run`: attach or adopt the datapath, keep its maps in line with the
//! configuration and the backends' current link-layer paths, serve the splitter and the
//! metrics, reload on request or when the file changes, and drain on stop.

mod backends;
mod file_watch;
mod maps_sync;
mod splitter;
mod surroundings;

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use rtnetlink::Handle;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

pub use self::maps_sync::sync_maps;
use self::{
    backends::Backends,
    file_watch::FileWatch,
    splitter::{Sections, SplitterRunning},
    surroundings::Surroundings,
};
use crate::{
    acme::{AcmeRunning, challenges::Challenges},
    config::Config,
    datapath::{Attach, Datapath},
    docker::{self, DockerWatch},
    error::{Error, Result},
    health::Task,
    listeners::Listeners,
    metrics::{MetricsServer, Shared},
    netlink::{self, Link},
    splitter::{handover, stats::Stats},
};

/// How often backends are re-resolved, host addresses re-read and the splitter's counters
/// written to the pinned maps.
const TICK: Duration = Duration::from_secs(1);
/// How often refused splitter connections are summarised in the log (never one line each).
const REFUSAL_SUMMARY: Duration = Duration::from_secs(60);

/// What the daemon is asked to do (by signals, in `main`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Re-read the configuration file (SIGHUP).
    Reload,
    /// Drain and exit (SIGTERM, SIGINT).
    Stop,
}

/// Tells the service manager (systemd `Type=notify`) about a state change; a no-op elsewhere.
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify the service manager");
    }
}

/// Runs the agent from the file at `path` until `Control::Stop` (or the channel closing).
/// The datapath stays attached afterwards.
pub async fn run(path: &Path, listeners: Arc<Listeners>, control: mpsc::Receiver<Control>) -> Result<()> {
    let (config, text) = load(path.to_owned()).await?;
    let mut agent = Agent::start(path.to_owned(), config, text, listeners).await?;
    notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&agent.summary())]);
    let ended = agent.serve(control).await;
    notify(&[sd_notify::NotifyState::Stopping]);
    agent.stop().await.and(ended)?;
    info!("stopped; the datapath stays attached and keeps forwarding");
    Ok(())
}

/// Warns when the splitter's drain would outlast the service manager's watchdog: a reload that
/// removes both fronts drains inside the main loop, and a stop drains before exiting (bounded
/// by the unit's `TimeoutStopSec=`, which the process cannot see).
fn check_drain(config: &Config) {
    let (Some(splitter), Some(watchdog)) = (config.splitter(), sd_notify::watchdog_enabled()) else { return };
    if splitter.drain_timeout_secs.get() >= watchdog {
        warn!(
            drain_timeout_secs = splitter.drain_timeout_secs.get().as_secs_f64(),
            watchdog_secs = watchdog.as_secs_f64(),
            "splitter.drain_timeout_secs is not below the unit's WatchdogSec=: raise WatchdogSec= and TimeoutStopSec= \
             above it (a drop-in), or a drain is cut short by the service manager"
        );
    }
}

/// The counters and health shared with the metrics endpoint, continued from the pins.
fn shared_state(config: &Config, dp: &Datapath) -> Result<Arc<Shared>> {
    let stats = Arc::new(Stats::default());
    stats.seed(&dp.maps.sni)?;
    let shared = Arc::new(Shared::new(config.pin_dir.clone(), stats));
    shared.health.seed(&dp.maps.task_health)?;
    Ok(shared)
}

/// Reads the file and parses it (the text is kept to notice changes).
async fn load(path: PathBuf) -> Result<(Config, String)> {
    let text = read(path.clone()).await?;
    let config = Config::parse(&text, &path)?;
    for d in &config.warnings {
        warn!(file = %path.display(), "config: {d}");
    }
    Ok((config, text))
}

/// Reads the file off the async workers.
async fn read(path: PathBuf) -> Result<String> {
    let at = path.clone();
    tokio::task::spawn_blocking(move || std::fs::read_to_string(&at))
        .await
        .map_err(|source| Error::Worker { what: "reading the configuration file", source })?
        .map_err(|source| Error::ConfigRead { path, source })
}

struct Agent {
    path: PathBuf,
    /// The file as parsed.
    config: Config,
    /// `config` with container references replaced by their current addresses: what the maps
    /// and the splitter are built from.
    live: Config,
    docker: Option<DockerWatch>,
    /// What the pinned `rules` map steered container rules to when this agent started: kept
    /// while Docker has not answered (unknown is not down).
    pinned_backends: std::collections::HashMap<String, Vec<SocketAddr>>,
    /// Wakes the loop when the file may have changed.
    watch: FileWatch,
    /// The file's text as last applied, and as last refused (not retried until it changes).
    text: String,
    refused_text: Option<String>,
    h: Handle,
    uplink: Link,
    host_addrs: Vec<IpAddr>,
    dp: Datapath,
    backends: Backends,
    tc_done: HashSet<u32>,
    /// What `source_prefixes` and `fallback_paths` say now.
    surroundings: Surroundings,
    /// The splitters' backends without a route (already logged).
    gateway_problems: HashSet<SocketAddr>,
    listeners: Arc<Listeners>,
    shared: Arc<Shared>,
    splitter: Option<SplitterRunning>,
    challenges: Challenges,
    acme: Option<AcmeRunning>,
    metrics: Option<MetricsServer>,
    refusals_logged: (Instant, u64),
}

impl Agent {
    async fn start(path: PathBuf, config: Config, text: String, listeners: Arc<Listeners>) -> Result<Self> {
        check_drain(&config);
        let h = netlink::connect()?;
        let uplink = netlink::link_by_name(&h, &config.uplink.interface).await.map_err(|e| match e {
            Error::NoSuchInterface(name) => Error::NoUplink(name),
            e => e,
        })?;
        let host_addrs = host_addresses(&h, &config, &uplink).await?;
        info!(uplink = %uplink.name, addresses = ?host_addrs, "host addresses");
        // What the pinned rules steer to, read before an upgrade may recreate the map.
        let pinned_backends = crate::status::pinned_backends(&config.pin_dir);
        let dp = Datapath::open(&config.pin_dir)?;
        // An adopted datapath's maps say what an earlier agent wrote: the baseline to change.
        let surroundings = surroundings::current(&dp.maps)?;
        let shared = shared_state(&config, &dp)?;
        let (mut docker, first) = start_docker(&config).await;
        shared.health.record(Task::DockerEngine, first);
        if let Some(w) = &mut docker {
            w.follow(docker_report(&shared));
        }
        let live = live_config(&config, docker.as_ref(), &pinned_backends);
        let watch = FileWatch::new(&path);
        let mut agent = Agent {
            pinned_backends,
            watch,
            path,
            config,
            live,
            docker,
            text,
            refused_text: None,
            h,
            uplink,
            host_addrs,
            dp,
            backends: Backends::default(),
            tc_done: HashSet::new(),
            surroundings,
            gateway_problems: HashSet::new(),
            listeners,
            shared,
            splitter: None,
            challenges: Challenges::default(),
            acme: None,
            metrics: None,
            refusals_logged: (Instant::now(), 0),
        };
        agent.backends.refresh(&agent.h, &agent.live).await;
        let gateways = agent.gateways().await;
        if let Err(e) = agent.attach_datapath(&gateways).await {
            // A staged upgrade puts back whatever it swapped: the old datapath runs on.
            return Err(agent.dp.abort_upgrade(e));
        }
        if let Some(m) = &agent.config.metrics {
            agent.metrics = Some(MetricsServer::start(m.listen, agent.shared.clone()).await?);
            info!(listen = %m.listen, "metrics: serving /metrics");
        }
        agent.start_splitter().await?;
        agent.follow_acme();
        agent.flush_splitter()?;
        info!(
            rules = agent.config.steer.len(),
            tls_routes = agent.config.tls.as_ref().map_or(0, |s| s.routes.len()),
            http_routes = agent.config.http.as_ref().map_or(0, |h| h.routes.len()),
            adopted = agent.dp.adopted,
            "ready"
        );
        Ok(agent)
    }

    /// Fills the maps, then attaches, adopts or swaps in the programs. With an upgrade in place
    /// staged: nothing is swapped before the new maps are whole (the surroundings included),
    /// the readers of shared maps first (`reply_out`, and `redirect_in` on an uplink in generic
    /// mode, then `steer_in`), and the rest of the pins follow at the commit.
    async fn attach_datapath(&mut self, gateways: &[Link]) -> Result<()> {
        let upgrading = self.dp.upgrade.is_some();
        self.sync()?;
        match self.observe_surroundings(gateways).await {
            Err(e) if upgrading => return Err(e),
            outcome => self.shared.health.record(Task::Surroundings, outcome),
        }
        // During an upgrade the readers go first: reply_out, and on an uplink in generic mode
        // redirect_in, which reads what steer_in leaves in the metadata.
        let generic_before = self.uplink.xdp.iter().any(|&(_, m)| m == "generic");
        if upgrading {
            self.attach_tc(gateways).await?;
            self.follow_redirect(generic_before)?;
        }
        let mode = match self.dp.ensure_xdp(&self.uplink, self.config.uplink.xdp_mode)? {
            Attach::Attached(mode) => {
                info!(interface = %self.uplink.name, mode, "attached steer_in (XDP)");
                Some(mode)
            }
            Attach::Adopted(mode) => {
                info!(interface = %self.uplink.name, mode, "adopted attached steer_in (XDP)");
                Some(mode)
            }
            Attach::Swapped(mode) => {
                info!(interface = %self.uplink.name, mode, "swapped in this build's steer_in (XDP link updated)");
                Some(mode)
            }
        };
        let generic = mode == Some("generic");
        if !upgrading || generic != generic_before {
            self.follow_redirect(generic)?;
        }
        *self.shared.xdp.lock().expect("xdp lock") = mode.map(|m| (self.uplink.name.clone(), m));
        if !upgrading {
            self.attach_tc(gateways).await?;
        }
        self.dp.commit_upgrade()?;
        Ok(())
    }

    /// Attaches (or adopts, or swaps in) `redirect_in` on the uplink when `steer_in` runs there in
    /// generic mode, and detaches it when not (see `Datapath::ensure_redirect`).
    fn follow_redirect(&mut self, generic: bool) -> Result<()> {
        let name = &self.uplink.name;
        match self.dp.ensure_redirect(&self.uplink, generic)? {
            Some(Attach::Attached(_)) => info!(interface = %name, "attached redirect_in (TC ingress)"),
            Some(Attach::Adopted(_)) => info!(interface = %name, "adopted attached redirect_in (TC ingress)"),
            Some(Attach::Swapped(_)) => {
                info!(interface = %name, "swapped in this build's redirect_in (TCX link updated)")
            }
            None => {}
        }
        Ok(())
    }

    /// Starts, restarts (settings changed) or stops the certificate manager to match the
    /// configuration; the splitter answering its challenges is running by then.
    fn follow_acme(&mut self) {
        match &self.config.acme {
            Some(acme) if self.acme.as_ref().is_some_and(|a| a.runs(acme, self.config.stack.as_ref())) => {}
            Some(acme) => {
                let (stack, challenges) = (self.config.stack.clone(), self.challenges.clone());
                self.acme = Some(AcmeRunning::start(acme.clone(), stack, challenges, self.shared.certificates.clone()));
            }
            None => {
                if self.acme.take().is_some() {
                    self.shared.certificates.lock().expect("certificates lock").clear();
                    // Their challenge paths are routed like any other request again.
                    self.challenges.set_names(Vec::new());
                    info!("acme: stopped managing certificates");
                }
            }
        }
    }

    /// At start: the splitter (taking up a previous agent's connections), or, without one,
    /// what a previous agent handed over closed; sockets systemd passed that nothing uses
    /// reported.
    async fn start_splitter(&mut self) -> Result<()> {
        if let Some(settings) = self.live.splitter() {
            let (s, stats) = (Sections::of(&settings, &self.live), self.shared.splitter.clone());
            let running = SplitterRunning::start(&self.h, s, &self.listeners, stats, self.challenges.clone()).await?;
            running.set_backend_nets(self.surroundings.backend_nets.clone());
            if let Some(rx) = self.listeners.take_handover() {
                running.adopt(rx);
            }
            self.splitter = Some(running);
        }
        if let Some(rx) = self.listeners.take_handover() {
            let closed = handover::take(rx).pairs.len();
            warn!(closed, "handover: no splitter is configured; the previous agent's connections are closed");
        }
        let tls = self.config.tls.iter().flat_map(|s| s.listen.iter().copied());
        let listening: Vec<_> = tls.chain(self.config.http.iter().flat_map(|h| h.listen.iter().copied())).collect();
        for addr in self.listeners.unused(&listening) {
            warn!(%addr, "the service manager passed a socket no [tls] or [http] listen address uses; it stays idle");
        }
        Ok(())
    }

    fn summary(&self) -> String {
        format!(
            "steering {} rule(s); tls: {}; http: {}",
            self.config.steer.len(),
            self.config.tls.as_ref().map_or("off".into(), |s| format!("{} route(s)", s.routes.len())),
            self.config.http.as_ref().map_or("off".into(), |h| format!("{} route(s)", h.routes.len()))
        )
    }

    /// The main loop; returns on `Control::Stop` or an error.
    async fn serve(&mut self, mut control: mpsc::Receiver<Control>) -> Result<()> {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Under `WatchdogSec=` the service manager restarts an agent whose loop stops turning.
        let watchdog = sd_notify::watchdog_enabled().is_some();
        loop {
            tokio::select! {
                c = control.recv() => match c {
                    Some(Control::Reload) => {
                        info!(path = %self.path.display(), "reload requested (SIGHUP)");
                        self.reload().await;
                    }
                    Some(Control::Stop) | None => return Ok(()),
                },
                () = docker_changed(&mut self.docker) => {
                    let outcome = self.follow_containers().await;
                    self.shared.health.record(Task::FollowContainers, outcome);
                }
                () = self.watch.changed() => self.file_changed().await,
                _ = tick.tick() => {
                    self.tick().await;
                    if watchdog {
                        notify(&[sd_notify::NotifyState::Watchdog]);
                    }
                }
            }
        }
    }

    /// The periodic work: each step's failure is recorded (logged once, counted, shown) and
    /// the step retried at the next tick; nothing here ends the process.
    async fn tick(&mut self) {
        if self.shared.health.get(Task::FollowContainers).1 {
            let outcome = self.follow_containers().await;
            self.shared.health.record(Task::FollowContainers, outcome);
        }
        let mut changed = self.backends.refresh(&self.h, &self.live).await;
        if self.config.uplink.addresses.is_empty() {
            let read = netlink::global_addresses(&self.h, self.uplink.index).await;
            match &read {
                Ok(now) if !now.is_empty() && *now != self.host_addrs => {
                    info!(uplink = %self.uplink.name, addresses = ?now, "host addresses changed");
                    self.host_addrs = now.clone();
                    changed = true;
                }
                _ => {}
            }
            self.shared.health.record(Task::HostAddresses, read.map(drop));
        }
        // A failed write is retried at the next tick even if nothing changes meanwhile.
        if changed || self.shared.health.get(Task::SyncMaps).1 {
            let outcome = self.sync();
            self.shared.health.record(Task::SyncMaps, outcome);
        }
        let gateways = self.gateways().await;
        let outcome = self.attach_tc(&gateways).await;
        self.shared.health.record(Task::AttachTc, outcome);
        let outcome = self.observe_surroundings(&gateways).await;
        self.shared.health.record(Task::Surroundings, outcome);
        let outcome = self.flush_splitter();
        self.shared.health.record(Task::FlushCounters, outcome);
        self.summarise_refusals();
    }

    fn sync(&mut self) -> Result<()> {
        sync_maps(&mut self.dp.maps, &self.live, &self.host_addrs, self.uplink.index, &self.backends.resolved)
    }

    /// Where the backends live: the steering backends' bridges and the splitters' backends'
    /// interfaces. A splitter backend without a route is logged once (until it has one).
    async fn gateways(&mut self) -> Vec<Link> {
        let mut gateways: Vec<Link> = self.backends.resolved.values().map(|r| r.gateway.clone()).collect();
        let (links, problems) = splitter_gateways(&self.h, &self.live).await;
        for (backend, error) in &problems {
            if !self.gateway_problems.contains(backend) {
                warn!(%backend, %error, "splitter: no route to the backend (logged once until it has one)");
            }
        }
        self.gateway_problems = problems.into_iter().map(|(b, _)| b).collect();
        for g in links {
            if !gateways.iter().any(|l| l.index == g.index) {
                gateways.push(g);
            }
        }
        gateways
    }

    /// Re-reads the uplink's surroundings and writes what changed; a failure keeps what the
    /// maps say (and is retried at the next tick).
    async fn observe_surroundings(&mut self, gateways: &[Link]) -> Result<()> {
        let now = surroundings::observe(&self.h, &self.uplink, &self.host_addrs, gateways).await?;
        if now == self.surroundings {
            return Ok(());
        }
        surroundings::write(&mut self.dp.maps, &self.surroundings, &now)?;
        if let Some(running) = &self.splitter {
            running.set_backend_nets(now.backend_nets.clone());
        }
        self.surroundings = now;
        Ok(())
    }

    /// Attaches `reply_out` where replies arrive: the steering backends' bridges and the
    /// splitters' backends' interfaces.
    async fn attach_tc(&mut self, gateways: &[Link]) -> Result<()> {
        let mut failed = None;
        for g in gateways {
            if self.tc_done.contains(&g.index) {
                continue;
            }
            // An interface that cannot take it now is tried again at the next tick; the others
            // are attached meanwhile.
            match self.dp.ensure_tc(g) {
                Ok(Attach::Attached(mode)) => info!(interface = %g.name, mode, "attached reply_out (TC ingress)"),
                Ok(Attach::Adopted(_)) => info!(interface = %g.name, "adopted attached reply_out (TC ingress)"),
                Ok(Attach::Swapped(_)) => {
                    info!(interface = %g.name, "swapped in this build's reply_out (TCX link updated)")
                }
                Err(e) => {
                    failed = Some(e);
                    continue;
                }
            }
            self.tc_done.insert(g.index);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Writes the splitters' counters and the tasks' health to the pins (each whatever the
    /// other's outcome).
    fn flush_splitter(&mut self) -> Result<()> {
        let tls = self.config.tls.iter().flat_map(|s| s.routes.iter().map(|r| r.name.clone()));
        let http = self.config.http.iter().flat_map(|h| h.routes.iter().map(|r| r.name.clone()));
        let names: Vec<String> = tls.chain(http).collect();
        let counters = self.shared.splitter.flush(&mut self.dp.maps.sni, &names);
        let health = self.shared.health.flush(&mut self.dp.maps.task_health);
        counters.and(health)
    }

    fn summarise_refusals(&mut self) {
        if self.refusals_logged.0.elapsed() < REFUSAL_SUMMARY {
            return;
        }
        let by_reason = self.shared.splitter.refusals();
        let total: u64 = by_reason.iter().map(|(_, n)| n).sum();
        if total > self.refusals_logged.1 {
            let reasons: Vec<String> =
                by_reason.iter().filter(|(_, n)| *n > 0).map(|(r, n)| format!("{r}={n}")).collect();
            warn!(
                refused = total - self.refusals_logged.1,
                totals = %reasons.join(" "),
                "splitter: connections refused in the last minute (RUST_LOG=jitsi_agent=debug logs each)"
            );
        }
        self.refusals_logged = (Instant::now(), total);
    }

    /// The watcher saw the file change: reload if its text differs from what runs and from what
    /// was last refused.
    async fn file_changed(&mut self) {
        let text = read(self.path.clone()).await;
        match &text {
            // Back to what runs (a refused edit undone, a removed file restored).
            Ok(t) if *t == self.text => {
                if self.refused_text.take().is_some() {
                    info!(path = %self.path.display(), "configuration file is the running one again");
                    self.shared.health.record(Task::ConfigFile, Ok(()));
                }
                return;
            }
            // Refused already (an unreadable file is remembered as the empty text).
            Ok(t) if Some(t) == self.refused_text.as_ref() => return,
            Err(_) if self.refused_text.as_deref() == Some("") => return,
            _ => {}
        }
        info!(path = %self.path.display(), "configuration file changed; reloading");
        self.reload_text(text).await;
    }

    /// Re-reads the file; an invalid file or a change that needs a restart leaves everything
    /// running as it is, and is not retried by the file watcher until the text changes again
    /// (SIGHUP retries it).
    async fn reload(&mut self) {
        let text = read(self.path.clone()).await;
        self.reload_text(text).await;
    }

    async fn reload_text(&mut self, text: Result<String>) {
        notify(&[sd_notify::NotifyState::Reloading]);
        let outcome = match text {
            Ok(text) => match Config::parse(&text, &self.path) {
                Ok(config) => match self.apply(config).await {
                    Ok(()) => {
                        self.text = text;
                        self.refused_text = None;
                        Ok(())
                    }
                    Err(e) => Err((e, text)),
                },
                Err(e) => Err((e, text)),
            },
            // An unreadable file is remembered as the empty text (never a valid one).
            Err(e) => Err((e, String::new())),
        };
        match outcome {
            Ok(()) => {
                self.shared.reloads_ok.fetch_add(1, Ordering::Relaxed);
                self.shared.health.record(Task::ConfigFile, Ok(()));
                info!(rules = self.config.steer.len(), "reloaded");
            }
            Err((e, text)) => {
                self.shared.reloads_failed.fetch_add(1, Ordering::Relaxed);
                error!(error = %e.report(), "reload refused; the running configuration stays");
                self.shared.health.record(Task::ConfigFile, Err(e));
                self.refused_text = Some(text);
            }
        }
        notify(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&self.summary())]);
    }

    async fn apply(&mut self, new: Config) -> Result<()> {
        let restart = |key: &str| Error::ConfigInvalid {
            at: self.path.display().to_string(),
            key: key.into(),
            message: "changing it needs a restart (systemctl restart jitsi-agent)".into(),
        };
        if new.pin_dir != self.config.pin_dir {
            return Err(restart("pin_dir"));
        }
        if new.uplink.interface != self.config.uplink.interface {
            return Err(restart("uplink.interface"));
        }
        if new.uplink.xdp_mode != self.config.uplink.xdp_mode {
            return Err(restart("uplink.xdp_mode"));
        }
        // Containers: a new set of names means a new watch (whose first lookup must succeed);
        // the old one stays if the reload fails.
        if docker::referenced(&new) == docker::referenced(&self.config) {
            let live = live_config(&new, self.docker.as_ref(), &self.pinned_backends);
            return self.apply_live(new, live).await;
        }
        // A new set of containers: refused while Docker cannot say where they are (the
        // running rules stay as they are).
        let (mut docker, first) = start_docker(&new).await;
        first?;
        let live = live_config(&new, docker.as_ref(), &self.pinned_backends);
        self.apply_live(new, live).await?;
        if let Some(w) = &mut docker {
            w.follow(docker_report(&self.shared));
        }
        self.docker = docker;
        // Whatever the old watch was reporting: the new one answered.
        self.shared.health.record(Task::DockerEngine, Ok(()));
        Ok(())
    }

    /// Applies a parsed configuration. Everything that can fail is prepared first (the uplink's
    /// addresses, the metrics listener, the splitters' new listeners and routing, which put
    /// themselves back on failure); only then is the new configuration committed. Writing the
    /// maps and attaching the reply path afterwards are periodic work: a failure there is
    /// reported and retried every second, not a refusal.
    async fn apply_live(&mut self, new: Config, live: Config) -> Result<()> {
        let host_addrs = if new.uplink.addresses != self.config.uplink.addresses {
            Some(host_addresses(&self.h, &new, &self.uplink).await?)
        } else {
            None
        };
        let metrics_was = self.config.metrics.as_ref().map(|m| m.listen);
        let metrics_now = new.metrics.as_ref().map(|m| m.listen);
        let metrics = match metrics_now {
            Some(listen) if metrics_now != metrics_was => {
                Some(MetricsServer::start(listen, self.shared.clone()).await?)
            }
            _ => None,
        };
        // Listeners first: a port that cannot be bound refuses the whole reload.
        let splitter = async {
            match (&mut self.splitter, live.splitter()) {
                (Some(running), Some(settings)) => {
                    running.update(&self.h, Sections::of(&settings, &live), &self.listeners).await
                }
                (None, Some(settings)) => {
                    let (s, stats) = (Sections::of(&settings, &live), self.shared.splitter.clone());
                    let running =
                        SplitterRunning::start(&self.h, s, &self.listeners, stats, self.challenges.clone()).await?;
                    running.set_backend_nets(self.surroundings.backend_nets.clone());
                    self.splitter = Some(running);
                    Ok(())
                }
                (Some(_), None) => match self.splitter.take() {
                    Some(running) => running.stop(&self.h).await,
                    None => Ok(()),
                },
                (None, None) => Ok(()),
            }
        };
        if let Err(e) = splitter.await {
            if let Some(m) = metrics {
                m.stop().await;
            }
            return Err(e);
        }
        // Commit.
        if let Some(addrs) = host_addrs {
            self.host_addrs = addrs;
            info!(addresses = ?self.host_addrs, "host addresses");
        }
        if metrics_now != metrics_was {
            if let Some(m) = self.metrics.take() {
                m.stop().await;
            }
            self.metrics = metrics;
            if let Some(listen) = metrics_now {
                info!(%listen, "metrics: serving /metrics");
            }
        }
        check_drain(&new);
        if !new.uplink.addresses.is_empty() {
            // Configured addresses: nothing is read from the uplink any more.
            self.shared.health.record(Task::HostAddresses, Ok(()));
        }
        self.config = new;
        self.live = live;
        self.backends.refresh(&self.h, &self.live).await;
        let outcome = self.sync();
        self.shared.health.record(Task::SyncMaps, outcome);
        self.attach_tc_recorded().await;
        self.follow_acme();
        Ok(())
    }

    /// A container started, stopped or moved: rebuild the live configuration and apply it at
    /// once (maps, the splitter's routes, the reply path on a new bridge).
    async fn follow_containers(&mut self) -> Result<()> {
        self.live = live_config(&self.config, self.docker.as_ref(), &self.pinned_backends);
        self.backends.refresh(&self.h, &self.live).await;
        self.sync()?;
        if let (Some(running), Some(settings)) = (&mut self.splitter, self.live.splitter()) {
            running.update(&self.h, Sections::of(&settings, &self.live), &self.listeners).await?;
        }
        self.attach_tc_recorded().await;
        Ok(())
    }

    /// [`Agent::attach_tc`] on the current gateways, its outcome recorded as the `attach_tc`
    /// task (retried by the tick when it failed).
    async fn attach_tc_recorded(&mut self) {
        let gateways = self.gateways().await;
        let outcome = self.attach_tc(&gateways).await;
        self.shared.health.record(Task::AttachTc, outcome);
    }

    /// Whether the next agent can start on the file as it is now: connections handed to an
    /// agent that exits with a configuration error would be closed by systemd at once, so they
    /// drain here instead.
    async fn restart_can_start(&self) -> bool {
        match load(self.path.clone()).await {
            Ok(_) => true,
            Err(e) => {
                warn!(error = %e.report(), "handover: the configuration file would not start the next agent; open connections drain");
                false
            }
        }
    }

    /// Drains the splitter (or, when systemd restarts the service, hands its connections to
    /// the next agent), removes its routing and writes the final counters.
    async fn stop(&mut self) -> Result<()> {
        if let Some(m) = self.metrics.take() {
            m.stop().await;
        }
        let stopped = match self.splitter.take() {
            Some(s) if s.open_connections() > 0 && restarting().await && self.restart_can_start().await => {
                s.hand_over(&self.h).await
            }
            Some(s) => s.stop(&self.h).await,
            None => Ok(()),
        };
        self.flush_splitter()?;
        stopped
    }
}

/// Whether this stop is a restart by systemd with a file descriptor store to hand over through
/// (asked over D-Bus; not under systemd, or without an answer in time: no).
async fn restarting() -> bool {
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return false;
    }
    match tokio::time::timeout(handover::systemd::ASK_TIMEOUT, handover::systemd::stop_plan()).await {
        Ok(Ok(plan)) => {
            if plan.restart && !plan.hands_over() {
                info!("handover: restarting, but the unit has no FileDescriptorStoreMax=; open connections drain");
            }
            plan.hands_over()
        }
        Ok(Err(e)) => {
            warn!(error = %e, "handover: cannot tell a restart from a stop; open connections drain");
            false
        }
        Err(_) => {
            warn!("handover: systemd did not answer in time; open connections drain");
            false
        }
    }
}

/// Looks up the containers `config` names, if any (with `[stack]`, on its subnet): the watch
/// (to be followed once committed) and whether Docker answered.
async fn start_docker(config: &Config) -> (Option<DockerWatch>, Result<()>) {
    let names = docker::referenced(config);
    if names.is_empty() {
        return (None, Ok(()));
    }
    let subnet = config.stack.as_ref().map(|s| s.subnet);
    let (watch, first) = DockerWatch::start(names, subnet).await;
    (Some(watch), first)
}

/// Where a followed watch reports the engine's reachability: the `docker_engine` task.
fn docker_report(shared: &Arc<Shared>) -> docker::Report {
    let to = shared.clone();
    Arc::new(move |outcome| to.health.record(Task::DockerEngine, outcome))
}

/// `config` with the containers' current addresses; while Docker has not answered, a
/// container rule keeps what the pinned maps said (`pinned`).
fn live_config(
    config: &Config,
    docker: Option<&DockerWatch>,
    pinned: &std::collections::HashMap<String, Vec<SocketAddr>>,
) -> Config {
    match docker {
        Some(w) => docker::effective(config, &w.rx.borrow(), (!w.answered()).then_some(pinned)),
        None => config.clone(),
    }
}

/// Completes when the watched containers changed; never without a watch.
async fn docker_changed(w: &mut Option<DockerWatch>) {
    if let Some(w) = w
        && w.rx.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

async fn host_addresses(h: &Handle, config: &Config, uplink: &Link) -> Result<Vec<IpAddr>> {
    let addrs = if config.uplink.addresses.is_empty() {
        netlink::global_addresses(h, uplink.index).await?
    } else {
        config.uplink.addresses.clone()
    };
    if addrs.is_empty() {
        return Err(Error::NoHostAddress(config.uplink.interface.clone()));
    }
    Ok(addrs)
}

/// The interfaces the splitters' transparent backends are reached through (their replies
/// arrive there and must be marked by `reply_out`; loopback backends need none), and the
/// backends whose interface cannot be found now (with why).
async fn splitter_gateways(h: &Handle, live: &Config) -> (Vec<Link>, Vec<(SocketAddr, String)>) {
    let mut out: Vec<Link> = Vec::new();
    let mut problems = Vec::new();
    for b in live.transparent_backends().filter(|b| !b.ip().is_loopback() && !b.ip().is_unspecified()) {
        let link = match netlink::route_oif(h, b.ip()).await {
            Ok(oif) => netlink::link_by_index(h, oif).await,
            Err(e) => Err(e),
        };
        match link {
            Ok(link) if link.index != 1 && !out.iter().any(|l| l.index == link.index) => out.push(link),
            Ok(_) => {}
            Err(e) => problems.push((b, e.report())),
        }
    }
    (out, problems)
}
