//! The TLS splitter on 443 -> the web container's 8443, connected from the client's own
//! address: the agent against HAProxy (`req.ssl_sni`, `source 0.0.0.0 usesrc clientip`) and
//! nginx's stream module (`ssl_preread` map, `proxy_bind $remote_addr transparent`), with a
//! direct routed connection (no proxy) as the ceiling. The two peers get the same reply path
//! the agent installs (replies from the backend marked and delivered locally); the marking is
//! an nftables rule for them, the agent's TC program for the agent.

use std::{net::SocketAddr, path::Path, time::Duration};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    emit,
    load::{Mode, TcpBackend, bulk, conn_rate, idle_conns},
    percentile, pids_named, process_cpu_secs, process_rss, wait_until,
};
use crate::{
    agent::AgentProcess,
    clients::recorded_hello,
    lab::{HOST_V4, Lab},
    netns::{Running, spawn_in},
};

/// The contenders, in the order they run.
pub const CONTENDERS: [&str; 4] = ["agent", "haproxy", "nginx", "direct"];
/// Idle connections held for the memory figure: 10,000, or fewer when the open-file limit
/// (two descriptors per proxied connection, in the proxy) does not allow them.
pub const IDLE: usize = 10_000;

fn idle_count(nofile: u64) -> usize {
    IDLE.min((nofile.saturating_sub(1000) / 2 / 1000 * 1000) as usize)
}

const BACKEND: &str = "192.0.2.10:8443";
const MARK: &str = "0x4a17";

const HAPROXY: &str = "global
    # Two descriptors per connection within the open-file limit (20,000 here).
    maxconn 9500
    nbthread 2
defaults
    mode tcp
    timeout connect 3s
    timeout client 600s
    timeout server 600s
frontend tls
    bind 203.0.113.1:443
    tcp-request inspect-delay 10s
    tcp-request content accept if { req.ssl_hello_type 1 }
    use_backend web if { req.ssl_sni -i meet.example.test }
    default_backend web
backend web
    source 0.0.0.0 usesrc clientip
    server web 192.0.2.10:8443
";

fn nginx_conf(dir: &Path) -> String {
    format!(
        "load_module /usr/lib/nginx/modules/ngx_stream_module.so;
user root;
worker_processes 2;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/nginx-error.log warn;
events {{ worker_connections 19500; }}
stream {{
    map $ssl_preread_server_name $backend {{
        meet.example.test 192.0.2.10:8443;
        default 192.0.2.10:8443;
    }}
    server {{
        listen 203.0.113.1:443;
        ssl_preread on;
        proxy_pass $backend;
        proxy_bind $remote_addr transparent;
        proxy_connect_timeout 3s;
        proxy_timeout 600s;
    }}
}}
",
        dir = dir.display()
    )
}

/// What a contender runs as.
enum Setup {
    Agent(AgentProcess),
    Process(Running),
    Direct,
}

impl Setup {
    /// The processes whose CPU and memory count (none for the direct connection).
    fn pids(&self, name: &str) -> Vec<u32> {
        match self {
            Setup::Agent(a) => vec![a.pid()],
            Setup::Process(_) => pids_named(name),
            Setup::Direct => Vec::new(),
        }
    }
}

/// For HAProxy and nginx: the reply path the agent installs for itself, made with nftables and
/// a policy rule in the lab's host namespace.
fn reply_path(lab: &Lab) -> Result<()> {
    let nft = lab.work_dir().join("bench.nft");
    std::fs::write(
        &nft,
        format!(
            "table ip bench {{\n  chain pre {{\n    type filter hook prerouting priority mangle;\n    \
             ip saddr 192.0.2.10 tcp sport 8443 meta mark set {MARK}\n  }}\n}}\n"
        ),
    )?;
    lab.host.exec("nft", &["-f", &nft.to_string_lossy()])?;
    lab.host.ip(&["rule", "add", "fwmark", MARK, "lookup", "100"])?;
    lab.host.ip(&["route", "add", "local", "default", "dev", "lo", "table", "100"])?;
    Ok(())
}

fn setup(contender: &str, lab: &Lab) -> Result<Setup> {
    let dir = lab.work_dir();
    Ok(match contender {
        "agent" => {
            let config = lab.write_config(&format!(
                "[splitter]\nmax_connections = 40000\nmax_connections_per_client = 40000\n[tls]\nlisten = [\"203.0.113.1:443\"]\n\
                 [[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.test\"]\nbackend = \"{BACKEND}\"\n"
            ))?;
            Setup::Agent(AgentProcess::start(&lab.host, &config)?)
        }
        "haproxy" => {
            reply_path(lab)?;
            let cfg = dir.join("haproxy.cfg");
            std::fs::write(&cfg, HAPROXY)?;
            let p = spawn_in(
                &lab.host,
                "/usr/sbin/haproxy",
                &["-db", "-f", &cfg.to_string_lossy()],
                &[],
                &dir.join("haproxy.log"),
            )?;
            Setup::Process(p)
        }
        "nginx" => {
            reply_path(lab)?;
            let cfg = dir.join("nginx.conf");
            std::fs::write(&cfg, nginx_conf(dir))?;
            let p = spawn_in(
                &lab.host,
                "/usr/sbin/nginx",
                &["-c", &cfg.to_string_lossy(), "-g", "daemon off;"],
                &[],
                &dir.join("nginx.log"),
            )?;
            Setup::Process(p)
        }
        "direct" => {
            // Routed, no proxy: the client connects to the backend itself.
            lab.host.sysctl("net.ipv4.ip_forward", "1")?;
            lab.inet.ip(&["route", "add", "192.0.2.0/24", "via", "203.0.113.1"])?;
            Setup::Direct
        }
        other => anyhow::bail!("unknown SNI contender {other}"),
    })
}

fn target(contender: &str) -> SocketAddr {
    if contender == "direct" { BACKEND.parse().expect("literal") } else { SocketAddr::new(HOST_V4.into(), 443) }
}

fn proc_name(contender: &str) -> &'static str {
    match contender {
        "haproxy" => "haproxy",
        "nginx" => "nginx",
        _ => "jitsi-agent",
    }
}

fn cpu(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| process_cpu_secs(*p).ok()).sum()
}

fn rss(pids: &[u32]) -> u64 {
    pids.iter().filter_map(|p| process_rss(*p).ok()).sum()
}

/// One round of every contender: new connections/s with time to first byte, bulk streams
/// with CPU per GiB, and memory per idle connection.
/// The agent is the one `JITSI_AGENT_BIN` names (`jitsi-lab bench` sets it).
pub fn round(secs: f64, bulk_mib: u64, only: Option<&str>) -> Result<()> {
    let idle = idle_count(super::raise_nofile()?);
    let hello = recorded_hello("chromium-meet.bin");
    for contender in CONTENDERS.into_iter().filter(|c| only.is_none_or(|o| o == *c)) {
        let lab = Lab::new(&["web"]).context("building the lab")?;
        lab.inet.sysctl("net.ipv4.ip_local_port_range", "1024 65000")?;
        lab.inet.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let web = lab.backend("web");
        let backend = TcpBackend::start(&web.ns, BACKEND.parse()?, hello.len())?;
        let s = setup(contender, &lab).with_context(|| format!("setting up {contender}"))?;
        let to = target(contender);
        // Ready when a connection gets its reply.
        let ready =
            wait_until(Duration::from_secs(10), || conn_rate(&lab.inet, to, &hello, 1, 0.05).is_ok_and(|r| r.0 > 0));
        anyhow::ensure!(ready, "{contender} never answered on {to}");
        let pids = s.pids(proc_name(contender));

        backend.set_mode(Mode::Reply);
        let cpu0 = cpu(&pids);
        let busy0 = super::machine_busy_secs()?;
        let (done, failed, mut ttfb) = conn_rate(&lab.inet, to, &hello, 16, secs)?;
        let (cpu1, busy1) = (cpu(&pids), super::machine_busy_secs()?);
        emit(
            "sni-connections",
            contender,
            json!({"clients": 16, "secs": secs, "hello_bytes": hello.len(), "reply_bytes": 1024}),
            json!({
                "connections_per_sec": done as f64 / secs,
                "failed": failed,
                "ttfb_p50_us": percentile(&mut ttfb, 50.0),
                "ttfb_p99_us": percentile(&mut ttfb, 99.0),
                "proxy_cpu_s": cpu1 - cpu0,
                "busy_cpu_s": busy1 - busy0,
            }),
        );

        backend.set_mode(Mode::Stream);
        for streams in [1usize, 16] {
            let each = (bulk_mib << 20) / streams as u64;
            backend.stream_bytes.store(each, std::sync::atomic::Ordering::Relaxed);
            let cpu0 = cpu(&pids);
            let wall = bulk(&lab.inet, to, &hello, streams, each)?;
            let proxy_cpu = cpu(&pids) - cpu0;
            let gib = (each * streams as u64) as f64 / f64::from(1u32 << 30);
            emit(
                "sni-bulk",
                contender,
                json!({"streams": streams, "mib": bulk_mib}),
                json!({"seconds": wall, "mib_per_sec": gib * 1024.0 / wall, "proxy_cpu_s_per_gib": proxy_cpu / gib}),
            );
        }

        backend.set_mode(Mode::Hold);
        let before = rss(&pids);
        let accepted0 = backend.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let conns = idle_conns(&lab.inet, to, &hello, idle)?;
        let all_there = wait_until(Duration::from_secs(30), || {
            backend.accepted.load(std::sync::atomic::Ordering::Relaxed) - accepted0 >= idle as u64
        });
        anyhow::ensure!(all_there, "{contender}: not all {idle} idle connections reached the backend");
        std::thread::sleep(Duration::from_millis(500));
        let after = rss(&pids);
        emit(
            "sni-idle",
            contender,
            json!({"connections": idle}),
            json!({"rss_before_bytes": before, "rss_after_bytes": after,
                   "bytes_per_connection": after.saturating_sub(before) as f64 / idle as f64}),
        );
        drop(conns);
        backend.release();
        match s {
            Setup::Agent(a) => drop(a.stop()?),
            Setup::Process(p) => drop(p),
            Setup::Direct => {}
        }
        drop(backend);
    }
    Ok(())
}
