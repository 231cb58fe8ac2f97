//! The provisioned stack under a real Docker engine: `stack init` and `stack up` with stand-in
//! images, the agent resolving the containers by name (the rules `[stack]` implies), lab
//! traffic to 10000/udp, 3478/udp, 443 and 80 with the client's address preserved, the TURN
//! name's certificate obtained from Pebble and coturn told to reload it, a restarted and a
//! stopped container followed, and `stack down` leaving nothing.

use std::{
    net::SocketAddr,
    os::unix::fs::MetadataExt,
    process::Command,
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::{AgentProcess, agent_bin, command_in, standin_bin},
    clients::{recorded_hello, tcp_echo, udp_round_trip, udp_socket},
    docker::DockerEngine,
    lab::{CLIENT_V4, HOST_V4, Lab},
    pebble::Pebble,
};

/// `jitsi-agent <args>` in the host namespace against the test's engine.
fn agent_cli(lab: &Lab, engine: &DockerEngine, args: &[&str]) -> String {
    let mut cmd = command_in(&lab.host, &agent_bin()).unwrap();
    let out = cmd.args(args).env("DOCKER_HOST", &engine.host).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "jitsi-agent {args:?}:\n{text}");
    text
}

#[test]
fn the_generated_stack_runs_is_steered_to_and_followed() {
    let lab = Lab::new(&[]).expect("lab");
    let engine = DockerEngine::start(&lab.host, lab.work_dir()).unwrap();
    engine.build_standins(&standin_bin(), "standin", "test", &["web", "prosody", "jicofo", "jvb", "coturn"]).unwrap();
    let stack_dir = lab.work_dir().join("stack");
    // The TURN name's certificate comes from Pebble (an [acme] without names: the TURN name).
    let pebble = Pebble::start(&lab.inet, lab.work_dir(), HOST_V4).unwrap();
    let config = lab
        .write_config(&format!(
            "[stack]\nmeet_domain = \"meet.example.test\"\nturn_domain = \"turn.example.test\"\n\
             public_addresses = [\"{HOST_V4}\"]\ndirectory = \"{}\"\nimage_repo = \"standin\"\nimage_tag = \"test\"\n\
             coturn_image = \"standin/coturn:test\"\nsubnet = \"172.18.0.0/24\"\n{}",
            stack_dir.display(),
            pebble.acme_section(&[], &lab.work_dir().join("acme"))
        ))
        .unwrap();
    let c = config.display().to_string();
    let init = agent_cli(&lab, &engine, &["stack", "init", "--config", &c]);
    assert!(init.contains("secrets drawn"), "{init}");
    let up = agent_cli(&lab, &engine, &["stack", "up", "--config", &c]);
    for (service, ip) in [("jvb", "172.18.0.10"), ("coturn", "172.18.0.11"), ("web", "172.18.0.12")] {
        assert!(
            up.lines().any(|l| l.starts_with(service) && l.contains("running") && l.contains(ip)),
            "{service}:\n{up}"
        );
    }

    let check = agent_cli(&lab, &engine, &["check", "--config", &c]);
    for want in ["ok   docker: engine", "ok   container jvb: running", "ok   container coturn: running"] {
        assert!(check.contains(want), "`{want}` in:\n{check}");
    }

    let mut agent = AgentProcess::start_with_env(&lab.host, &config, &[("DOCKER_HOST", &engine.host)]).unwrap();
    let log = agent.log();
    for c in ["jvb", "coturn", "web"] {
        assert!(log.contains(&format!("docker: container up container={c}")), "{c}:\n{log}");
    }
    let client = udp_socket(&lab.inet, false).unwrap();
    let host = |port| SocketAddr::new(HOST_V4.into(), port);
    for port in [10000, 3478] {
        let (from, reply) = udp_round_trip(&client, host(port), "media").unwrap();
        assert_eq!(from, host(port));
        assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{port}: {reply}");
    }
    for (file, what) in [("chromium-meet.bin", "web"), ("curl-turn.bin", "coturn")] {
        let greeting = tcp_echo(&lab.inet, host(443), recorded_hello(file)).unwrap().greeting;
        assert!(greeting.starts_with(&format!("seen {CLIENT_V4}:")), "{what} over 443: {greeting}");
    }

    // Port 80 through the Host splitter: the meet name is redirected to https://, except its
    // ACME path, which reaches the web container (its acme.sh) with the client's address.
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: meet.example.test\r\n\r\n").into_bytes();
    let redirect = tcp_echo(&lab.inet, host(80), get("/room")).unwrap();
    assert_eq!(redirect.greeting, "HTTP/1.1 308 Permanent Redirect");
    assert!(String::from_utf8_lossy(&redirect.echoed).starts_with("Location: https://meet.example.test/room\r\n"));
    let acme = tcp_echo(&lab.inet, host(80), get("/.well-known/acme-challenge/abc")).unwrap();
    assert!(acme.greeting.starts_with(&format!("seen {CLIENT_V4}:")), "web:8000 over 80: {}", acme.greeting);

    // The TURN name's certificate: issued over HTTP-01 through port 80, written where coturn
    // reads it (owned by coturn's uid, key 0600), and coturn told to reload it.
    let certs = stack_dir.join("coturn/certs");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !certs.join("turn.crt").exists() {
        assert!(Instant::now() < deadline, "no certificate:\n{}\n{}", agent.log(), pebble.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let meta = |f: &str| std::fs::metadata(certs.join(f)).unwrap();
    assert_eq!((meta("turn.key").mode() & 0o777, meta("turn.key").uid()), (0o600, 65534));
    assert_eq!((meta("turn.crt").mode() & 0o777, meta("turn.crt").uid()), (0o644, 65534));
    let coturn = engine.docker(&["ps", "-q", "--filter", "label=com.docker.compose.service=coturn"]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !engine.docker(&["logs", coturn.trim()]).unwrap().contains("SIGUSR2: reloading the TLS certificate") {
        assert!(Instant::now() < deadline, "coturn never got SIGUSR2:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(agent.log().contains("acme: sent SIGUSR2 to reload the certificate"), "{}", agent.log());

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
    engine.docker(&["stop", "-t", "1", &jvb]).unwrap();
    agent.wait_for_log("docker: container not running; its traffic is dropped", Duration::from_secs(5)).unwrap();
    let down = |st: &serde_json::Value| {
        st["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == "in_backend_down").unwrap()["packets"]
            .as_u64()
            .unwrap()
    };
    // The rule turns to "down" in the pinned map (status shows it) right after the event.
    let jvb_state = |st: &serde_json::Value| {
        st["rules"].as_array().unwrap().iter().find(|r| r["name"] == "jvb").unwrap()["backends"][0]["state"].clone()
    };
    let deadline = Instant::now() + Duration::from_secs(2);
    while jvb_state(&lab.status().unwrap()) != "down" {
        assert!(Instant::now() < deadline, "jvb not marked down: {}", lab.status().unwrap());
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
