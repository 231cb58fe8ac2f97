//! The provisioned stack under a real Docker engine: `stack init` and `stack up` with stand-in
//! images, the agent resolving the containers by name (the rules `[stack]` implies), lab
//! traffic to 10000/udp, 3478/udp, 443 and 80 with the client's address preserved, the TURN
//! name's certificate obtained from Pebble and coturn told to reload it, a restarted and a
//! stopped container followed, and `stack down` leaving nothing.

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    path::Path,
    process::Command,
    process::Stdio,
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::{AgentProcess, agent_bin, command_in, standin_bin},
    clients::{recorded_hello, tcp_echo, udp_round_trip, udp_socket},
    docker::DockerEngine,
    lab::{CLIENT_V4, HOST_V4, Lab},
    pebble::Pebble,
    turn,
};

/// `jitsi-agent <args>` in the host namespace against the test's engine.
fn agent_cli(lab: &Lab, engine: &DockerEngine, args: &[&str]) -> String {
    let mut cmd = command_in(&lab.host, &agent_bin()).unwrap();
    let out = cmd.args(args).env("DOCKER_HOST", &engine.host).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "jitsi-agent {args:?}:\n{text}");
    text
}

/// The project's containers as `stack show --json` reports them.
fn shown(lab: &Lab, engine: &DockerEngine) -> Vec<serde_json::Value> {
    let json = agent_cli(lab, engine, &["stack", "show", "--json"]);
    serde_json::from_str::<serde_json::Value>(&json).unwrap().as_array().unwrap().clone()
}

/// One browser session against the WebRTC stand-in: what both sides reported.
fn browser_session(lab: &Lab, jvb_pid: &str, secret: &str, home: &Path, mode: &str) -> serde_json::Value {
    let python = std::env::var("JITSI_WEBRTC_PYTHON")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../target/webrtc-venv/bin/python").into());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("webrtc/jvb_standin.py");
    let port = if mode == "relay" { "18081" } else { "18080" };
    let log = lab.work_dir().join(format!("webrtc-{mode}.log"));
    let mut peer = command_in(&lab.inet, Path::new(&python))
        .unwrap()
        .arg(&script)
        .env("PUBLIC_IP", HOST_V4.to_string())
        .env("PRIVATE_IP", "172.18.0.10")
        .env("HTTP_PORT", port)
        .env("TURN_SECRET", secret)
        .env("TURN_URL", "turns:turn.example.test:443?transport=tcp")
        .env("MEDIA_NETNS", format!("/proc/{jvb_pid}/ns/net"))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (cargo xtask test makes the venv)"));
    let mut out = BufReader::new(peer.stdout.take().unwrap()).lines();
    let ready = out.next().and_then(Result::ok).unwrap_or_default();
    assert_eq!(ready, "READY", "the stand-in did not start:\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    let profile = tempfile::tempdir().unwrap();
    let mut browser = command_in(&lab.inet, Path::new("chromium"))
        .unwrap()
        .env("HOME", home)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--host-resolver-rules=MAP turn.example.test {HOST_V4}, EXCLUDE 127.0.0.1, MAP * ~NOTFOUND"))
        .arg(format!("http://127.0.0.1:{port}/?mode={mode}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(lab.work_dir().join(format!("chromium-{mode}.log"))).unwrap())
        .spawn()
        .expect("chromium (cargo xtask test installs it)");
    let result = out.find_map(|l| l.ok()?.strip_prefix("RESULT ").map(str::to_string)).unwrap_or_default();
    let _ = peer.wait();
    let _ = browser.kill();
    let _ = browser.wait();
    serde_json::from_str(&result)
        .unwrap_or_else(|_| panic!("{mode}: no result:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))
}

/// The browser sessions, with Pebble's root trusted in the browser's own NSS database (the
/// browser verifies the TURN server's certificate and name).
fn browser_meets_the_bridge(lab: &Lab, engine: &DockerEngine, stack_dir: &Path, secret: &str, roots: &Path) {
    let home = lab.work_dir().join("browser-home");
    let nssdb = home.join(".pki/nssdb");
    std::fs::create_dir_all(&nssdb).unwrap();
    let db = format!("sql:{}", nssdb.display());
    for args in [
        vec!["-N", "-d", &db, "--empty-password"],
        vec!["-A", "-d", &db, "-n", "pebble", "-t", "C,,", "-i", roots.to_str().unwrap()],
    ] {
        let out = Command::new("certutil").args(&args).output().expect("certutil (libnss3-tools)");
        assert!(out.status.success(), "certutil {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // The jvb container runs without its UDP echo; the WebRTC peer takes 10000/udp there.
    std::fs::write(stack_dir.join("config/jvb/standin-media-off"), "").unwrap();
    engine.docker(&["restart", "-t", "1", "jitsi_jvb_1"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let pid = loop {
        let state = engine.docker(&["inspect", "--format", "{{.State.Pid}} {{.State.Health.Status}}", "jitsi_jvb_1"]);
        let state = state.unwrap_or_default();
        let (pid, health) = state.trim().split_once(' ').unwrap_or(("0", ""));
        if pid != "0" && health == "healthy" && Path::new(&format!("/proc/{pid}/ns/net")).exists() {
            break pid.to_string();
        }
        let logs = engine.docker(&["logs", "jitsi_jvb_1"]).unwrap_or_default();
        let ps = engine.docker(&["ps", "-a"]).unwrap_or_default();
        assert!(Instant::now() < deadline, "jvb did not come back ({state}):\n{ps}\n{logs}");
        std::thread::sleep(Duration::from_millis(200));
    };
    let pid = pid.as_str();

    let direct = browser_session(lab, pid, secret, &home, "direct");
    assert_eq!(direct["ok"], true, "direct session: {direct:#}");
    let b = &direct["browser"];
    assert_eq!(b["got"][0], "hello from the bridge", "{b:#}");
    assert_eq!(b["pair"]["remote"], format!("{HOST_V4}:10000"), "the browser reached the public address: {b:#}");
    assert_eq!(direct["pair"]["remote"][0], CLIENT_V4.to_string(), "the bridge saw the client's address: {direct:#}");

    let relay = browser_session(lab, pid, secret, &home, "relay");
    assert_eq!(relay["ok"], true, "relay session: {relay:#}");
    let b = &relay["browser"];
    // relayProtocol is set only on candidates allocated on a TURN server (Chromium reports the
    // relayed local candidate as `relay` or, learned back through the relay, `prflx`).
    assert_eq!(b["pair"]["relay_protocol"], "tls", "relayed over TURN/TLS: {b:#}");
    assert_eq!(b["pair"]["remote"], "172.18.0.10:10000", "to the bridge's private candidate: {b:#}");
    assert_eq!(relay["pair"]["remote"][0], "172.18.0.11", "relayed by coturn's container: {relay:#}");
    std::fs::remove_file(stack_dir.join("config/jvb/standin-media-off")).unwrap();
}

/// Two participants that can only use TURN, each with its own allocation over TURN/TLS on 443,
/// send to each other's relayed address on the public address (coturn relays from one to the
/// other itself); and a peer on the internet that does not relay sends straight to a
/// participant's relayed address, through the agent's steering of coturn's relay range
/// (`turn-relay`), and gets the answer from that address. Each sees the other at the address
/// it sent to.
fn relay_only_participants_reach_each_other(lab: &Lab, engine: &DockerEngine, secret: &str, roots: &Path) {
    let coturn_log = || engine.docker(&["logs", "jitsi_coturn_1"]).unwrap_or_default();
    let allocate = |who: &str| {
        let mut tls =
            turn::TurnTls::connect(&lab.inet, SocketAddr::new(HOST_V4.into(), 443), "turn.example.test", roots)
                .unwrap();
        let (user, password) = turn::rest_credentials(secret, who);
        let ok = tls.allocate(Some((&user, &password))).unwrap();
        assert_eq!(ok.error(), None, "{who}'s allocation: {ok:?}");
        let relayed = ok.relayed().unwrap();
        (tls, relayed)
    };
    let (mut alice, alice_relay) = allocate("alice");
    let (mut bob, bob_relay) = allocate("bob");
    assert_ne!(alice_relay, bob_relay);
    let carol = jitsi_tests::clients::udp_socket(&lab.inet, false).unwrap();
    let carol_addr = SocketAddr::new(CLIENT_V4.into(), carol.local_addr().unwrap().port());
    let permit = |tls: &mut turn::TurnTls, peer: SocketAddr| {
        let answer = tls.create_permission(peer).unwrap();
        assert_eq!(answer.error(), None, "permission for {peer}: {answer:?}\n{}", coturn_log());
    };
    permit(&mut alice, bob_relay);
    permit(&mut bob, alice_relay);
    permit(&mut alice, carol_addr);
    let pass = |from: &mut turn::TurnTls, from_relay, to: &mut turn::TurnTls, to_relay, what: &str| {
        from.send(to_relay, what.as_bytes()).unwrap();
        let (peer, data) = to.receive().unwrap_or_else(|e| panic!("{what}: {e:#}\n{}", coturn_log()));
        assert_eq!((peer, data.as_slice()), (from_relay, what.as_bytes()), "arrived from the sender's relay address");
    };
    pass(&mut alice, alice_relay, &mut bob, bob_relay, "to bob");
    pass(&mut bob, bob_relay, &mut alice, alice_relay, "to alice");

    let (in_before, out_before) = rule_packets(lab, "turn-relay");
    carol.send_to(b"carol to alice", alice_relay).unwrap();
    let (peer, data) = alice.receive().unwrap_or_else(|e| panic!("carol to alice: {e:#}\n{}", coturn_log()));
    assert_eq!((peer, data.as_slice()), (carol_addr, &b"carol to alice"[..]), "coturn saw carol's own address");
    alice.send(carol_addr, b"alice to carol").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = carol.recv_from(&mut buf).unwrap_or_else(|e| panic!("alice to carol: {e}\n{}", coturn_log()));
    assert_eq!((from, &buf[..n]), (alice_relay, &b"alice to carol"[..]), "from alice's relay address");
    assert_eq!(rule_packets(lab, "turn-relay"), (in_before + 1, out_before + 1), "steered by turn-relay");
}

/// (`packets_in`, `packets_out`) of a steering rule, from `status`.
fn rule_packets(lab: &Lab, name: &str) -> (u64, u64) {
    let st = lab.status().unwrap();
    let rules = st["rules"].as_array().unwrap();
    let r = rules.iter().find(|r| r["name"] == name).unwrap_or_else(|| panic!("no rule {name}: {st}"));
    (r["packets_in"].as_u64().unwrap(), r["packets_out"].as_u64().unwrap())
}

#[test]
fn the_generated_stack_runs_is_steered_to_and_followed() {
    let lab = Lab::new(&[]).expect("lab");
    let engine = DockerEngine::start(&lab.host, lab.work_dir()).unwrap();
    // Stand-ins that keep the Jitsi images' start-up contract, and a real coturn.
    engine.build_standins(&standin_bin(), "standin", "test", &["web", "prosody", "jicofo", "jvb"]).unwrap();
    engine.build_coturn("jitsi-test/coturn:debian").unwrap();
    let stack_dir = lab.work_dir().join("stack");
    // The TURN name's certificate comes from Pebble (an [acme] without names: the TURN name);
    // with letsencrypt_email the web container would also ask for the meet name's.
    let pebble = Pebble::start(&lab.inet, lab.work_dir(), HOST_V4).unwrap();
    let config = lab
        .write_config(&format!(
            "[stack]\nmeet_domain = \"meet.example.test\"\nturn_domain = \"turn.example.test\"\n\
             public_addresses = [\"{HOST_V4}\"]\ndirectory = \"{}\"\nimage_repo = \"standin\"\nimage_tag = \"test\"\n\
             coturn_image = \"jitsi-test/coturn:debian\"\nsubnet = \"172.18.0.0/24\"\n\
             letsencrypt_email = \"ops@example.test\"\n{}",
            stack_dir.display(),
            pebble.acme_section(&[], &lab.work_dir().join("acme"))
        ))
        .unwrap();
    let c = config.display().to_string();
    let init = agent_cli(&lab, &engine, &["stack", "init", "--config", &c]);
    assert!(init.contains("secrets drawn") && init.contains("placeholder"), "{init}");
    // The lab's "internet" is a documentation prefix, which coturn rightly refuses as a peer:
    // let it relay to the lab's one client address (a real client has a public address).
    let conf = stack_dir.join("coturn/turnserver.conf");
    let mut f = std::fs::OpenOptions::new().append(true).open(&conf).unwrap();
    std::io::Write::write_all(&mut f, format!("allowed-peer-ip={CLIENT_V4}\n").as_bytes()).unwrap();

    // Nothing serves port 80 yet: `stack up` refuses (the web container's acme.sh would fail
    // at every start), and says what to do.
    let mut cmd = command_in(&lab.host, &agent_bin()).unwrap();
    let refused = cmd.args(["stack", "up", "--config", &c]).env("DOCKER_HOST", &engine.host).output().unwrap();
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "stack up before the agent:\n{said}");
    assert!(said.contains("not starting the stack") && said.contains("Start the agent first"), "{said}");
    assert_eq!(engine.docker(&["ps", "-aq"]).unwrap().trim(), "", "no container started");

    // coturn starting before the agent has the TURN name's certificate (here: the stack
    // started first, as with port 80 served another way) still gets TLS: it starts with the
    // placeholder, and the agent's certificate replaces it below (SIGUSR2), with no manual step.
    let up = agent_cli(&lab, &engine, &["stack", "up", "--skip-port-80-check", "--config", &c]);
    assert!(up.contains("SERVICE") && up.contains("jitsi_jvb_1"), "{up}");
    // Another Compose project's `coturn` on the stack's network, first by name: never steered
    // to nor signalled (the TURN checks below fail if it is).
    let net = "jitsi_meet.jitsi";
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "aaa_coturn_1",
            "--network",
            net,
            "--label",
            "com.docker.compose.project=other",
            "--label",
            "com.docker.compose.service=coturn",
            "-e",
            "JICOFO_AUTH_PASSWORD=x",
            "standin/jicofo:test",
        ])
        .unwrap();
    let mut agent = AgentProcess::start_with_env(&lab.host, &config, &[("DOCKER_HOST", &engine.host)]).unwrap();
    // With the agent serving port 80, `stack up` passes its check (the README's order).
    agent.wait_for_log("ready rules=", Duration::from_secs(10)).unwrap();
    agent_cli(&lab, &engine, &["stack", "up", "--config", &c]);
    // Every container stays up (the stand-ins die where the real images would) and the
    // images' own healthchecks pass.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let rows = shown(&lab, &engine);
        let ready = rows.len() == 5
            && rows.iter().all(|r| r["state"] == "running")
            && rows.iter().filter(|r| r["health"] == "healthy").count() == 3;
        if ready {
            break;
        }
        let logs: Vec<String> = rows
            .iter()
            .map(|r| {
                let name = r["name"].as_str().unwrap_or_default();
                format!("{name}: {}\n{}", r["status"], engine.docker(&["logs", name]).unwrap_or_default())
            })
            .collect();
        assert!(Instant::now() < deadline, "the stack never became healthy:\n{}", logs.join("\n"));
        // Fail at once on a restart: the stand-ins die where the real images would.
        let restarted: Vec<&String> = logs.iter().filter(|l| l.contains("Restarting")).collect();
        assert!(restarted.is_empty(), "a container died at start:\n{}", logs.join("\n"));
        std::thread::sleep(Duration::from_secs(1));
    }
    let names = ["jitsi_web_1", "jitsi_prosody_1", "jitsi_jicofo_1", "jitsi_jvb_1", "jitsi_coturn_1"];
    let restarts =
        engine.docker(&[&["inspect", "--format", "{{.Name}} {{.RestartCount}}"][..], &names].concat()).unwrap();
    assert!(restarts.lines().all(|l| l.ends_with(" 0")), "no container restarted:\n{restarts}");

    let check = agent_cli(&lab, &engine, &["check", "--config", &c]);
    for want in [
        "ok   docker: engine",
        "ok   container jvb: running",
        "ok   container coturn: running",
        "ok   stack: coturn config: readable by coturn only, shared-secret authentication on",
        "ok   stack: config directories",
        "ok   health jvb",
        "ok   health prosody",
    ] {
        assert!(check.contains(want), "`{want}` in:\n{check}");
    }

    let log = agent.log();
    for c in ["jvb", "coturn", "web"] {
        assert!(log.contains(&format!("docker: container up container={c}")), "{c}:\n{log}");
    }
    let client = udp_socket(&lab.inet, false).unwrap();
    let host = |port| SocketAddr::new(HOST_V4.into(), port);
    let (from, reply) = udp_round_trip(&client, host(10000), "media").unwrap();
    assert_eq!(from, host(10000));
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "10000: {reply}");
    // The real coturn answers a STUN binding on 3478/udp with the client's own address.
    let stun = udp_socket(&lab.inet, false).unwrap();
    let mapped = turn::binding(&stun, host(3478)).unwrap();
    assert_eq!(mapped, SocketAddr::new(CLIENT_V4.into(), stun.local_addr().unwrap().port()), "coturn saw");
    let greeting = tcp_echo(&lab.inet, host(443), recorded_hello("chromium-meet.bin")).unwrap().greeting;
    assert!(greeting.starts_with(&format!("seen {CLIENT_V4}:")), "web over 443: {greeting}");

    // Port 80 through the HTTP front: the meet name is redirected to https://, except its
    // ACME path, which reaches the web container (its acme.sh) with the client's address.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: meet.example.test\r\n\r\n").into_bytes();
    let redirect = tcp_echo(&lab.inet, host(80), get("/room")).unwrap();
    assert_eq!(redirect.greeting, "HTTP/1.1 308 Permanent Redirect");
    assert!(String::from_utf8_lossy(&redirect.echoed).starts_with("Location: https://meet.example.test/room\r\n"));
    let acme = tcp_echo(&lab.inet, host(80), get("/.well-known/acme-challenge/abc")).unwrap();
    assert!(acme.greeting.starts_with(&format!("seen {CLIENT_V4}:")), "web:8000 over 80: {}", acme.greeting);

    // The TURN name's certificate: issued over HTTP-01 through port 80, replacing the
    // placeholder where coturn reads it (root-owned, readable by coturn's group), and coturn
    // told to reload it.
    let certs = stack_dir.join("coturn/certs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::fs::read(certs.join("turn.crt")).map_or(true, |c| jitsi_agent::acme::cert::is_placeholder(&c)) {
        assert!(Instant::now() < deadline, "no certificate:\n{}\n{}", agent.log(), pebble.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let meta = |f: &str| std::fs::metadata(certs.join(f)).unwrap();
    let owner = |f: &str| (meta(f).mode() & 0o777, meta(f).uid(), meta(f).gid());
    assert_eq!(owner("turn.key"), (0o640, 0, 65534));
    assert_eq!(owner("turn.crt"), (0o644, 0, 65534));
    agent.wait_for_log("acme: sent SIGUSR2 to reload the certificate", Duration::from_secs(10)).unwrap();

    // TURN over TLS on 443, first deploy, no manual step: the handshake verifies against
    // Pebble's root (the placeholder would fail it), an Allocate without or with wrong
    // credentials is refused, and one with credentials derived from the stack's secret gets a
    // relay on the public address, coturn having seen the client's own address.
    let secret = std::fs::read_to_string(stack_dir.join(".env"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("TURN_CREDENTIALS=").map(str::to_string))
        .unwrap();
    let roots = pebble.root().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut tls = loop {
        match turn::TurnTls::connect(&lab.inet, host(443), "turn.example.test", &roots) {
            Ok(t) => break t,
            Err(e) => assert!(
                Instant::now() < deadline,
                "TURN/TLS with Pebble's certificate: {e:#}\n{}",
                engine.docker(&["logs", "jitsi_coturn_1"]).unwrap_or_default()
            ),
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(tls.allocate(None).unwrap().error(), Some(401), "no credentials: refused");
    let (user, _) = turn::rest_credentials(&secret, "participant");
    assert_eq!(tls.allocate(Some((&user, "wrong"))).unwrap().error(), Some(401), "wrong password: refused");
    let (user, password) = turn::rest_credentials(&secret, "participant");
    let ok = tls.allocate(Some((&user, &password))).unwrap();
    assert_eq!((ok.kind, ok.error()), (0x0103, None), "{ok:?}");
    let relayed = ok.relayed().unwrap();
    assert_eq!(relayed.ip(), std::net::IpAddr::from(HOST_V4), "relay announced on the public address");
    assert!((61000..=65535).contains(&relayed.port()), "the stack's relay range: {relayed}");
    assert_eq!(ok.mapped().unwrap().ip(), std::net::IpAddr::from(CLIENT_V4), "coturn saw the client's address");
    drop(tls);
    relay_only_participants_reach_each_other(&lab, &engine, &secret, &roots);

    // A real browser: headless Chromium in the internet namespace opens a data channel to a
    // WebRTC videobridge stand-in in the jvb container's namespace (bound to 10000/udp,
    // advertising the public and its private address as jvb does), once directly, once
    // relay-only over TURN/TLS on 443 through coturn.
    browser_meets_the_bridge(&lab, &engine, &stack_dir, &secret, &roots);

    // `docker restart jvb`: followed, media flows again.
    let jvb = engine.docker(&["ps", "-q", "--filter", "label=com.docker.compose.service=jvb"]).unwrap();
    let jvb = jvb.trim().to_string();
    let before = agent.log().matches("docker: container up container=jvb").count();
    engine.docker(&["restart", "-t", "1", &jvb]).unwrap();
    let restarted = Instant::now();
    // Probe every 50 ms to see when media flows again.
    client.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let mut followed = None;
    while restarted.elapsed() < Duration::from_secs(10) {
        if udp_round_trip(&client, host(10000), "again")
            .is_ok_and(|(_, r)| r.starts_with(&format!("seen {CLIENT_V4}:")))
        {
            followed = Some(restarted.elapsed());
            break;
        }
    }
    let followed = followed.unwrap_or_else(|| panic!("media after `docker restart` never came back:\n{}", agent.log()));
    // Late answers to earlier probes must not be taken for answers to later ones.
    std::thread::sleep(Duration::from_millis(200));
    let mut sink = [0u8; 2048];
    while client.recv_from(&mut sink).is_ok() {}
    client.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    eprintln!("docker restart jvb: media flowing again {followed:?} after the restart returned");
    assert!(agent.log().matches("docker: container up container=jvb").count() > before, "{}", agent.log());

    // Stopped: the rule's traffic is dropped and counted as backend down, never passed on.
    // (Counted from here: the restart above may have logged one already.)
    let not_running = "docker: container not running; its traffic is dropped (backend down) container=jvb";
    let earlier = agent.log().matches(not_running).count();
    engine.docker(&["stop", "-t", "1", &jvb]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while agent.log().matches(not_running).count() == earlier {
        assert!(Instant::now() < deadline, "the stop was not noticed:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let down = |st: &serde_json::Value| {
        st["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == "in_backend_down").unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    // The rule turns to "down" in the pinned map (status shows it) after the event (10 s: a
    // bound for a loaded CI machine, not a speed target).
    let jvb_state = |st: &serde_json::Value| {
        st["rules"].as_array().unwrap().iter().find(|r| r["name"] == "jvb").unwrap()["backends"][0]["state"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while jvb_state(&lab.status().unwrap()) != "down" {
        assert!(Instant::now() < deadline, "jvb not marked down: {}\n{}", lab.status().unwrap(), agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let down_before = down(&lab.status().unwrap());
    assert!(udp_round_trip(&client, host(10000), "nobody").is_err(), "no reply while jvb is stopped");
    assert_eq!(down(&lab.status().unwrap()), down_before + 1);
    engine.docker(&["start", &jvb]).unwrap();
    agent.wait_for_log("docker: container up container=jvb", Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while udp_round_trip(&client, host(10000), "back").is_err() {
        assert!(Instant::now() < deadline, "media after `docker start` never came back:\n{}", agent.log());
    }

    // A new address: the rule follows it (the reply still leaves from the public port).
    let net =
        engine.docker(&["network", "ls", "-q", "--filter", "label=com.docker.compose.network=meet.jitsi"]).unwrap();
    let net = net.trim().to_string();
    engine.docker(&["network", "disconnect", &net, &jvb]).unwrap();
    engine.docker(&["network", "connect", "--ip", "172.18.0.20", &net, &jvb]).unwrap();
    agent.wait_for_log("v4=Some(172.18.0.20)", Duration::from_secs(5)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match udp_round_trip(&client, host(10000), "moved") {
            Ok((from, reply)) if reply.starts_with(&format!("seen {CLIENT_V4}:")) => {
                assert_eq!(from, host(10000));
                break;
            }
            _ => assert!(Instant::now() < deadline, "media to the new address never flowed:\n{}", agent.log()),
        }
    }
    let st = lab.status().unwrap();
    let jvb_rule = st["rules"].as_array().unwrap().iter().find(|r| r["name"] == "jvb").unwrap().clone();
    assert_eq!(jvb_rule["backends"][0]["address"], "172.18.0.20:10000", "{jvb_rule}");

    let show = agent_cli(&lab, &engine, &["stack", "show"]);
    assert!(show.contains("jvb") && show.contains("running"), "{show}");
    agent.stop().unwrap();
    engine.docker(&["rm", "-f", "aaa_coturn_1"]).unwrap();
    let down = agent_cli(&lab, &engine, &["stack", "down", "--config", &c]);
    assert!(down.contains("no container of project `jitsi`"), "{down}");
    assert_eq!(engine.docker(&["ps", "-aq"]).unwrap().trim(), "", "no container left");
    let nets = engine.docker(&["network", "ls", "--format", "{{.Name}}"]).unwrap();
    assert!(!nets.contains("meet.jitsi"), "the stack's network is gone: {nets}");
    let links =
        String::from_utf8(Command::new("ip").args(["-n", lab.host.name(), "-br", "link"]).output().unwrap().stdout)
            .unwrap();
    assert!(!links.contains("br-"), "no Docker bridge left in the host namespace:\n{links}");
}
