//! The core's accept loop and one task per connection: the limits, then the front's reading
//! and routing, a transparent connection to the backend, the bytes already read replayed,
//! then the relay; the drain and the handover. Every refusal is counted by reason (see
//! `status`, metrics) and logged at debug level with the front, the route, the client and the
//! detail; the run loop logs a summary once a minute.

use std::{
    collections::HashSet,
    future::Future,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::{
    io::AsyncWriteExt,
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::{debug, info, warn};

use super::{
    front::FrontKind,
    handover::{Pair, PairState},
    limits::{Admission, Caps, Limits},
    relay::{Outcome, Resume, Stopped, relay},
    stats::{Refusal, RouteStats, Stats},
    target::Target,
    transparent,
};
use crate::config::Splitter;

/// One admitted connection, handed to a front.
pub struct Conn<'a, 'l> {
    /// The core, for [`Proxy::forward`] and [`Proxy::refuse`].
    pub proxy: &'a Proxy,
    /// The connection settings at accept time.
    pub settings: &'a Splitter,
    /// Its place in the limits (pending until [`Admission::relay`]).
    pub admission: &'a mut Admission<'l>,
    /// The accepted connection.
    pub client: TcpStream,
    /// The client's address.
    pub peer: SocketAddr,
}

/// A front: reads what routes a connection (a hello, a request head), picks the route, and
/// forwards the connection through the core or refuses it.
pub trait Front: Send + Sync + 'static {
    /// Which front this is.
    const KIND: FrontKind;

    /// Reads and routes one admitted connection: refuses or answers it, or returns it
    /// connected to its backend (through [`Proxy::forward`]) for the core to relay.
    fn serve(&self, conn: Conn<'_, '_>) -> impl Future<Output = Served> + Send;
}

/// A connection a front has routed and [`Proxy::forward`] has connected to its backend, the
/// bytes read so far replayed: what the core relays.
pub struct Established {
    client: TcpStream,
    backend: TcpStream,
    stats: Arc<RouteStats>,
    state: PairState,
    peer: SocketAddr,
}

/// How a front's [`Front::serve`] ends: a connection to relay, or none (refused, answered).
pub type Served = Option<Established>;

/// What [`Proxy::forward`] does once connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// Relays both ways for as long as the connection lives.
    Relay(FrontKind),
    /// Passes one ACME validation request and its answer, then closes.
    ChallengeOnly,
}

impl Forward {
    /// The front the connection came in through.
    fn front(self) -> FrontKind {
        match self {
            Forward::Relay(front) => front,
            Forward::ChallengeOnly => FrontKind::Http,
        }
    }
}

/// The splitter core: the connection settings (swapped on reload), counters, the
/// open-connection accounting and the tasks of the connections being relayed.
pub struct Proxy {
    settings: RwLock<Arc<Splitter>>,
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
pub struct OpenGuard<'a>(&'a AtomicU64);

impl<'a> OpenGuard<'a> {
    /// Counts one more in `open` until dropped.
    pub fn new(open: &'a AtomicU64) -> Self {
        open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(open)
    }
}

impl Drop for OpenGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Whether `ip` is in one of `nets`.
fn in_nets(nets: &[(IpAddr, u8)], ip: IpAddr) -> bool {
    let ip = ip.to_canonical();
    nets.iter().any(|&(net, len)| net.is_ipv4() == ip.is_ipv4() && crate::netlink::network(ip, len) == net)
}

impl Proxy {
    /// A splitter core with validated `[splitter]` settings, counting into `stats`.
    pub fn new(settings: Splitter, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(Proxy {
            settings: RwLock::new(Arc::new(settings)),
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

    fn settings(&self) -> Arc<Splitter> {
        self.settings.read().expect("settings lock").clone()
    }

    /// Swaps in new `[splitter]` settings: new connections are governed by them, connections
    /// already relayed keep going.
    pub fn update(&self, settings: Splitter) {
        *self.settings.write().expect("settings lock") = Arc::new(settings);
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
    /// The listener must have `TCP_NODELAY` (as `Listeners::tcp` makes them): the accepted
    /// connections take it from there.
    /// A failed accept is counted, and logged unless another failed within
    /// `ACCEPT_ERROR_BURST`.
    pub fn spawn_listener<F: Front>(
        self: &Arc<Self>,
        listener: TcpListener,
        front: Arc<F>,
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
                            let front = front.clone();
                            me.connections.spawn(async move {
                                tokio::select! {
                                    () = conn.handle(s, peer, &*front) => {}
                                    () = cut.cancelled() => {}
                                }
                            });
                        }
                        Err(e) => {
                            me.stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                            let now = tokio::time::Instant::now();
                            if last_error.is_none_or(|t| now - t > ACCEPT_ERROR_BURST) {
                                warn!(error = %e, front = %F::KIND, "splitter: accept failed (repeats are counted in jitsi_agent_splitter_accept_errors_total, not logged)");
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

    /// Counts a refusal of a connection on `front` and logs it (debug) with its detail.
    /// Returns no connection to relay, for a front to `return proxy.refuse(..)`.
    pub fn refuse(
        &self,
        front: FrontKind,
        reason: Refusal,
        route: Option<&str>,
        client: SocketAddr,
        detail: &dyn std::fmt::Display,
    ) -> Served {
        self.stats.refuse(reason);
        debug!(%front, reason = reason.name(), route = route.unwrap_or("-"), client = %client, detail = %detail, "splitter: connection refused");
        None
    }

    async fn handle<F: Front>(self: Arc<Self>, client: TcpStream, peer: SocketAddr, front: &F) {
        self.stats.accepted.fetch_add(1, Ordering::Relaxed);
        // The settings at accept time govern this connection, whatever a reload does meanwhile.
        let settings = self.settings();
        let (mut admission, evicted) = match self.limits.admit(&Caps::of(&settings), F::KIND, peer.ip()) {
            Ok(a) => a,
            Err(reason) => {
                self.refuse(F::KIND, reason, None, peer, &"limit reached");
                return;
            }
        };
        for _ in 0..evicted {
            self.refuse(
                F::KIND,
                Refusal::EvictedPending,
                None,
                peer,
                &"the oldest pending connection was closed for this one",
            );
        }
        let _open = OpenGuard::new(&self.stats.open);
        // Boxed: what the front needs to read and route (its buffers, timers and parser
        // state) is freed before the relay, which is what a long-lived connection keeps.
        let served = {
            let evicted = admission.evicted.clone();
            let conn = Conn { proxy: &self, settings: &settings, admission: &mut admission, client, peer };
            tokio::select! {
                e = Box::pin(front.serve(conn)) => e,
                () = evicted.cancelled() => None,
            }
        };
        let Some(Established { client, backend, stats, state, peer }) = served else { return };
        self.relay_pair(&settings, &stats, (client, backend), state, Resume::default(), peer).await;
    }

    /// Connects to `route`'s backend (from the client's address where it can), replays the
    /// bytes already read (then frees them: a long-lived connection keeps no copy) and returns
    /// the connection for the core to relay; or, for [`Forward::ChallengeOnly`], sends only
    /// those bytes, closes the way to the backend and passes its answer back.
    #[expect(clippy::too_many_arguments, reason = "one call per front; `how` is the only difference")]
    pub async fn forward(
        &self,
        settings: &Splitter,
        route: &Target,
        stats: &Arc<RouteStats>,
        client: TcpStream,
        peer: SocketAddr,
        first: Vec<u8>,
        how: Forward,
    ) -> Served {
        let front = how.front();
        let Some((backend, transparent)) = route.backend_for(peer) else {
            return self.refuse(
                front,
                Refusal::ConnectFailed,
                Some(&route.name),
                peer,
                &"backend container not running",
            );
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
        let connect = transparent::connect(backend, from, settings.socket_mark, &first);
        let upstream = match tokio::time::timeout(settings.connect_timeout_secs.get(), connect).await {
            Err(_) => return self.refuse(front, Refusal::ConnectTimeout, Some(&route.name), peer, &backend),
            Ok(Err(e)) => {
                return self.refuse(front, Refusal::ConnectFailed, Some(&route.name), peer, &format!("{backend}: {e}"));
            }
            Ok(Ok((s, ephemeral))) => {
                if ephemeral {
                    self.stats.ephemeral_port_retries.fetch_add(1, Ordering::Relaxed);
                    debug!(route = %route.name, client = %peer, "splitter: the client's port was taken towards the backend; used an ephemeral one");
                }
                s
            }
        };
        stats.connections.fetch_add(1, Ordering::Relaxed);
        stats.bytes_up.fetch_add(first.len() as u64, Ordering::Relaxed);
        drop(first);
        let Forward::Relay(front) = how else {
            let _open = OpenGuard::new(&stats.open);
            let down = tokio::time::timeout(CHALLENGE_DEADLINE, answer_only(client, upstream)).await.unwrap_or(0);
            stats.bytes_down.fetch_add(down, Ordering::Relaxed);
            debug!(route = %route.name, client = %peer, down, "splitter: relayed one ACME challenge request");
            return None;
        };
        debug!(route = %route.name, client = %peer, backend = %backend, "splitter: relaying");
        let state = PairState { front, route: route.name.clone() };
        Some(Established { client, backend: upstream, stats: stats.clone(), state, peer })
    }

    /// Relays an established pair until it ends; a handover stops it and keeps it (or, once
    /// the handover has taken its pairs, it relays on here until the drain).
    async fn relay_pair(
        &self,
        settings: &Splitter,
        stats: &RouteStats,
        (mut client, mut backend): (TcpStream, TcpStream),
        state: PairState,
        mut resume: Resume,
        peer: SocketAddr,
    ) {
        let _open = OpenGuard::new(&stats.open);
        let idle = settings.idle_timeout_secs.get();
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
        let settings = self.settings();
        let _admission = self.limits.adopt(state.front, peer.ip());
        let _open = OpenGuard::new(&self.stats.open);
        let stats = self.stats.route(&state.route);
        self.relay_pair(&settings, &stats, sockets, state, resume, peer).await;
    }
}

/// The pair's sockets as Tokio streams, and the client's address (both must be connected TCP
/// sockets).
type Adoptable = (TcpStream, TcpStream, PairState, Resume, SocketAddr);

/// Why a handed-over descriptor cannot be relayed on.
#[derive(Debug, thiserror::Error)]
enum NotAdoptable {
    /// Asking the socket failed (it is not connected, for one).
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Another kind of socket.
    #[error("not a TCP socket")]
    NotTcp,
    /// A TCP socket of another family (it cannot be).
    #[error("not an IP socket")]
    NotIp,
}

fn adoptable(pair: Pair) -> Result<Adoptable, NotAdoptable> {
    let stream = |fd: std::os::fd::OwnedFd| -> Result<(TcpStream, SocketAddr), NotAdoptable> {
        let sock = socket2::Socket::from(fd);
        if sock.r#type()? != socket2::Type::STREAM || sock.protocol()? != Some(socket2::Protocol::TCP) {
            return Err(NotAdoptable::NotTcp);
        }
        let peer = sock.peer_addr()?.as_socket().ok_or(NotAdoptable::NotIp)?;
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
