//! Lab tests of the datapath with real traffic: the agent binary runs in the lab's host
//! namespace (ip_forward=0, no firewall rules), clients send from the "internet" namespace,
//! and stand-in backends report the source address they saw. Needs root.

use std::{
    net::{IpAddr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::AgentProcess,
    clients::{tcp_echo, udp_round_trip, udp_socket, udp_socket_from, udp_stream},
    lab::{CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, LAB_RULES, Lab, UPLINK},
    netns::NetNs,
    servers,
};
use serde_json::Value;

fn lab() -> Lab {
    Lab::new(&["jvb", "turn", "web"]).expect("building the lab")
}

fn status(lab: &Lab) -> Value {
    lab.status().expect("status --json")
}

fn rule<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("rule {name} in {status}"))
}

/// Sends `n` requests to `to` and checks every reply: from `to` itself, reporting the
/// client's own address. Returns (request frame bytes, reply frame bytes) as counted by the
/// datapath (Ethernet + IP + UDP headers).
fn udp_exchange(sock: &UdpSocket, to: SocketAddr, client_ip: IpAddr, n: usize) -> (u64, u64) {
    let hdr = if to.is_ipv4() { 14 + 20 + 8 } else { 14 + 40 + 8 };
    let me = SocketAddr::new(client_ip, sock.local_addr().unwrap().port());
    let (mut bytes_in, mut bytes_out) = (0, 0);
    for i in 0..n {
        let msg = format!("hello-{i}");
        let (from, reply) = udp_round_trip(sock, to, &msg).unwrap();
        assert_eq!(from, to, "the reply must come from the address the client sent to");
        assert_eq!(reply, format!("seen {me} {msg}"), "backend saw the client's real address");
        bytes_in += (hdr + msg.len()) as u64;
        bytes_out += (hdr + reply.len()) as u64;
    }
    (bytes_in, bytes_out)
}

/// The mode `status` reports for `steer_in` on the uplink. In generic mode `redirect_in` must
/// be attached to the uplink's TCX ingress beside it (it finishes the redirects there), and in
/// driver mode it must not be.
fn xdp_mode_attached(lab: &Lab) -> String {
    let st = status(lab);
    let on_uplink = |program: &str| {
        let a =
            st["attachments"].as_array().unwrap().iter().find(|a| a["program"] == program && a["interface"] == UPLINK);
        a.map(|a| a["mode"].as_str().unwrap().to_owned())
    };
    let mode = on_uplink("steer_in (XDP)").unwrap_or_else(|| panic!("no steer_in in {st}"));
    let redirect = on_uplink("redirect_in (TC ingress)");
    let want = (mode == "generic").then(|| "tcx".to_string());
    assert_eq!(redirect, want, "redirect_in on {UPLINK} with steer_in in {mode} mode: {st}");
    mode
}

/// The mode `mode` asks for, as attached on the lab's veth uplink (whose driver runs XDP).
fn expected_mode(mode: Option<&str>) -> &'static str {
    if mode == Some("generic") { "generic" } else { "driver" }
}

#[test]
fn udp_reaches_backends_with_the_client_address_ipv4_and_ipv6() {
    udp_steering(None);
}

/// The same in generic (skb) XDP mode, as on a NIC whose driver has no XDP.
#[test]
fn udp_reaches_backends_with_the_client_address_in_generic_mode() {
    udp_steering(Some("generic"));
}

fn udp_steering(mode: Option<&str>) {
    let lab = lab();
    let (jvb, turn) = (lab.backend("jvb"), lab.backend("turn"));
    let jvb4 = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let jvb6 = servers::udp(&jvb.ns, jvb.addr6(10000)).unwrap();
    let turn4 = servers::udp(&turn.ns, turn.addr4(3478)).unwrap();
    let turn6 = servers::udp(&turn.ns, turn.addr6(3478)).unwrap();
    let config = lab.write_config_xdp(mode, LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    lab.assert_host_is_plain().unwrap();
    assert_eq!(xdp_mode_attached(&lab), expected_mode(mode));
    // The backends' veths start with GRO off, as Docker's do; the agent turns it on so that
    // XDP_REDIRECT into them is delivered.
    for b in ["jvb", "turn"] {
        assert!(lab.backend_gro_on(b).unwrap(), "agent turned GRO on at {b}'s veth:\n{}", agent.log());
    }
    assert!(agent.log().contains("turned GRO on at the backend's veth peer"), "{}", agent.log());

    let c4 = udp_socket(&lab.inet, false).unwrap();
    let c6 = udp_socket(&lab.inet, true).unwrap();
    let n = 25;
    let (a_in, a_out) = udp_exchange(&c4, SocketAddr::new(HOST_V4.into(), 10000), CLIENT_V4.into(), n);
    let (b_in, b_out) = udp_exchange(&c6, SocketAddr::new(HOST_V6.into(), 10000), CLIENT_V6.into(), n);
    let (c_in, c_out) = udp_exchange(&c4, SocketAddr::new(HOST_V4.into(), 3478), CLIENT_V4.into(), n);
    let (d_in, d_out) = udp_exchange(&c6, SocketAddr::new(HOST_V6.into(), 3478), CLIENT_V6.into(), n);

    for (server, client) in [
        (&jvb4, IpAddr::from(CLIENT_V4)),
        (&jvb6, CLIENT_V6.into()),
        (&turn4, CLIENT_V4.into()),
        (&turn6, CLIENT_V6.into()),
    ] {
        assert_eq!(server.count(), n, "{} received every datagram", server.addr);
        assert!(server.peers().iter().all(|p| p.ip() == client), "{} saw {:?}", server.addr, server.peers());
    }

    // The counters in the pinned maps match what was sent, exactly.
    let st = status(&lab);
    let j = rule(&st, "jvb");
    assert_eq!(j["packets_in"], 2 * n as u64);
    assert_eq!(j["packets_out"], 2 * n as u64);
    assert_eq!(j["bytes_in"], a_in + b_in);
    assert_eq!(j["bytes_out"], a_out + b_out);
    let t = rule(&st, "turn");
    assert_eq!(
        (t["packets_in"].as_u64(), t["bytes_in"].as_u64(), t["bytes_out"].as_u64()),
        (Some(2 * n as u64), Some(c_in + d_in), Some(c_out + d_out))
    );
    assert!(st["reasons"].as_array().unwrap().iter().all(|r| r["reason"] != "out_unknown_client" || r["packets"] == 0));

    // bpftool prints the maps with field names (BTF).
    let dump = jitsi_tests::netns::run(
        std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(lab.pin_dir.join("rule_stats")),
    )
    .unwrap();
    assert!(
        dump.contains("\"packets_in\"") && dump.contains("\"bytes_out\""),
        "bpftool output without field names:\n{dump}"
    );
    let rules = jitsi_tests::netns::run(
        std::process::Command::new("bpftool").args(["map", "dump", "pinned"]).arg(lab.pin_dir.join("rules")),
    )
    .unwrap();
    assert!(rules.contains("\"backend_port\": 10000"), "{rules}");
    agent.stop().unwrap();
}

fn tcp_exchange(ns: &NetNs, to: SocketAddr, client_ip: IpAddr) {
    let data: Vec<u8> = (0..256 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let x = tcp_echo(ns, to, data.clone()).unwrap();
    assert_eq!(x.peer, to);
    assert_eq!(
        x.greeting,
        format!("seen {}", SocketAddr::new(client_ip, x.local.port())),
        "backend saw the client's real address"
    );
    assert!(x.echoed == data, "256 KiB echoed intact ({} bytes back)", x.echoed.len());
}

#[test]
fn tcp_exchange_through_port_80_ipv4_and_ipv6() {
    tcp_steering(None);
}

#[test]
fn tcp_exchange_through_port_80_in_generic_mode() {
    tcp_steering(Some("generic"));
}

fn tcp_steering(mode: Option<&str>) {
    let lab = lab();
    let web = lab.backend("web");
    let web4 = servers::tcp(&web.ns, web.addr4(8000)).unwrap();
    let web6 = servers::tcp(&web.ns, web.addr6(8000)).unwrap();
    let config = lab.write_config_xdp(mode, LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    lab.assert_host_is_plain().unwrap();
    assert_eq!(xdp_mode_attached(&lab), expected_mode(mode));
    tcp_exchange(&lab.inet, SocketAddr::new(HOST_V4.into(), 80), CLIENT_V4.into());
    tcp_exchange(&lab.inet, SocketAddr::new(HOST_V6.into(), 80), CLIENT_V6.into());
    let deadline = Instant::now() + Duration::from_secs(3);
    while (web4.count() < 1 || web6.count() < 1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(web4.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(), vec![IpAddr::from(CLIENT_V4)]);
    assert_eq!(web6.peers().iter().map(|p| p.ip()).collect::<Vec<_>>(), vec![IpAddr::from(CLIENT_V6)]);
    let st = status(&lab);
    let w = rule(&st, "web");
    assert!(w["packets_in"].as_u64().unwrap() > 2 * 256 * 1024 / 1500, "{w}");
    assert!(w["packets_out"].as_u64().unwrap() > 0, "{w}");
    agent.stop().unwrap();
}

#[test]
fn restart_loses_no_packet_and_counters_continue() {
    restart(None);
}

#[test]
fn restart_in_generic_mode_loses_no_packet_and_counters_continue() {
    restart(Some("generic"));
}

fn restart(mode: Option<&str>) {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let config = lab.write_config_xdp(mode, LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let client = udp_socket(&lab.inet, false).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 10000);
    // Warm up ARP on both sides so that the stream measures the datapath alone.
    udp_exchange(&client, to, CLIENT_V4.into(), 1);

    // Stream at a steady 2,000 packets/s while the agent stops and starts again.
    let streamer = udp_stream(client, to, 2000, 3);
    std::thread::sleep(Duration::from_millis(700));
    let first_log = agent.stop().unwrap();
    assert!(first_log.contains("attached steer_in"), "{first_log}");
    let at_stop = rule(&status(&lab), "jvb")["packets_in"].as_u64().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let before_restart = rule(&status(&lab), "jvb")["packets_in"].as_u64().unwrap();
    // 300 ms at 2,000 packets/s is about 600; the counter only moves if the kernel steers.
    assert!(
        before_restart - at_stop > 300,
        "packets were steered while the agent was stopped: {at_stop} then {before_restart}"
    );
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let sent = streamer.join().unwrap();
    let second_log = agent.stop().unwrap();
    assert!(
        second_log.contains("adopted the pinned datapath") && second_log.contains("adopted attached steer_in"),
        "{second_log}"
    );

    let deadline = Instant::now() + Duration::from_secs(3);
    while (sink.count() as u64) < sent + 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let seen = sink.seen.lock().unwrap();
    let got: std::collections::HashSet<String> =
        seen.iter().map(|(_, p)| String::from_utf8_lossy(p).into_owned()).filter(|p| p.starts_with("seq-")).collect();
    let lost: Vec<u64> = (0..sent).filter(|i| !got.contains(&format!("seq-{i}"))).collect();
    assert!(
        lost.is_empty(),
        "{} of {sent} packets lost across the restart: {:?}",
        lost.len(),
        &lost[..lost.len().min(20)]
    );
    // Counters continued (warm-up packet + the stream), not reset by the restart.
    let st = status(&lab);
    assert_eq!(rule(&st, "jvb")["packets_in"].as_u64().unwrap(), sent + 1);
    assert_eq!(xdp_mode_attached(&lab), expected_mode(mode), "the adopted program kept its mode");
}

/// A changed `xdp_mode` at a start re-attaches `steer_in` in the new mode (the pinned link of
/// the old mode goes); `auto` keeps a program attached in either mode (a restart never
/// detaches it); the metrics say which mode runs.
#[test]
fn a_changed_xdp_mode_reattaches_in_that_mode_and_metrics_say_so() {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let _sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let metrics = "[metrics]\nlisten = \"127.0.0.1:9477\"\n";
    for (mode, want) in [("driver", "driver"), ("generic", "generic"), ("auto", "generic"), ("driver", "driver")] {
        let config = lab.write_config_xdp(Some(mode), &format!("{LAB_RULES}{metrics}")).unwrap();
        let agent = AgentProcess::start(&lab.host, &config).unwrap();
        assert_eq!(xdp_mode_attached(&lab), want, "xdp_mode = {mode}");
        // The kernel's own view: `xdpgeneric` for generic mode, `xdp` for driver mode.
        let link = lab.host.ip(&["link", "show", "up0"]).unwrap();
        assert_eq!(link.contains("xdpgeneric"), want == "generic", "xdp_mode = {mode}, `ip link`:\n{link}");
        let shown = if want == "generic" { " xdpgeneric " } else { " xdp " };
        assert!(link.contains(shown), "xdp_mode = {mode}: `{shown}` in `ip link`:\n{link}");
        let m = jitsi_tests::clients::scrape_metrics(&lab.host, "127.0.0.1:9477");
        let line = format!("jitsi_agent_xdp_attached{{interface=\"up0\",mode=\"{want}\"}} 1");
        assert!(m.contains(&line), "{line} in:\n{m}");
        let client = udp_socket(&lab.inet, false).unwrap();
        udp_exchange(&client, SocketAddr::new(HOST_V4.into(), 10000), CLIENT_V4.into(), 3);
        agent.stop().unwrap();
        // `check` judges the mode against the setting: generic asked for is no warning.
        let (_, out) = jitsi_tests::agent::check(&lab.host, &config);
        let line = match (mode, want) {
            ("generic", _) => "ok   xdp on up0: program #",
            (_, "generic") => "warn xdp on up0: program #",
            _ => "ok   xdp on up0: program #",
        };
        assert!(out.contains(line), "xdp_mode = {mode}: `{line}` in:\n{out}");
        if mode == "generic" {
            assert!(out.contains("attached in generic mode, as xdp_mode asks"), "{out}");
        }
    }
}

/// A mode the driver refuses, asked for at a start, leaves `steer_in` attached in the mode it
/// ran in: the agent does not start and says why, and steering goes on meanwhile. The lab's
/// veth refuses driver mode once its peer's MTU is above what one page holds (the kernel's
/// "Peer MTU is too large to set XDP"); generic mode takes any MTU.
#[test]
fn a_refused_xdp_mode_leaves_steer_in_attached_in_the_mode_it_ran_in() {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let _sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 10000);
    let generic = lab.write_config_xdp(Some("generic"), LAB_RULES).unwrap();
    AgentProcess::start(&lab.host, &generic).unwrap().stop().unwrap();
    assert_eq!(xdp_mode_attached(&lab), "generic");
    lab.inet.ip(&["link", "set", "eth0", "mtu", "9000"]).unwrap();

    let driver = lab.write_config_xdp(Some("driver"), LAB_RULES).unwrap();
    let (ok, log) = jitsi_tests::agent::run_once(&lab.host, &driver);
    assert!(!ok, "driver mode refused must stop the start:\n{log}");
    assert!(log.contains("attaching XDP to up0 in driver mode"), "the refusal is named:\n{log}");
    assert!(log.contains("steer_in attached again in the mode it ran in"), "{log}");
    let link = lab.host.ip(&["link", "show", "up0"]).unwrap();
    assert!(link.contains(" xdpgeneric "), "steer_in back in generic mode, `ip link`:\n{link}");
    assert_eq!(xdp_mode_attached(&lab), "generic");
    // Steering goes on without the agent (the datapath is pinned): the backend answers with
    // the client's address seen.
    let client = udp_socket(&lab.inet, false).unwrap();
    udp_exchange(&client, to, CLIENT_V4.into(), 3);
}

fn learned_flows(lab: &Lab) -> Vec<(jitsi_common::ClientKey, jitsi_common::ReturnPath)> {
    let maps = jitsi_agent::datapath::Maps::open_pinned(&lab.pin_dir).unwrap();
    maps.return_paths.iter().map(Result::unwrap).collect()
}

#[test]
fn spoofed_packets_cannot_redirect_replies_and_unseen_clients_go_through_the_gateway() {
    let lab = lab();
    // The host has a second address and a default route through a gateway in the "internet"
    // namespace (203.0.113.254, a macvlan with a MAC of its own); a client there sends from
    // 198.51.100.2, an address behind that gateway, another from 203.0.113.2, on the uplink's
    // subnet (its own MAC).
    lab.host.ip(&["addr", "add", "203.0.113.3/24", "dev", "up0"]).unwrap();
    lab.inet.ip(&["link", "add", "gw0", "link", "eth0", "type", "macvlan", "mode", "bridge"]).unwrap();
    lab.inet.ip(&["addr", "add", "203.0.113.254/32", "dev", "gw0"]).unwrap();
    lab.inet.ip(&["link", "set", "gw0", "up"]).unwrap();
    // Only gw0 answers ARP for the gateway's address (not eth0 as well, with its own MAC).
    lab.inet.sysctl("net.ipv4.conf.all.arp_ignore", "1").unwrap();
    lab.host.ip(&["route", "add", "default", "via", "203.0.113.254"]).unwrap();
    lab.inet.ip(&["addr", "add", "198.51.100.2/32", "dev", "eth0"]).unwrap();
    lab.inet.ip(&["addr", "add", "192.0.2.77/32", "dev", "eth0"]).unwrap();
    let jvb = lab.backend("jvb");
    let echo = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let config = lab.write_config(LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !agent.log().contains("fallback return path") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(agent.log().contains("fallback return path"), "{}", agent.log());
    let client: IpAddr = "198.51.100.2".parse().unwrap();
    let first: SocketAddr = "203.0.113.1:10000".parse().unwrap();
    let second: SocketAddr = "203.0.113.3:10000".parse().unwrap();

    // A client behind the gateway, on the first address: answered, and nothing learned.
    let a = udp_socket_from(&lab.inet, client).unwrap();
    udp_exchange(&a, first, client, 3);
    assert!(learned_flows(&lab).is_empty(), "the fallback path needs no entry: {:?}", learned_flows(&lab));

    // A client on the uplink's subnet, on the second address: its flow is learned with its
    // own MAC and that address; a packet of the same flow to the first address (what a
    // spoofer would send) does not move it: replies keep coming from the address the client
    // talks to.
    let lan: IpAddr = CLIENT_V4.into();
    let b = udp_socket_from(&lab.inet, lan).unwrap();
    udp_exchange(&b, second, lan, 1);
    b.send_to(b"spoofed", first).unwrap();
    let mut buf = [0u8; 256];
    let (_, from) = b.recv_from(&mut buf).expect("the backend's answer to the spoofed packet");
    assert_eq!(from, second, "the flow's replies still leave from the address it uses");
    let flows = learned_flows(&lab);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].1.host_addr[..4], [203, 0, 113, 3], "the learned path did not move");
    udp_exchange(&b, second, lan, 3);
    let flows = learned_flows(&lab);
    assert_eq!(flows.len(), 1, "{flows:?}");
    assert_eq!(flows[0].1.host_addr[..4], [203, 0, 113, 3]);

    // A source on the backends' subnet never reaches a backend from the uplink.
    let before = echo.count();
    let spoof = udp_socket_from(&lab.inet, "192.0.2.77".parse().unwrap()).unwrap();
    for _ in 0..5 {
        spoof.send_to(b"from inside", first).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(echo.count(), before, "a packet claiming a backend's subnet was steered");
    let st = status(&lab);
    let dropped =
        st["reasons"].as_array().unwrap().iter().find(|r| r["reason"] == "in_spoofed_source").unwrap()["packets"]
            .as_u64();
    assert_eq!(dropped, Some(5), "{st}");
    agent.stop().unwrap();
}

/// Someone else's XDP program in driver mode on the uplink (the kernel takes no second one in
/// driver or generic mode): `check` fails naming it and how to detach it, the agent does not
/// start and says why; with it gone, the agent starts and steers.
#[test]
fn a_foreign_xdp_program_on_the_uplink_is_named_by_check_and_the_start() {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let _sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let config = lab.write_config(LAB_RULES).unwrap();
    // The foreign program: a copy of steer_in with empty maps (it passes every packet),
    // attached through a link that dropping `foreign` detaches.
    let foreign = lab
        .host
        .enter(|| -> anyhow::Result<aya::Ebpf> {
            let mut bpf = jitsi_agent::datapath::load_unattached()?;
            jitsi_agent::datapath::xdp_program(&mut bpf)?.attach("up0", aya::programs::XdpMode::Driver)?;
            Ok(bpf)
        })
        .unwrap()
        .unwrap();
    let (ok, check) = jitsi_tests::agent::check(&lab.host, &config);
    assert!(!ok, "check must fail:\n{check}");
    let line = check.lines().find(|l| l.contains("xdp on up0")).unwrap_or_else(|| panic!("{check}"));
    assert!(line.contains("FAIL") && line.contains("is not the agent's steer_in"), "{line}");
    assert!(check.contains("ip link set dev up0 xdpdrv off"), "{check}");
    let (ok, log) = jitsi_tests::agent::run_once(&lab.host, &config);
    assert!(!ok, "the agent cannot attach beside it:\n{log}");
    assert!(log.contains("another XDP program is attached to the interface"), "{log}");
    assert!(log.contains("attaching XDP to up0 in generic mode"), "the kernel's refusal named:\n{log}");

    drop(foreign);
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    assert_eq!(xdp_mode_attached(&lab), "driver");
    let client = udp_socket(&lab.inet, false).unwrap();
    udp_exchange(&client, SocketAddr::new(HOST_V4.into(), 10000), CLIENT_V4.into(), 3);
    agent.stop().unwrap();
}

/// A port range is steered 1:1 (a TURN server's relay ports): every port of it reaches the
/// backend's same port with the client's address, over IPv4 and IPv6, and replies leave from
/// that public port; the port after the range is not steered. Without the rule, nothing of it
/// arrives.
#[test]
fn a_port_range_is_steered_one_to_one() {
    let lab = lab();
    let turn = lab.backend("turn");
    let servers: Vec<_> = [40000, 40050, 40099]
        .into_iter()
        .map(|p| servers::udp(&turn.ns, turn.addr4(p)).unwrap())
        .chain([servers::udp(&turn.ns, turn.addr6(40050)).unwrap()])
        .collect();
    let c4 = udp_socket(&lab.inet, false).unwrap();
    let c6 = udp_socket(&lab.inet, true).unwrap();
    let host4 = |p| SocketAddr::new(HOST_V4.into(), p);

    // Without the range rule: nothing answers on the relay ports.
    let config = lab.write_config(LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    assert!(udp_round_trip(&c4, host4(40050), "before").is_err(), "reached a relay port without a rule");
    agent.stop().unwrap();
    assert_eq!(servers[1].count(), 0);

    let range = "[[steer]]\nname = \"relay\"\nprotocol = \"udp\"\nport = \"40000-40099\"\n\
                 backend = [\"192.0.2.11:40000\", \"[2001:db8:b::11]:40000\"]\n";
    let config = lab.write_config(&format!("{LAB_RULES}\n{range}")).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let n = 5;
    let (mut bytes_in, mut bytes_out) = (0, 0);
    for p in [40000, 40050, 40099] {
        let (i, o) = udp_exchange(&c4, host4(p), CLIENT_V4.into(), n);
        (bytes_in, bytes_out) = (bytes_in + i, bytes_out + o);
    }
    let (i, o) = udp_exchange(&c6, SocketAddr::new(HOST_V6.into(), 40050), CLIENT_V6.into(), n);
    (bytes_in, bytes_out) = (bytes_in + i, bytes_out + o);
    for s in &servers {
        assert_eq!(s.count(), n, "{} received every datagram", s.addr);
    }
    assert!(udp_round_trip(&c4, host4(40100), "past the range").is_err(), "the port after the range was steered");

    // One rule, one set of counters, whatever port of the range.
    let st = status(&lab);
    let r = rule(&st, "relay");
    assert_eq!((r["port"].as_u64(), r["port_last"].as_u64()), (Some(40000), Some(40099)), "{r}");
    assert_eq!((r["packets_in"].as_u64(), r["packets_out"].as_u64()), (Some(4 * n as u64), Some(4 * n as u64)), "{r}");
    assert_eq!((r["bytes_in"].as_u64(), r["bytes_out"].as_u64()), (Some(bytes_in), Some(bytes_out)), "{r}");
    let shown = lab.status_text().unwrap();
    assert!(shown.contains("udp/40000-40099"), "{shown}");
    agent.stop().unwrap();
}

/// What the agent's TC programs leave alone goes on to the next program at their hook: with
/// `steer_in` in generic mode, a second, separately loaded copy of the datapath's `reply_out`
/// (maps of its own, no rules: every packet is "not a backend's" to it) is attached behind
/// `reply_out` on the bridge and behind `redirect_in` on the uplink, and must see each packet
/// that is neither a reply nor steered: a backend's to the bridge, a client's to an unsteered
/// port. A program that ended the chain would leave it none of its side's.
#[test]
fn the_tc_programs_hand_what_they_leave_alone_to_the_next_program() {
    use aya::{
        maps::PerCpuArray,
        programs::{
            LinkOrder, SchedClassifier,
            tc::{TcAttachOptions, TcAttachType},
        },
    };
    let lab = lab();
    let config = lab.write_config_xdp(Some("generic"), LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    assert_eq!(xdp_mode_attached(&lab), "generic");
    let mut behind = lab
        .host
        .enter(|| {
            let mut bpf = jitsi_agent::datapath::load_unattached().unwrap();
            let prog: &mut SchedClassifier = bpf.program_mut("reply_out").unwrap().try_into().unwrap();
            for dev in ["br0", UPLINK] {
                let order = TcAttachOptions::TcxOrder(LinkOrder::last());
                prog.attach_with_options(dev, TcAttachType::Ingress, order).unwrap();
            }
            bpf
        })
        .unwrap();
    let seen = |bpf: &mut aya::Ebpf| {
        let stats: PerCpuArray<_, jitsi_common::ReasonStats> =
            PerCpuArray::try_from(bpf.map_mut("reason_stats").unwrap()).unwrap();
        let slot = jitsi_common::Reason::OutNotBackend as u32;
        stats.get(&slot, 0).unwrap().iter().map(|s| s.packets).sum::<u64>()
    };
    let jvb = lab.backend("jvb");
    const N: u64 = 200;
    // From a backend's port no rule has, to the bridge's own address: not a reply. From the
    // client to a port no rule steers.
    let sends = [
        (udp_socket_from(&jvb.ns, IpAddr::V4(jvb.v4)).unwrap(), "192.0.2.1:9", "reply_out on br0"),
        (udp_socket(&lab.inet, false).unwrap(), "203.0.113.1:9", "redirect_in on up0"),
    ];
    for (sock, to, ahead) in sends {
        let before = seen(&mut behind);
        for _ in 0..N {
            sock.send_to(b"neither", to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(300));
        let counted = seen(&mut behind) - before;
        assert!(counted >= N, "the program behind {ahead} saw {counted} of the {N} packets");
    }
    drop(behind);
    agent.stop().unwrap();
}
