//! The running SNI splitter: its listeners, its policy routing, and changing both on a reload
//! without disturbing connections already relayed.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use rtnetlink::Handle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::Sni,
    error::{Error, Result},
    listeners::Listeners,
    policy_routing::PolicyRouting,
    sni::{proxy::Proxy, stats::Stats},
};

/// One accept loop.
struct Listening {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// The splitter and what was installed for it.
pub(super) struct SniRunning {
    proxy: Arc<Proxy>,
    routing: PolicyRouting,
    listening: BTreeMap<SocketAddr, Listening>,
    drain: Duration,
}

fn routing_for(sni: &Sni) -> PolicyRouting {
    PolicyRouting {
        mark: sni.reply_mark,
        table: sni.route_table,
        priority: sni.rule_priority,
        loopback: sni.transparent_backends().any(|b| b.ip().is_loopback()),
    }
}

/// Opens a listener for each of `addrs` (all or none: a failure closes the ones opened).
fn open_all(listeners: &Listeners, addrs: &[SocketAddr]) -> Result<Vec<(SocketAddr, tokio::net::TcpListener)>> {
    addrs
        .iter()
        .map(|a| listeners.tcp(*a).map(|l| (*a, l)).map_err(|e| Error::io(format!("sni: listening on {a}"), e)))
        .collect()
}

impl SniRunning {
    /// Listens first (if 443 is taken nothing has been installed yet), then installs the
    /// policy routing, then accepts.
    pub(super) async fn start(h: &Handle, sni: &Sni, listeners: &Listeners, stats: Arc<Stats>) -> Result<Self> {
        let opened = open_all(listeners, &sni.listen)?;
        let routing = routing_for(sni);
        routing.install(h).await?;
        let mut me = SniRunning {
            proxy: Proxy::new(sni.clone(), stats),
            routing,
            listening: BTreeMap::new(),
            drain: Duration::from_secs_f64(sni.drain_timeout_secs),
        };
        me.accept_on(opened, listeners);
        info!(listen = ?sni.listen, routes = sni.routes.len(), mark = format!("{:#x}", sni.reply_mark), table = sni.route_table, "sni: listening; policy routing installed");
        Ok(me)
    }

    fn accept_on(&mut self, opened: Vec<(SocketAddr, tokio::net::TcpListener)>, listeners: &Listeners) {
        for (addr, l) in opened {
            if !listeners.is_inherited(&addr) {
                info!(%addr, "sni: bound here (no socket from the service manager: connections arriving during a restart are refused)");
            }
            let stop = CancellationToken::new();
            let task = self.proxy.spawn_listener(l, stop.clone());
            self.listening.insert(addr, Listening { stop, task });
        }
    }

    /// Applies a changed `[sni]` section: new listeners are opened before anything else changes
    /// (a failure leaves the running splitter as it was), then the policy routing is replaced if
    /// its settings changed, the routing table swapped, and listeners no longer configured closed.
    pub(super) async fn update(&mut self, h: &Handle, sni: &Sni, listeners: &Listeners) -> Result<()> {
        let added: Vec<SocketAddr> = sni.listen.iter().filter(|a| !self.listening.contains_key(a)).copied().collect();
        let opened = open_all(listeners, &added)?;
        let routing = routing_for(sni);
        if routing != self.routing {
            self.routing.remove(h).await?;
            routing.install(h).await?;
            info!(mark = format!("{:#x}", routing.mark), table = routing.table, "sni: policy routing replaced");
            self.routing = routing;
        }
        self.proxy.update(sni.clone());
        self.drain = Duration::from_secs_f64(sni.drain_timeout_secs);
        self.accept_on(opened, listeners);
        let removed: Vec<SocketAddr> = self.listening.keys().filter(|a| !sni.listen.contains(a)).copied().collect();
        for addr in removed {
            if let Some(l) = self.listening.remove(&addr) {
                l.stop.cancel();
                let _ = l.task.await;
                info!(%addr, "sni: stopped listening");
            }
        }
        Ok(())
    }

    /// Stops accepting, gives open connections the drain time to finish, closes the rest,
    /// then removes the policy routing (which those connections needed until then).
    pub(super) async fn stop(self, h: &Handle) -> Result<()> {
        for l in self.listening.values() {
            l.stop.cancel();
        }
        for (_, l) in self.listening {
            let _ = l.task.await;
        }
        let open = self.proxy.open_connections();
        if open > 0 {
            info!(open, drain_secs = self.drain.as_secs_f64(), "sni: stopped accepting; draining open connections");
        }
        let cut = self.proxy.drain(self.drain).await;
        if cut > 0 {
            warn!(cut, "sni: drain deadline passed; closed the connections still open");
        }
        self.routing.remove(h).await?;
        info!("sni: stopped; policy routing removed");
        Ok(())
    }
}
