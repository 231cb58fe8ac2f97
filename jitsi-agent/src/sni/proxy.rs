//! The accept loop and one task per connection: limits, the ClientHello under a deadline,
//! the route, a transparent connection to the backend, the hello replayed, then the relay.
//! Every refusal is counted and logged once with the route, the client and the reason.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, Socket, Type};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tracing::{debug, info, warn};

use super::{
    hello::{Hello, HelloError, Progress, examine},
    relay::relay,
    router::{ALERT_UNRECOGNIZED_NAME, Decision, Router},
    transparent,
};
use crate::config::Sni;

/// Why a connection was not relayed (the keys of [`Stats::refused`]).
pub mod refusal {
    /// Over `max_connections`.
    pub const OVER_LIMIT: &str = "over_limit";
    /// Over `max_connections_per_client`.
    pub const OVER_CLIENT_LIMIT: &str = "over_client_limit";
    /// The hello did not arrive within `hello_timeout_secs`.
    pub const HELLO_TIMEOUT: &str = "hello_timeout";
    /// The hello exceeded `max_hello_bytes`.
    pub const HELLO_TOO_LARGE: &str = "hello_too_large";
    /// Bytes that start like TLS but are not a ClientHello.
    pub const MALFORMED_HELLO: &str = "malformed_hello";
    /// The client closed (or reset) before a complete hello.
    pub const CLOSED_EARLY: &str = "closed_before_hello";
    /// No route and no default: TLS got an `unrecognized_name` alert, other bytes a close.
    pub const NO_ROUTE: &str = "no_route";
    /// The backend did not accept within `connect_timeout_secs`.
    pub const CONNECT_TIMEOUT: &str = "connect_timeout";
    /// The backend refused or was unreachable.
    pub const CONNECT_FAILED: &str = "connect_failed";
}

/// Counters of one route.
#[derive(Debug, Default)]
pub struct RouteStats {
    /// Connections relayed to the route.
    pub connections: AtomicU64,
    /// Of those, open now.
    pub open: AtomicU64,
    /// Client -> backend bytes, hello included.
    pub bytes_up: AtomicU64,
    /// Backend -> client bytes.
    pub bytes_down: AtomicU64,
}

/// The splitter's counters.
#[derive(Debug, Default)]
pub struct Stats {
    /// Accepted connections.
    pub accepted: AtomicU64,
    /// Per route, in configuration order.
    pub routes: Vec<RouteStats>,
    /// Refusals by reason.
    pub refused: Mutex<BTreeMap<&'static str, u64>>,
}

/// The splitter: settings, routes, counters and the open-connection accounting.
pub struct Proxy {
    settings: Sni,
    router: Router,
    /// Counters.
    pub stats: Stats,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
    fallback_logged: Mutex<std::collections::HashSet<String>>,
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
        if let Some(n) = open.1.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.client);
            }
        }
    }
}

/// Binds a listening socket (IPv6 ones are IPv6-only, so `0.0.0.0:443` and `[::]:443` coexist).
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    sock.set_nonblocking(true)?;
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    TcpListener::from_std(sock.into())
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

impl Proxy {
    /// A splitter for a validated `[sni]` section.
    pub fn new(settings: Sni) -> Arc<Self> {
        let router = Router::new(&settings);
        let stats = Stats { routes: router.routes.iter().map(|_| RouteStats::default()).collect(), ..Stats::default() };
        Arc::new(Proxy {
            settings,
            router,
            stats,
            open: Mutex::new((0, HashMap::new())),
            fallback_logged: Mutex::default(),
        })
    }

    /// Accepts on `listeners` until `stop` turns true; connections already relayed go on.
    pub async fn serve(self: Arc<Self>, listeners: Vec<TcpListener>, stop: watch::Receiver<bool>) {
        let mut tasks = Vec::new();
        for l in listeners {
            let (me, mut stop) = (self.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        r = l.accept() => match r {
                            Ok((s, peer)) => {
                                let me = me.clone();
                                tokio::spawn(async move { me.handle(s, peer).await });
                            }
                            Err(e) => {
                                warn!(error = %e, "accept failed");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        },
                        _ = stop.changed() => break,
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    fn refuse(&self, reason: &'static str, route: Option<&str>, client: SocketAddr, detail: &dyn std::fmt::Display) {
        *self.stats.refused.lock().expect("stats lock").entry(reason).or_default() += 1;
        warn!(reason, route = route.unwrap_or("-"), client = %client, detail = %detail, "sni: connection refused");
    }

    fn take_slot(&self, client: SocketAddr) -> Result<Slot<'_>, &'static str> {
        let mut open = self.open.lock().expect("open lock");
        if open.0 >= self.settings.max_connections {
            return Err(refusal::OVER_LIMIT);
        }
        let n = open.1.entry(client.ip()).or_default();
        if *n >= self.settings.max_connections_per_client {
            return Err(refusal::OVER_CLIENT_LIMIT);
        }
        *n += 1;
        open.0 += 1;
        Ok(Slot { proxy: self, client: client.ip() })
    }

    /// Reads until the hello is complete; returns the bytes read and the verdict.
    async fn read_hello(&self, s: &mut TcpStream) -> Result<(Vec<u8>, Hello), (&'static str, String)> {
        let deadline = tokio::time::Instant::now() + secs(self.settings.hello_timeout_secs);
        let mut buf = Vec::with_capacity(2048);
        loop {
            match examine(&buf, self.settings.max_hello_bytes) {
                Ok(Progress::Done(h)) => return Ok((buf, h)),
                Ok(Progress::NeedMore) => {}
                Err(e @ HelloError::TooLarge { .. }) => return Err((refusal::HELLO_TOO_LARGE, e.to_string())),
                Err(e @ HelloError::Malformed(_)) => return Err((refusal::MALFORMED_HELLO, e.to_string())),
            }
            // Read straight into the tail of `buf`, never more than one byte past the limit.
            let start = buf.len();
            let want = (self.settings.max_hello_bytes + 1).saturating_sub(start).min(16 * 1024);
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
                        refusal::HELLO_TIMEOUT,
                        format!("{} bytes in {}s", buf.len(), self.settings.hello_timeout_secs),
                    ));
                }
                Ok(Ok(0)) => return Err((refusal::CLOSED_EARLY, format!("after {} bytes", buf.len()))),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err((refusal::CLOSED_EARLY, e.to_string())),
            }
        }
    }

    async fn handle(self: Arc<Self>, mut client: TcpStream, peer: SocketAddr) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let _slot = match self.take_slot(peer) {
            Ok(s) => s,
            Err(reason) => return self.refuse(reason, None, peer, &"limit reached"),
        };
        let _ = client.set_nodelay(true);
        let started = Instant::now();
        let (hello_bytes, hello) = match self.read_hello(&mut client).await {
            Ok(x) => x,
            Err((reason, detail)) => return self.refuse(reason, None, peer, &detail),
        };
        let idx = match self.router.decide(&hello) {
            Decision::Route(i) => i,
            Decision::Alert => {
                let _ = client.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                let name = match &hello {
                    Hello::Tls { server_name: Some(n), .. } => n.to_string(),
                    _ => "(no server name)".into(),
                };
                return self.refuse(refusal::NO_ROUTE, None, peer, &name);
            }
            Decision::Close => return self.refuse(refusal::NO_ROUTE, None, peer, &"not TLS"),
        };
        let route = &self.router.routes[idx];
        let (backend, transparent) = route.backend_for(peer);
        if route.transparent && !transparent && self.fallback_logged.lock().expect("lock").insert(route.name.clone()) {
            info!(route = %route.name, client_family = if peer.is_ipv4() { "ipv4" } else { "ipv6" }, backend = %backend,
                "sni: no backend of the client's family; connecting non-transparently (logged once per route)");
        }
        let from = transparent.then_some(peer);
        let connect = transparent::connect(backend, from, self.settings.socket_mark);
        let mut upstream = match tokio::time::timeout(secs(self.settings.connect_timeout_secs), connect).await {
            Err(_) => return self.refuse(refusal::CONNECT_TIMEOUT, Some(&route.name), peer, &backend),
            Ok(Err(e)) => {
                return self.refuse(refusal::CONNECT_FAILED, Some(&route.name), peer, &format!("{backend}: {e}"));
            }
            Ok(Ok(s)) => s,
        };
        if let Err(e) = upstream.write_all(&hello_bytes).await {
            return self.refuse(refusal::CONNECT_FAILED, Some(&route.name), peer, &format!("{backend}: {e}"));
        }
        let stats = &self.stats.routes[idx];
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        debug!(route = %route.name, client = %peer, backend = %backend, hello_ms = started.elapsed().as_millis() as u64, "sni: relaying");
        let r = relay(client, upstream, secs(self.settings.idle_timeout_secs), self.settings.relay).await;
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.bytes_up.fetch_add(r.up + hello_bytes.len() as u64, Ordering::Relaxed);
        stats.bytes_down.fetch_add(r.down, Ordering::Relaxed);
        debug!(route = %route.name, client = %peer, up = r.up, down = r.down, idle = r.idle, error = ?r.error, "sni: closed");
    }
}
