//! `jitsi-lab demo`: builds the lab, runs the agent in it, sends traffic from the "internet"
//! namespace, prints what each backend saw and the live counters, and cleans up.
//! `cargo xtask demo` builds everything and runs this as root.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use jitsi_tests::{
    agent::{AgentProcess, command_in},
    clients::{tcp_echo, udp_round_trip, udp_socket},
    lab::{BRIDGE, HOST_V4, HOST_V6, LAB_RULES, Lab, UPLINK},
    netns::run,
    servers,
};

#[derive(Parser)]
#[command(about = "The jitsi-agent lab")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the lab demo.
    Demo {
        /// The jitsi-agent binary to run (with the eBPF object embedded).
        #[arg(long)]
        agent: PathBuf,
    },
    /// One round of a benchmark suite (`udp`, `sni`, `prog`, `control`, `handover`): one JSON line per
    /// measurement on stdout (`cargo xtask bench` runs the rounds and aggregates them).
    Bench {
        /// The jitsi-agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// The suite.
        #[arg(long, value_parser = ["udp", "sni", "prog", "control", "handover"])]
        suite: String,
        /// The Debian package (the `handover` suite installs it under a real systemd).
        #[arg(long)]
        deb: Option<PathBuf>,
        /// Seconds per timed run.
        #[arg(long, default_value_t = 1.5)]
        secs: f64,
        /// MiB per bulk run (split among the streams).
        #[arg(long, default_value_t = 512)]
        mib: u64,
        /// Run only this contender (default: all).
        #[arg(long)]
        only: Option<String>,
    },
    /// Measure the splitter's relay: echo `mib` MiB both ways through 443 and print one
    /// JSON line with the wall time and the agent's CPU time.
    RelayBench {
        /// The jitsi-agent binary.
        #[arg(long)]
        agent: PathBuf,
        /// `copy` or `splice`.
        #[arg(long)]
        mode: String,
        /// MiB to send (and receive back).
        #[arg(long, default_value_t = 256)]
        mib: u32,
    },
}

/// The splitter on 443: meet -> web's TLS port, turn -> coturn's TLS port.
const DEMO_SNI: &str = r#"
[tls]
listen = ["0.0.0.0:443", "[::]:443"]
[[tls.route]]
name = "web"
server_names = ["meet.example.test"]
backend = "192.0.2.12:8443"
[[tls.route]]
name = "turn"
server_names = ["turn.example.test"]
backend = "192.0.2.11:5349"

[metrics]
listen = "127.0.0.1:9477"
"#;

/// The HTTP front on 80: the meet name redirected to https:// (its ACME path relayed to
/// web's plain HTTP port), another site on the host routed to it too.
const DEMO_HTTP: &str = r#"
[http]
listen = ["0.0.0.0:80", "[::]:80"]
[[http.route]]
name = "web-http"
host_names = ["meet.example.test"]
backend = ["192.0.2.12:8000", "[2001:db8:b::12]:8000"]
redirect_https = true
[[http.route]]
name = "www"
host_names = ["www.example.test"]
backend = ["192.0.2.12:8000", "[2001:db8:b::12]:8000"]
"#;

/// Added by the demo's reload: a second web port, steered in the kernel.
const DEMO_RELOAD_RULE: &str = r#"
[[steer]]
name = "web-alt"
protocol = "tcp"
port = 8080
backend = "192.0.2.12:8080"
"#;

fn section(title: &str) {
    println!("\n== {title} ==");
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Demo { agent } => demo(agent),
        Cmd::RelayBench { agent, mode, mib } => relay_bench(agent, &mode, mib),
        Cmd::Bench { agent, suite, secs, mib, only, deb } => {
            // SAFETY: single-threaded at this point; the lab helpers read this variable.
            unsafe { std::env::set_var("JITSI_AGENT_BIN", &agent) };
            match suite.as_str() {
                "udp" => jitsi_tests::bench::udp::round(secs, only.as_deref()),
                "sni" => jitsi_tests::bench::sni::round(secs * 2.0, mib, only.as_deref()),
                "prog" => jitsi_tests::bench::prog::round(),
                "handover" => {
                    let deb = deb.ok_or_else(|| anyhow::anyhow!("--suite handover needs --deb"))?;
                    jitsi_tests::bench::handover::round(&deb)
                }
                _ => jitsi_tests::bench::control::round(),
            }
        }
    }
}

fn relay_bench(agent: PathBuf, mode: &str, mib: u32) -> Result<()> {
    // SAFETY: single-threaded at this point; the lab helpers read this variable.
    unsafe { std::env::set_var("JITSI_AGENT_BIN", &agent) };
    let lab = Lab::new(&["web"])?;
    let web = lab.backend("web");
    let _echo = servers::tcp(&web.ns, web.addr4(8443))?;
    let config = lab.write_config(&format!(
        "[splitter]\nrelay = \"{mode}\"\n[tls]\nlisten = [\"0.0.0.0:443\"]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.test\"]\nbackend = \"192.0.2.10:8443\"\n"
    ))?;
    let running = AgentProcess::start(&lab.host, &config)?;
    let hello =
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/clienthello/chromium-meet.bin"))?;
    let mut data = hello;
    data.extend((0..(mib as usize) << 20).map(|i| (i as u32).wrapping_mul(2654435761).to_be_bytes()[0]));
    let cpu0 = running.cpu_seconds()?;
    let t0 = std::time::Instant::now();
    let x = tcp_echo(&lab.inet, SocketAddr::new(HOST_V4.into(), 443), data.clone())?;
    let seconds = t0.elapsed().as_secs_f64();
    let cpu = running.cpu_seconds()? - cpu0;
    if x.echoed != data {
        bail!("the echo differs from what was sent");
    }
    println!("{{\"mode\":\"{mode}\",\"mib\":{mib},\"seconds\":{seconds:.4},\"agent_cpu_seconds\":{cpu:.4}}}");
    running.stop()?;
    Ok(())
}

fn demo(agent: PathBuf) -> Result<()> {
    // SAFETY: single-threaded at this point; the lab helpers read this variable.
    unsafe { std::env::set_var("JITSI_AGENT_BIN", &agent) };
    if !agent.exists() {
        bail!("{} not found: build it with `cargo xtask build`", agent.display());
    }

    section("lab");
    let lab = Lab::new(&["jvb", "turn", "web"]).context("building the lab (needs root)")?;
    println!(
        "internet ns {}  ->  host ns {} ({UPLINK} {HOST_V4}, {HOST_V6}; bridge {BRIDGE} 192.0.2.1/24)",
        lab.inet.name(),
        lab.host.name()
    );
    for b in &lab.backends {
        println!("backend {:<5} ns {}  {} / {}", b.name, b.ns.name(), b.v4, b.v6);
    }
    println!("host: ip_forward={} , no nftables/iptables rules", lab.host.sysctl_get("net.ipv4.ip_forward")?);
    lab.assert_host_is_plain()?;

    let (jvb, turn, web) = (lab.backend("jvb"), lab.backend("turn"), lab.backend("web"));
    let servers = [
        ("jvb", servers::udp(&jvb.ns, jvb.addr4(10000))?),
        ("jvb", servers::udp(&jvb.ns, jvb.addr6(10000))?),
        ("turn", servers::udp(&turn.ns, turn.addr4(3478))?),
        ("turn", servers::udp(&turn.ns, turn.addr6(3478))?),
        ("web", servers::tcp(&web.ns, web.addr4(8000))?),
        ("web", servers::tcp(&web.ns, web.addr6(8000))?),
        ("web (TLS)", servers::tcp(&web.ns, web.addr4(8443))?),
        ("turn (TLS)", servers::tcp(&turn.ns, turn.addr4(5349))?),
        ("web (alt)", servers::tcp(&web.ns, web.addr4(8080))?),
    ];

    section("agent configuration");
    // The lab's UDP rules; port 80 goes through the HTTP front instead of the kernel rule.
    let udp_rules = &LAB_RULES[..LAB_RULES.find("[[steer]]\nname = \"web\"").expect("the lab's web rule")];
    let config = lab.write_config(&format!("{udp_rules}{DEMO_SNI}{DEMO_HTTP}"))?;
    print!("{}", std::fs::read_to_string(&config)?);

    section("jitsi-agent check (preflight)");
    let out = command_in(&lab.host, &agent)?.args(["check", "--config"]).arg(&config).output()?;
    print!("{}", String::from_utf8_lossy(&out.stdout));
    if !out.status.success() {
        bail!("check failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let mut running = AgentProcess::start(&lab.host, &config)?;
    section("agent log");
    print!("{}", running.log());

    section("traffic from the internet namespace");
    let c4 = udp_socket(&lab.inet, false)?;
    let c6 = udp_socket(&lab.inet, true)?;
    for (sock, host, port) in [
        (&c4, IpAddr::from(HOST_V4), 10000),
        (&c6, HOST_V6.into(), 10000),
        (&c4, HOST_V4.into(), 3478),
        (&c6, HOST_V6.into(), 3478),
    ] {
        let to = SocketAddr::new(host, port);
        for i in 0..5 {
            let (from, reply) = udp_round_trip(sock, to, &format!("hello-{i}"))?;
            if i == 0 {
                println!("udp  -> {to:<24} reply from {from:<24} {reply:?}");
            }
        }
    }
    // The HTTP front: the stand-in greets with the address it saw and echoes the request.
    for host in [IpAddr::from(HOST_V4), HOST_V6.into()] {
        let to = SocketAddr::new(host, 80);
        for (host_header, path) in [
            ("www.example.test", "/"),
            ("meet.example.test", "/room"),
            ("meet.example.test", "/.well-known/acme-challenge/token"),
        ] {
            let request = format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\n\r\n");
            let x = tcp_echo(&lab.inet, to, request.into_bytes())?;
            let answer = if x.greeting.starts_with("HTTP/") {
                let location = String::from_utf8_lossy(&x.echoed).lines().next().unwrap_or_default().to_string();
                format!("answered by the agent: {:?} {location}", x.greeting)
            } else {
                format!("backend greeting {:?}", x.greeting)
            };
            println!("http -> {to:<24} Host {host_header:<18} {path:<34} {answer}");
        }
    }

    // The TLS front: ClientHellos recorded from Chromium and curl, through 443.
    let hellos = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/clienthello");
    for (file, name) in [("chromium-meet.bin", "meet.example.test"), ("curl-turn.bin", "turn.example.test")] {
        let hello = std::fs::read(hellos.join(file))?;
        let to = SocketAddr::new(HOST_V4.into(), 443);
        let x = tcp_echo(&lab.inet, to, hello.clone())?;
        println!(
            "tls  -> {to:<24} SNI {name:<18} ({} byte hello) greeting {:?}, hello replayed intact: {}",
            hello.len(),
            x.greeting,
            x.echoed == hello
        );
    }

    section("reload: a rule added to the file while the agent runs");
    let text = std::fs::read_to_string(&config)?;
    let tmp = config.with_extension("new");
    std::fs::write(&tmp, format!("{text}{DEMO_RELOAD_RULE}"))?;
    std::fs::rename(&tmp, &config)?;
    print!("{DEMO_RELOAD_RULE}");
    running.wait_for_log("reloaded", std::time::Duration::from_secs(5))?;
    for line in running.log().lines().filter(|l| l.contains("reload")) {
        println!("log: {line}");
    }
    let to = SocketAddr::new(HOST_V4.into(), 8080);
    let x = tcp_echo(&lab.inet, to, vec![b'y'; 10_000])?;
    println!("tcp  -> {to:<24} greeting {:?}, {} bytes echoed", x.greeting, x.echoed.len());

    section("what each backend saw (source address = the client's own)");
    for (name, s) in &servers {
        println!(
            "{name:<10} {:<24} {} packets/connections from {:?}",
            s.addr.to_string(),
            s.count(),
            s.peers().iter().map(|p| p.ip()).collect::<std::collections::BTreeSet<_>>()
        );
    }

    section("jitsi-agent status (read from the pinned maps)");
    let status = run(command_in(&lab.host, &agent)?.args(["status", "--pin-dir"]).arg(&lab.pin_dir))?;
    print!("{status}");

    section("metrics (excerpt of http://127.0.0.1:9477/metrics in the host namespace)");
    let body = lab.host.enter(|| -> std::io::Result<String> {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect("127.0.0.1:9477")?;
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    })??;
    for line in body.lines().filter(|l| {
        l.starts_with("jitsi_agent_rule_packets_total{rule=\"jvb\"")
            || l.starts_with("jitsi_agent_splitter_connections_total")
            || l.starts_with("jitsi_agent_tls_hello_read_seconds_count")
            || l.starts_with("jitsi_agent_config_reloads_total")
    }) {
        println!("{line}");
    }

    section(&format!("bpftool map dump pinned {}/rule_stats (first CPU)", lab.pin_dir.display()));
    let dump = run(Command::new("bpftool").args(["map", "dump", "pinned"]).arg(lab.pin_dir.join("rule_stats")))?;
    for line in dump.lines().take(14) {
        println!("{line}");
    }

    section("stopping the agent (the datapath stays attached) and cleaning up");
    running.stop()?;
    let (from, _) = udp_round_trip(&c4, SocketAddr::new(HOST_V4.into(), 10000), "after-stop")?;
    println!("udp to {HOST_V4}:10000 with the agent stopped: reply from {from}");
    drop(servers);
    drop(lab);
    println!("lab removed");
    Ok(())
}
