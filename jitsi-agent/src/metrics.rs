//! Prometheus metrics (`[metrics] listen`): the datapath's counters read from the pinned maps at
//! each scrape, the splitter's from the running agent, served as text at `/metrics`.

use std::{
    convert::Infallible,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{
    error::{Error, Result},
    splitter::stats::Stats,
    status,
};

/// What the agent shares with the endpoint.
#[derive(Debug)]
pub struct Shared {
    /// Where the datapath's maps are pinned.
    pub pin_dir: PathBuf,
    /// The splitter's counters (both fronts).
    pub splitter: Arc<Stats>,
    /// Configuration reloads applied.
    pub reloads_ok: AtomicU64,
    /// Configuration reloads refused (invalid file, or a change that needs a restart).
    pub reloads_failed: AtomicU64,
    /// The `[acme]` certificates as the certificate manager last saw them.
    pub certificates: Arc<std::sync::Mutex<Vec<crate::acme::CertState>>>,
    /// The uplink and the mode `steer_in` is attached in there (`driver`, `generic`).
    pub xdp: std::sync::Mutex<Option<(String, &'static str)>>,
    /// The periodic tasks' failures.
    pub health: crate::health::Health,
}

impl Shared {
    /// Nothing counted yet but the splitter's `stats` (continued from the pins by the caller).
    pub fn new(pin_dir: PathBuf, splitter: Arc<Stats>) -> Self {
        Shared {
            pin_dir,
            splitter,
            reloads_ok: Default::default(),
            reloads_failed: Default::default(),
            certificates: Default::default(),
            xdp: Default::default(),
            health: Default::default(),
        }
    }
}

/// The running endpoint.
pub struct MetricsServer {
    /// Where it listens.
    pub listen: SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// Connections served at once; more are closed at accept (a scraper needs one).
pub const MAX_CONNECTIONS: usize = 16;
/// Time a client has to send its request head (hyper applies none without a timer).
pub const HEAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Longest a connection may stay open, whatever it does.
pub const CONNECTION_LIFETIME: std::time::Duration = std::time::Duration::from_secs(60);

impl MetricsServer {
    /// Binds `listen` and serves `/metrics` until stopped: at most `MAX_CONNECTIONS` at once,
    /// each closed if its request head is not complete within `HEAD_TIMEOUT` and after
    /// `CONNECTION_LIFETIME` in any case.
    pub async fn start(listen: SocketAddr, shared: Arc<Shared>) -> Result<Self> {
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|e| Error::io(format!("metrics: listening on {listen} (set [metrics] listen)"), e))?;
        let listen = listener.local_addr().map_err(|e| Error::io("metrics: the bound address", e))?;
        if !listen.ip().is_loopback() {
            warn!(%listen, "metrics: listening beyond this host; keep it on loopback or a management network");
        }
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(AgentCollector(shared.clone())));
        registry.register(
            "jitsi_agent_tls_hello_read_seconds",
            "Time from accepting a connection on the TLS front to a complete ClientHello",
            shared.splitter.hello_seconds.clone(),
        );
        let registry = Arc::new(registry);
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    r = listener.accept() => match r {
                        Ok((stream, peer)) => {
                            let Ok(slot) = slots.clone().try_acquire_owned() else {
                                debug!(%peer, "metrics: connection limit reached; closed");
                                continue;
                            };
                            let registry = registry.clone();
                            tokio::spawn(async move {
                                let _slot = slot;
                                let service = service_fn(move |req| answer(req, registry.clone()));
                                let conn = http1::Builder::new()
                                    .timer(TokioTimer::new())
                                    .header_read_timeout(HEAD_TIMEOUT)
                                    .serve_connection(TokioIo::new(stream), service);
                                match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
                                    Ok(Err(e)) => debug!(error = %e, "metrics: connection failed"),
                                    Err(_) => debug!(%peer, "metrics: connection open too long; closed"),
                                    Ok(Ok(())) => {}
                                }
                            });
                        }
                        Err(e) => {
                            warn!(error = %e, "metrics: accept failed");
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    () = token.cancelled() => break,
                }
            }
        });
        Ok(MetricsServer { listen, stop, task })
    }

    /// Stops listening.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    registry: Arc<Registry>,
) -> std::result::Result<Response<Full<Bytes>>, Infallible> {
    let reply = |status, ctype: &'static str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(ctype));
        Ok(r)
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "see /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
    }
    // The collector reads the pinned maps (bpf(2) on every entry): off the async workers.
    let encoded = tokio::task::spawn_blocking(move || {
        let mut body = String::new();
        prometheus_client::encoding::text::encode(&mut body, &registry).map(|()| body)
    })
    .await;
    match encoded {
        Ok(Ok(body)) => reply(StatusCode::OK, "application/openmetrics-text; version=1.0.0; charset=utf-8", body),
        _ => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "encoding failed\n".into()),
    }
}

/// Reads everything but the histogram at scrape time.
#[derive(Debug)]
struct AgentCollector(Arc<Shared>);

type Labels = Vec<(&'static str, String)>;

fn family<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    rows: impl IntoIterator<Item = (Labels, M)>,
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, m) in rows {
        m.encode(fam.encode_family(&labels)?)?;
    }
    Ok(())
}

fn single<M: EncodeMetric>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    m: M,
) -> std::fmt::Result {
    m.encode(enc.encode_descriptor(name, help, None, kind)?)
}

fn counter(v: u64) -> ConstCounter<u64> {
    ConstCounter::new(v)
}

impl Collector for AgentCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        let s = &self.0;
        match status::read_maps(&s.pin_dir) {
            Ok(st) => encode_datapath(&mut enc, &st)?,
            Err(e) => debug!(error = %e.report(), "metrics: cannot read the pinned maps"),
        }
        encode_splitter(&mut enc, &s.splitter)?;
        encode_agent(&mut enc, s)
    }
}

/// The steering rules, their backends and the pass/drop reasons, from the pinned maps.
fn encode_datapath(enc: &mut DescriptorEncoder, st: &status::Counters) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let dir = |r: &status::RuleStatus| {
        [("in", r.packets_in, r.bytes_in), ("out", r.packets_out, r.bytes_out)]
            .map(|(d, p, b)| (vec![("rule", r.name.clone()), ("direction", d.to_string())], p, b))
    };
    let rows: Vec<_> = st.rules.iter().flat_map(dir).collect();
    family(
        enc,
        "jitsi_agent_rule_packets",
        "Packets steered (in) and replies sent (out) per [[steer]] rule",
        Counter,
        rows.iter().map(|(l, p, _)| (l.clone(), counter(*p))),
    )?;
    family(
        enc,
        "jitsi_agent_rule_bytes",
        "Bytes (Ethernet frames) steered (in) and sent back (out) per rule",
        Counter,
        rows.iter().map(|(l, _, b)| (l.clone(), counter(*b))),
    )?;
    family(
        enc,
        "jitsi_agent_backend_up",
        "1 when the rule's backend is resolved and steered to, 0 when its traffic is dropped as backend down",
        Gauge,
        st.rules.iter().flat_map(|r| {
            r.backends.iter().map(|b| {
                (
                    vec![("rule", r.name.clone()), ("family", b.family.to_string())],
                    ConstGauge::new(i64::from(b.state == "up")),
                )
            })
        }),
    )?;
    let reason = |r: &status::ReasonStatus| vec![("reason", r.reason.to_string()), ("action", r.action.to_string())];
    family(
        enc,
        "jitsi_agent_datapath_packets",
        "Packets the XDP/TC programs passed or dropped, by reason",
        Counter,
        st.reasons.iter().map(|r| (reason(r), counter(r.packets))),
    )?;
    family(
        enc,
        "jitsi_agent_datapath_bytes",
        "Bytes the XDP/TC programs passed or dropped, by reason",
        Counter,
        st.reasons.iter().map(|r| (reason(r), counter(r.bytes))),
    )?;
    family(
        enc,
        "jitsi_agent_flood_sources",
        "Sources (addresses, IPv6 /64s) the flood limits keep buckets for",
        Gauge,
        std::iter::once((vec![], ConstGauge::new(st.flood.sources as i64))),
    )
}

/// The splitter's counters, per route and in all (both fronts).
fn encode_splitter(enc: &mut DescriptorEncoder, stats: &Stats) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let routes = stats.routes();
    family(
        enc,
        "jitsi_agent_splitter_connections",
        "Connections relayed per splitter route (TLS and HTTP)",
        Counter,
        routes.iter().map(|(n, r)| (vec![("route", n.clone())], counter(r.connections))),
    )?;
    family(
        enc,
        "jitsi_agent_splitter_route_open_connections",
        "Connections being relayed per splitter route",
        Gauge,
        routes.iter().map(|(n, r)| (vec![("route", n.clone())], ConstGauge::new(r.open as i64))),
    )?;
    family(
        enc,
        "jitsi_agent_splitter_bytes",
        "Bytes relayed per splitter route: up (client to backend, hello included) and down",
        Counter,
        routes.iter().flat_map(|(n, r)| {
            [("up", r.bytes_up), ("down", r.bytes_down)]
                .map(|(d, v)| (vec![("route", n.clone()), ("direction", d.to_string())], counter(v)))
        }),
    )?;
    let totals = [
        (
            "jitsi_agent_splitter_accepted_connections",
            "Connections accepted on the splitter's listeners (both fronts)",
            &stats.accepted,
        ),
        (
            "jitsi_agent_splitter_accept_errors",
            "Failed accepts on the splitters' listeners (out of descriptors...); logged once per burst",
            &stats.accept_errors,
        ),
        (
            "jitsi_agent_splitter_ephemeral_port_retries",
            "Transparent connections that used an ephemeral port because the client's was taken (TIME_WAIT)",
            &stats.ephemeral_port_retries,
        ),
        (
            "jitsi_agent_splitter_hairpin_connections",
            "Connections from a backends' subnet, relayed from the host's address instead of the client's",
            &stats.hairpin_connections,
        ),
        (
            "jitsi_agent_splitter_handover_adopted",
            "Established connections taken up from the previous agent at this start (systemctl restart)",
            &stats.handover_adopted,
        ),
        (
            "jitsi_agent_splitter_handover_lost",
            "Connections the previous agent handed over that could not be taken up (closed)",
            &stats.handover_lost,
        ),
    ];
    for (name, help, value) in totals {
        single(enc, name, help, Counter, counter(value.load(Ordering::Relaxed)))?;
    }
    family(
        enc,
        "jitsi_agent_splitter_refused_connections",
        "Connections the splitter did not relay, by reason",
        Counter,
        stats.refusals().into_iter().map(|(r, v)| (vec![("reason", r.to_string())], counter(v))),
    )?;
    single(
        enc,
        "jitsi_agent_splitter_open_connections",
        "Connections open on the splitter (reading a hello or head, or relayed)",
        Gauge,
        ConstGauge::new(stats.open.load(Ordering::Relaxed) as i64),
    )
}

/// The agent's own state: the XDP mode, certificates, reloads, the periodic tasks.
fn encode_agent(enc: &mut DescriptorEncoder, s: &Shared) -> std::fmt::Result {
    use MetricType::{Counter, Gauge};
    let xdp = s.xdp.lock().expect("xdp lock").clone();
    family(
        enc,
        "jitsi_agent_xdp_attached",
        "1 for the uplink and the mode steer_in is attached in (driver: native, generic: skb)",
        Gauge,
        xdp.map(|(interface, mode)| (vec![("interface", interface), ("mode", mode.to_string())], ConstGauge::new(1))),
    )?;
    let certs = s.certificates.lock().expect("certificates lock").clone();
    family(
        enc,
        "jitsi_agent_certificate_expiry_timestamp_seconds",
        "When each [acme] certificate expires (Unix time); absent while there is none",
        Gauge,
        certs.iter().filter_map(|c| c.expires.map(|e| (vec![("name", c.name.clone())], ConstGauge::new(e)))),
    )?;
    family(
        enc,
        "jitsi_agent_certificate_renewal_failing",
        "1 while the last attempt to obtain an [acme] certificate failed",
        Gauge,
        certs.iter().map(|c| (vec![("name", c.name.clone())], ConstGauge::new(i64::from(c.last_error.is_some())))),
    )?;
    family(
        enc,
        "jitsi_agent_config_reloads",
        "Configuration reloads, by result",
        Counter,
        [("ok", &s.reloads_ok), ("failed", &s.reloads_failed)]
            .map(|(r, v)| (vec![("result", r.to_string())], counter(v.load(Ordering::Relaxed)))),
    )?;
    let tasks = crate::health::TASKS.map(|t| (t.name(), s.health.get(t)));
    family(
        enc,
        "jitsi_agent_task_failures",
        "Failed runs of the agent's periodic work, by task (each is retried every second)",
        Counter,
        tasks.map(|(t, (n, _))| (vec![("task", t.to_string())], counter(n))),
    )?;
    family(
        enc,
        "jitsi_agent_task_failing",
        "1 while the task's last run failed",
        Gauge,
        tasks.map(|(t, (_, failing))| (vec![("task", t.to_string())], ConstGauge::new(i64::from(failing)))),
    )
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new("/nonexistent".into(), Arc::new(Stats::default())))
    }

    #[tokio::test]
    async fn a_silent_client_is_dropped_and_the_connections_are_capped() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), shared()).await.unwrap();
        let addr = server.listen;
        // A client that never sends its head is closed after HEAD_TIMEOUT.
        let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
        let t = Instant::now();
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(HEAD_TIMEOUT * 3, silent.read(&mut buf)).await.expect("closed by the server");
        assert!(n.map_or(true, |n| n == 0 || buf.starts_with(b"HTTP/1.1 408")), "{:?}", &buf[..]);
        assert!(t.elapsed() >= HEAD_TIMEOUT - Duration::from_millis(100), "{:?}", t.elapsed());
        // Connections over the cap are closed at once, without an answer.
        let mut held = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            held.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut extra = tokio::net::TcpStream::connect(addr).await.unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        let n = tokio::time::timeout(Duration::from_secs(2), extra.read(&mut buf)).await.expect("closed at once");
        assert!(n.map_or(true, |n| n == 0), "no answer over the cap");
        drop(held);
        server.stop().await;
    }
}
