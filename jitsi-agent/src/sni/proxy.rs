//! The accept loop and one task per connection, for both splitters: limits, the first bytes
//! under a deadline (a TLS ClientHello on 443, an HTTP request head on 80), the route, a
//! transparent connection to the backend, those bytes replayed, then the relay. Every refusal
//! is counted by reason (see `status`, metrics) and logged at debug level with the route, the
//! client and the detail; the run loop logs a summary once a minute.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
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
    hello::{Hello, HelloError, Progress, bytes_needed, examine},
    limits::{Admission, Caps, Limits},
    relay::{Outcome, Resume, Stopped, relay},
    router::{ALERT_UNRECOGNIZED_NAME, Decision, Route as Target, Router},
    stats::{Refusal, RouteStats, Stats},
    transparent,
};
use crate::{
    acme::challenges::Challenges,
    config::{Http, Sni},
    handover::{Pair, PairState},
    http::{
        head::{self, HeadError},
        router::{self as http_router, response},
    },
};

/// Which splitter a listener feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Front {
    /// TLS, routed by SNI (443).
    Tls,
    /// HTTP/1.x, routed by `Host` (80).
    Http,
}

/// What [`Proxy::forward`] does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Forward {
    /// Relays both ways for as long as the connection lives.
    Relay(Front),
    /// Passes one ACME validation request and its answer, then closes.
    ChallengeOnly,
}

/// The `[http]` routing of one configuration.
struct HttpTable {
    settings: Http,
    router: http_router::Router,
    stats: Vec<Arc<RouteStats>>,
}

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
    http: RwLock<Option<Arc<HttpTable>>>,
    challenges: Challenges,
    /// Counters (shared with the metrics endpoint).
    pub stats: Arc<Stats>,
    limits: Limits,
    /// The subnets the backends live on (see `set_backend_nets`).
    backend_nets: RwLock<Arc<Vec<(IpAddr, u8)>>>,
    fallback_logged: Mutex<HashSet<String>>,
    connections: TaskTracker,
    /// Cancelled when the drain deadline passes: connections still open are closed.
    cut: CancellationToken,
    /// Cancelled to stop every relay for a handover.
    handover: CancellationToken,
    /// While a handover collects them (`Some`): the relays stopped for it.
    handed: Mutex<Option<Vec<Pair>>>,
}

/// Counts a connection as open while it lives (also when the drain deadline cuts it).
struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

fn caps(settings: &Sni) -> Caps {
    Caps {
        per_client: settings.max_connections_per_client,
        per_v6_48: settings.max_connections_per_ipv6_48,
        pending: settings.max_pending_connections,
        relayed: settings.max_connections,
    }
}

/// Whether `ip` is in one of `nets`.
fn in_nets(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|&(net, len)| net.is_ipv4() == ip.is_ipv4() && crate::netlink::network(ip, len) == net)
}

/// Reads at most this many times for one hello or request head: real clients send it in one
/// to a few segments; a client trickling it in more is refused, so it costs a bounded number
/// of wake-ups and parses.
const MAX_READS: usize = 64;

/// Why reading a hello or head stopped without a verdict.
enum ReadFailure {
    /// The deadline passed.
    Timeout,
    /// The client closed or failed.
    Closed(String),
    /// More than [`MAX_READS`] reads.
    Trickled,
}

impl Table {
    fn new(settings: Sni, stats: &Stats) -> Arc<Self> {
        let router = Router::new(&settings);
        let stats = router.routes.iter().map(|r| stats.route(&r.name)).collect();
        Arc::new(Table { settings, router, stats })
    }
}

impl HttpTable {
    fn new(settings: Option<Http>, stats: &Stats) -> Option<Arc<Self>> {
        let settings = settings?;
        let router = http_router::Router::new(&settings);
        let stats = router.routes.iter().map(|r| stats.route(&r.target.name)).collect();
        Some(Arc::new(HttpTable { settings, router, stats }))
    }
}

/// Reads from `s` into `buf` until `examine` has a verdict, at most [`MAX_READS`] times and
/// about `max + 1` bytes, before `deadline`. `examine` runs only once `needed` bytes are there
/// (or `max`): the bytes are read into the buffer's spare room, never zero-filled first.
async fn read_until<T, E>(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: tokio::time::Instant,
    needed: impl Fn(&[u8]) -> usize,
    examine: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Result<T, E>, ReadFailure> {
    for _ in 0..MAX_READS {
        let want = (max + 1).saturating_sub(buf.len()).min(16 * 1024);
        buf.reserve(want);
        let read = tokio::time::timeout_at(deadline, s.read_buf(buf)).await;
        match read {
            Err(_) => return Err(ReadFailure::Timeout),
            Ok(Ok(0)) => return Err(ReadFailure::Closed(format!("after {} bytes", buf.len()))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadFailure::Closed(e.to_string())),
        }
        if buf.len() >= needed(buf).min(max) {
            match examine(buf) {
                Ok(Some(v)) => return Ok(Ok(v)),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    Err(ReadFailure::Trickled)
}

impl Proxy {
    /// A splitter for a validated `[sni]` section (its settings also govern `[http]`'s
    /// connections), counting into `stats`; `challenges` are the agent's own ACME tokens.
    pub fn new(settings: Sni, http: Option<Http>, stats: Arc<Stats>, challenges: Challenges) -> Arc<Self> {
        Arc::new(Proxy {
            table: RwLock::new(Table::new(settings, &stats)),
            http: RwLock::new(HttpTable::new(http, &stats)),
            challenges,
            stats,
            limits: Limits::default(),
            backend_nets: RwLock::default(),
            fallback_logged: Mutex::default(),
            connections: TaskTracker::new(),
            cut: CancellationToken::new(),
            handover: CancellationToken::new(),
            handed: Mutex::default(),
        })
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().expect("table lock").clone()
    }

    /// Swaps in a new `[sni]` section: new connections are routed by it, connections already
    /// relayed keep going; counters of routes that keep their name continue.
    pub fn update(&self, settings: Sni, http: Option<Http>) {
        let table = Table::new(settings, &self.stats);
        *self.table.write().expect("table lock") = table;
        *self.http.write().expect("table lock") = HttpTable::new(http, &self.stats);
    }

    /// Connections open now (reading a hello or relaying).
    pub fn open_connections(&self) -> usize {
        self.limits.open()
    }

    /// The subnets the backends live on: a client there (a container reaching the host's
    /// public name) is connected from the host's address, since the backend would answer its
    /// own address directly, past the agent.
    pub fn set_backend_nets(&self, nets: Vec<(IpAddr, u8)>) {
        *self.backend_nets.write().expect("nets lock") = Arc::new(nets);
    }

    /// Accepts on `listener` until `stop` is cancelled; each connection runs in its own task.
    /// A failed accept is counted, and logged unless another failed within
    /// `ACCEPT_ERROR_BURST`.
    pub fn spawn_listener(
        self: &Arc<Self>,
        listener: TcpListener,
        front: Front,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let me = self.clone();
        tokio::spawn(async move {
            // One warning per burst of failed accepts (EMFILE repeats every 50 ms), all counted.
            let mut last_error: Option<tokio::time::Instant> = None;
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((s, peer)) => {
                            let conn = me.clone();
                            let cut = me.cut.clone();
                            me.connections.spawn(async move {
                                tokio::select! {
                                    () = conn.handle(s, peer, front) => {}
                                    () = cut.cancelled() => {}
                                }
                            });
                        }
                        Err(e) => {
                            me.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                            let now = tokio::time::Instant::now();
                            if last_error.is_none_or(|t| now - t > ACCEPT_ERROR_BURST) {
                                warn!(error = %e, ?front, "splitter: accept failed (repeats are counted in jitsi_agent_sni_accept_errors_total, not logged)");
                            }
                            last_error = Some(now);
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

    /// Reads until the hello is complete; returns the bytes read and the verdict.
    async fn read_hello(settings: &Sni, s: &mut TcpStream) -> Result<(Vec<u8>, Hello), (Refusal, String)> {
        let deadline = tokio::time::Instant::now() + secs(settings.hello_timeout_secs);
        let mut buf = Vec::with_capacity(2048);
        let max = settings.max_hello_bytes;
        let verdict = read_until(
            s,
            &mut buf,
            max,
            deadline,
            |b| bytes_needed(b, max),
            |b| match examine(b, settings.max_hello_bytes)? {
                Progress::Done(h) => Ok(Some(h)),
                Progress::NeedMore => Ok(None),
            },
        )
        .await;
        match verdict {
            Ok(Ok(h)) => Ok((buf, h)),
            Ok(Err(e @ HelloError::TooLarge { .. })) => Err((Refusal::HelloTooLarge, e.to_string())),
            Ok(Err(e @ HelloError::Malformed(_))) => Err((Refusal::MalformedHello, e.to_string())),
            Err(ReadFailure::Timeout) => {
                Err((Refusal::HelloTimeout, format!("{} bytes in {}s", buf.len(), settings.hello_timeout_secs)))
            }
            Err(ReadFailure::Closed(detail)) => Err((Refusal::ClosedEarly, detail)),
            Err(ReadFailure::Trickled) => Err((
                Refusal::MalformedHello,
                format!("ClientHello incomplete after {MAX_READS} reads ({} bytes)", buf.len()),
            )),
        }
    }

    async fn handle(self: Arc<Self>, client: TcpStream, peer: SocketAddr, front: Front) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // The tables at accept time route this connection, whatever a reload does meanwhile.
        let table = self.table();
        let (mut admission, evicted) = match self.limits.admit(&caps(&table.settings), front, peer.ip()) {
            Ok(a) => a,
            Err(reason) => return self.refuse(reason, None, peer, &"limit reached"),
        };
        for _ in 0..evicted {
            self.refuse(Refusal::EvictedPending, None, peer, &"the oldest pending connection was closed for this one");
        }
        let _open = OpenGuard::new(&self.stats.open);
        let _ = client.set_nodelay(true);
        let evicted = admission.evicted.clone();
        let serve = async {
            match front {
                Front::Tls => self.handle_tls(table, &mut admission, client, peer).await,
                Front::Http => {
                    let http = self.http.read().expect("table lock").clone();
                    match http {
                        Some(http) => self.handle_http(table, http, &mut admission, client, peer).await,
                        None => self.refuse(Refusal::NoHostRoute, None, peer, &"[http] removed"),
                    }
                }
            }
        };
        tokio::select! {
            () = serve => {}
            () = evicted.cancelled() => {}
        }
    }

    async fn handle_tls(
        &self,
        table: Arc<Table>,
        admission: &mut Admission<'_>,
        mut client: TcpStream,
        peer: SocketAddr,
    ) {
        let settings = &table.settings;
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
        drop(hello);
        let route = &table.router.routes[idx];
        if let Err(reason) = admission.relay(&caps(settings)) {
            return self.refuse(reason, Some(&route.name), peer, &"limit reached");
        }
        self.forward(settings, route, &table.stats[idx], client, peer, hello_bytes, Forward::Relay(Front::Tls)).await;
    }

    /// Reads the request head; returns the bytes read (the head and whatever followed it).
    async fn read_head(http: &Http, s: &mut TcpStream) -> Result<(Vec<u8>, head::Head), (Refusal, String)> {
        let deadline = tokio::time::Instant::now() + secs(http.head_timeout_secs);
        let mut buf = Vec::with_capacity(1024);
        let verdict = read_until(s, &mut buf, http.max_head_bytes, deadline, <[u8]>::len, |b| {
            match head::examine(b, http.max_head_bytes)? {
                head::Progress::Done(h) => Ok(Some(h)),
                head::Progress::NeedMore => Ok(None),
            }
        })
        .await;
        match verdict {
            Ok(Ok(h)) => Ok((buf, h)),
            Ok(Err(e @ HeadError::TooLarge { .. })) => Err((Refusal::HeadTooLarge, e.to_string())),
            Ok(Err(e)) => Err((Refusal::BadRequest, e.to_string())),
            Err(ReadFailure::Timeout) => {
                Err((Refusal::HeadTimeout, format!("{} bytes in {}s", buf.len(), http.head_timeout_secs)))
            }
            Err(ReadFailure::Closed(detail)) => Err((Refusal::ClosedEarly, detail)),
            Err(ReadFailure::Trickled) => {
                Err((Refusal::BadRequest, format!("request head incomplete after {MAX_READS} reads")))
            }
        }
    }

    /// Writes a response the splitter gives itself, then closes gracefully: the write side
    /// first, then what the client still sends is read and dropped (up to 64 KiB, for up to a
    /// second) so that closing with unread bytes does not reset the connection and destroy the
    /// response before the client has read it.
    async fn answer(client: &mut TcpStream, bytes: &[u8]) {
        if client.write_all(bytes).await.is_err() || client.shutdown().await.is_err() {
            return;
        }
        let mut sink = [0u8; 8192];
        let mut left: usize = 64 * 1024;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
        while left > 0 {
            match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
                Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
                _ => break,
            }
        }
    }

    async fn handle_http(
        &self,
        table: Arc<Table>,
        http: Arc<HttpTable>,
        admission: &mut Admission<'_>,
        mut client: TcpStream,
        peer: SocketAddr,
    ) {
        let (bytes, head) = match Self::read_head(&http.settings, &mut client).await {
            Ok(x) => x,
            Err((reason, detail)) => {
                let reply = match reason {
                    Refusal::HeadTooLarge => Some(response(431, "Request Header Fields Too Large", None, "")),
                    Refusal::BadRequest => Some(response(400, "Bad Request", None, &format!("{detail}\n"))),
                    _ => None,
                };
                if let Some(r) = reply {
                    Self::answer(&mut client, &r).await;
                }
                return self.refuse(reason, None, peer, &detail);
            }
        };
        let (idx, whole) = match http.router.decide(&head, &self.challenges) {
            http_router::Decision::Route(i) => (i, true),
            http_router::Decision::ChallengeOnly(i) => (i, false),
            http_router::Decision::Redirect(i, location) => {
                debug!(route = %http.router.routes[i].target.name, client = %peer, %location, "http: redirected");
                return Self::answer(&mut client, &response(308, "Permanent Redirect", Some(&location), "")).await;
            }
            http_router::Decision::Challenge(Some(key_authorization)) => {
                // The agent's own validation: out of the pending pool, which a flood churns.
                admission.unpool();
                info!(client = %peer, host = ?head.host.as_ref().map(ToString::to_string), "acme: answered an HTTP-01 challenge");
                return Self::answer(&mut client, &response(200, "OK", None, &key_authorization)).await;
            }
            http_router::Decision::Challenge(None) => {
                return Self::answer(&mut client, &response(404, "Not Found", None, "unknown challenge\n")).await;
            }
            http_router::Decision::NoRoute => {
                let host = head.host.as_ref().map_or("(none)".into(), ToString::to_string);
                Self::answer(&mut client, &response(421, "Misdirected Request", None, "no site here by that name\n"))
                    .await;
                return self.refuse(Refusal::NoHostRoute, None, peer, &host);
            }
        };
        let mut bytes = bytes;
        let route = &http.router.routes[idx].target;
        if whole {
            if let Err(reason) = admission.relay(&caps(&table.settings)) {
                return self.refuse(reason, Some(&route.name), peer, &"limit reached");
            }
        } else {
            // Only the validation request: its head (a GET has no body), then the answer. It
            // takes no place in the pools, so a full pool never blocks a certificate.
            bytes.truncate(head.len);
            admission.unpool();
        }
        drop(head);
        let how = if whole { Forward::Relay(Front::Http) } else { Forward::ChallengeOnly };
        self.forward(&table.settings, route, &http.stats[idx], client, peer, bytes, how).await;
    }

    /// Connects to `route`'s backend (from the client's address where it can), replays the
    /// bytes already read (then frees them: a long-lived connection keeps no copy) and relays
    /// until the connection ends; or, for [`Forward::ChallengeOnly`], sends only those bytes,
    /// closes the way to the backend and passes its answer back.
    #[expect(clippy::too_many_arguments, reason = "one call per front; `how` is the only difference")]
    async fn forward(
        &self,
        settings: &Sni,
        route: &Target,
        stats: &RouteStats,
        client: TcpStream,
        peer: SocketAddr,
        first: Vec<u8>,
        how: Forward,
    ) {
        let Some((backend, transparent)) = route.backend_for(peer) else {
            return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &"backend container not running");
        };
        if route.transparent && !transparent && self.fallback_logged.lock().expect("lock").insert(route.name.clone()) {
            info!(route = %route.name, client_family = if peer.is_ipv4() { "ipv4" } else { "ipv6" }, backend = %backend,
                "splitter: no backend of the client's family; connecting non-transparently (logged once per route)");
        }
        let hairpin = transparent && in_nets(&self.backend_nets.read().expect("nets lock"), peer.ip());
        if hairpin {
            self.stats.hairpin_connections.fetch_add(1, Ordering::Relaxed);
            debug!(route = %route.name, client = %peer, "splitter: client on a backends' subnet; connecting from the host");
        }
        let from = (transparent && !hairpin).then_some(peer);
        let connect = transparent::connect(backend, from, settings.socket_mark);
        let mut upstream = match tokio::time::timeout(secs(settings.connect_timeout_secs), connect).await {
            Err(_) => return self.refuse(Refusal::ConnectTimeout, Some(&route.name), peer, &backend),
            Ok(Err(e)) => {
                return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &format!("{backend}: {e}"));
            }
            Ok(Ok((s, ephemeral))) => {
                if ephemeral {
                    self.stats.ephemeral_port_retries.fetch_add(1, Ordering::Relaxed);
                    debug!(route = %route.name, client = %peer, "splitter: the client's port was taken towards the backend; used an ephemeral one");
                }
                s
            }
        };
        if let Err(e) = upstream.write_all(&first).await {
            return self.refuse(Refusal::ConnectFailed, Some(&route.name), peer, &format!("{backend}: {e}"));
        }
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.bytes_up.fetch_add(first.len() as u64, Ordering::Relaxed);
        drop(first);
        let Forward::Relay(front) = how else {
            let _open = OpenGuard::new(&stats.open);
            let down = tokio::time::timeout(CHALLENGE_DEADLINE, answer_only(client, upstream)).await.unwrap_or(0);
            stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            debug!(route = %route.name, client = %peer, down, "http: relayed one ACME challenge request");
            return;
        };
        debug!(route = %route.name, client = %peer, backend = %backend, "splitter: relaying");
        let state = PairState { front, route: route.name.clone() };
        self.relay_pair(settings, stats, (client, upstream), state, Resume::default(), peer).await;
    }

    /// Relays an established pair until it ends; a handover stops it and keeps it (or, once
    /// the handover has taken its pairs, it relays on here until the drain).
    async fn relay_pair(
        &self,
        settings: &Sni,
        stats: &RouteStats,
        (mut client, mut backend): (TcpStream, TcpStream),
        state: PairState,
        mut resume: Resume,
        peer: SocketAddr,
    ) {
        let _open = OpenGuard::new(&stats.open);
        let idle = secs(settings.idle_timeout_secs);
        let never = CancellationToken::new();
        let mut stop = &self.handover;
        loop {
            match relay(client, backend, idle, settings.relay, resume, stop).await {
                Outcome::Ended(r) => {
                    stats.bytes_up.fetch_add(r.up, Ordering::Relaxed);
                    stats.bytes_down.fetch_add(r.down, Ordering::Relaxed);
                    debug!(route = %state.route, client = %peer, up = r.up, down = r.down, idle = r.idle, error = ?r.error, "splitter: closed");
                    return;
                }
                Outcome::Stopped(s) => {
                    stats.bytes_up.fetch_add(s.up, Ordering::Relaxed);
                    stats.bytes_down.fetch_add(s.down, Ordering::Relaxed);
                    match self.keep(s, &state) {
                        None => return,
                        Some(s) => (client, backend, resume, stop) = (s.client, s.backend, s.resume, &never),
                    }
                }
            }
        }
    }

    /// Keeps a stopped relay for the handover collecting them; gives it back when none does.
    fn keep(&self, s: Stopped, state: &PairState) -> Option<Stopped> {
        let mut handed = self.handed.lock().expect("handover lock");
        let Some(pairs) = handed.as_mut() else { return Some(s) };
        match (s.client.into_std(), s.backend.into_std()) {
            (Ok(client), Ok(backend)) => {
                pairs.push(Pair {
                    client: client.into(),
                    backend: backend.into(),
                    state: state.clone(),
                    resume: s.resume,
                });
            }
            // Deregistering from the reactor does not fail for a registered socket; if it did,
            // the sockets are closed (dropped) and the connection is lost, as at a plain stop.
            (c, b) => {
                warn!(client = ?c.err(), backend = ?b.err(), "handover: a connection could not be taken off the reactor")
            }
        }
        None
    }

    /// Stops every relay at a clean point and takes them for a handover, waiting up to `wait`
    /// for the connections still reading a hello (they are handed over once relayed). Returns
    /// the pairs; the connections not stopped by then stay here (count them with
    /// [`Proxy::open_connections`]) and relay on until the drain.
    pub async fn hand_over(&self, wait: Duration) -> Vec<Pair> {
        *self.handed.lock().expect("handover lock") = Some(Vec::new());
        self.handover.cancel();
        let deadline = tokio::time::Instant::now() + wait;
        while self.open_connections() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        self.handed.lock().expect("handover lock").take().unwrap_or_default()
    }

    /// Relays on the pairs a previous agent handed over (their counters continue under their
    /// route's name). A pair whose descriptors are not two connected TCP sockets is closed.
    /// Returns how many were taken up.
    pub fn adopt(self: &Arc<Self>, pairs: Vec<Pair>) -> usize {
        let mut adopted = 0;
        for pair in pairs {
            let route = pair.state.route.clone();
            match adoptable(pair) {
                Ok((client, backend, state, resume, peer)) => {
                    adopted += 1;
                    let me = self.clone();
                    let cut = self.cut.clone();
                    self.connections.spawn(async move {
                        tokio::select! {
                            () = me.run_adopted((client, backend), state, resume, peer) => {}
                            () = cut.cancelled() => {}
                        }
                    });
                }
                Err(e) => {
                    warn!(route = %route, error = %e, "handover: a handed-over connection could not be taken up; closed")
                }
            }
        }
        adopted
    }

    async fn run_adopted(
        self: Arc<Self>,
        sockets: (TcpStream, TcpStream),
        state: PairState,
        resume: Resume,
        peer: SocketAddr,
    ) {
        let table = self.table();
        let _admission = self.limits.adopt(state.front, peer.ip());
        let _open = OpenGuard::new(&self.stats.open);
        let stats = self.stats.route(&state.route);
        self.relay_pair(&table.settings, &stats, sockets, state, resume, peer).await;
    }
}

/// The pair's sockets as Tokio streams, and the client's address (both must be connected TCP
/// sockets).
type Adoptable = (TcpStream, TcpStream, PairState, Resume, SocketAddr);

fn adoptable(pair: Pair) -> std::io::Result<Adoptable> {
    let stream = |fd: std::os::fd::OwnedFd| -> std::io::Result<(TcpStream, SocketAddr)> {
        let sock = socket2::Socket::from(fd);
        if sock.r#type()? != socket2::Type::STREAM || sock.protocol()? != Some(socket2::Protocol::TCP) {
            return Err(std::io::Error::other("not a TCP socket"));
        }
        let peer = sock.peer_addr()?.as_socket().ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        sock.set_nonblocking(true)?;
        Ok((TcpStream::from_std(sock.into())?, peer))
    };
    let (client, peer) = stream(pair.client)?;
    let (backend, _) = stream(pair.backend)?;
    Ok((client, backend, pair.state, pair.resume, peer))
}

/// Failed accepts closer together than this are one burst (one log line).
const ACCEPT_ERROR_BURST: Duration = Duration::from_secs(10);

/// How long relaying one ACME validation request may take in all: it is outside the pools,
/// so it must not be able to stay open.
const CHALLENGE_DEADLINE: Duration = Duration::from_secs(10);

/// After the one request was sent: half-closes the way to the backend and copies its answer to
/// the client, then closes (the caller bounds the whole). Returns the bytes passed back
/// (those of an answer cut by the deadline are not counted).
async fn answer_only(mut client: TcpStream, mut upstream: TcpStream) -> u64 {
    use tokio::io::AsyncReadExt as _;
    let _ = upstream.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let mut down = 0u64;
    while let Ok(n) = upstream.read(&mut buf).await {
        if n == 0 || client.write_all(&buf[..n]).await.is_err() {
            break;
        }
        down += n as u64;
    }
    let _ = client.shutdown().await;
    down
}
