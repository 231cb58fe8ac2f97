//! The running splitter and its two fronts (TLS on 443, HTTP on 80): their listeners, the
//! policy routing they share, and changing them on a reload without disturbing connections
//! already relayed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::Arc,
    time::{Duration, Instant},
};

use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    acme::challenges::Challenges,
    config::{Http, Splitter, Tls},
    error::{Error, Result},
    http::HttpFront,
    listeners::Listeners,
    policy_routing::PolicyRouting,
    splitter::{front::FrontKind, handover, proxy::Proxy, stats::Stats},
    tls::TlsFront,
};

/// The sections the splitter runs from: `[splitter]` (or its defaults), `[tls]`, `[http]`.
#[derive(Clone, Copy)]
pub(super) struct Sections<'a> {
    pub(super) splitter: &'a Splitter,
    pub(super) tls: Option<&'a Tls>,
    pub(super) http: Option<&'a Http>,
}

impl<'a> Sections<'a> {
    /// `splitter` (from [`crate::config::Config::splitter`]) with `config`'s fronts.
    pub(super) fn of(splitter: &'a Splitter, config: &'a crate::config::Config) -> Self {
        Sections { splitter, tls: config.tls.as_ref(), http: config.http.as_ref() }
    }
}

/// How long a handover waits for connections still reading their hello to be relayed (then
/// handed over too); those still reading after it drain in the old process.
const HANDOVER_WAIT: Duration = Duration::from_secs(1);

/// How long what could not be handed over may drain before the old agent exits: the handed
/// connections wait for that exit (the next agent starts after it).
const HANDOVER_DRAIN: Duration = Duration::from_secs(1);

/// One accept loop.
struct Listening {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The splitter, its fronts and what was installed for them.
pub(super) struct SplitterRunning {
    proxy: Arc<Proxy>,
    tls: Arc<TlsFront>,
    http: Arc<HttpFront>,
    routing: PolicyRouting,
    listening: BTreeMap<SocketAddr, (FrontKind, Listening)>,
    drain: Duration,
}

fn routing_for(s: Sections) -> PolicyRouting {
    let tls_backends = s.tls.into_iter().flat_map(Tls::transparent_backends);
    let http_backends = s.http.into_iter().flat_map(Http::transparent_backends);
    PolicyRouting {
        mark: s.splitter.reply_mark,
        table: s.splitter.route_table,
        priority: s.splitter.rule_priority,
        loopback: tls_backends.chain(http_backends).any(|b| b.ip().is_loopback()),
    }
}

/// The addresses to listen on, and for which front.
fn wanted(s: Sections) -> Vec<(SocketAddr, FrontKind)> {
    let tls = s.tls.into_iter().flat_map(|t| t.listen.iter().map(|a| (*a, FrontKind::Tls)));
    tls.chain(s.http.into_iter().flat_map(|h| h.listen.iter().map(|a| (*a, FrontKind::Http)))).collect()
}

/// Opens a listener for each of `addrs` (all or none: a failure closes the ones opened).
type Opened = Vec<(SocketAddr, FrontKind, tokio::net::TcpListener)>;

fn open_all(listeners: &Listeners, addrs: &[(SocketAddr, FrontKind)]) -> Result<Opened> {
    addrs
        .iter()
        .map(|(a, f)| {
            listeners.tcp(*a).map(|l| (*a, *f, l)).map_err(|e| Error::io(format!("splitter: listening on {a}"), e))
        })
        .collect()
}

impl SplitterRunning {
    /// Listens first (if 443 or 80 is taken nothing has been installed yet), then installs the
    /// policy routing, then accepts.
    pub(super) async fn start(
        h: &Handle,
        s: Sections<'_>,
        listeners: &Listeners,
        stats: Arc<Stats>,
        challenges: Challenges,
    ) -> Result<Self> {
        let opened = open_all(listeners, &wanted(s))?;
        let routing = routing_for(s);
        routing.install(h).await?;
        let mut me = SplitterRunning {
            proxy: Proxy::new(s.splitter.clone(), stats.clone()),
            tls: TlsFront::new(s.tls.cloned(), stats.clone()),
            http: HttpFront::new(s.http.cloned(), stats, challenges),
            routing,
            listening: BTreeMap::new(),
            drain: s.splitter.drain_timeout_secs.get(),
        };
        me.accept_on(opened, listeners);
        info!(tls_listen = ?s.tls.map(|t| &t.listen), tls_routes = s.tls.map_or(0, |t| t.routes.len()),
            http_listen = ?s.http.map(|h| &h.listen), http_routes = s.http.map_or(0, |h| h.routes.len()),
            mark = format!("{:#x}", s.splitter.reply_mark), table = s.splitter.route_table,
            "splitter: listening; policy routing installed");
        Ok(me)
    }

    fn accept_on(&mut self, opened: Opened, listeners: &Listeners) {
        for (addr, front, l) in opened {
            if !listeners.is_inherited(&addr) {
                info!(%addr, %front, "splitter: bound here (no socket from the service manager: connections arriving during a restart are refused)");
            }
            let stop = CancellationToken::new();
            let task = match front {
                FrontKind::Tls => self.proxy.spawn_listener(l, self.tls.clone(), stop.clone()),
                FrontKind::Http => self.proxy.spawn_listener(l, self.http.clone(), stop.clone()),
            };
            self.listening.insert(addr, (front, Listening { stop, task }));
        }
    }

    /// The subnets the backends live on: clients from there are connected non-transparently.
    pub(super) fn set_backend_nets(&self, nets: Vec<(std::net::IpAddr, u8)>) {
        self.proxy.set_backend_nets(nets);
    }

    /// Applies changed sections: new listeners are opened before anything else changes (a
    /// failure leaves the running splitter as it was), then the policy routing is replaced if
    /// its settings changed, the routing tables swapped, and listeners no longer configured
    /// closed.
    pub(super) async fn update(&mut self, h: &Handle, s: Sections<'_>, listeners: &Listeners) -> Result<()> {
        let wanted = wanted(s);
        let added: Vec<_> = wanted.iter().filter(|(a, _)| !self.listening.contains_key(a)).copied().collect();
        let opened = open_all(listeners, &added)?;
        let routing = routing_for(s);
        if routing != self.routing {
            self.routing.remove(h).await?;
            if let Err(e) = routing.install(h).await {
                // All or nothing: the new routing goes, the old one comes back.
                let _ = routing.remove(h).await;
                if let Err(restore) = self.routing.install(h).await {
                    warn!(error = %restore.report(), "splitter: could not restore the policy routing");
                }
                return Err(e);
            }
            info!(mark = format!("{:#x}", routing.mark), table = routing.table, "splitter: policy routing replaced");
            self.routing = routing;
        }
        self.proxy.update(s.splitter.clone());
        self.tls.update(s.tls.cloned());
        self.http.update(s.http.cloned());
        self.drain = s.splitter.drain_timeout_secs.get();
        self.accept_on(opened, listeners);
        let removed: Vec<SocketAddr> =
            self.listening.keys().filter(|a| !wanted.iter().any(|(w, _)| w == *a)).copied().collect();
        for addr in removed {
            if let Some((_, l)) = self.listening.remove(&addr) {
                l.stop.cancel();
                let _ = l.task.await;
                info!(%addr, "splitter: stopped listening");
            }
        }
        Ok(())
    }

    /// Connections open now (reading a hello or relayed).
    pub(super) fn open_connections(&self) -> usize {
        self.proxy.open_connections()
    }

    /// Stops the accept loops (the sockets stay with the service manager, if it holds them).
    async fn stop_listening(&mut self) {
        for (_, l) in self.listening.values() {
            l.stop.cancel();
        }
        for (_, (_, l)) in std::mem::take(&mut self.listening) {
            let _ = l.task.await;
        }
    }

    /// Relays on the connections a previous agent handed over through `rx` (see
    /// [`handover::take`]). Returns how many were taken up.
    pub(super) fn adopt(&self, rx: OwnedFd) -> usize {
        let started = Instant::now();
        let received = handover::take(rx);
        let (offered, drained, complete) = (received.pairs.len(), received.drained, received.complete);
        let adopted = self.proxy.adopt(received.pairs);
        self.proxy.stats.handover_adopted.fetch_add(adopted as u64, std::sync::atomic::Ordering::Relaxed);
        self.proxy.stats.handover_lost.fetch_add((offered - adopted) as u64, std::sync::atomic::Ordering::Relaxed);
        if !complete {
            warn!(offered, "handover: the previous agent's handover is incomplete; took up what arrived");
        }
        info!(
            adopted,
            lost = offered - adopted,
            drained_by_previous = drained,
            ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "handover: relaying on the previous agent's connections"
        );
        adopted
    }

    /// Stops for a restart: stops accepting, stops every relay at a clean point and hands the
    /// connections to the next agent (see [`crate::splitter::handover`]); what cannot be handed over
    /// drains here as at [`SplitterRunning::stop`]. The policy routing stays when connections
    /// were handed over (they need it; the next agent installs the same).
    pub(super) async fn hand_over(mut self, h: &Handle) -> Result<()> {
        self.stop_listening().await;
        let started = Instant::now();
        let pairs = self.proxy.hand_over(HANDOVER_WAIT).await;
        let stopped_ms = started.elapsed().as_secs_f64() * 1000.0;
        let left = self.proxy.open_connections();
        let outcome = handover::hand_over(pairs, left as u64).await;
        if let Some(e) = &outcome.error {
            warn!(error = %e, kept = outcome.back.len(), "handover: not every connection could be handed over; those drain here");
        }
        let handed = outcome.handed;
        self.proxy.adopt(outcome.back);
        let drain = self.proxy.open_connections();
        info!(
            handed_over = handed,
            drain,
            stop_ms = %format_args!("{stopped_ms:.1}"),
            ms = %format_args!("{:.1}", started.elapsed().as_secs_f64() * 1000.0),
            "handover: connections left to the next agent"
        );
        // What is left (connections still reading their hello, an ACME validation) has at most
        // HANDOVER_DRAIN: the next agent, and the handed-over connections, wait for this exit.
        self.drain = self.drain.min(HANDOVER_DRAIN);
        self.finish(h, handed > 0).await
    }

    /// Stops accepting, gives open connections the drain time to finish, closes the rest,
    /// then removes the policy routing (which those connections needed until then).
    pub(super) async fn stop(mut self, h: &Handle) -> Result<()> {
        self.stop_listening().await;
        self.finish(h, false).await
    }

    /// Drains what is open, then removes the policy routing unless `keep_routing`.
    async fn finish(self, h: &Handle, keep_routing: bool) -> Result<()> {
        let open = self.proxy.open_connections();
        if open > 0 {
            info!(
                open,
                drain_secs = self.drain.as_secs_f64(),
                "splitter: stopped accepting; draining open connections"
            );
        }
        let cut = self.proxy.drain(self.drain).await;
        if cut > 0 {
            warn!(cut, "splitter: drain deadline passed; closed the connections still open");
        }
        if keep_routing {
            info!("splitter: stopped; policy routing kept for the handed-over connections");
            return Ok(());
        }
        self.routing.remove(h).await?;
        info!("splitter: stopped; policy routing removed");
        Ok(())
    }
}
