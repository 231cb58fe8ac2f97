//! Lab tests of the SNI splitter: TLS ClientHellos recorded from real clients (Chromium,
//! curl, OpenSSL) and a live `openssl s_client` connect from the "internet" namespace to the
//! host's 443 and reach the backend their server name routes to; each backend reports the
//! client's real address. Needs root.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::AgentProcess,
    clients::recorded_hello,
    clients::tcp_echo,
    lab::{CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, LAB_RULES, Lab},
    servers::{self, Server},
};

const SNI: &str = r#"
[tls]
listen = ["0.0.0.0:443", "[::]:443"]
default = "fallback"
hello_timeout_secs = 3

[[tls.route]]
name = "web"
server_names = ["meet.example.test"]
backend = ["192.0.2.12:8443", "[2001:db8:b::12]:8443"]

[[tls.route]]
name = "turn"
server_names = ["turn.example.test"]
backend = ["192.0.2.11:5349", "[2001:db8:b::11]:5349"]

[[tls.route]]
name = "other"
server_names = ["*.example.test"]
backend = ["192.0.2.13:9443", "[2001:db8:b::13]:9443"]

[[tls.route]]
name = "plain"
server_names = ["plain.example.test"]
backend = ["192.0.2.13:9443", "[2001:db8:b::13]:9443"]
transparent = false

[[tls.route]]
name = "v4one"
server_names = ["v4one.example.test"]
backend = "192.0.2.13:9443"

[[tls.route]]
name = "local"
server_names = ["local.example.test"]
backend = ["127.0.0.1:9444", "[::1]:9444"]

[[tls.route]]
name = "fallback"
backend = ["192.0.2.14:8443", "[2001:db8:b::14]:8443"]
"#;

struct SniLab {
    lab: Lab,
    agent: Option<AgentProcess>,
    /// (route, v4 server, v6 server)
    servers: Vec<(&'static str, Server, Server)>,
}

fn sni_lab(sni: &str) -> SniLab {
    let lab = Lab::new(&["jvb", "turn", "web", "other", "fallback"]).expect("lab");
    let mut servers = Vec::new();
    for (route, backend, port) in
        [("web", "web", 8443), ("turn", "turn", 5349), ("other", "other", 9443), ("fallback", "fallback", 8443)]
    {
        let b = lab.backend(backend);
        servers.push((route, servers::tcp(&b.ns, b.addr4(port)).unwrap(), servers::tcp(&b.ns, b.addr6(port)).unwrap()));
    }
    let config = lab.write_config(&format!("{LAB_RULES}{sni}")).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    SniLab { lab, agent: Some(agent), servers }
}

/// Waits (up to 3 s: counters reach the pins every second) until `status --json` counts
/// exactly `n` refusals for `reason`, and asserts it.
fn wait_refused(l: &SniLab, reason: &str, n: u64) {
    assert_eq!(l.lab.refused_after_wait(reason, n), n, "{reason} refusals in status --json");
}

impl SniLab {
    fn server(&self, route: &str, v6: bool) -> &Server {
        let (_, s4, s6) = self.servers.iter().find(|(r, _, _)| *r == route).expect("route");
        if v6 { s6 } else { s4 }
    }

    fn wait_count(&self, route: &str, v6: bool, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.server(route, v6).count() < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a recorded hello through 443 and checks the backend's view: the client's own
/// address, and the hello bytes exactly as sent.
fn through_443(l: &SniLab, host: IpAddr, client: IpAddr, hello_file: &str) {
    let to = SocketAddr::new(host, 443);
    let h = recorded_hello(hello_file);
    let x = tcp_echo(&l.lab.inet, to, h.clone()).unwrap_or_else(|e| panic!("{hello_file} via {to}: {e:#}"));
    assert_eq!(
        x.greeting,
        format!("seen {}", SocketAddr::new(client, x.local.port())),
        "{hello_file}: backend saw the client"
    );
    assert!(
        x.echoed == h,
        "{hello_file}: the hello reached the backend unchanged ({} of {} bytes)",
        x.echoed.len(),
        h.len()
    );
}

#[test]
fn sni_routes_by_server_name_with_the_client_address_ipv4_and_ipv6() {
    let mut l = sni_lab(SNI);
    let routing = l.lab.host.ip(&["rule", "show"]).unwrap();
    assert!(routing.contains("fwmark 0x4a17 lookup 18967"), "policy rule installed:\n{routing}");
    for (host, client, v6) in
        [(IpAddr::from(HOST_V4), IpAddr::from(CLIENT_V4), false), (HOST_V6.into(), CLIENT_V6.into(), true)]
    {
        for (file, route) in [
            ("chromium-meet.bin", "web"),
            ("curl-turn.bin", "turn"),
            ("openssl-tls12.bin", "other"),
            ("openssl-nosni.bin", "fallback"),
        ] {
            let before = l.server(route, v6).count();
            through_443(&l, host, client, file);
            l.wait_count(route, v6, before + 1);
            let s = l.server(route, v6);
            assert_eq!(s.count(), before + 1, "{file} reached route {route} ({})", s.addr);
            assert_eq!(s.peers().last().unwrap().ip(), client);
        }
    }
    // A live TLS client: openssl s_client with SNI meet.example.test reaches the web backend.
    let before = l.server("web", false).count();
    let out = l
        .lab
        .inet
        .exec_output(
            "timeout",
            &["5", "openssl", "s_client", "-connect", "203.0.113.1:443", "-servername", "meet.example.test"],
        )
        .unwrap();
    let _ = out; // the stand-in is not a TLS server: the handshake fails after the hello
    l.wait_count("web", false, before + 1);
    let seen = l.server("web", false).seen.lock().unwrap().last().cloned().expect("s_client reached web");
    assert_eq!(seen.0.ip(), IpAddr::from(CLIENT_V4));
    assert!(seen.1.windows(17).any(|w| w == b"meet.example.test"), "the backend received s_client's hello");

    let log = l.agent.as_ref().unwrap().log();
    assert!(log.contains("splitter: listening"), "{log}");
    drop(l.agent.take().map(|a| a.stop().unwrap()));
    let routing = l.lab.host.ip(&["rule", "show"]).unwrap();
    assert!(!routing.contains("0x4a17"), "policy rule removed on exit:\n{routing}");
}

/// The address in a stand-in's `seen <addr>` greeting.
fn seen_ip(greeting: &str) -> IpAddr {
    greeting.strip_prefix("seen ").and_then(|a| a.parse::<SocketAddr>().ok()).expect("a `seen <addr>` greeting").ip()
}

/// The recorded OpenSSL hello (SNI `other.example.test`) with another 18-byte server name.
fn hello_for(name18: &str) -> Vec<u8> {
    let mut h = recorded_hello("openssl-tls12.bin");
    let at = h.windows(18).position(|w| w == b"other.example.test").unwrap();
    h[at..at + 18].copy_from_slice(name18.as_bytes());
    h
}

#[test]
fn plain_routes_and_routes_without_the_client_family_connect_from_the_host() {
    let l = sni_lab(SNI);
    // transparent = false: the backend sees the host (the bridge address), in each family.
    for (host, bridge) in [(IpAddr::from(HOST_V4), "192.0.2.1"), (HOST_V6.into(), "2001:db8:b::1")] {
        let x = tcp_echo(&l.lab.inet, SocketAddr::new(host, 443), hello_for("plain.example.test")).unwrap();
        assert_eq!(seen_ip(&x.greeting), bridge.parse::<IpAddr>().unwrap(), "{}", x.greeting);
    }
    // A route with only an IPv4 backend: an IPv6 client is connected plainly to it (once logged).
    for _ in 0..2 {
        let x = tcp_echo(&l.lab.inet, SocketAddr::new(HOST_V6.into(), 443), hello_for("v4one.example.test")).unwrap();
        assert_eq!(seen_ip(&x.greeting), IpAddr::from([192, 0, 2, 1]), "{}", x.greeting);
    }
    let x = tcp_echo(&l.lab.inet, SocketAddr::new(HOST_V4.into(), 443), hello_for("v4one.example.test")).unwrap();
    assert_eq!(
        x.greeting,
        format!("seen {}", SocketAddr::new(CLIENT_V4.into(), x.local.port())),
        "same family: transparent"
    );
    let log = l.agent.as_ref().unwrap().log();
    assert_eq!(log.matches("no backend of the client's family").count(), 1, "{log}");
}

#[test]
fn limits_and_idle_timeout() {
    let l = sni_lab(&format!("[splitter]\nmax_connections_per_client = 2\nidle_timeout_secs = 1\n{SNI}"));
    let to = SocketAddr::new(HOST_V4.into(), 443);
    let connect = || l.lab.inet.enter(move || TcpStream::connect(to)).unwrap().unwrap();
    // Two connections relayed to web and left idle...
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut s = connect();
        s.write_all(&recorded_hello("chromium-meet.bin")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut line = [0u8; 5];
        s.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"seen ");
        open.push(s);
    }
    let quiet_since = Instant::now();
    // ...so a third from the same address is refused at once, without reaching a backend.
    let mut third = connect();
    third.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(third.read(&mut buf).unwrap_or(0), 0, "closed");
    // The idle ones are closed after the 1 s idle timeout.
    let started = Instant::now();
    for mut s in open {
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
    }
    assert!(started.elapsed() < Duration::from_secs(4), "idle connections closed after {:?}", started.elapsed());
    // Not before the timeout: their last bytes (the greeting) came just before `quiet_since`.
    assert!(quiet_since.elapsed() >= Duration::from_millis(900), "closed after only {:?} idle", quiet_since.elapsed());
    // The refusal is counted where the operator looks (flushed to the pins each second).
    wait_refused(&l, "over_client_limit", 1);
    // With the slots free again, the client is served.
    through_443(&l, HOST_V4.into(), CLIENT_V4.into(), "chromium-meet.bin");
}

#[test]
fn a_backend_on_the_host_loopback_sees_the_client_address() {
    let l = sni_lab(SNI);
    let local4 = servers::tcp(&l.lab.host, "127.0.0.1:9444".parse().unwrap()).unwrap();
    let local6 = servers::tcp(&l.lab.host, "[::1]:9444".parse().unwrap()).unwrap();
    let routing = l.lab.host.ip(&["rule", "show"]).unwrap();
    assert!(routing.contains("from 127.0.0.0/8 iif lo lookup 18967"), "{routing}");
    let h = hello_for("local.example.test");
    for (host, client, server) in
        [(IpAddr::from(HOST_V4), IpAddr::from(CLIENT_V4), &local4), (HOST_V6.into(), CLIENT_V6.into(), &local6)]
    {
        let x = tcp_echo(&l.lab.inet, SocketAddr::new(host, 443), h.clone()).unwrap();
        assert_eq!(x.greeting, format!("seen {}", SocketAddr::new(client, x.local.port())));
        assert!(x.echoed == h);
        assert_eq!(server.peers().last().map(|p| p.ip()), Some(client));
    }
}

fn relays_64_mib_both_ways_intact(relay: &str) {
    let l = sni_lab(&format!("[splitter]\nrelay = \"{relay}\"\n{SNI}"));
    let mut data = recorded_hello("chromium-meet.bin");
    data.extend((0..64u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8));
    let started = Instant::now();
    let x = tcp_echo(&l.lab.inet, SocketAddr::new(HOST_V4.into(), 443), data.clone()).unwrap();
    assert_eq!(x.greeting, format!("seen {}", SocketAddr::new(CLIENT_V4.into(), x.local.port())));
    assert_eq!(x.echoed.len(), data.len(), "every byte came back");
    assert!(x.echoed == data, "64 MiB intact in both directions");
    eprintln!("relay = {relay}: 64 MiB each way through the splitter in {:?}", started.elapsed());
}

#[test]
fn sni_relays_64_mib_both_ways_intact_with_splice() {
    relays_64_mib_both_ways_intact("splice");
}

#[test]
fn sni_relays_64_mib_both_ways_intact_with_copy() {
    relays_64_mib_both_ways_intact("copy");
}

#[test]
fn a_slow_client_is_cut_at_the_deadline_while_others_are_served() {
    let l = sni_lab(SNI);
    let web_before = l.server("web", false).count();
    let fallback_before = l.server("fallback", false).count();
    let h = recorded_hello("openssl-meet.bin");
    // Measured from before the connect: the agent's deadline starts when it accepts.
    let started = Instant::now();
    let slow = l.lab.inet.enter(|| TcpStream::connect(SocketAddr::new(HOST_V4.into(), 443))).unwrap().unwrap();
    let writer = {
        let mut w = slow.try_clone().unwrap();
        let h = h.clone();
        std::thread::spawn(move || {
            for b in h {
                if w.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        })
    };
    // Meanwhile another client is served at once.
    std::thread::sleep(Duration::from_millis(500));
    through_443(&l, HOST_V4.into(), CLIENT_V4.into(), "chromium-meet.bin");
    assert!(started.elapsed() < Duration::from_secs(3), "the other client was served before the deadline");
    // The slow one is closed at the 3 s deadline, never reaching a backend.
    let mut r = slow;
    r.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 64];
    let n = r.read(&mut buf).unwrap_or(0);
    let cut = started.elapsed();
    assert_eq!(n, 0, "closed without a byte");
    assert!(cut >= Duration::from_millis(2900) && cut < Duration::from_secs(6), "cut after {cut:?}");
    drop(writer);
    l.wait_count("web", false, web_before + 1);
    assert_eq!(l.server("web", false).count(), web_before + 1, "only the fast client reached web");
    assert_eq!(l.server("fallback", false).count(), fallback_before, "the slow client reached no backend");
    wait_refused(&l, "hello_timeout", 1);
}

#[test]
fn without_a_default_route_unknown_names_get_an_alert() {
    let no_default = SNI.replace("default = \"fallback\"\n", "").replace(
        "[[tls.route]]\nname = \"fallback\"\nbackend = [\"192.0.2.14:8443\", \"[2001:db8:b::14]:8443\"]\n",
        "",
    );
    let l = sni_lab(&no_default);
    let to = SocketAddr::new(HOST_V4.into(), 443);
    // No SNI: a TLS alert (fatal, unrecognized_name), then the connection closes.
    let mut s = l.lab.inet.enter(move || TcpStream::connect(to)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&recorded_hello("openssl-nosni.bin")).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert_eq!(got, [21, 3, 3, 0, 2, 2, 112]);
    // Not TLS: closed without a byte.
    let mut s = l.lab.inet.enter(move || TcpStream::connect(to)).unwrap().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: meet.example.test\r\n\r\n").unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty());
    // Known names still work.
    through_443(&l, HOST_V4.into(), CLIENT_V4.into(), "chromium-meet.bin");
    wait_refused(&l, "no_route", 2);
}

/// A file still written with the former `[sni]` section (routes and connection settings in one
/// section) runs as before: routed by server name, its `idle_timeout_secs` applied, and the
/// log names the keys that moved.
#[test]
fn the_former_sni_section_still_routes_and_is_logged_as_deprecated() {
    let old = SNI.replace("[tls]", "[sni]\nidle_timeout_secs = 1").replace("[[tls.route]]", "[[sni.route]]");
    let mut l = sni_lab(&old);
    through_443(&l, HOST_V4.into(), CLIENT_V4.into(), "chromium-meet.bin");
    l.wait_count("web", false, 1);
    assert_eq!(l.server("web", false).count(), 1, "routed to web by its server name");
    // The idle timeout came from [sni] too: a silent relayed connection is closed after 1 s.
    let mut s = l.lab.inet.enter(|| TcpStream::connect((HOST_V4, 443))).unwrap().unwrap();
    s.write_all(&recorded_hello("chromium-meet.bin")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let started = Instant::now();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink);
    let idle = started.elapsed();
    assert!(idle >= Duration::from_millis(900) && idle < Duration::from_secs(5), "closed after {idle:?}");
    let log = l.agent.take().unwrap().stop().unwrap();
    assert_eq!(log.matches("`[sni]` is deprecated").count(), 1, "{log}");
    assert!(log.contains("`idle_timeout_secs` to `[splitter]`"), "{log}");
    // `check` says it too.
    let config = l.lab.write_config(&format!("{LAB_RULES}{old}")).unwrap();
    let (_, out) = jitsi_tests::agent::check(&l.lab.host, &config);
    assert!(out.contains("warn config: `[sni]` is deprecated"), "{out}");
}

#[test]
fn port_443_taken_is_a_clear_error_and_leaves_no_routing() {
    let lab = Lab::new(&["web"]).expect("lab");
    let _squatter = servers::tcp(&lab.host, "0.0.0.0:443".parse().unwrap()).unwrap();
    let config = lab
        .write_config(
            "[tls]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.test\"]\nbackend = \"192.0.2.10:8443\"\n",
        )
        .unwrap();
    let err = match AgentProcess::start(&lab.host, &config) {
        Ok(agent) => panic!("the agent must refuse to start:\n{}", agent.log()),
        Err(e) => e.to_string(),
    };
    assert!(
        err.contains("error: ")
            && err.contains("splitter: listening on 0.0.0.0:443")
            && err.contains("Address already in use"),
        "{err}"
    );
    let rules = lab.host.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("0x4a17") && !rules.contains("18967"), "no policy routing left behind:\n{rules}");
}

#[test]
fn teardown_after_a_killed_agent_leaves_the_host_as_before() {
    let mut l = sni_lab(SNI);
    let jvb = l.lab.backend("jvb");
    let _udp = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 10000);
    let client = jitsi_tests::clients::udp_socket(&l.lab.inet, false).unwrap();
    jitsi_tests::clients::udp_round_trip(&client, to, "before").expect("steered while running");
    // SIGKILL: the agent cannot clean up; datapath and policy routing stay.
    drop(l.agent.take());
    jitsi_tests::clients::udp_round_trip(&client, to, "killed")
        .expect("the pinned datapath forwards without the agent");
    assert!(l.lab.host.ip(&["rule", "show"]).unwrap().contains("0x4a17"));
    assert!(l.lab.host.ip(&["link", "show", "up0"]).unwrap().contains("xdp"));
    // The TC program's id; once nothing (pin or TCX link) holds it, the kernel frees it.
    let pinned = l.lab.pin_dir.join("prog_reply_out");
    let show = jitsi_tests::netns::run(
        std::process::Command::new("bpftool").args(["-j", "prog", "show", "pinned"]).arg(&pinned),
    )
    .unwrap();
    let tc_id = serde_json::from_str::<serde_json::Value>(&show).unwrap()["id"].as_u64().expect("prog id").to_string();

    let config = l.lab.write_config(&format!("{LAB_RULES}{SNI}")).unwrap();
    let out = jitsi_tests::netns::run(
        jitsi_tests::agent::command_in(&l.lab.host, &jitsi_tests::agent::agent_bin())
            .unwrap()
            .args(["teardown", "--config"])
            .arg(&config),
    )
    .expect("teardown succeeds");
    let _ = out;
    assert!(!l.lab.pin_dir.exists(), "no pin left");
    assert!(!l.lab.host.ip(&["link", "show", "up0"]).unwrap().contains("xdp"), "XDP detached");
    let freed = (0..50).any(|_| {
        std::thread::sleep(Duration::from_millis(20));
        !std::process::Command::new("bpftool").args(["prog", "show", "id", &tc_id]).output().unwrap().status.success()
    });
    assert!(freed, "reply_out (prog {tc_id}) is detached and freed");
    let rules = l.lab.host.ip(&["rule", "show"]).unwrap();
    assert!(!rules.contains("0x4a17"), "policy rule removed:\n{rules}");
    assert!(l.lab.host.ip(&["route", "show", "table", "18967"]).unwrap().trim().is_empty(), "table emptied");
    // Nothing steers any more: the host stack (ip_forward=0, nothing on :10000) gets the packet.
    assert!(jitsi_tests::clients::udp_round_trip(&client, to, "after").is_err(), "no steering after teardown");
}
