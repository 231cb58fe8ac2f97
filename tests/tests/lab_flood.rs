//! Lab tests of the flood limits (`[flood]`) with real traffic: the agent runs in the lab's host
//! namespace, a flooder and participants send from addresses of their own in the "internet"
//! namespace, and the stand-in backend reports what reached it. Needs root.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::AgentProcess,
    clients::{udp_socket_from, udp_stream},
    lab::{CLIENT_V4, HOST_V4, HOST_V6, LAB_RULES, Lab, SNI_WEB, UPLINK},
    netns::NetNs,
    packet::Pkt,
    raw::{RawLink, mac_of},
    servers,
};
use serde_json::Value;

/// A participant's address and one allowed network's, next to the client's own (the flooder).
const PARTICIPANT: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 20));
const ALLOWED: IpAddr = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 21));
const FLOODER: IpAddr = IpAddr::V4(CLIENT_V4);

fn lab() -> Lab {
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("building the lab");
    for a in [PARTICIPANT, ALLOWED] {
        lab.inet.ip(&["addr", "add", &format!("{a}/24"), "dev", "eth0"]).unwrap();
    }
    lab
}

fn reason(status: &Value, name: &str) -> u64 {
    status["reasons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["reason"] == name)
        .map_or(0, |r| r["packets"].as_u64().unwrap())
}

fn packets_in(status: &Value, rule: &str) -> u64 {
    let r = status["rules"].as_array().unwrap().iter().find(|r| r["name"] == rule).expect("the rule");
    r["packets_in"].as_u64().unwrap()
}

/// Sends datagrams from `sock` to `to` at `rate` per second for `secs`, in 1 ms ticks (a
/// thread sleeping per packet could not keep up): (sent, seconds it took).
fn flood(sock: &UdpSocket, to: SocketAddr, rate: u64, secs: u64) -> (u64, f64) {
    let start = Instant::now();
    let mut sent = 0u64;
    let ticks = secs * 1000;
    for tick in 1..=ticks {
        let due = rate * tick / 1000;
        while sent < due {
            sock.send_to(b"flood", to).expect("sending the flood");
            sent += 1;
        }
        if let Some(wait) = (start + Duration::from_millis(tick)).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    (sent, start.elapsed().as_secs_f64())
}

/// Sends `count` UDP frames to the host's 3478 over IPv6, each from a /64 of its own
/// (2001:db8:XXXX:YYYY::1), evenly over `secs`, in a thread: joining it gives how many were sent.
fn spoofed_flood(lab: &Lab, count: u32, secs: u64) -> std::thread::JoinHandle<u64> {
    let link = RawLink::open(&lab.inet, "eth0").unwrap();
    let (dst_mac, src_mac) = (mac_of(&lab.host, UPLINK).unwrap(), mac_of(&lab.inet, "eth0").unwrap());
    std::thread::spawn(move || {
        let start = Instant::now();
        let per_tick = u64::from(count) / (secs * 1000);
        let mut sent = 0u64;
        for i in 0..u64::from(count) {
            let src = format!("2001:db8:{:x}:{:x}::1", 0x100 + (i >> 16), i & 0xffff);
            let frame = Pkt::udp(&src, 5000, &HOST_V6.to_string(), 3478, b"spoofed").macs(dst_mac, src_mac).build();
            link.send(&frame).expect("sending a spoofed frame");
            sent += 1;
            if sent.is_multiple_of(per_tick)
                && let Some(wait) =
                    (start + Duration::from_millis(sent / per_tick)).checked_duration_since(Instant::now())
            {
                std::thread::sleep(wait);
            }
        }
        sent
    })
}

/// Packets the client's side of the lab link dropped (its peer's queue full).
fn tx_dropped(inet: &NetNs) -> u64 {
    let out = inet.ip(&["-j", "-s", "link", "show", "eth0"]).unwrap();
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["stats64"]["tx"]["dropped"].as_u64().unwrap()
}

/// How many datagrams `server` got from `ip`, once the count stops growing (up to 3 s).
fn settled_count(server: &servers::Server, ip: IpAddr) -> u64 {
    let count = || server.seen.lock().unwrap().iter().filter(|(a, _)| a.ip() == ip).count() as u64;
    let mut last = count();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let now = count();
        if now == last {
            break;
        }
        last = now;
    }
    last
}

#[test]
fn a_flood_at_twenty_times_its_limit_is_dropped_in_xdp_while_a_participant_loses_nothing() {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let echo = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let (rate, burst) = (1000u64, 1000u64);
    let config = lab
        .write_config(&format!("{LAB_RULES}\n[flood]\npackets_per_second = {rate}\npackets_burst = {burst}\n"))
        .unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 10000);

    // The participant streams 400 packets/s (a 720p simulcast sender's rate) for 3 s while the
    // flooder, another address, sends 20,000 a second, and a spoofed flood to coturn's port
    // comes from 100,000 IPv6 /64s, more than `flood_sources` holds.
    let participant = udp_stream(udp_socket_from(&lab.inet, PARTICIPANT).unwrap(), to, 400, 3);
    let drops_before = tx_dropped(&lab.inet);
    let spoofer = spoofed_flood(&lab, 100_000, 3);
    let flooder = udp_socket_from(&lab.inet, FLOODER).unwrap();
    let (flood_sent, secs) = flood(&flooder, to, 20 * rate, 3);
    let participant_sent = participant.join().unwrap();
    let spoofed = spoofer.join().unwrap();
    assert!(flood_sent as f64 >= 10.0 * rate as f64 * secs, "the flood reached {flood_sent} in {secs:.2} s");

    let from_participant = settled_count(&echo, PARTICIPANT);
    let from_flooder = settled_count(&echo, FLOODER);
    eprintln!(
        "flood: {flood_sent} sent in {secs:.2} s, {from_flooder} reached the backend; participant: \
         {from_participant} of {participant_sent}"
    );
    // A veth drops what its peer has no room for: those packets never met the program.
    let lost_on_link = tx_dropped(&lab.inet) - drops_before;
    assert!(participant_sent - from_participant <= lost_on_link, "the participant lost packets");
    // At most the burst and the rate for the time the flood lasted (the buckets refill on the
    // kernel's coarse clock: a few ms more).
    let most = burst + (rate as f64 * (secs + 0.05)) as u64;
    assert!(from_flooder <= most, "{from_flooder} of the flood reached the backend, more than {most}");
    assert!(from_flooder >= burst, "not even the burst reached the backend: {from_flooder}");

    // Every packet to 10000 was counted in XDP: steered, or dropped for the packet limit.
    let st = lab.status().unwrap();
    let dropped = reason(&st, "in_flood_packets");
    let counted = dropped + packets_in(&st, "jvb");
    assert!(
        counted <= flood_sent + participant_sent && counted + lost_on_link >= flood_sent + participant_sent,
        "{st}"
    );
    assert!(dropped + lost_on_link >= flood_sent - most, "{dropped} dropped: {st}");
    // Every packet dropped for the limits was the flooder's: the participant's were all steered.
    assert!(dropped <= flood_sent - from_flooder, "{dropped} dropped: {st}");
    // The spoofed sources went through the table (each with full buckets of its own: a
    // per-source limit cannot stop them) without resetting the flooder's bucket or costing the
    // participant a packet.
    assert_eq!(spoofed, 100_000);
    assert!(st["flood"]["sources"].as_u64().unwrap() >= 60_000, "{}", st["flood"]);
    let text = lab.status_text().unwrap();
    assert!(text.contains("flood limits: 1000 packets/s (burst 1000)"), "{text}");
    agent.stop().unwrap();
}

/// Connects from `from` to `to` without waiting: the SYN is sent at once.
fn syn(ns: &NetNs, from: IpAddr, to: SocketAddr) -> socket2::Socket {
    let from = SocketAddr::new(from, 0);
    ns.enter(move || {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&from.into()).unwrap();
        let _ = s.connect(&to.into());
        s
    })
    .unwrap()
}

#[test]
fn new_flows_and_connections_over_the_limit_are_dropped_except_from_allowed_networks() {
    let lab = lab();
    let jvb = lab.backend("jvb");
    let echo = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let web = lab.backend("web");
    let _tls = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let config = lab
        .write_config(&format!(
            "{LAB_RULES}{SNI_WEB}\n[flood]\nflows_per_second = 1\nflows_burst = 10\nallow = [\"{ALLOWED}/32\"]\n"
        ))
        .unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let to = SocketAddr::new(HOST_V4.into(), 10000);

    // 30 UDP flows (source ports) from one address: the first 10 reach the videobridge, and
    // the first of them goes on doing so.
    let socks: Vec<UdpSocket> = (0..30).map(|_| udp_socket_from(&lab.inet, FLOODER).unwrap()).collect();
    for s in &socks {
        s.send_to(b"new flow", to).unwrap();
    }
    for _ in 0..5 {
        socks[0].send_to(b"known flow", to).unwrap();
    }
    // Its new-flow bucket is empty now (a token a second): not one connection to the
    // splitter's 443 gets through.
    let tls = SocketAddr::new(HOST_V4.into(), 443);
    let conns: Vec<socket2::Socket> = (0..5).map(|_| syn(&lab.inet, FLOODER, tls)).collect();
    let reached = settled_count(&echo, FLOODER);
    assert_eq!(reached, 15, "10 new flows and the first one's 5 more");
    let st = lab.status().unwrap();
    assert_eq!(reason(&st, "in_flood_flows"), 20, "{st}");
    // From another address, 30 connections at once: 10 SYNs are let through, the others
    // dropped in XDP (the kernel retransmits them only after a second).
    let others: Vec<socket2::Socket> = (0..30).map(|_| syn(&lab.inet, PARTICIPANT, tls)).collect();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(conns.iter().filter(|s| s.peer_addr().is_ok()).count(), 0, "the flooder connected");
    let connected = others.iter().filter(|s| s.peer_addr().is_ok()).count();
    assert_eq!(connected, 10, "connections established within 400 ms");
    let st = lab.status().unwrap();
    assert!(reason(&st, "in_flood_connections") >= 25, "{st}");

    // From an allowed network, the same is never limited.
    let allowed: Vec<socket2::Socket> = (0..30).map(|_| syn(&lab.inet, ALLOWED, tls)).collect();
    let socks: Vec<UdpSocket> = (0..30).map(|_| udp_socket_from(&lab.inet, ALLOWED).unwrap()).collect();
    for s in &socks {
        s.send_to(b"new flow", to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(allowed.iter().filter(|s| s.peer_addr().is_ok()).count(), 30);
    assert_eq!(settled_count(&echo, ALLOWED), 30);
    agent.stop().unwrap();
}
