//! The running splitters (SNI on 443, Host on 80): their listeners, the policy routing they
//! share, and changing both on a reload without disturbing connections already relayed.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    acme::challenges::Challenges,
    config::{Http, Sni},
    error::{Error, Result},
    listeners::Listeners,
    policy_routing::PolicyRouting,
    sni::{
        proxy::{Front, Proxy},
        stats::Stats,
    },
};

/// One accept loop.
struct Listening {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The splitters and what was installed for them.
pub(super) struct SplitterRunning {
    proxy: Arc<Proxy>,
    routing: PolicyRouting,
    listening: BTreeMap<SocketAddr, (Front, Listening)>,
    drain: Duration,
}

fn routing_for(sni: &Sni, http: Option<&Http>) -> PolicyRouting {
    let http_backends = http.into_iter().flat_map(Http::transparent_backends);
    PolicyRouting {
        mark: sni.reply_mark,
        table: sni.route_table,
        priority: sni.rule_priority,
        loopback: sni.transparent_backends().chain(http_backends).any(|b| b.ip().is_loopback()),
    }
}

/// The addresses to listen on, and for which splitter.
fn wanted(sni: &Sni, http: Option<&Http>) -> Vec<(SocketAddr, Front)> {
    let tls = sni.listen.iter().map(|a| (*a, Front::Tls));
    tls.chain(http.into_iter().flat_map(|h| h.listen.iter().map(|a| (*a, Front::Http)))).collect()
}

/// Opens a listener for each of `addrs` (all or none: a failure closes the ones opened).
type Opened = Vec<(SocketAddr, Front, tokio::net::TcpListener)>;

fn open_all(listeners: &Listeners, addrs: &[(SocketAddr, Front)]) -> Result<Opened> {
    addrs
        .iter()
        .map(|(a, f)| {
            listeners.tcp(*a).map(|l| (*a, *f, l)).map_err(|e| Error::io(format!("splitter: listening on {a}"), e))
        })
        .collect()
}

impl SplitterRunning {
    /// Listens first (if 443 or 80 is taken nothing has been installed yet), then installs the
    /// policy routing, then accepts. `sni` holds the settings of both splitters (without an
    /// `[sni]` section: the defaults, with no listen address).
    pub(super) async fn start(
        h: &Handle,
        sni: &Sni,
        http: Option<&Http>,
        listeners: &Listeners,
        stats: Arc<Stats>,
        challenges: Challenges,
    ) -> Result<Self> {
        let opened = open_all(listeners, &wanted(sni, http))?;
        let routing = routing_for(sni, http);
        routing.install(h).await?;
        let mut me = SplitterRunning {
            proxy: Proxy::new(sni.clone(), http.cloned(), stats, challenges),
            routing,
            listening: BTreeMap::new(),
            drain: Duration::from_secs_f64(sni.drain_timeout_secs),
        };
        me.accept_on(opened, listeners);
        info!(listen = ?sni.listen, routes = sni.routes.len(), http_listen = ?http.map(|h| &h.listen),
            http_routes = http.map_or(0, |h| h.routes.len()), mark = format!("{:#x}", sni.reply_mark),
            table = sni.route_table, "splitter: listening; policy routing installed");
        Ok(me)
    }

    fn accept_on(&mut self, opened: Opened, listeners: &Listeners) {
        for (addr, front, l) in opened {
            if !listeners.is_inherited(&addr) {
                info!(%addr, ?front, "splitter: bound here (no socket from the service manager: connections arriving during a restart are refused)");
            }
            let stop = CancellationToken::new();
            let task = self.proxy.spawn_listener(l, front, stop.clone());
            self.listening.insert(addr, (front, Listening { stop, task }));
        }
    }

    /// The subnets the backends live on: clients from there are connected non-transparently.
    pub(super) fn set_backend_nets(&self, nets: Vec<(std::net::IpAddr, u8)>) {
        self.proxy.set_backend_nets(nets);
    }

    /// Applies a changed `[sni]` section: new listeners are opened before anything else changes
    /// (a failure leaves the running splitter as it was), then the policy routing is replaced if
    /// its settings changed, the routing table swapped, and listeners no longer configured closed.
    pub(super) async fn update(
        &mut self,
        h: &Handle,
        sni: &Sni,
        http: Option<&Http>,
        listeners: &Listeners,
    ) -> Result<()> {
        let wanted = wanted(sni, http);
        let added: Vec<_> = wanted.iter().filter(|(a, _)| !self.listening.contains_key(a)).copied().collect();
        let opened = open_all(listeners, &added)?;
        let routing = routing_for(sni, http);
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
        self.proxy.update(sni.clone(), http.cloned());
        self.drain = Duration::from_secs_f64(sni.drain_timeout_secs);
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

    /// Stops accepting, gives open connections the drain time to finish, closes the rest,
    /// then removes the policy routing (which those connections needed until then).
    pub(super) async fn stop(self, h: &Handle) -> Result<()> {
        for (_, l) in self.listening.values() {
            l.stop.cancel();
        }
        for (_, (_, l)) in self.listening {
            let _ = l.task.await;
        }
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
        self.routing.remove(h).await?;
        info!("splitter: stopped; policy routing removed");
        Ok(())
    }
}
