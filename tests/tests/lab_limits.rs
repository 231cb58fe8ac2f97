//! Lab tests of the splitters' connection limits (keyed so that one client cannot take them
//! all) and of the connections they make for clients that need something else than a plain
//! transparent bind: a container reaching the host's public name (hairpin), and a client port
//! still in TIME_WAIT towards the backend. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::AgentProcess,
    clients::{recorded_hello, tcp_connect_from, tcp_echo},
    lab::{CLIENT_V4, HOST_V4, HOST_V6, Lab},
    servers::{self, Server},
};

const STEER: &str = r#"[[steer]]
name = "jvb"
protocol = "udp"
port = 10000
backend = "192.0.2.10:10000"
"#;

const ROUTES: &str = r#"
[[tls.route]]
name = "web"
server_names = ["meet.example.test"]
backend = ["192.0.2.12:8443", "[2001:db8:b::12]:8443"]

[http]
listen = ["0.0.0.0:80"]
head_timeout_secs = 20

[[http.route]]
name = "meet"
host_names = ["meet.example.test"]
backend = "192.0.2.12:8000"
redirect_https = true
"#;

struct LimitsLab {
    lab: Lab,
    agent: AgentProcess,
    _servers: Vec<Server>,
}

/// A lab whose web backend serves 8443 (TLS stand-in) and 8000 (HTTP stand-in), with the agent
/// running `settings` (`hello_timeout_secs` in `[tls]`, the limits in `[splitter]`) and the
/// routes above; `backends` are extra namespaces.
fn limits_lab(settings: &str, backends: &[&str]) -> LimitsLab {
    let names: Vec<&str> = ["jvb", "turn", "web"].iter().chain(backends).copied().collect();
    let lab = Lab::new(&names).expect("lab");
    let web = lab.backend("web");
    let servers = vec![
        servers::tcp(&web.ns, web.addr4(8443)).unwrap(),
        servers::tcp(&web.ns, web.addr6(8443)).unwrap(),
        servers::tcp(&web.ns, web.addr4(8000)).unwrap(),
    ];
    let (tls, splitter): (Vec<&str>, Vec<&str>) = settings.lines().partition(|l| l.starts_with("hello_timeout_secs"));
    let config = lab
        .write_config(&format!("{STEER}[splitter]\n{}\n[tls]\n{}\n{ROUTES}", splitter.join("\n"), tls.join("\n")))
        .unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    LimitsLab { lab, agent, _servers: servers }
}

/// A meet hello through 443 from the lab's client: the backend's greeting.
fn hello_through(l: &LimitsLab, to: IpAddr) -> String {
    let h = recorded_hello("chromium-meet.bin");
    let x = tcp_echo(&l.lab.inet, SocketAddr::new(to, 443), h.clone())
        .unwrap_or_else(|e| panic!("a new client through 443: {e:#}\n{}", l.agent.log()));
    assert!(x.echoed == h, "the hello reached the backend");
    x.greeting
}

/// An ACME validation request for the meet name through 80: relayed alone to the web backend.
fn challenge_through(l: &LimitsLab) {
    let request = "GET /.well-known/acme-challenge/Tok-123_x HTTP/1.1\r\nHost: meet.example.test\r\n\r\n";
    let x = tcp_echo(&l.lab.inet, SocketAddr::new(HOST_V4.into(), 80), request.as_bytes().to_vec())
        .unwrap_or_else(|e| panic!("an ACME challenge through 80: {e:#}\n{}", l.agent.log()));
    assert_eq!(x.greeting, format!("seen {}", SocketAddr::new(CLIENT_V4.into(), x.local.port())));
    assert_eq!(String::from_utf8_lossy(&x.echoed), request);
}

/// Opens `n` connections from `from` to `to` and sends nothing.
fn hold(l: &LimitsLab, from: IpAddr, to: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| tcp_connect_from(&l.lab.inet, SocketAddr::new(from, 0), to).unwrap()).collect()
}

/// Whether the agent closed `s` (end of stream or reset) within a second.
fn closed(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    match s.read(&mut [0u8; 1]) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
    }
}

#[test]
fn idle_connections_from_forty_sources_lock_out_neither_a_new_client_nor_an_acme_challenge() {
    let l = limits_lab("max_connections = 100\nmax_connections_per_client = 4\nhello_timeout_secs = 20", &[]);
    // 40 sources hold 4 silent connections each on 443 and on 80: 320 in all, more than
    // `max_connections`, none of them routed.
    let mut held = Vec::new();
    for i in 0..40u8 {
        let src = IpAddr::from([203, 0, 113, 100 + i]);
        l.lab.inet.ip(&["addr", "add", &format!("{src}/32"), "dev", "eth0"]).unwrap();
        held.extend(hold(&l, src, SocketAddr::new(HOST_V4.into(), 443), 4));
        held.extend(hold(&l, src, SocketAddr::new(HOST_V4.into(), 80), 4));
    }
    std::thread::sleep(Duration::from_millis(300));
    let greeting = hello_through(&l, HOST_V4.into());
    assert!(greeting.starts_with(&format!("seen {CLIENT_V4}:")), "{greeting}");
    challenge_through(&l);
    assert_eq!(l.lab.splitter_refused("over_limit"), 0);
    drop(held);
}

#[test]
fn a_full_pending_pool_closes_its_oldest_connection() {
    let l = limits_lab("max_pending_connections = 8\nhello_timeout_secs = 20", &[]);
    let to = SocketAddr::new(HOST_V4.into(), 443);
    let mut first = hold(&l, CLIENT_V4.into(), to, 1);
    std::thread::sleep(Duration::from_millis(100));
    let mut rest = hold(&l, CLIENT_V4.into(), to, 7);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!closed(&mut first[0]), "eight pending connections fit");
    // The ninth (a real client) makes room by closing the oldest, and is served.
    let greeting = hello_through(&l, HOST_V4.into());
    assert!(greeting.starts_with("seen "), "{greeting}");
    assert!(closed(&mut first[0]), "the oldest pending connection was closed");
    assert!(!closed(&mut rest[6]), "the newest ones stay");
    assert_eq!(l.lab.refused_after_wait("evicted_pending", 1), 1);
}

#[test]
fn an_ipv6_64_is_one_client_and_a_48_has_a_cap() {
    let l = limits_lab("max_connections_per_client = 2\nmax_connections_per_ipv6_48 = 3\nhello_timeout_secs = 20", &[]);
    // Addresses of the client's /64 and of two other /64s of its /48 (routed back through it).
    l.lab.host.ip(&["-6", "route", "add", "2001:db8:c::/48", "via", "2001:db8:c::2"]).unwrap();
    for a in ["2001:db8:c::100", "2001:db8:c::101", "2001:db8:c::102", "2001:db8:c:1::1", "2001:db8:c:2::1"] {
        l.lab.inet.ip(&["addr", "add", &format!("{a}/128"), "dev", "eth0", "nodad"]).unwrap();
    }
    let to = SocketAddr::new(HOST_V6.into(), 443);
    let from = |a: &str| a.parse::<IpAddr>().unwrap();
    let _a = hold(&l, from("2001:db8:c::100"), to, 1);
    let _b = hold(&l, from("2001:db8:c::101"), to, 1);
    std::thread::sleep(Duration::from_millis(200));
    // A third address of the same /64 is the same client.
    let mut c = hold(&l, from("2001:db8:c::102"), to, 1);
    assert!(closed(&mut c[0]), "a third connection from the /64 was refused");
    assert_eq!(l.lab.refused_after_wait("over_client_limit", 1), 1);
    // Another /64 of the /48 gets one more, then the /48 is full.
    let mut d = hold(&l, from("2001:db8:c:1::1"), to, 1);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!closed(&mut d[0]));
    let mut e = hold(&l, from("2001:db8:c:2::1"), to, 1);
    assert!(closed(&mut e[0]), "the /48 is capped");
    assert_eq!(l.lab.refused_after_wait("over_site_limit", 1), 1);
}

#[test]
fn a_container_reaching_the_public_name_is_connected_from_the_host() {
    let l = limits_lab("hello_timeout_secs = 5", &["recorder"]);
    let recorder = l.lab.backend("recorder");
    // The recorder (on the backends' bridge) opens https://meet.example.test/, which resolves
    // to the host's public address.
    let h = recorded_hello("chromium-meet.bin");
    let x = tcp_echo(&recorder.ns, SocketAddr::new(HOST_V4.into(), 443), h.clone())
        .unwrap_or_else(|e| panic!("hairpin through 443: {e:#}\n{}", l.agent.log()));
    assert!(x.echoed == h, "relayed both ways");
    // The backend saw the host's address on the bridge: from the recorder's own address, its
    // answer would have gone straight to the recorder, past the agent.
    assert!(x.greeting.starts_with("seen 192.0.2.1:"), "{}", x.greeting);
    // Clients from the internet are still connected from their own address.
    let greeting = hello_through(&l, HOST_V4.into());
    assert!(greeting.starts_with(&format!("seen {CLIENT_V4}:")), "{greeting}");
}

#[test]
fn a_client_port_in_time_wait_towards_the_backend_gets_an_ephemeral_one() {
    let l = limits_lab("idle_timeout_secs = 1", &[]);
    // Without TCP timestamps on the way to the backend (a backend that does not use them), the
    // kernel cannot tell a new connection from an old duplicate, so a TIME_WAIT of the same
    // addresses and ports is not reused: connect(2) fails with EADDRNOTAVAIL.
    l.lab.backend("web").ns.sysctl("net.ipv4.tcp_timestamps", "0").unwrap();
    let from = SocketAddr::new(CLIENT_V4.into(), 40555);
    let to = SocketAddr::new(HOST_V4.into(), 443);
    let greeting = |s: &mut TcpStream| {
        s.write_all(&recorded_hello("chromium-meet.bin")).unwrap();
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            s.read_exact(&mut b).unwrap_or_else(|e| panic!("greeting: {e}\n{}", l.agent.log()));
            line.push(b[0]);
        }
        String::from_utf8_lossy(&line).trim().to_string()
    };
    let mut s = tcp_connect_from(&l.lab.inet, from, to).unwrap();
    assert_eq!(greeting(&mut s), format!("seen {from}"), "the client's own port the first time");
    // The agent closes the idle connection first: its connection to the backend from
    // 203.0.113.2:40555 is left in TIME_WAIT.
    let started = Instant::now();
    let _ = s.read_to_end(&mut Vec::new());
    assert!(started.elapsed() < Duration::from_secs(4));
    drop(s);
    std::thread::sleep(Duration::from_millis(200));
    let tw = l.lab.host.exec("ss", &["-tan", "state", "time-wait"]).unwrap();
    assert!(tw.contains("203.0.113.2:40555"), "TIME_WAIT towards the backend:\n{tw}");
    // The same client port again: served, from an ephemeral port towards the backend.
    let mut again = tcp_connect_from(&l.lab.inet, from, to).unwrap();
    let seen = greeting(&mut again);
    let seen: SocketAddr = seen.strip_prefix("seen ").unwrap().parse().unwrap();
    assert_eq!(seen.ip(), IpAddr::from(CLIENT_V4), "still the client's address");
    assert_ne!(seen.port(), 40555);
}
