//! The agent as a service: reloading while traffic flows, restarting under TCP connect load
//! with the listening socket held for it (socket activation), `check`, metrics and `status`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::{AgentProcess, agent_bin, check, command_in},
    clients::{recorded_hello, scrape_metrics, sni_exchange, udp_round_trip, udp_socket, udp_stream},
    lab::{CLIENT_V4, HOST_V4, LAB_RULES, Lab, UPLINK},
    netns::NetNs,
    servers,
};
use serde_json::Value;

/// Replaces the file the way an editor or config management does: a new file renamed over it.
fn replace_file(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn rule<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["rules"].as_array().unwrap().iter().find(|r| r["name"] == name)
}

/// The `seq-N` numbers below `sent` that `sink` never received.
fn lost(sink: &servers::Server, sent: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(3);
    while (sink.count() as u64) < sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = sink.seen.lock().unwrap();
    let got: std::collections::HashSet<String> =
        seen.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).collect();
    (0..sent).filter(|i| !got.contains(&format!("seq-{i}"))).collect()
}

#[test]
fn reload_changes_rules_while_traffic_on_another_loses_nothing() {
    let lab = Lab::new(&["jvb", "turn", "web", "other"]).expect("lab");
    let (jvb, other) = (lab.backend("jvb"), lab.backend("other"));
    let jvb_sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let other3479 = servers::udp(&other.ns, other.addr4(3479)).unwrap();
    let _other5000 = servers::udp(&other.ns, other.addr4(5000)).unwrap();
    let _turn = servers::udp(&lab.backend("turn").ns, lab.backend("turn").addr4(3478)).unwrap();
    let config = lab.write_config(LAB_RULES).unwrap();
    let original = std::fs::read_to_string(&config).unwrap();
    let mut agent = AgentProcess::start(&lab.host, &config).unwrap();
    let client = udp_socket(&lab.inet, false).unwrap();
    let host = |port| SocketAddr::new(HOST_V4.into(), port);
    // Before: 3478 goes to turn.
    let (_, reply) = udp_round_trip(&client, host(3478), "before").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");

    let streamer = udp_stream(udp_socket(&lab.inet, false).unwrap(), host(10000), 2000, 5);
    std::thread::sleep(Duration::from_millis(500));
    // 1. A file change: turn's backend moves, a rule is added, web is removed.
    let changed = original
        .replace("backend = [\"192.0.2.11:3478\", \"[2001:db8:b::11]:3478\"]", "backend = \"192.0.2.13:3479\"")
        .replace(
            "[[steer]]\nname = \"web\"\nprotocol = \"tcp\"\nport = 80\nbackend = [\"192.0.2.12:8000\", \"[2001:db8:b::12]:8000\"]\n",
            "[[steer]]\nname = \"extra\"\nprotocol = \"udp\"\nport = 5000\nbackend = \"192.0.2.13:5000\"\n",
        );
    assert_ne!(changed, original);
    replace_file(&config, &changed);
    agent.wait_for_log("reloaded", Duration::from_secs(5)).unwrap();
    let (from, reply) = udp_round_trip(&client, host(3478), "moved").unwrap();
    assert_eq!(from, host(3478), "the reply still comes from the public port");
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")) && reply.ends_with("moved"), "{reply}");
    assert_eq!(other3479.count(), 1, "3478 now reaches other:3479");
    let (_, reply) = udp_round_trip(&client, host(5000), "added").unwrap();
    assert!(reply.ends_with("added"), "{reply}");
    let st = lab.status().unwrap();
    assert!(rule(&st, "web").is_none() && rule(&st, "extra").is_some(), "{st}");

    // 2. An invalid file is refused; everything keeps running as it was.
    replace_file(&config, &changed.replace("port = 5000", "port = 0"));
    agent.wait_for_log("reload refused", Duration::from_secs(5)).unwrap();
    let log = agent.log();
    assert!(log.contains("`steer[2].port`: `0` is not a port (1-65535)"), "{log}");
    let (_, reply) = udp_round_trip(&client, host(5000), "still").unwrap();
    assert!(reply.ends_with("still"), "{reply}");

    // 3. SIGHUP after restoring the original: back to turn.
    std::fs::write(&config, &original).unwrap();
    // Written in place (not renamed): the file watcher may pick it up first; either way one
    // more "reloaded" line appears, and the signal's own path logs its request.
    let reloads = agent.log().matches("reloaded").count();
    let asked = agent.log().matches("reload requested (SIGHUP)").count();
    agent.signal(libc::SIGHUP);
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.log().matches("reloaded").count() <= reloads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    agent.wait_for_log_count("reload requested (SIGHUP)", asked + 1, Duration::from_secs(5)).unwrap();
    let (_, reply) = udp_round_trip(&client, host(3478), "back").unwrap();
    assert!(reply.ends_with("back"), "{reply}");
    assert_eq!(other3479.count(), 1, "3478 no longer reaches other");

    let sent = streamer.join().unwrap();
    let lost = lost(&jvb_sink, sent);
    assert!(
        lost.is_empty(),
        "{} of {sent} jvb packets lost across three reloads: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    let st = lab.status().unwrap();
    assert_eq!(rule(&st, "jvb").unwrap()["packets_in"].as_u64().unwrap(), sent, "jvb's counter was never reset");
    let log = agent.stop().unwrap();
    assert_eq!(log.matches("attached steer_in").count(), 1, "reloads never re-attach:\n{log}");
}

const SNI_WEB: &str = r#"
[splitter]
drain_timeout_secs = 20

[tls]
listen = ["0.0.0.0:443"]
default = "web"

[[tls.route]]
name = "web"
server_names = ["meet.example.test"]
backend = ["192.0.2.12:8443", "[2001:db8:b::12]:8443"]
"#;

/// The lab with the web backend's TLS port served (the server stops when dropped).
fn lab_with_web() -> (Lab, servers::Server) {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let web = lab.backend("web");
    let server = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    (lab, server)
}

#[test]
fn restart_under_tcp_connect_load_refuses_nothing_and_open_connections_finish() {
    let (lab, _web) = lab_with_web();
    let config = lab.write_config(&format!("{LAB_RULES}{SNI_WEB}")).unwrap();
    // The listening socket systemd's jitsi-agent.socket would hold.
    let held = lab.host.enter(|| TcpListener::bind("0.0.0.0:443")).unwrap().unwrap();
    let first = AgentProcess::start_with_sockets(&lab.host, &config, &[held.as_raw_fd()]).unwrap();
    assert!(first.log().contains("using the listening socket passed by the service manager"), "{}", first.log());
    let hello = recorded_hello("chromium-meet.bin");

    // A connection relayed before the restart.
    let mut long = sni_exchange(&lab.inet, &hello).unwrap();
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        long.read_exact(&mut b).unwrap();
        line.push(b[0]);
    }
    let mut echoed = vec![0u8; hello.len()];
    long.read_exact(&mut echoed).unwrap();

    // New connections, one after another, for the whole restart.
    let stop = AtomicBool::new(false);
    let ok = AtomicU64::new(0);
    let failed = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        let load = scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match sni_exchange(&lab.inet, &hello) {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.lock().unwrap().push(e.to_string()),
                }
            }
        });
        std::thread::sleep(Duration::from_millis(500));
        let before = ok.load(Ordering::Relaxed);
        first.signal(libc::SIGTERM);
        // The old agent drains: the relayed connection still works after SIGTERM...
        std::thread::sleep(Duration::from_millis(300));
        long.write_all(b"after-sigterm").unwrap();
        let mut back = [0u8; 13];
        long.read_exact(&mut back).unwrap();
        assert_eq!(&back, b"after-sigterm");
        // ...and the agent exits once it closes.
        drop(long);
        let first_log = first.wait().unwrap();
        assert!(first_log.contains("draining open connections"), "{first_log}");
        let second = AgentProcess::start_with_sockets(&lab.host, &config, &[held.as_raw_fd()]).unwrap();
        let restarted_at = ok.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(700));
        stop.store(true, Ordering::Relaxed);
        load.join().unwrap();
        let after = ok.load(Ordering::Relaxed);
        assert!(
            before > 5 && after > restarted_at + 5,
            "load before {before}, at restart {restarted_at}, after {after}"
        );
        second.stop().unwrap();
    });
    let failed = failed.into_inner().unwrap();
    eprintln!("restart under connect load: {} connections served, {} failed", ok.load(Ordering::Relaxed), failed.len());
    assert!(
        failed.is_empty(),
        "{} connections failed across the restart: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn check_passes_a_good_setup_and_names_each_problem_of_a_broken_one() {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let config = lab.write_config(&format!("{LAB_RULES}{SNI_WEB}")).unwrap();
    let (ok, out) = check(&lab.host, &config);
    assert!(ok, "{out}");
    for line in [
        format!("ok   uplink {UPLINK}: index"),
        format!("ok   xdp on {UPLINK}: the driver runs XDP natively"),
        "ok   port tcp/443 (tls): free".into(),
        "ok   port udp/10000 (steer jvb): no other listener or port publishing".into(),
        "ok   kernel".into(),
        "ok   privileges".into(),
    ] {
        assert!(out.contains(&line), "missing `{line}` in:\n{out}");
    }
    lab.assert_host_is_plain().unwrap();

    // Broken: 443 taken, Docker-style DNAT on 10000, then a missing uplink.
    let _squatter = servers::tcp(&lab.host, "0.0.0.0:443".parse().unwrap()).unwrap();
    let nft = "add table ip dockerish\n\
               add chain ip dockerish pre { type nat hook prerouting priority -100; }\n\
               add rule ip dockerish pre udp dport 10000 dnat to 192.0.2.10\n";
    let mut cmd = command_in(&lab.host, Path::new("nft")).unwrap();
    let mut child = cmd.args(["-f", "-"]).stdin(std::process::Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(nft.as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    let (ok, out) = check(&lab.host, &config);
    assert!(!ok, "{out}");
    assert!(
        out.contains("FAIL port tcp/443 (tls): taken by") && out.contains("-> fix: stop or move that service"),
        "{out}"
    );
    assert!(
        out.contains("warn port udp/10000 (steer jvb): nftables DNAT rule(s) for it (ip dockerish chain pre)"),
        "{out}"
    );
    assert!(out.contains("1 failed") && out.contains("error: 1 check(s) failed"), "{out}");

    let broken = std::fs::read_to_string(&config)
        .unwrap()
        .replace(&format!("interface = \"{UPLINK}\""), "interface = \"nope0\"");
    std::fs::write(&config, broken).unwrap();
    let (ok, out) = check(&lab.host, &config);
    assert!(!ok);
    assert!(out.contains("FAIL uplink nope0: no such interface -> fix: set [uplink] interface"), "{out}");
}

#[test]
fn metrics_and_status_show_rules_sni_routes_and_attachments() {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let jvb = lab.backend("jvb");
    let _jvb = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let web = lab.backend("web");
    let _web = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let config = lab.write_config(&format!("{LAB_RULES}{SNI_WEB}\n[metrics]\nlisten = \"127.0.0.1:9477\"\n")).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let client = udp_socket(&lab.inet, false).unwrap();
    for i in 0..7 {
        udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), &format!("m{i}")).unwrap();
    }
    for _ in 0..3 {
        drop(sni_exchange(&lab.inet, &recorded_hello("chromium-meet.bin")).unwrap());
    }
    let m = scrape_metrics(&lab.host, "127.0.0.1:9477");
    for want in [
        "jitsi_agent_rule_packets_total{rule=\"jvb\",direction=\"in\"} 7",
        "jitsi_agent_rule_packets_total{rule=\"jvb\",direction=\"out\"} 7",
        "jitsi_agent_backend_up{rule=\"jvb\",family=\"ipv4\"} 1",
        "jitsi_agent_splitter_connections_total{route=\"web\"} 3",
        "jitsi_agent_splitter_accepted_connections_total 3",
        "jitsi_agent_splitter_refused_connections_total{reason=\"no_route\"} 0",
        "jitsi_agent_tls_hello_read_seconds_count 3",
        "jitsi_agent_config_reloads_total{result=\"ok\"} 0",
    ] {
        assert!(m.contains(want), "missing `{want}` in:\n{m}");
    }
    // status reads the same from the pins (the splitter's counters are flushed each second).
    std::thread::sleep(Duration::from_millis(1500));
    let st = lab.status().unwrap();
    assert_eq!(rule(&st, "jvb").unwrap()["packets_in"], 7);
    let web_route = st["splitter"]["routes"].as_array().unwrap().iter().find(|r| r["name"] == "web").unwrap().clone();
    assert_eq!(web_route["connections"], 3, "{st}");
    assert_eq!(st["splitter"]["accepted"], 3, "{st}");
    let modes: Vec<(String, String)> = st["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["interface"].as_str().unwrap().into(), a["mode"].as_str().unwrap().into()))
        .collect();
    assert!(
        modes.contains(&(UPLINK.into(), "driver".into())) && modes.contains(&("br0".into(), "tcx".into())),
        "{modes:?}"
    );
    // After the agent stops, status still works from the pins and shows nothing open.
    agent.stop().unwrap();
    let st = lab.status().unwrap();
    assert_eq!(st["splitter"]["routes"][0]["connections"], 3, "{st}");
    assert_eq!(st["splitter"]["routes"][0]["open"], 0, "{st}");
    // The human table, with rates over a short interval.
    let mut cmd = command_in(&lab.host, &agent_bin()).unwrap();
    let out = cmd.args(["status", "--interval", "0.2", "--pin-dir"]).arg(&lab.pin_dir).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("PPS IN") && table.contains("\nROUTE ") && table.contains("steer_in (XDP)"), "{table}");
}

/// The soft limit of open files of process `pid`.
fn nofile_soft(pid: u32) -> u64 {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits.lines().find(|l| l.starts_with("Max open files")).unwrap();
    line.split_whitespace().nth(3).unwrap().parse().unwrap()
}

#[test]
fn the_open_file_limit_is_raised_and_accept_failures_are_counted_and_logged_once() {
    let (lab, _web) = lab_with_web();
    let config = lab.write_config(&format!("{LAB_RULES}{SNI_WEB}\n[metrics]\nlisten = \"127.0.0.1:9478\"\n")).unwrap();
    // A soft limit far below the hard one (a shell's 1024 against systemd's 512k): raised.
    let agent = AgentProcess::start_with_nofile(&lab.host, &config, 256, 4096).unwrap();
    assert_eq!(nofile_soft(agent.pid()), 4096, "{}", agent.log());
    assert!(agent.log().contains("raised the open-file limit to the hard limit"), "{}", agent.log());
    drop(agent);

    // A hard limit of 128: holding more connections than that runs the listener out of
    // descriptors; every failed accept is counted, one line is logged for the burst, and the
    // splitter serves again once they are closed.
    let agent = AgentProcess::start_with_nofile(&lab.host, &config, 128, 128).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 443);
    let mut held = Vec::new();
    for _ in 0..160 {
        if let Ok(Ok(s)) = lab.inet.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(1))) {
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    // (The metrics endpoint needs a descriptor too: scraped once the burst is over.)
    let m = scrape_metrics(&lab.host, "127.0.0.1:9478");
    let errors: u64 = m
        .lines()
        .find_map(|l| l.strip_prefix("jitsi_agent_splitter_accept_errors_total "))
        .unwrap_or_else(|| panic!("no accept error counter in:\n{m}"))
        .parse()
        .unwrap();
    assert!(errors > 1, "accept failures counted: {errors}");
    let logged = agent.log().matches("splitter: accept failed").count();
    assert_eq!(logged, 1, "one line for the burst:\n{}", agent.log());
    let greeting = sni_exchange(&lab.inet, &recorded_hello("chromium-meet.bin"));
    assert!(greeting.is_ok(), "served again after the burst: {greeting:?}\n{}", agent.log());
}

#[test]
fn a_bridge_that_cannot_take_the_reply_path_is_reported_retried_and_does_not_stop_the_agent() {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let jvb = lab.backend("jvb");
    let _jvb = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    // A second bridge with one backend, 198.51.100.10 on br1; its TC link cannot be pinned
    // while a directory sits where the pin goes.
    let ns = NetNs::new("jl-late").unwrap();
    lab.host.ip(&["link", "add", "br1", "type", "bridge"]).unwrap();
    lab.host.ip(&["addr", "add", "198.51.100.1/24", "dev", "br1"]).unwrap();
    lab.host.ip(&["link", "set", "br1", "up"]).unwrap();
    lab.host.ip(&["link", "add", "vb-late", "type", "veth", "peer", "name", "eth0", "netns", ns.name()]).unwrap();
    lab.host.ip(&["link", "set", "vb-late", "master", "br1", "up"]).unwrap();
    ns.ip(&["addr", "add", "198.51.100.10/24", "dev", "eth0"]).unwrap();
    ns.ip(&["link", "set", "eth0", "up"]).unwrap();
    ns.ip(&["route", "add", "default", "via", "198.51.100.1"]).unwrap();
    let late = servers::udp(&ns, "198.51.100.10:5000".parse().unwrap()).unwrap();
    let config = lab.write_config(LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let blocker = lab.pin_dir.join("link_tc_br1");
    std::fs::create_dir(&blocker).unwrap();
    let with_late = format!(
        "{}\n[metrics]\nlisten = \"127.0.0.1:9465\"\n[[steer]]\nname = \"late\"\nprotocol = \"udp\"\nport = 5000\nbackend = \"198.51.100.10:5000\"\n",
        std::fs::read_to_string(&config).unwrap()
    );
    replace_file(&config, &with_late);
    let task = |st: &Value| st["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "attach_tc").cloned().unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while task(&lab.status().unwrap())["failures"].as_u64().unwrap() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let st = lab.status().unwrap();
    assert_eq!(task(&st)["failing"], true, "{st}");
    assert!(task(&st)["failures"].as_u64().unwrap() >= 2, "retried every second: {st}");
    let metrics = scrape_metrics(&lab.host, "127.0.0.1:9465");
    assert!(metrics.contains("jitsi_agent_task_failing{task=\"attach_tc\"} 1"), "{metrics}");
    // Logged once, not every second; the agent still serves the rest.
    let log = agent.log();
    assert_eq!(log.matches("task=\"attach_tc\"").count() + log.matches("task=attach_tc").count(), 1, "{log}");
    let client = udp_socket(&lab.inet, false).unwrap();
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "still").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    // Once the pin can be made, the next tick attaches it: replies from br1 flow.
    std::fs::remove_dir(&blocker).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while task(&lab.status().unwrap())["failing"] == true && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(task(&lab.status().unwrap())["failing"], false);
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 5000), "late").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    assert_eq!(late.count(), 1);
    assert!(agent.log().contains("recovered"), "{}", agent.log());
    agent.stop().unwrap();
}

/// The `tasks` entry of `task` in `status --json`.
fn task_state(lab: &Lab, task: &str) -> Value {
    let st = lab.status().unwrap();
    st["tasks"].as_array().unwrap().iter().find(|t| t["task"] == task).cloned().unwrap_or(Value::Null)
}

/// Waits until `task` is failing (or not) in `status`.
fn wait_task(lab: &Lab, task: &str, failing: bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = task_state(lab, task);
        if t["failing"] == failing || Instant::now() > deadline {
            return t;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of `log` about `task` (key=value or JSON-ish spelling).
fn task_lines(log: &str, task: &str) -> usize {
    log.lines().filter(|l| l.contains(&format!("task=\"{task}\"")) || l.contains(&format!("task={task}"))).count()
}

#[test]
fn docker_going_away_an_unreadable_file_and_an_unbindable_port_leave_the_agent_serving() {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let jvb = lab.backend("jvb");
    let _jvb = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let web = lab.backend("web");
    let _web = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let engine = jitsi_tests::docker::DockerEngine::start(&lab.host, lab.work_dir()).unwrap();
    // A rule that follows a container (none runs: its traffic is dropped as backend down).
    let text = format!(
        "{LAB_RULES}\n[metrics]\nlisten = \"127.0.0.1:9467\"\n\n[[steer]]\nname = \"ghost\"\nprotocol = \"udp\"\n\
         port = 6000\ncontainer = \"ghost\"\n"
    );
    let config = lab.write_config(&text).unwrap();
    let agent = AgentProcess::start_with_env(&lab.host, &config, &[("DOCKER_HOST", &engine.host)]).unwrap();
    let client = udp_socket(&lab.inet, false).unwrap();
    let serving = || {
        let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "still").unwrap();
        assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    };
    assert_eq!(task_state(&lab, "docker_engine")["failing"], false);

    // Docker goes away: reported once, counted, shown, retried; the agent serves on.
    drop(engine);
    let t = wait_task(&lab, "docker_engine", true);
    assert_eq!(t["failing"], true, "docker_engine: {t}");
    // The event stream ending and the reconnections failing are logged (two messages), and
    // then nothing more while it keeps failing.
    std::thread::sleep(Duration::from_millis(2500));
    let lines = task_lines(&agent.log(), "docker_engine");
    assert!((1..=2).contains(&lines), "{}", agent.log());
    let failures = task_state(&lab, "docker_engine")["failures"].as_u64().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let t = task_state(&lab, "docker_engine");
    assert!(t["failures"].as_u64().unwrap() >= failures + 2, "reconnected every second: {t}");
    assert_eq!(task_lines(&agent.log(), "docker_engine"), lines, "not logged again:\n{}", agent.log());
    let metrics = scrape_metrics(&lab.host, "127.0.0.1:9467");
    assert!(metrics.contains("jitsi_agent_task_failing{task=\"docker_engine\"} 1"), "{metrics}");
    serving();
    let reloads_failed = || {
        let metrics = scrape_metrics(&lab.host, "127.0.0.1:9467");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix("jitsi_agent_config_reloads_total{result=\"failed\"} "))
            .map(|v| v.trim().parse::<u64>().unwrap())
            .unwrap_or(0)
    };

    // A new container named while Docker cannot say where it is: the reload is refused.
    let running = std::fs::read_to_string(&config).unwrap();
    replace_file(
        &config,
        &format!("{running}\n[[steer]]\nname = \"other\"\nprotocol = \"udp\"\nport = 6001\ncontainer = \"other\"\n"),
    );
    let t = wait_task(&lab, "config_file", true);
    assert_eq!(t["failing"], true, "config_file: {t}");
    assert!(agent.log().contains("reload refused"), "{}", agent.log());
    // Undone: the file is the running one again, and says so without a SIGHUP.
    replace_file(&config, &running);
    assert_eq!(wait_task(&lab, "config_file", false)["failing"], false, "{}", agent.log());
    serving();

    // The file disappears (or cannot be read): the reload is refused, the rules stay.
    let moved = config.with_extension("away");
    std::fs::rename(&config, &moved).unwrap();
    let t = wait_task(&lab, "config_file", true);
    assert_eq!(t["failing"], true, "config_file: {t}");
    assert!(agent.log().contains("cannot read config file"), "{}", agent.log());
    serving();
    std::fs::rename(&moved, &config).unwrap();
    // The same text as runs: nothing to apply, but it is what runs again.
    assert_eq!(wait_task(&lab, "config_file", false)["failing"], false);

    // A new listener whose port is taken: the whole reload is refused, nothing else changes.
    let holder = lab.host.enter(|| TcpListener::bind("0.0.0.0:4443")).unwrap().unwrap();
    let running = std::fs::read_to_string(&config).unwrap();
    let with_sni = format!(
        "{running}\n[tls]\nlisten = [\"0.0.0.0:4443\"]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.test\"]\n\
         backend = \"192.0.2.12:8443\"\n"
    );
    let failed_before = reloads_failed();
    replace_file(&config, &with_sni);
    let t = wait_task(&lab, "config_file", true);
    assert_eq!(t["failing"], true, "config_file: {t}");
    let metrics = scrape_metrics(&lab.host, "127.0.0.1:9467");
    assert!(metrics.contains("jitsi_agent_task_failing{task=\"config_file\"} 1"), "{metrics}");
    assert_eq!(reloads_failed(), failed_before + 1, "{metrics}");
    serving();
    // Freed and asked again: applied.
    drop(holder);
    agent.signal(libc::SIGHUP);
    assert_eq!(wait_task(&lab, "config_file", false)["failing"], false, "{}", agent.log());
    let to = SocketAddr::new(HOST_V4.into(), 4443);
    let mut s = lab.inet.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5))).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&recorded_hello("chromium-meet.bin")).unwrap();
    let mut greeting = [0u8; 64];
    let n = s.read(&mut greeting).unwrap();
    assert!(String::from_utf8_lossy(&greeting[..n]).starts_with(&format!("seen {CLIENT_V4}:")));
    agent.stop().unwrap();
}
