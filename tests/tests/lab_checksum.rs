//! Generic XDP with the checksum states NICs deliver; the agent runs with `xdp_mode =
//! "generic"`, steering the frames to the backends, whose own stacks judge them.
//! - A tap uplink (see `jitsi_tests::tap`) hands each frame to the host as virtio-net hands it
//!   to a guest, either with a checksum to verify (`CHECKSUM_NONE`) or with the checksum left
//!   to the receiver (`NEEDS_CSUM`: `CHECKSUM_PARTIAL`).
//! - A VXLAN uplink whose outer checksums the host verifies delivers `CHECKSUM_COMPLETE`, as a
//!   NIC that sums every frame does (`Lab::with_vxlan_uplink`).
//!
//! (No kernel log is read: the kernel reports a `hw csum failure` once per boot.) Needs root.

use aya::maps::{HashMap as AyaHashMap, Map, MapData};
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use jitsi_tests::{
    agent::AgentProcess,
    clients::{tcp_echo, udp_round_trip, udp_socket},
    lab::{CLIENT_V4, CLIENT_V6, HOST_V4, HOST_V6, LAB_RULES, Lab, UPLINK},
    netns::NetNs,
    packet::{CLIENT_MAC, L4Check, Pkt, parse},
    raw::{RawLink, mac_of},
    servers::{self, Server},
    tap::{RxChecksum, Tap},
};

/// Frames per family and checksum state.
const FRAMES: usize = 5;

/// A counter of `/proc/net/snmp` (`Udp`, `Tcp`) or `/proc/net/snmp6` (`Udp6InCsumErrors`)
/// in `ns`.
fn snmp(ns: &NetNs, group: &str, name: &str) -> u64 {
    if group == "Udp6" {
        let text = ns.exec("cat", &["/proc/net/snmp6"]).unwrap();
        let key = format!("Udp6{name}");
        return text
            .lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(&key)).then(|| it.next().unwrap().parse().unwrap())
            })
            .unwrap_or_else(|| panic!("no {key} in snmp6"));
    }
    let text = ns.exec("cat", &["/proc/net/snmp"]).unwrap();
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    let (names, values) = (lines[0].split_whitespace(), lines[1].split_whitespace());
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .map(|(_, v)| v.parse().unwrap())
        .unwrap_or_else(|| panic!("no {group} {name}"))
}

/// The delivery state for a frame whose L4 checksum field holds `check`.
fn rx_state(pkt: &Pkt) -> RxChecksum {
    match pkt.l4_check {
        L4Check::Partial => {
            let start = if pkt.src.is_ipv4() { 14 + 20 } else { 14 + 40 };
            RxChecksum::Partial { start, offset: if pkt.proto == 17 { 6 } else { 16 } }
        }
        L4Check::Full | L4Check::Wrong => RxChecksum::None,
    }
}

/// Reads what the host sends out of the tap for `wait`: the TCP and UDP frames, with the
/// header flags they came with.
fn sent_by_host(tap: &Tap, wait: Duration) -> Vec<(u8, jitsi_tests::packet::Parsed)> {
    let deadline = Instant::now() + wait;
    let mut out = Vec::new();
    while let Some((flags, frame)) = tap.recv(deadline.saturating_duration_since(Instant::now())).unwrap() {
        if let Some(p) = parse(&frame) {
            out.push((flags, p));
        }
    }
    out
}

/// The videobridge's and the web backend's servers, and the agent in generic mode (each stops
/// when dropped: bind every field).
struct Generic {
    jvb4: Server,
    jvb6: Server,
    _web: [Server; 2],
    agent: AgentProcess,
}

/// Starts UDP servers on the videobridge's 10000 and TCP servers on the web backend's 8000 (both
/// families), then the agent with the lab's rules in generic mode; `steer_in` must then run
/// on the uplink as `xdpgeneric`.
fn start_generic(lab: &Lab) -> Generic {
    let (jvb, web) = (lab.backend("jvb"), lab.backend("web"));
    let jvb4 = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let jvb6 = servers::udp(&jvb.ns, jvb.addr6(10000)).unwrap();
    let _web = [web.addr4(8000), web.addr6(8000)].map(|a| servers::tcp(&web.ns, a).unwrap());
    let config = lab.write_config_xdp(Some("generic"), LAB_RULES).unwrap();
    let agent = AgentProcess::start(&lab.host, &config).unwrap();
    let link = lab.host.ip(&["link", "show", UPLINK]).unwrap();
    assert!(link.contains(" xdpgeneric "), "steer_in attached in generic mode on {UPLINK}:\n{link}");
    Generic { jvb4, jvb6, _web, agent }
}

#[test]
fn generic_mode_delivers_partial_and_unverified_checksums_and_the_backend_still_catches_bad_ones() {
    let (lab, tap) = Lab::with_tap_uplink(&["jvb", "turn", "web"]).expect("building the lab");
    let (jvb, web) = (lab.backend("jvb"), lab.backend("web"));
    let Generic { jvb4, jvb6, agent, _web } = start_generic(&lab);
    let host_mac = mac_of(&lab.host, UPLINK).unwrap();

    let udp_errors = (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors"));
    let tcp_errors = snmp(&web.ns, "Tcp", "InCsumErrors");

    // UDP to the videobridge: FRAMES datagrams per family in each state, then one whose
    // checksum is wrong, delivered as unverified: the backend must drop that one.
    let families = [(IpAddr::from(CLIENT_V4), IpAddr::from(HOST_V4)), (CLIENT_V6.into(), HOST_V6.into())];
    let mut sport = 40000;
    let mut sent = BTreeMap::new(); // client port -> payload
    for (client, host) in families {
        for check in [L4Check::Full, L4Check::Partial, L4Check::Wrong] {
            let n = if check == L4Check::Wrong { 1 } else { FRAMES };
            for i in 0..n {
                sport += 1;
                let msg = format!("{check:?}-{i}");
                let mut pkt = Pkt::udp(&client.to_string(), sport, &host.to_string(), 10000, msg.as_bytes())
                    .macs(host_mac, CLIENT_MAC);
                pkt.l4_check = check;
                tap.send(rx_state(&pkt), &pkt.build()).unwrap();
                if check != L4Check::Wrong {
                    sent.insert(sport, (SocketAddr::new(client, sport), msg));
                }
            }
        }
    }
    let replies = sent_by_host(&tap, Duration::from_secs(2));
    for server in [&jvb4, &jvb6] {
        assert_eq!(server.count(), 2 * FRAMES, "{} received the datagrams of both states", server.addr);
        let payloads: Vec<Vec<u8>> = server.seen.lock().unwrap().iter().map(|(_, p)| p.clone()).collect();
        assert!(payloads.iter().all(|p| !p.starts_with(b"Wrong")), "{} took a bad checksum: {payloads:?}", server.addr);
    }
    // Each datagram's answer left through the uplink from the host's address, with a checksum
    // that is right and complete (the tap offloads nothing, so the kernel completes it).
    let udp: Vec<_> = replies.iter().filter(|(_, p)| p.proto == 17).collect();
    assert_eq!(udp.len(), sent.len(), "one answer per datagram taken: {udp:?}");
    for (flags, p) in udp {
        let (client, msg) = &sent[&p.dst.port()];
        assert_eq!((p.dst, p.src), (*client, SocketAddr::new(p.src.ip(), 10000)));
        assert!(p.src.ip() == IpAddr::from(HOST_V4) || p.src.ip() == IpAddr::from(HOST_V6), "{p:?}");
        assert_eq!(String::from_utf8_lossy(&p.payload), format!("seen {client} {msg}"), "the backend saw the client");
        assert!(p.checksum_ok && *flags == 0, "answer to {client} leaves with a right checksum: {p:?} flags {flags}");
    }
    assert_eq!(
        (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors")),
        (udp_errors.0 + 1, udp_errors.1 + 1),
        "the backend verified the unverified datagrams: exactly the bad one per family failed"
    );

    // TCP to the web backend (tcp/80 -> 8000): a SYN per family and state. The backend
    // answers the good ones (a SYN-ACK back out of the uplink from port 80) and drops the bad.
    let mut syns = BTreeMap::new();
    for (client, host) in families {
        for check in [L4Check::Full, L4Check::Partial, L4Check::Wrong] {
            sport += 1;
            let mut pkt =
                Pkt::tcp(&client.to_string(), sport, &host.to_string(), 80, 0x02, b"").macs(host_mac, CLIENT_MAC);
            pkt.l4_check = check;
            tap.send(rx_state(&pkt), &pkt.build()).unwrap();
            syns.insert(sport, (client, check));
        }
    }
    let answered: BTreeMap<u16, _> = sent_by_host(&tap, Duration::from_millis(800))
        .into_iter()
        .filter(|(_, p)| p.proto == 6 && p.tcp_flags == 0x12)
        .map(|(flags, p)| (p.dst.port(), (flags, p)))
        .collect();
    for (port, (client, check)) in &syns {
        let got = answered.get(port);
        if *check == L4Check::Wrong {
            assert!(got.is_none(), "a SYN with a bad checksum was answered: {got:?}");
            continue;
        }
        let (flags, p) = got.unwrap_or_else(|| panic!("no SYN-ACK to {client}:{port} ({check:?}): {answered:?}"));
        assert_eq!((p.src.port(), p.dst.ip()), (80, *client));
        assert!(p.checksum_ok && *flags == 0, "SYN-ACK with a right checksum: {p:?}");
    }
    assert_eq!(snmp(&web.ns, "Tcp", "InCsumErrors"), tcp_errors + 2, "the bad SYN of each family was caught");

    // The datapath counted every frame.
    let st = lab.status().unwrap();
    let rules = st["rules"].as_array().unwrap();
    let packets_in = |name: &str| rules.iter().find(|r| r["name"] == name).unwrap()["packets_in"].as_u64().unwrap();
    assert_eq!(packets_in("jvb"), 2 * (2 * FRAMES as u64 + 1));
    assert_eq!(packets_in("web"), 6);
    agent.stop().unwrap();
}

/// Datagrams per family through the VXLAN uplink.
const DATAGRAMS: usize = 20;

#[test]
fn generic_mode_keeps_a_complete_checksum_right_and_the_backend_still_catches_bad_ones() {
    let lab = Lab::with_vxlan_uplink(&["jvb", "turn", "web"]).expect("building the lab");
    let (jvb, web) = (lab.backend("jvb"), lab.backend("web"));
    let Generic { jvb4, jvb6, agent, _web } = start_generic(&lab);
    let st = lab.status().unwrap();
    let redirect = st["attachments"].as_array().unwrap().iter().find(|a| a["program"] == "redirect_in (TC ingress)");
    assert_eq!(redirect.map(|a| (&a["interface"], &a["mode"])), Some((&UPLINK.into(), &"tcx".into())), "{st}");

    let udp_errors = (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors"));
    let tcp_errors = snmp(&web.ns, "Tcp", "InCsumErrors");
    // 300-byte datagrams: a backend checks one longer than 76 bytes against the skb's sum
    // (a shorter one it sums again itself), so a sum the datapath left wrong drops it.
    let filler = "x".repeat(300);
    for (host, v6) in [(IpAddr::from(HOST_V4), false), (IpAddr::from(HOST_V6), true)] {
        let sock = udp_socket(&lab.inet, v6).unwrap();
        let to = SocketAddr::new(host, 10000);
        let client = if v6 { IpAddr::from(CLIENT_V6) } else { IpAddr::from(CLIENT_V4) };
        let me = SocketAddr::new(client, sock.local_addr().unwrap().port());
        for i in 0..DATAGRAMS {
            let msg = format!("long-{i}-{filler}");
            let (from, reply) = udp_round_trip(&sock, to, &msg).unwrap();
            assert_eq!((from, reply), (to, format!("seen {me} {msg}")), "datagram {i} to {to} and its answer");
        }
    }
    // One datagram per family with a wrong checksum, sent as a hand-built frame: the tunnel
    // carries it as it is, so it too arrives as CHECKSUM_COMPLETE.
    let raw = RawLink::open(&lab.inet, "eth0").unwrap();
    let (host_mac, client_mac) = (mac_of(&lab.host, UPLINK).unwrap(), mac_of(&lab.inet, "eth0").unwrap());
    for (client, host) in [(CLIENT_V4.to_string(), HOST_V4.to_string()), (CLIENT_V6.to_string(), HOST_V6.to_string())] {
        let mut pkt =
            Pkt::udp(&client, 40999, &host, 10000, format!("Wrong-{filler}").as_bytes()).macs(host_mac, client_mac);
        pkt.l4_check = L4Check::Wrong;
        raw.send(&pkt.build()).unwrap();
    }
    // TCP both ways through the tunnel: 3,000 bytes echoed per family (delivery only: TCP
    // sums every segment again in software).
    for host in [IpAddr::from(HOST_V4), IpAddr::from(HOST_V6)] {
        let data = vec![b'y'; 3000];
        let x = tcp_echo(&lab.inet, SocketAddr::new(host, 80), data.clone()).unwrap();
        assert_eq!(x.greeting, format!("seen {}", x.local), "the web backend saw the client");
        assert_eq!(x.echoed, data, "the echo through {host}:80");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    while snmp(&jvb.ns, "Udp6", "InCsumErrors") == udp_errors.1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    for server in [&jvb4, &jvb6] {
        assert_eq!(server.count(), DATAGRAMS, "{} received each good datagram once", server.addr);
    }
    assert_eq!(
        (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors")),
        (udp_errors.0 + 1, udp_errors.1 + 1),
        "the backend checked every datagram's sum: exactly the bad one per family failed"
    );
    assert_eq!(snmp(&web.ns, "Tcp", "InCsumErrors"), tcp_errors, "no TCP segment failed its checksum");

    // The same datagram redirected from generic XDP itself (the uplink taken out of
    // `generic_uplinks`): the sum no longer matches and the backend drops it. This shows the
    // frames arrive as CHECKSUM_COMPLETE, and that redirect_in is what keeps them.
    let map = Map::from_map_data(MapData::from_pin(lab.pin_dir.join("generic_uplinks")).unwrap()).unwrap();
    let mut listed: AyaHashMap<MapData, u32, u32> = AyaHashMap::try_from(map).unwrap();
    let uplinks: Vec<u32> = listed.keys().map(Result::unwrap).collect();
    assert_eq!(uplinks.len(), 1, "the uplink is listed: {uplinks:?}");
    listed.remove(&uplinks[0]).unwrap();
    let errors = (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors"));
    for (host, v6) in [(IpAddr::from(HOST_V4), false), (IpAddr::from(HOST_V6), true)] {
        let sock = udp_socket(&lab.inet, v6).unwrap();
        let answer = udp_round_trip(&sock, SocketAddr::new(host, 10000), &format!("direct-{filler}"));
        assert!(answer.is_err(), "a datagram redirected from generic XDP was answered: {answer:?}");
    }
    assert_eq!(
        (snmp(&jvb.ns, "Udp", "InCsumErrors"), snmp(&jvb.ns, "Udp6", "InCsumErrors")),
        (errors.0 + 1, errors.1 + 1),
        "without redirect_in, each family's datagram failed the backend's checksum"
    );
    agent.stop().unwrap();
}
