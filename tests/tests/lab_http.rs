//! Lab tests of the HTTP front on port 80 and of the certificates the agent obtains over
//! ACME: requests from the "internet" namespace reach the backend their `Host` routes to, with
//! the client's own address; a redirect route answers 308 except on the ACME path; and a real
//! ACME round trip against Pebble (Let's Encrypt's test CA, from Debian's package) issues the
//! TURN name's certificate over HTTP-01 through port 80, which a TLS client then sees through
//! 443. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr},
    os::unix::fs::PermissionsExt,
    path::Path,
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::{AgentProcess, command_in},
    clients::{scrape_metrics, tcp_echo},
    lab::{CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, Lab},
    netns::spawn_in,
    pebble::Pebble,
    servers::{self, Server},
};

const STEER: &str = r#"[[steer]]
name = "jvb"
protocol = "udp"
port = 10000
backend = ["192.0.2.10:10000", "[2001:db8:b::10]:10000"]
"#;

const HTTP: &str = r#"
[http]
head_timeout_secs = 2

[[http.route]]
name = "meet"
host_names = ["meet.example.test"]
backend = ["192.0.2.12:8000", "[2001:db8:b::12]:8000"]
redirect_https = true

[[http.route]]
name = "site"
host_names = ["www.example.test", "*.site.example.test"]
backend = ["192.0.2.13:80", "[2001:db8:b::13]:80"]
"#;

struct HttpLab {
    lab: Lab,
    agent: AgentProcess,
    /// (route, v4 server, v6 server)
    servers: Vec<(&'static str, Server, Server)>,
}

fn http_lab() -> HttpLab {
    let lab = Lab::new(&["jvb", "turn", "web", "site"]).expect("lab");
    let mut servers = Vec::new();
    for (route, backend, port) in [("meet", "web", 8000), ("site", "site", 80)] {
        let b = lab.backend(backend);
        servers.push((route, servers::tcp(&b.ns, b.addr4(port)).unwrap(), servers::tcp(&b.ns, b.addr6(port)).unwrap()));
    }
    let config = lab.write_config(&format!("{STEER}{HTTP}")).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    HttpLab { lab, agent, servers }
}

impl HttpLab {
    fn server(&self, route: &str, v6: bool) -> &Server {
        let (_, s4, s6) = self.servers.iter().find(|(r, _, _)| *r == route).expect("route");
        if v6 { s6 } else { s4 }
    }

    fn count(&self, route: &str) -> usize {
        self.server(route, false).count() + self.server(route, true).count()
    }

    /// Sends `request` to the host's port 80 and returns the whole answer (the agent's own
    /// response, or the stand-in's `seen <addr>` line followed by the echo).
    fn exchange(&self, host: IpAddr, request: &str) -> (String, Vec<u8>, SocketAddr) {
        let x = tcp_echo(&self.lab.inet, SocketAddr::new(host, 80), request.as_bytes().to_vec())
            .unwrap_or_else(|e| panic!("{request:?}: {e:#}"));
        (x.greeting, x.echoed, x.local)
    }

    /// Waits (counters reach the pins every second) for a refusal count, and asserts it.
    fn wait_refused(&self, reason: &str, n: u64) {
        assert_eq!(self.lab.refused_after_wait(reason, n), n, "{reason} in status --json\n{}", self.agent.log());
    }
}

#[test]
fn requests_reach_the_backend_their_host_routes_to_with_the_client_address() {
    let l = http_lab();
    for (host, client) in [(IpAddr::from(HOST_V4), IpAddr::from(CLIENT_V4)), (HOST_V6.into(), CLIENT_V6.into())] {
        for (route, host_header, path) in [
            ("site", "www.example.test", "/index.html"),
            ("site", "A.Site.Example.Test:80", "/"),
            // The redirect route relays the ACME path to its backend.
            ("meet", "meet.example.test", "/.well-known/acme-challenge/Tok-123_x"),
        ] {
            let before = l.count(route);
            // A second request pipelined behind the first, and half of a third: all replayed.
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: lab\r\n\r\n\
                 GET /second HTTP/1.1\r\nHost: {host_header}\r\n\r\nPOST /third HTTP/1.1\r\nContent-Le"
            );
            let (greeting, echoed, local) = l.exchange(host, &request);
            assert_eq!(greeting, format!("seen {}", SocketAddr::new(client, local.port())), "{host_header} via {host}");
            if route == "meet" {
                // A redirect route relays the validation request alone: a kept-alive connection
                // must not reach the rest of the site over plain HTTP.
                let first = format!("GET {path} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: lab\r\n\r\n");
                assert_eq!(String::from_utf8_lossy(&echoed), first, "only the challenge request reached the backend");
            } else {
                assert_eq!(String::from_utf8_lossy(&echoed), request, "the backend got every byte, in order");
            }
            assert_eq!(l.count(route), before + 1, "{host_header}{path} reached `{route}`");
        }
    }
    // A real client: curl (the stand-in is no HTTP server: it greets and echoes until curl gives
    // up after a second, hence HTTP/0.9 allowed and the exit status ignored).
    let out = l
        .lab
        .inet
        .exec_output(
            "curl",
            &["-sS", "--http0.9", "--max-time", "1", "-H", "Host: www.example.test", "http://203.0.113.1/"],
        )
        .unwrap();
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(out.starts_with("seen 203.0.113.2:") && out.contains("GET / HTTP/1.1\r\nHost: www.example.test"), "{out}");
    let st = l.lab.status().unwrap();
    let site = st["splitter"]["routes"].as_array().unwrap().iter().find(|r| r["name"] == "site").cloned();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut connections = site.map(|s| s["connections"].as_u64().unwrap()).unwrap_or(0);
    while connections < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let st = l.lab.status().unwrap();
        connections =
            st["splitter"]["routes"].as_array().unwrap().iter().find(|r| r["name"] == "site").unwrap()["connections"]
                .as_u64()
                .unwrap();
    }
    assert_eq!(connections, 5, "status counts the `site` route's connections (4 raw + curl)");
}

#[test]
fn redirects_bad_requests_and_unknown_hosts_are_answered_by_the_splitter() {
    let l = http_lab();
    let meet_before = l.count("meet");
    // 308 to https://, port stripped, path and query kept; IPv4 and IPv6.
    for host in [IpAddr::from(HOST_V4), HOST_V6.into()] {
        let (status, rest, _) = l.exchange(host, "GET /room?jwt=x HTTP/1.1\r\nHost: Meet.Example.Test:80\r\n\r\n");
        assert_eq!(status, "HTTP/1.1 308 Permanent Redirect");
        let rest = String::from_utf8_lossy(&rest);
        assert!(rest.starts_with("Location: https://meet.example.test/room?jwt=x\r\n"), "{rest}");
    }
    let out = l
        .lab
        .inet
        .exec(
            "curl",
            &[
                "-sS",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{redirect_url}",
                "-H",
                "Host: meet.example.test",
                "http://203.0.113.1/x",
            ],
        )
        .unwrap();
    assert_eq!(out, "308 https://meet.example.test/x");
    assert_eq!(l.count("meet"), meet_before, "no redirected request reached the backend");
    // Unknown host, no default route: 421, and no connection anywhere.
    let (status, _, _) = l.exchange(HOST_V4.into(), "GET / HTTP/1.1\r\nHost: elsewhere.example.com\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 421 Misdirected Request");
    let (status, _, _) = l.exchange(HOST_V4.into(), "GET / HTTP/1.0\r\n\r\n");
    assert_eq!(status, "HTTP/1.1 421 Misdirected Request", "HTTP/1.0 without Host and no default");
    // Malformed: a bad Host, a missing one in HTTP/1.1, a TLS hello on port 80.
    for bad in [
        "GET / HTTP/1.1\r\nHost: a_b.example.test\r\n\r\n",
        "GET / HTTP/1.1\r\nUser-Agent: x\r\n\r\n",
        "\u{16}\u{3}\u{1}\u{2}\u{0}",
    ] {
        let (status, rest, _) = l.exchange(HOST_V4.into(), bad);
        assert_eq!(status, "HTTP/1.1 400 Bad Request", "{bad:?}: {}", String::from_utf8_lossy(&rest));
    }
    // Too large a head: 431, read by a client still sending (the splitter stops reading at
    // the limit; its graceful close keeps the response from being reset away).
    let big = format!("GET / HTTP/1.1\r\nHost: www.example.test\r\nX-Pad: {}\r\n\r\n", "a".repeat(20_000));
    let answer = l
        .lab
        .inet
        .enter(move || -> std::io::Result<String> {
            let mut s =
                std::net::TcpStream::connect_timeout(&SocketAddr::new(HOST_V4.into(), 80), Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let _ = s.write_all(big.as_bytes());
            let mut out = Vec::new();
            let _ = s.read_to_end(&mut out);
            Ok(String::from_utf8_lossy(&out).into_owned())
        })
        .unwrap()
        .unwrap();
    assert!(answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"), "{answer:?}");
    assert_eq!(l.count("site"), 0, "nothing reached `site`");
    l.wait_refused("http_no_route", 2);
    l.wait_refused("http_bad_request", 3);
    l.wait_refused("http_head_too_large", 1);
}

fn wait_for(what: &str, deadline: Duration, mut done: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !done() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn acme_round_trip_against_pebble_issues_the_turn_certificate_over_port_80() {
    let lab = Lab::new(&["jvb", "turn"]).expect("lab");
    let dir = lab.work_dir().to_path_buf();
    let pebble = Pebble::start(&lab.inet, &dir, HOST_V4).unwrap();
    // coturn's stand-in must not exist yet: the certificate is what the test waits for.
    let state = dir.join("acme");
    let config = lab
        .write_config(&format!(
            "{STEER}\n[tls]\n[[tls.route]]\nname = \"turn\"\nserver_names = [\"turn.example.test\"]\nbackend = \"192.0.2.11:5349\"\n\
             [http]\n[metrics]\nlisten = \"127.0.0.1:9477\"\n{}",
            pebble.acme_section(&["turn.example.test"], &state)
        ))
        .unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let chain = state.join("certs/turn.example.test/fullchain.pem");
    let key = state.join("certs/turn.example.test/privkey.pem");
    let issued = Instant::now();
    wait_for("the certificate", Duration::from_secs(60), || chain.exists());
    eprintln!("certificate installed {:.1} s after the agent was ready", issued.elapsed().as_secs_f64());
    let log = agent.log();
    assert!(log.contains("acme: answered an HTTP-01 challenge"), "the challenge came through port 80:\n{log}");
    assert!(log.contains("acme: certificate installed"), "{log}");
    assert!(pebble.log().contains("turn.example.test"), "{}", pebble.log());
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&key), 0o600, "the key is private");
    assert_eq!(mode(&chain), 0o644);
    assert_eq!(mode(&state.join("account.json")), 0o600, "the account key is private");

    let root = pebble.root().unwrap();
    let verified = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&root)
        .arg("-untrusted")
        .arg(&chain)
        .arg(&chain)
        .output()
        .unwrap();
    assert!(verified.status.success(), "the chain verifies against Pebble's root: {verified:?}");

    // coturn's stand-in: a TLS server on 5349 with exactly those files; a client reaching it
    // through the agent's 443 with the TURN name is presented that certificate, and verifies it.
    let turn = lab.backend("turn");
    let _tls = spawn_in(
        &turn.ns,
        "/usr/bin/openssl",
        &[
            "s_server",
            "-accept",
            "5349",
            "-cert",
            chain.to_str().unwrap(),
            "-cert_chain",
            chain.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-www",
        ],
        &[],
        &dir.join("s_server.log"),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let out = lab
        .inet
        .exec_output(
            "sh",
            &["-c", &format!(
                "echo Q | timeout 10 openssl s_client -connect 203.0.113.1:443 -servername turn.example.test -CAfile {} -verify_return_error -verify_hostname turn.example.test",
                root.display()
            )],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("Verify return code: 0 (ok)"),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // status --config shows when it expires.
    let mut cmd = command_in(&lab.host, &jitsi_tests::agent::agent_bin()).unwrap();
    cmd.args(["status", "--interval", "0", "--config"]).arg(&config);
    let status = jitsi_tests::netns::run(&mut cmd).unwrap();
    let line = status.lines().find(|l| l.starts_with("turn.example.test")).unwrap_or_else(|| panic!("{status}"));
    assert!(line.contains(" 20") && !line.contains("missing"), "an expiry date: {line}");
    // Metrics: the expiry as a timestamp, and no failure.
    let m = scrape_metrics(&lab.host, "127.0.0.1:9477");
    let expiry = m
        .lines()
        .find_map(|l| l.strip_prefix("jitsi_agent_certificate_expiry_timestamp_seconds{name=\"turn.example.test\"} "))
        .unwrap_or_else(|| panic!("{m}"));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
    assert!(expiry.parse::<i64>().unwrap() > now + 86_400, "expires in the future: {expiry}");
    assert!(m.contains("jitsi_agent_certificate_renewal_failing{name=\"turn.example.test\"} 0"), "{m}");
    // A restart finds the certificate valid and orders nothing.
    drop(agent.stop().unwrap());
    let before = std::fs::read(&chain).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::read(&chain).unwrap(), before, "a valid certificate is kept");
    assert!(!agent.log().contains("acme: obtaining"), "{}", agent.log());
}

#[test]
fn a_failed_renewal_keeps_the_old_certificate_and_says_so() {
    let lab = Lab::new(&["jvb"]).expect("lab");
    let dir = lab.work_dir().to_path_buf();
    let state = dir.join("acme");
    let certs = state.join("certs/turn.example.test");
    std::fs::create_dir_all(&certs).unwrap();
    let (chain, key) = (certs.join("fullchain.pem"), certs.join("privkey.pem"));
    // A certificate that expires in 10 days: due for renewal (30 days before expiry).
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "10"])
        .args(["-subj", "/CN=turn.example.test", "-addext", "subjectAltName=DNS:turn.example.test", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&chain)
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let before = (std::fs::read(&chain).unwrap(), std::fs::read(&key).unwrap());
    // No ACME server answers at the directory's address.
    let config = lab
        .write_config(&format!(
            "{STEER}[http]\n[acme]\nemail = \"ops@example.test\"\ndirectory = \"https://203.0.113.2:14000/dir\"\n\
             names = [\"turn.example.test\"]\nstate_dir = \"{}\"\n",
            state.display()
        ))
        .unwrap();
    let mut agent = AgentProcess::start(&lab.host, &config).unwrap();
    agent.wait_for_log("acme: could not obtain a certificate; the old one stays", Duration::from_secs(20)).unwrap();
    assert!(agent.log().contains("retry_in_secs=300"), "first retry after 5 minutes:\n{}", agent.log());
    assert_eq!((std::fs::read(&chain).unwrap(), std::fs::read(&key).unwrap()), before, "the old files stay");
    let mut cmd = command_in(&lab.host, &jitsi_tests::agent::agent_bin()).unwrap();
    cmd.args(["status", "--interval", "0", "--json", "--config"]).arg(&config);
    let status: serde_json::Value = serde_json::from_str(&jitsi_tests::netns::run(&mut cmd).unwrap()).unwrap();
    let c = &status["certificates"][0];
    assert_eq!(c["name"], "turn.example.test");
    let days_left = (c["expires"].as_i64().unwrap()
        - std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64)
        / 86_400;
    assert!((9..=10).contains(&days_left), "the old certificate's expiry: {c}");
    assert!(c["last_error"].as_str().is_some_and(|e| e.contains("ACME")), "the error is shown: {c}");
    drop(agent.stop().unwrap());
}
