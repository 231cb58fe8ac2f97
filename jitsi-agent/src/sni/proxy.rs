//! The accept loop and one task per connection: limits, the ClientHello under a deadline,
//! the route, a transparent connection to the backend, the hello replayed, then the relay.
//! Every refusal is counted by reason (see `status`, metrics) and logged at debug level with
//! the route, the client and the detail; the run loop logs a summary once a minute.

use std::{
    collections::{HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex, RwLock, atomic::Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    hello::{Hello, HelloError, Progress, examine},
    relay::relay,
    router::{ALERT_UNRECOGNIZED_NAME, Decision, Router},
    stats::{Refusal, RouteStats, Stats},
    transparent,
};
use crate::config::Sni;

/// One configuration's routing: settings, compiled routes and each route's counters.
struct Table {
    settings: Sni,
    router: Router,
    stats: Vec<Arc<RouteStats>>,
}

/// The splitter: the current table (swapped on reload), counters, the open-connection
/// accounting and the tasks of the connections being relayed.
pub struct Proxy {
    table: RwLock<Arc<Table>>,
    /// Counters (shared with the metrics endpoint).
    pub stats: Arc<Stats>,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    fallback_logged: Mutex<HashSet<String>>,
    connections: TaskTracker,
    /// Cancelled when the drain deadline passes: connections still open are closed.
    cut: CancellationToken,
}

/// Counts a relayed connection as open while it lives (also when the drain deadline cuts it).
struct OpenGuard<'a>(&'a RouteStats);

impl<'a> OpenGuard<'a> {
    fn new(stats: &'a RouteStats) -> Self {
        stats.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(stats)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Removes a connection from the open counts when it ends.
struct Slot<'a> {
    proxy: &'a Proxy,
    client: IpAddr,
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut open = self.proxy.open.lock().expect("open lock");
        open.0 -= 1;
        self.proxy.stats.open.fetch_sub(1, Ordering::Relaxed);
        if let Some(n) = open.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Table {
    fn new(settings: Sni, stats: &Stats) -> Arc<Self> {
        let router = Router::new(&settings);
        let stats = router.routes.iter().map(|r| stats.route(&r.name)).collect();
        Arc::new(Table { settings, router, stats })
    }
}

impl Proxy {
    /// A splitter for a validated `[sni]` section, counting into `stats`.
    pub fn new(settings: Sni, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Proxy {
            table: RwLock::new(Table::new(settings, &stats)),
            stats,
            open: Mutex::new((0, HashMap::new())),
            fallback_logged: Mutex::default(),
            connections: TaskTracker::new(),
            cut: CancellationToken::new(),
        })
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    /// Swaps in a new `[sni]` section: new connections are routed by it, connections already
    /// relayed keep going; counters of routes that keep their name continue.
    pub fn update(&self, settings: Sni) {
        let table = Table::new(settings, &self.stats);
        *self.table.write().expect("table lock") = table;
    }

    /// Connections open now (reading a hello or relaying).
    pub fn open_connections(&self) -> usize {
        self.open.lock().expect("open lock").0
    }

    /// Accepts on `listener` until `stop` is cancelled; each connection runs in its own task.
    pub fn spawn_listener(self: &Arc<Self>, listener: TcpListener, stop: CancellationToken) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, peer)) => {
                            let conn = me.clone();
                            let cut = me.cut.clone();
                            me.connections.spawn(async move {
                                tokio::select! {
                                    () = conn.handle(s, peer) => {}
                                    () = cut.cancelled() => {}
                                }
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "sni: accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    },
                    () = stop.cancelled() => break,
                }
            }
        })
    }

    /// After the listeners have stopped: waits up to `deadline` for open connections to finish,
    /// then closes the rest. Returns how many were closed.
    pub async fn drain(&self, deadline: Duration) -> usize {
        self.connections.close();
        if tokio::time::timeout(deadline, self.connections.wait()).await.is_ok() {
            return 0;
        }
        let left = self.open_connections();
        self.cut.cancel();
        self.connections.wait().await;
        left
    }

    fn refuse(&self, reason: Refusal, route: Option<&str>, client: SocketAddr, detail: &dyn std::fmt::Display) {
        self.stats.refuse(reason);
        debug!(reason = reason.name(), route = route.unwrap_or("-"), client = %client, detail = %detail, "sni: connection refused");
    }

    fn take_slot(&self, settings: &Sni, client: SocketAddr) -> Result<Slot<'_>, Refusal> {
        let mut open = self.open.lock().expect("open lock");
        if open.0 >= settings.max_connections {
            return Err(Refusal::OverLimit);
        }
        let n = open.1.entry(client.ip()).or_default();
        if *n >= settings.max_connections_per_client {
            return Err(Refusal::OverClientLimit);
        }
        *n += 1;
        open.0 += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot { proxy: self, client: client.ip() })
    }

    /// Reads until the hello is complete; returns the bytes read and the verdict.
    async fn read_hello(settings: &Sni, s: &mut TcpStream) -> Result<(Vec<u8>, Hello), (Refusal, String)> {
        let deadline = tokio::time::Instant::now() + secs(settings.hello_timeout_secs);
        let mut buf = Vec::with_capacity(2048);
        loop {
            match examine(&buf, settings.max_hello_bytes) {
                Ok(Progress::Done(h)) => return Ok((buf, h)),
                Ok(Progress::NeedMore) => {}
                Err(e @ HelloError::TooLarge { .. }) => return Err((Refusal::HelloTooLarge, e.to_string())),
                Err(e @ HelloError::Malformed(_)) => return Err((Refusal::MalformedHello, e.to_string())),
            }
            // Read straight into the tail of `buf`, never more than one byte past the limit.
            let start = buf.len();
            let want = (settings.max_hello_bytes + 1).saturating_sub(start).min(16 * 1024);
            buf.resize(start + want, 0);
            let read = tokio::time::timeout_at(deadline, s.read(&mut buf[start..])).await;
            let n = match &read {
                Ok(Ok(n)) => *n,
                _ => 0,
            };
            buf.truncate(start + n);
            match read {
                Err(_) => {
                    return Err((
                        Refusal::HelloTimeout,
                        format!("{} bytes in {}s", buf.len(), settings.hello_timeout_secs),
                    ));
                }
                Ok(Ok(0)) => return Err((Refusal::ClosedEarly, format!("after {} bytes", buf.len()))),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err((Refusal::ClosedEarly, e.to_string())),
            }
        }
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // The table at accept time routes this connection, whatever a reload does meanwhile.
        let table = self.table();
        let settings = &table.settings;
        let _slot = match self.take_slot(settings, peer) {
            Ok(s) => s,
            Err(reason) => return self.refuse(reason, None, peer, &"limit reached"),
        };
        let _ = client.set_nodelay(true);
        let started = Instant::now();
        let (hello_bytes, hello) = match Self::read_hello(settings, &mut client).await {
            Ok(x) => x,
            Err((reason, detail)) => return self.refuse(reason, None, peer, &detail),
        };
        self.stats.hello_seconds.observe(started.elapsed().as_secs_f64());
        let idx = match table.router.decide(&hello) {
            Decision::Route(i) => i,
            Decision::Alert => {
                let _ = client.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                let name = match &hello {
                    Hello::Tls { server_name: Some(n), .. } => n.to_string(),
                    _ => "(no server name)".into(),
                };
                return self.refuse(Refusal::NoRoute, None, peer, &name);
            }
            Decision::Close => return self.refuse(Refusal::NoRoute, None, peer, &"not TLS"),
        };
        let route = &table.router.routes[idx];
        let Some((backend, transparent)) = route.backend_for(peer) else {
            return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &"backend container not running");
        };
        if route.transparent && !transparent && self.fallback_logged.lock().expect("lock").insert(route.name.clone()) {
            info!(route = %route.name, client_family = if peer.is_ipv4() { "ipv4" } else { "ipv6" }, backend = %backend,
                "sni: no backend of the client's family; connecting non-transparently (logged once per route)");
        }
        let from = transparent.then_some(peer);
        let connect = transparent::connect(backend, from, settings.socket_mark);
        let mut upstream = match tokio::time::timeout(secs(settings.connect_timeout_secs), connect).await {
            Err(_) => return self.refuse(Refusal::ConnectTimeout, Some(&route.name), peer, &backend),
            Ok(Err(e)) => {
                return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &format!("{backend}: {e}"));
            }
            Ok(Ok(s)) => s,
        };
        if let Err(e) = upstream.write_all(&hello_bytes).await {
            return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &format!("{backend}: {e}"));
        }
        let stats = &table.stats[idx];
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.bytes_up.fetch_add(hello_bytes.len() as u64, Ordering::Relaxed);
        let _open = OpenGuard::new(stats);
        debug!(route = %route.name, client = %peer, backend = %backend, hello_ms = started.elapsed().as_millis() as u64, "sni: relaying");
        let r = relay(client, upstream, secs(settings.idle_timeout_secs), settings.relay).await;
        stats.bytes_up.fetch_add(r.up, Ordering::Relaxed);
        stats.bytes_down.fetch_add(r.down, Ordering::Relaxed);
        debug!(route = %route.name, client = %peer, up = r.up, down = r.down, idle = r.idle, error = ?r.error, "sni: closed");
    }
}
