//! The datapath's packet table, run through BPF_PROG_TEST_RUN: each row feeds one frame to
//! `steer_in` (XDP) or `reply_out` (TC) and asserts the verdict, the exact output bytes
//! (checksums included: expected frames are rebuilt from scratch with an independent RFC 1071
//! implementation) and the counter the row must bump. Needs root (loads BPF programs); sends
//! no packets anywhere.

use std::{
    collections::HashMap,
    os::fd::AsRawFd,
    time::{Duration, Instant},
};

use aya::programs::{SchedClassifier, TestRun, TestRunOptions, Xdp, XdpMode};
use jitsi_agent::{
    config::Config,
    datapath::{Maps, load_unattached},
    netlink::Link,
    resolve::Resolved,
    rules, sources,
};
use jitsi_common::{ClientKey, FALLBACK_V4, FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, Reason, ReturnPath};
use jitsi_tests::{
    netns::NetNs,
    packet::{CLIENT_MAC, Pkt, UPLINK_MAC},
    raw::Capture,
    tap::{RxChecksum, Tap},
};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_REDIRECT: u32 = 4;
/// TC_ACT_UNSPEC (-1), TCX's "next": passed on to the next program or filter.
const TC_ACT_UNSPEC: u32 = u32::MAX;
const TC_ACT_REDIRECT: u32 = 7;

const BRIDGE_MAC: [u8; 6] = [0x02, 0xb0, 0, 0, 0, 1];
const JVB_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x10];
const TURN_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x11];
const WEB_MAC: [u8; 6] = [0x02, 0xbe, 0, 0, 0, 0x12];

const CONFIG: &str = r#"
[uplink]
interface = "up0"
addresses = ["203.0.113.1", "2001:db8:c::1"]
[[steer]]
name = "jvb"
protocol = "udp"
port = 10000
backend = ["192.0.2.10:10000", "[2001:db8:b::10]:10000"]
[[steer]]
name = "turn"
protocol = "udp"
port = 3478
backend = "192.0.2.11:3478"
[[steer]]
name = "web"
protocol = "tcp"
port = 80
backend = ["192.0.2.12:8000", "[2001:db8:b::12]:8000"]
[[steer]]
name = "down"
protocol = "udp"
port = 5000
backend = "192.0.2.13:5000"
[[steer]]
name = "relay"
protocol = "udp"
port = "61000-65535"
backend = ["192.0.2.11:61000", "[2001:db8:b::11]:61000"]
[[steer]]
name = "shifted"
protocol = "udp"
port = "20000-20050"
backend = "192.0.2.10:30000"

[splitter]
reply_mark = 0x4a17
[tls]
[[tls.route]]
name = "web-tls"
server_names = ["meet.example.test"]
backend = ["192.0.2.12:8443", "[2001:db8:b::12]:8443"]
"#;

enum Prog {
    Xdp,
    Tc,
}

struct Row {
    name: &'static str,
    prog: Prog,
    input: Vec<u8>,
    verdict: u32,
    /// None: the frame must come out unchanged.
    output: Option<Vec<u8>>,
    /// The reason counter this row bumps, or the rule slot and direction ("in"/"out").
    counts: Counts,
}

enum Counts {
    Reason(Reason),
    Rule(&'static str, bool),
}

struct Env {
    bpf: aya::Ebpf,
    maps: Maps,
    slots: std::collections::BTreeMap<String, u32>,
}

fn resolved(ip: &str, mac: [u8; 6], ifindex: u32) -> (std::net::IpAddr, Resolved) {
    let gateway = Link { index: 3, name: "br0".into(), mac: BRIDGE_MAC, is_bridge: true, xdp: Vec::new() };
    (ip.parse().unwrap(), Resolved { port_ifindex: ifindex, backend_mac: mac, gateway_mac: BRIDGE_MAC, gateway })
}

fn setup() -> Env {
    assert!(jitsi_tests::lab::is_root(), "the packet table loads BPF programs: run as root (cargo xtask test)");
    let mut bpf = load_unattached().expect("loading the datapath (built with `cargo xtask build`?)");
    let mut maps = Maps::take(&mut bpf, None).expect("maps");
    let config = Config::parse(CONFIG, "table.toml".as_ref()).expect("config");
    let (slots, _) = rules::assign_slots(&HashMap::new(), config.steer.iter().map(|r| r.name.as_str()));
    // 192.0.2.13 (rule "down") is deliberately not resolved.
    let resolved = HashMap::from([
        resolved("192.0.2.10", JVB_MAC, 7),
        resolved("2001:db8:b::10", JVB_MAC, 7),
        resolved("192.0.2.11", TURN_MAC, 8),
        resolved("2001:db8:b::11", TURN_MAC, 8),
        resolved("192.0.2.12", WEB_MAC, 9),
        resolved("2001:db8:b::12", WEB_MAC, 9),
    ]);
    let marked = config.splitter().map(|s| (s.reply_mark, config.transparent_backends().collect()));
    let d = rules::desired(&config.steer, marked, &config.uplink.addresses, 1, &slots, &resolved);
    for (k, v) in d.rules {
        maps.rules.insert(k, v, 0).unwrap();
    }
    for (k, v) in d.replies {
        maps.replies.insert(k, v, 0).unwrap();
    }
    for (k, v) in d.host_addrs {
        maps.host_addrs.insert(k, v, 0).unwrap();
    }
    for ((len, k), v) in d.rule_ranges {
        maps.rule_ranges.insert(&aya::maps::lpm_trie::Key::new(len, k), v, 0).unwrap();
    }
    for ((len, k), v) in d.reply_ranges {
        maps.reply_ranges.insert(&aya::maps::lpm_trie::Key::new(len, k), v, 0).unwrap();
    }
    // The flows the TC rows reply to, as the XDP program learns them (ifindex 1: BPF_PROG_TEST_RUN
    // runs XDP on the loopback device).
    for (client, host, family) in
        [("203.0.113.2", "203.0.113.1", FAMILY_V4), ("2001:db8:c::2", "2001:db8:c::1", FAMILY_V6)]
    {
        let (addr, _) = rules::addr16(client.parse().unwrap());
        let (host_addr, _) = rules::addr16(host.parse().unwrap());
        let path = ReturnPath { host_addr, ifindex: 1, client_mac: CLIENT_MAC, host_mac: UPLINK_MAC };
        for (port, protocol) in [(40000, PROTO_UDP), (40001, PROTO_TCP)] {
            maps.return_paths.insert(ClientKey { addr, port, protocol, family }, path, 0).unwrap();
        }
    }
    // The uplink's subnets are on-link; martians, the host's addresses and the bridge's subnets
    // are spoofed sources.
    let prefixes = sources::source_prefixes(
        &[("203.0.113.0".parse().unwrap(), 24), ("2001:db8:c::".parse().unwrap(), 64)],
        &config.uplink.addresses,
        &[("192.0.2.0".parse().unwrap(), 24), ("2001:db8:b::".parse().unwrap(), 64)],
    );
    for (p, kind) in prefixes {
        maps.source_prefixes.insert(&sources::trie_key(p), kind, 0).unwrap();
    }
    Env { bpf, maps, slots }
}

fn reason_count(maps: &Maps, r: Reason) -> u64 {
    maps.reason_stats.get(&(r as u32), 0).unwrap().iter().map(|s| s.packets).sum()
}

fn rule_count(maps: &Maps, slot: u32, inbound: bool) -> u64 {
    let stats = maps.rule_stats.get(&slot, 0).unwrap();
    stats.iter().map(|s| if inbound { s.packets_in } else { s.packets_out }).sum()
}

fn run_row(xdp: &Xdp, tc: &SchedClassifier, row: &Row) -> (u32, Vec<u8>) {
    let mut out = vec![0u8; row.input.len() + 512];
    let opts = TestRunOptions { data_in: Some(&row.input), data_out: Some(&mut out), ..Default::default() };
    let res = match row.prog {
        Prog::Xdp => xdp.test_run(opts),
        Prog::Tc => tc.test_run(opts),
    }
    .unwrap_or_else(|e| panic!("{}: BPF_PROG_TEST_RUN failed: {e}", row.name));
    out.truncate(res.data_size_out as usize);
    (res.return_value, out)
}

/// A payload whose UDP checksum, after the packet is rewritten to `out`, is exactly 0.
fn payload_for_zero_checksum(out: impl Fn(&[u8]) -> Pkt) -> Vec<u8> {
    (0..=u16::MAX)
        .map(|v| v.to_be_bytes().to_vec())
        .find(|p| out(p).raw_udp_checksum() == 0)
        .expect("some 2-byte payload makes the checksum 0")
}

fn rows() -> Vec<Row> {
    use Counts::{Reason as R, Rule};
    use Prog::{Tc, Xdp};
    use Reason::*;
    let client = "203.0.113.2";
    let client6 = "2001:db8:c::2";
    let udp_in = |dport| Pkt::udp(client, 40000, "203.0.113.1", dport, b"media");
    let udp6_in = |dport| Pkt::udp(client6, 40000, "2001:db8:c::1", dport, b"media6");
    let steered = |p: Pkt, to: &str, port, mac| p.to(to, port).macs(mac, BRIDGE_MAC).build();
    let mut rows = Vec::new();
    let mut row = |name, prog, input: Vec<u8>, verdict, output, counts| {
        rows.push(Row { name, prog, input, verdict, output, counts })
    };

    // --- steer_in: steered ---
    row(
        "v4 udp/10000 -> jvb",
        Xdp,
        udp_in(10000).build(),
        XDP_REDIRECT,
        Some(steered(udp_in(10000), "192.0.2.10", 10000, JVB_MAC)),
        Rule("jvb", true),
    );
    row(
        "v4 udp/3478 -> coturn",
        Xdp,
        udp_in(3478).build(),
        XDP_REDIRECT,
        Some(steered(udp_in(3478), "192.0.2.11", 3478, TURN_MAC)),
        Rule("turn", true),
    );
    let syn = Pkt::tcp(client, 40001, "203.0.113.1", 80, 0x02, b"");
    row(
        "v4 tcp/80 SYN -> web:8000",
        Xdp,
        syn.build(),
        XDP_REDIRECT,
        Some(steered(syn, "192.0.2.12", 8000, WEB_MAC)),
        Rule("web", true),
    );
    let data = Pkt::tcp(client, 40001, "203.0.113.1", 80, 0x18, b"GET / HTTP/1.1\r\n\r\n");
    row(
        "v4 tcp/80 data -> web:8000",
        Xdp,
        data.build(),
        XDP_REDIRECT,
        Some(steered(data, "192.0.2.12", 8000, WEB_MAC)),
        Rule("web", true),
    );
    let zero = Pkt { udp_zero_checksum: true, ..udp_in(10000) };
    row(
        "v4 udp checksum 0 stays 0",
        Xdp,
        zero.build(),
        XDP_REDIRECT,
        Some(steered(zero, "192.0.2.10", 10000, JVB_MAC)),
        Rule("jvb", true),
    );
    let payload = payload_for_zero_checksum(|p| Pkt::udp(client, 40000, "192.0.2.10", 10000, p));
    let ffff = Pkt::udp(client, 40000, "203.0.113.1", 10000, &payload);
    let ffff_out = steered(ffff.clone(), "192.0.2.10", 10000, JVB_MAC);
    assert_eq!(&ffff_out[40..42], &[0xff, 0xff], "the expected frame carries 0xFFFF");
    row(
        "v4 udp computed checksum 0 is sent as 0xFFFF",
        Xdp,
        ffff.build(),
        XDP_REDIRECT,
        Some(ffff_out),
        Rule("jvb", true),
    );
    let opts = Pkt { ip_options: vec![0x94, 0x04, 0x00, 0x00], ..udp_in(10000) }; // Router Alert, IHL 6
    row(
        "v4 with IP options (IHL 6) steered",
        Xdp,
        opts.build(),
        XDP_REDIRECT,
        Some(steered(opts, "192.0.2.10", 10000, JVB_MAC)),
        Rule("jvb", true),
    );
    let max_opts = Pkt { ip_options: [vec![0x01; 39], vec![0x00]].concat(), ..udp_in(3478) }; // 39 NOPs + EOL, IHL 15
    row(
        "v4 with 40 bytes of options (IHL 15) steered",
        Xdp,
        max_opts.build(),
        XDP_REDIRECT,
        Some(steered(max_opts, "192.0.2.11", 3478, TURN_MAC)),
        Rule("turn", true),
    );
    row(
        "v6 udp/10000 -> jvb",
        Xdp,
        udp6_in(10000).build(),
        XDP_REDIRECT,
        Some(steered(udp6_in(10000), "2001:db8:b::10", 10000, JVB_MAC)),
        Rule("jvb", true),
    );
    let syn6 = Pkt::tcp(client6, 40001, "2001:db8:c::1", 80, 0x02, b"");
    row(
        "v6 tcp/80 SYN -> web:8000",
        Xdp,
        syn6.build(),
        XDP_REDIRECT,
        Some(steered(syn6, "2001:db8:b::12", 8000, WEB_MAC)),
        Rule("web", true),
    );
    let payload6 = payload_for_zero_checksum(|p| Pkt::udp(client6, 40000, "2001:db8:b::10", 10000, p));
    let ffff6 = Pkt::udp(client6, 40000, "2001:db8:c::1", 10000, &payload6);
    row(
        "v6 udp computed checksum 0 is sent as 0xFFFF",
        Xdp,
        ffff6.build(),
        XDP_REDIRECT,
        Some(steered(ffff6, "2001:db8:b::10", 10000, JVB_MAC)),
        Rule("jvb", true),
    );

    // --- steer_in: passed or dropped ---
    row("v6 udp/3478: rule has no IPv6 backend", Xdp, udp6_in(3478).build(), XDP_PASS, None, R(InNoBackendForFamily));
    row(
        "v6 udp checksum 0 is invalid",
        Xdp,
        Pkt { udp_zero_checksum: true, ..udp6_in(10000) }.build(),
        XDP_PASS,
        None,
        R(InUdp6ZeroChecksum),
    );
    row("v4 to another address", Xdp, udp_in(10000).to("203.0.113.99", 10000).build(), XDP_PASS, None, R(InNotLocal));
    row(
        "v6 to another address",
        Xdp,
        udp6_in(10000).to("2001:db8:c::99", 10000).build(),
        XDP_PASS,
        None,
        R(InNotLocal),
    );
    row("v4 udp to an unsteered port", Xdp, udp_in(9999).build(), XDP_PASS, None, R(InNoRule));
    row(
        "v4 tcp/10000: rule is udp only",
        Xdp,
        Pkt::tcp(client, 1, "203.0.113.1", 10000, 0x02, b"").build(),
        XDP_PASS,
        None,
        R(InNoRule),
    );
    row("v6 udp to an unsteered port", Xdp, udp6_in(53).build(), XDP_PASS, None, R(InNoRule));
    row("v4 ICMP echo to the host", Xdp, Pkt { proto: 1, ..udp_in(0) }.build(), XDP_PASS, None, R(InOtherProtocol));
    row("v6 ICMPv6 echo to the host", Xdp, Pkt { proto: 58, ..udp6_in(0) }.build(), XDP_PASS, None, R(InOtherProtocol));
    row("v4 first fragment (MF)", Xdp, Pkt { frag: 0x2000, ..udp_in(10000) }.build(), XDP_PASS, None, R(InFragment));
    row("v4 non-first fragment", Xdp, Pkt { frag: 0x00b9, ..udp_in(10000) }.build(), XDP_PASS, None, R(InFragment));
    row(
        "v6 fragment header",
        Xdp,
        Pkt { v6_ext: Some(44), ..udp6_in(10000) }.build(),
        XDP_PASS,
        None,
        R(InIpv6ExtHeader),
    );
    row(
        "v6 destination options header",
        Xdp,
        Pkt { v6_ext: Some(60), ..udp6_in(10000) }.build(),
        XDP_PASS,
        None,
        R(InIpv6ExtHeader),
    );
    row("802.1Q tagged", Xdp, Pkt { vlan: Some((0x8100, 42)), ..udp_in(10000) }.build(), XDP_PASS, None, R(InVlan));
    row("802.1ad tagged", Xdp, Pkt { vlan: Some((0x88a8, 42)), ..udp_in(10000) }.build(), XDP_PASS, None, R(InVlan));
    let mut arp = vec![0xff; 6];
    arp.extend(CLIENT_MAC);
    arp.extend([0x08, 0x06]);
    arp.extend([0u8; 28]);
    row("ARP", Xdp, arp.clone(), XDP_PASS, None, R(InNotIp));
    let full = udp_in(10000).build();
    row("Ethernet header only", Xdp, full[..14].to_vec(), XDP_PASS, None, R(InTruncated));
    row("IPv4 header cut at 10 bytes", Xdp, full[..24].to_vec(), XDP_PASS, None, R(InTruncated));
    row("UDP header cut at 4 bytes", Xdp, full[..38].to_vec(), XDP_PASS, None, R(InTruncated));
    let tcp_full = Pkt::tcp(client, 40001, "203.0.113.1", 80, 0x02, b"").build();
    row("TCP header cut at 12 bytes", Xdp, tcp_full[..46].to_vec(), XDP_PASS, None, R(InTruncated));
    let opt_full = max_opts_frame();
    row("IPv4 options cut short (IHL 15)", Xdp, opt_full[..60].to_vec(), XDP_PASS, None, R(InTruncated));
    let v6_full = udp6_in(10000).build();
    row("IPv6 header cut at 30 bytes", Xdp, v6_full[..44].to_vec(), XDP_PASS, None, R(InTruncated));
    row(
        "IPv4 IHL 4 (invalid)",
        Xdp,
        Pkt { ihl_override: Some(4), ..udp_in(10000) }.build(),
        XDP_PASS,
        None,
        R(InMalformed),
    );
    row(
        "IPv4 ethertype, version 6",
        Xdp,
        Pkt { version_override: Some(6), ..udp_in(10000) }.build(),
        XDP_PASS,
        None,
        R(InMalformed),
    );
    row("rule whose backend is down: dropped", Xdp, udp_in(5000).build(), XDP_DROP, None, R(InBackendDown));

    // --- steer_in: sources that cannot arrive on the uplink, dropped before any rewrite ---
    let spoofed = |src: &str| Pkt::udp(src, 40000, "203.0.113.1", 10000, b"spoof").build();
    let spoofed6 = |src: &str| Pkt::udp(src, 40000, "2001:db8:c::1", 10000, b"spoof").build();
    for (name, frame) in [
        ("v4 from loopback", spoofed("127.0.0.1")),
        ("v4 from 0.0.0.0/8", spoofed("0.1.2.3")),
        ("v4 from multicast", spoofed("224.0.0.5")),
        ("v4 from the limited broadcast", spoofed("255.255.255.255")),
        ("v4 from the host's own address", spoofed("203.0.113.1")),
        ("v4 from the backends' subnet", spoofed("192.0.2.50")),
        ("v6 from ::1", spoofed6("::1")),
        ("v6 from multicast", spoofed6("ff02::1")),
        ("v6 IPv4-mapped source", spoofed6("::ffff:198.51.100.1")),
        ("v6 from the host's own address", spoofed6("2001:db8:c::1")),
        ("v6 from the backends' subnet", spoofed6("2001:db8:b::50")),
    ] {
        row(name, Xdp, frame, XDP_DROP, None, R(InSpoofedSource));
    }
    row(
        "v4 from loopback to an unsteered port: left to the host's own filters",
        Xdp,
        Pkt::udp("127.0.0.1", 40000, "203.0.113.1", 9999, b"x").build(),
        XDP_PASS,
        None,
        R(InNoRule),
    );

    // --- reply_out: replies leave with the host's address and public port ---
    let from_jvb = Pkt::udp("192.0.2.10", 10000, client, 40000, b"reply").macs(BRIDGE_MAC, JVB_MAC);
    let to_client = |p: Pkt, src: &str, port| p.from(src, port).macs(CLIENT_MAC, UPLINK_MAC).build();
    row(
        "v4 udp reply from jvb",
        Tc,
        from_jvb.build(),
        TC_ACT_REDIRECT,
        Some(to_client(from_jvb.clone(), "203.0.113.1", 10000)),
        Rule("jvb", false),
    );
    let zero_reply = Pkt { udp_zero_checksum: true, ..from_jvb.clone() };
    row(
        "v4 udp reply checksum 0 stays 0",
        Tc,
        zero_reply.build(),
        TC_ACT_REDIRECT,
        Some(to_client(zero_reply, "203.0.113.1", 10000)),
        Rule("jvb", false),
    );
    let payload_r = payload_for_zero_checksum(|p| Pkt::udp("203.0.113.1", 10000, client, 40000, p));
    let ffff_reply = Pkt::udp("192.0.2.10", 10000, client, 40000, &payload_r).macs(BRIDGE_MAC, JVB_MAC);
    row(
        "v4 udp reply computed checksum 0 is sent as 0xFFFF",
        Tc,
        ffff_reply.build(),
        TC_ACT_REDIRECT,
        Some(to_client(ffff_reply, "203.0.113.1", 10000)),
        Rule("jvb", false),
    );
    let from_turn = Pkt::udp("192.0.2.11", 3478, client, 40000, b"stun").macs(BRIDGE_MAC, TURN_MAC);
    row(
        "v4 udp reply from coturn",
        Tc,
        from_turn.build(),
        TC_ACT_REDIRECT,
        Some(to_client(from_turn, "203.0.113.1", 3478)),
        Rule("turn", false),
    );
    let synack = Pkt::tcp("192.0.2.12", 8000, client, 40001, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC);
    row(
        "v4 tcp SYN-ACK from web:8000 leaves from :80",
        Tc,
        synack.build(),
        TC_ACT_REDIRECT,
        Some(to_client(synack, "203.0.113.1", 80)),
        Rule("web", false),
    );
    let from_jvb6 = Pkt::udp("2001:db8:b::10", 10000, client6, 40000, b"reply6").macs(BRIDGE_MAC, JVB_MAC);
    row(
        "v6 udp reply from jvb",
        Tc,
        from_jvb6.build(),
        TC_ACT_REDIRECT,
        Some(to_client(from_jvb6, "2001:db8:c::1", 10000)),
        Rule("jvb", false),
    );
    let synack6 = Pkt::tcp("2001:db8:b::12", 8000, client6, 40001, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC);
    row(
        "v6 tcp SYN-ACK from web",
        Tc,
        synack6.build(),
        TC_ACT_REDIRECT,
        Some(to_client(synack6, "2001:db8:c::1", 80)),
        Rule("web", false),
    );

    // --- port ranges: 1:1, the same cost for any port of the range ---
    for port in [61000, 61001, 63000, 65535] {
        let name = match port {
            61000 => "v4 udp/61000 (a range's first port) -> coturn:61000",
            61001 => "v4 udp/61001 -> coturn:61001",
            63000 => "v4 udp/63000 -> coturn:63000",
            _ => "v4 udp/65535 (a range's last port) -> coturn:65535",
        };
        row(
            name,
            Xdp,
            udp_in(port).build(),
            XDP_REDIRECT,
            Some(steered(udp_in(port), "192.0.2.11", port, TURN_MAC)),
            Rule("relay", true),
        );
    }
    row(
        "v6 udp/64000 -> coturn:64000",
        Xdp,
        udp6_in(64000).build(),
        XDP_REDIRECT,
        Some(steered(udp6_in(64000), "2001:db8:b::11", 64000, TURN_MAC)),
        Rule("relay", true),
    );
    row(
        "v4 udp/20050 -> jvb:30050 (a range moved on the backend)",
        Xdp,
        udp_in(20050).build(),
        XDP_REDIRECT,
        Some(steered(udp_in(20050), "192.0.2.10", 30050, JVB_MAC)),
        Rule("shifted", true),
    );
    row("v4 udp/20051, past a range", Xdp, udp_in(20051).build(), XDP_PASS, None, R(InNoRule));
    row("v4 udp/60999, before a range", Xdp, udp_in(60999).build(), XDP_PASS, None, R(InNoRule));
    row(
        "v4 tcp/63000, a UDP range's port",
        Xdp,
        Pkt::tcp(client, 40001, "203.0.113.1", 63000, 0x02, b"").build(),
        XDP_PASS,
        None,
        R(InNoRule),
    );
    let from_relay = Pkt::udp("192.0.2.11", 63000, client, 40000, b"relayed").macs(BRIDGE_MAC, TURN_MAC);
    row(
        "v4 udp reply from coturn:63000 leaves from :63000",
        Tc,
        from_relay.build(),
        TC_ACT_REDIRECT,
        Some(to_client(from_relay.clone(), "203.0.113.1", 63000)),
        Rule("relay", false),
    );
    let from_shifted = Pkt::udp("192.0.2.10", 30025, client, 40000, b"sip").macs(BRIDGE_MAC, JVB_MAC);
    row(
        "v4 udp reply from jvb:30025 leaves from :20025",
        Tc,
        from_shifted.build(),
        TC_ACT_REDIRECT,
        Some(to_client(from_shifted, "203.0.113.1", 20025)),
        Rule("shifted", false),
    );
    row(
        "from coturn's address but a port outside the range",
        Tc,
        from_relay.clone().from("192.0.2.11", 60999).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutNotBackend),
    );

    // --- reply_out: a backend sending to a host address is left to the host, steered port or not
    // (coturn maps its own public address to itself: relays never send there) ---
    row(
        "v4 coturn:63000 to the host's steered :64000: passed",
        Tc,
        from_relay.clone().to("203.0.113.1", 64000).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutUnknownClient),
    );
    row(
        "v4 coturn:63000 to the host's unsteered :9999: passed",
        Tc,
        from_relay.clone().to("203.0.113.1", 9999).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutUnknownClient),
    );

    // --- reply_out: SNI backends' replies are marked for local delivery, not rewritten ---
    let from_tls = Pkt::tcp("192.0.2.12", 8443, client, 40002, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC);
    row("v4 reply from an SNI backend: marked, untouched", Tc, from_tls.build(), TC_ACT_UNSPEC, None, R(OutSniReply));
    let from_tls6 = Pkt::tcp("2001:db8:b::12", 8443, client6, 40002, 0x18, b"tls").macs(BRIDGE_MAC, WEB_MAC);
    row("v6 reply from an SNI backend: marked, untouched", Tc, from_tls6.build(), TC_ACT_UNSPEC, None, R(OutSniReply));

    // --- reply_out: passed untouched ---
    row(
        "reply to a client never seen on the uplink",
        Tc,
        from_jvb.clone().to("198.51.100.7", 40000).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutUnknownClient),
    );
    row(
        "from a backend address but another port",
        Tc,
        from_jvb.clone().from("192.0.2.10", 53).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutNotBackend),
    );
    row(
        "from a non-backend address",
        Tc,
        from_jvb.clone().from("192.0.2.99", 10000).build(),
        TC_ACT_UNSPEC,
        None,
        R(OutNotBackend),
    );
    row("ARP on the bridge", Tc, arp, TC_ACT_UNSPEC, None, R(OutNotIp));
    row(
        "v4 fragment from a backend",
        Tc,
        Pkt { frag: 0x2000, ..from_jvb.clone() }.build(),
        TC_ACT_UNSPEC,
        None,
        R(OutFragment),
    );
    row(
        "UDP header cut short on the bridge",
        Tc,
        from_jvb.build()[..35].to_vec(),
        TC_ACT_UNSPEC,
        None,
        R(OutTruncated),
    );
    rows
}

fn max_opts_frame() -> Vec<u8> {
    Pkt {
        ip_options: [vec![0x01; 39], vec![0x00]].concat(),
        ..Pkt::udp("203.0.113.2", 40000, "203.0.113.1", 3478, b"media")
    }
    .build()
}

/// Both programs of the loaded object (which shares the maps filled by `setup`).
fn programs(bpf: &mut aya::Ebpf) -> (&Xdp, &SchedClassifier) {
    let (mut xdp, mut tc) = (None, None);
    for (name, prog) in bpf.programs_mut() {
        match name {
            "steer_in" => xdp = Some(&*<&mut Xdp>::try_from(prog).expect("steer_in is XDP")),
            "reply_out" => tc = Some(&*<&mut SchedClassifier>::try_from(prog).expect("reply_out is TC")),
            _ => {}
        }
    }
    (xdp.expect("steer_in"), tc.expect("reply_out"))
}

#[test]
fn packet_table() {
    let Env { mut bpf, maps, slots } = setup();
    let rows = rows();
    assert!(rows.len() >= 30, "the table has {} rows", rows.len());
    let (xdp, tc) = programs(&mut bpf);
    let count = |c: &Counts| counted(&maps, &slots, c);
    let mut failures = Vec::new();
    for row in &rows {
        let before = count(&row.counts);
        let (verdict, out) = run_row(xdp, tc, row);
        let after = count(&row.counts);
        failures.extend(judge(row, verdict, &out, (before, after)));
    }
    assert!(failures.is_empty(), "{} of {} rows failed:\n{}", failures.len(), rows.len(), failures.join("\n"));
}

/// What is wrong with a row's run, if anything: the verdict, then the frame that came out (a
/// dropped frame has none to compare), then the counter, which must have gone up by one.
fn judge(row: &Row, verdict: u32, out: &[u8], (before, after): (u64, u64)) -> Option<String> {
    let expected = row.output.as_ref().unwrap_or(&row.input);
    if verdict != row.verdict {
        Some(format!("{}: verdict {verdict}, expected {}", row.name, row.verdict))
    } else if verdict != XDP_DROP && out != expected.as_slice() {
        Some(format!("{}: output differs\n  got      {}\n  expected {}", row.name, hex(out), hex(expected)))
    } else if after != before + 1 {
        Some(format!("{}: counter went {before} -> {after}, expected +1", row.name))
    } else {
        None
    }
}

/// The count a row's run must raise by one.
fn counted(maps: &Maps, slots: &std::collections::BTreeMap<String, u32>, c: &Counts) -> u64 {
    match c {
        Counts::Reason(r) => reason_count(maps, *r),
        Counts::Rule(name, inbound) => rule_count(maps, slots[*name], *inbound),
    }
}

#[test]
fn steer_in_learns_the_return_path() {
    let Env { mut bpf, maps, .. } = setup();
    let (xdp, _) = programs(&mut bpf);
    let input =
        Pkt::udp("198.51.100.50", 1234, "203.0.113.1", 10000, b"x").macs(UPLINK_MAC, [2, 9, 9, 9, 9, 9]).build();
    let mut out = vec![0u8; input.len() + 64];
    let opts = TestRunOptions { data_in: Some(&input), data_out: Some(&mut out), ..Default::default() };
    assert_eq!(xdp.test_run(opts).unwrap().return_value, XDP_REDIRECT);
    let (addr, family) = rules::addr16("198.51.100.50".parse().unwrap());
    let path = maps.return_paths.get(&ClientKey { addr, port: 1234, protocol: PROTO_UDP, family }, 0).expect("learned");
    assert_eq!(path.client_mac, [2, 9, 9, 9, 9, 9]);
    assert_eq!(path.host_mac, UPLINK_MAC);
    assert_eq!(path.host_addr[..4], [203, 0, 113, 1]);
    assert_eq!(path.ifindex, 1, "BPF_PROG_TEST_RUN runs XDP on the loopback device");
}

/// Runs `prog` once on `input`: the verdict and the frame that came out.
fn run_once(xdp: &Xdp, tc: &SchedClassifier, prog: Prog, input: &[u8]) -> (u32, Vec<u8>) {
    let row = Row {
        name: "",
        prog,
        input: input.to_vec(),
        verdict: 0,
        output: None,
        counts: Counts::Reason(Reason::InNotIp),
    };
    run_row(xdp, tc, &row)
}

fn learned(maps: &Maps, client: &str, port: u16) -> Option<ReturnPath> {
    let (addr, family) = rules::addr16(client.parse().unwrap());
    maps.return_paths.get(&ClientKey { addr, port, protocol: PROTO_UDP, family }, 0).ok()
}

#[test]
fn a_learned_path_is_never_overwritten_by_a_later_packet() {
    let Env { mut bpf, maps, .. } = setup();
    let (xdp, tc) = programs(&mut bpf);
    let first = Pkt::udp("198.51.100.51", 1234, "203.0.113.1", 10000, b"x").macs(UPLINK_MAC, [2, 9, 9, 9, 9, 1]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &first.build()).0, XDP_REDIRECT);
    // The same flow claimed from another MAC (an attacker on the segment): steered, but the
    // path replies take stays the one learned first.
    let spoofed = first.clone().macs(UPLINK_MAC, [2, 6, 6, 6, 6, 6]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &spoofed.build()).0, XDP_REDIRECT);
    assert_eq!(learned(&maps, "198.51.100.51", 1234).expect("learned").client_mac, [2, 9, 9, 9, 9, 1]);
    // Another flow of the same address is a flow of its own.
    let other = Pkt::udp("198.51.100.51", 1235, "203.0.113.1", 10000, b"x").macs(UPLINK_MAC, [2, 6, 6, 6, 6, 6]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &other.build()).0, XDP_REDIRECT);
    assert_eq!(learned(&maps, "198.51.100.51", 1235).expect("learned").client_mac, [2, 6, 6, 6, 6, 6]);
}

#[test]
fn behind_the_gateway_nothing_is_learned_and_replies_take_the_fallback_path() {
    let Env { mut bpf, mut maps, .. } = setup();
    const GATEWAY_MAC: [u8; 6] = [2, 0x6a, 0, 0, 0, 1];
    let (host_addr, _) = rules::addr16("203.0.113.1".parse().unwrap());
    let fallback = ReturnPath { host_addr, ifindex: 1, client_mac: GATEWAY_MAC, host_mac: UPLINK_MAC };
    maps.fallback_paths.set(FALLBACK_V4, fallback, 0).unwrap();
    let (xdp, tc) = programs(&mut bpf);
    // Off-link clients: through the gateway, and one whose frame claims another MAC (an
    // attacker on the segment spoofing an internet address): neither is learned.
    for (client, mac) in [("198.51.100.60", GATEWAY_MAC), ("198.51.100.61", [2, 6, 6, 6, 6, 6])] {
        let input = Pkt::udp(client, 1000, "203.0.113.1", 10000, b"x").macs(UPLINK_MAC, mac).build();
        assert_eq!(run_once(xdp, tc, Prog::Xdp, &input).0, XDP_REDIRECT);
        assert_eq!(learned(&maps, client, 1000), None, "{client}: the fallback path needs no entry");
        // The reply leaves through the gateway from the host address.
        let reply = Pkt::udp("192.0.2.10", 10000, client, 1000, b"reply").macs(BRIDGE_MAC, JVB_MAC);
        let expected = reply.clone().from("203.0.113.1", 10000).macs(GATEWAY_MAC, UPLINK_MAC).build();
        let (verdict, out) = run_once(xdp, tc, Prog::Tc, &reply.build());
        assert_eq!(verdict, TC_ACT_REDIRECT, "{client}");
        assert_eq!(hex(&out), hex(&expected), "{client}: reply through the gateway");
    }
    // A client on the uplink's own subnet is reached at its own MAC: learned.
    let lan = Pkt::udp("203.0.113.77", 1000, "203.0.113.1", 10000, b"x").macs(UPLINK_MAC, [2, 7, 7, 7, 7, 7]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &lan.build()).0, XDP_REDIRECT);
    assert_eq!(learned(&maps, "203.0.113.77", 1000).expect("on-link client learned").client_mac, [2, 7, 7, 7, 7, 7]);
    // The fallback path is never taken towards a martian, the host or a backends' subnet.
    for dst in ["169.254.169.254", "127.0.0.1", "203.0.113.1", "192.0.2.50"] {
        let reply = Pkt::udp("192.0.2.10", 10000, dst, 1000, b"out").macs(BRIDGE_MAC, JVB_MAC).build();
        assert_eq!(run_once(xdp, tc, Prog::Tc, &reply).0, TC_ACT_UNSPEC, "{dst}: left to the host stack");
    }
}

#[test]
fn a_client_on_a_second_address_is_answered_from_it_through_the_gateway_as_it_is_now() {
    let Env { mut bpf, mut maps, .. } = setup();
    let (host_addr, family) = rules::addr16("203.0.113.1".parse().unwrap());
    let (second, _) = rules::addr16("203.0.113.3".parse().unwrap());
    maps.host_addrs.insert(jitsi_common::HostAddrKey { addr: second, family, _pad: [0; 3] }, 1, 0).unwrap();
    let gateway = |mac| ReturnPath { host_addr, ifindex: 1, client_mac: mac, host_mac: UPLINK_MAC };
    maps.fallback_paths.set(FALLBACK_V4, gateway([2, 0x6a, 0, 0, 0, 1]), 0).unwrap();
    let (xdp, tc) = programs(&mut bpf);
    let input = Pkt::udp("198.51.100.70", 1000, "203.0.113.3", 10000, b"x").macs(UPLINK_MAC, [2, 0x6a, 0, 0, 0, 1]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &input.build()).0, XDP_REDIRECT);
    let path = learned(&maps, "198.51.100.70", 1000).expect("the second address is learned");
    assert_eq!((path.host_addr[..4].to_vec(), path.ifindex), (vec![203, 0, 113, 3], 0), "the host address alone");
    // The router is replaced: the reply goes to the new gateway MAC, from the second address.
    maps.fallback_paths.set(FALLBACK_V4, gateway([2, 0x6b, 0, 0, 0, 2]), 0).unwrap();
    let reply = Pkt::udp("192.0.2.10", 10000, "198.51.100.70", 1000, b"reply").macs(BRIDGE_MAC, JVB_MAC);
    let expected = reply.clone().from("203.0.113.3", 10000).macs([2, 0x6b, 0, 0, 0, 2], UPLINK_MAC).build();
    let (verdict, out) = run_once(xdp, tc, Prog::Tc, &reply.build());
    assert_eq!(verdict, TC_ACT_REDIRECT);
    assert_eq!(hex(&out), hex(&expected));
}

#[test]
fn byte_counters_count_the_frame_not_its_length_fields() {
    let Env { mut bpf, maps, slots } = setup();
    let (xdp, tc) = programs(&mut bpf);
    let bytes_in = |slot| -> u64 { maps.rule_stats.get(&slot, 0).unwrap().iter().map(|s| s.bytes_in).sum() };
    let reason_bytes =
        |r: Reason| -> u64 { maps.reason_stats.get(&(r as u32), 0).unwrap().iter().map(|s| s.bytes).sum() };
    // A short frame with Ethernet padding after the IP packet: the frame is 60 bytes.
    let mut padded = Pkt::udp("203.0.113.2", 40000, "203.0.113.1", 10000, b"a").build();
    padded.resize(60, 0);
    let before = bytes_in(slots["jvb"]);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &padded).0, XDP_REDIRECT);
    assert_eq!(bytes_in(slots["jvb"]) - before, 60);
    // A packet whose IPv4 length field claims 1500 bytes, on an unsteered port.
    let mut lying = Pkt::udp("203.0.113.2", 40000, "203.0.113.1", 9999, b"a").build();
    lying[16..18].copy_from_slice(&1500u16.to_be_bytes());
    let before = reason_bytes(Reason::InNoRule);
    assert_eq!(run_once(xdp, tc, Prog::Xdp, &lying).0, XDP_PASS);
    assert_eq!(reason_bytes(Reason::InNoRule) - before, lying.len() as u64);
}

/// `skb->mark` after `reply_out` ran on `input` (offset 8 of `struct __sk_buff`).
fn mark_after(tc: &SchedClassifier, input: &[u8]) -> u32 {
    let mut out = vec![0u8; input.len() + 64];
    let ctx_in = [0u8; 192];
    let mut ctx_out = [0u8; 192];
    let opts = TestRunOptions {
        data_in: Some(input),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx_in),
        ctx_out: Some(&mut ctx_out),
        ..Default::default()
    };
    tc.test_run(opts).expect("test run");
    u32::from_ne_bytes(ctx_out[8..12].try_into().unwrap())
}

#[test]
fn sni_backend_replies_get_the_reply_mark_and_others_do_not() {
    let Env { mut bpf, .. } = setup();
    let (_, tc) = programs(&mut bpf);
    let client = "203.0.113.2";
    let tls = Pkt::tcp("192.0.2.12", 8443, client, 40002, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC).build();
    assert_eq!(mark_after(tc, &tls), 0x4a17);
    let tls6 = Pkt::tcp("2001:db8:b::12", 8443, "2001:db8:c::2", 40002, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC).build();
    assert_eq!(mark_after(tc, &tls6), 0x4a17);
    let steered = Pkt::tcp("192.0.2.12", 8000, client, 40001, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC).build();
    assert_eq!(mark_after(tc, &steered), 0, "a steering rule's reply is rewritten, not marked");
    let other = Pkt::tcp("192.0.2.12", 22, client, 40001, 0x12, b"").macs(BRIDGE_MAC, WEB_MAC).build();
    assert_eq!(mark_after(tc, &other), 0);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes flood limits into `flood_config` and `flood_allow` as the agent would for `flood`
/// (a `[flood]` section's body), guarding the splitter's 443.
fn set_flood(maps: &mut Maps, flood: &str) {
    let config = Config::parse(&format!("{CONFIG}\n[flood]\n{flood}"), "flood.toml".as_ref()).expect("config");
    let mut value = config.flood().kernel_config(&config.splitter_ports());
    // Rates of 0 (the file cannot say so): no refill at all, however long the rows take.
    (value.packets_per_second, value.flows_per_second) = (0, 0);
    assert_eq!(value.guarded_ports[0], 443, "{value:?}");
    maps.flood_config.set(0, value, 0).unwrap();
    for n in &config.flood().allow {
        maps.flood_allow.insert(&sources::trie_key((n.addr, n.len)), 1, 0).unwrap();
    }
}

/// The verdicts of `frames`, one run each.
fn verdicts(xdp: &Xdp, tc: &SchedClassifier, frames: &[Pkt]) -> Vec<u32> {
    frames.iter().map(|f| run_once(xdp, tc, Prog::Xdp, &f.build()).0).collect()
}

#[test]
fn flood_limits_drop_a_source_over_its_buckets_and_spare_others_and_allowed_networks() {
    let Env { mut bpf, mut maps, .. } = setup();
    set_flood(
        &mut maps,
        "packets_per_second = 1\npackets_burst = 3\nflows_per_second = 1\nflows_burst = 2\nallow = [\"198.51.100.0/24\"]",
    );
    let (xdp, tc) = programs(&mut bpf);
    let media = |src: &str, sport| Pkt::udp(src, sport, "203.0.113.1", 10000, b"media");
    const R: u32 = XDP_REDIRECT;

    // Packets: a burst of 3, then dropped; a dropped packet takes no token and learns no path.
    let src = "203.0.113.50";
    assert_eq!(verdicts(xdp, tc, &[media(src, 4000), media(src, 4000), media(src, 4000)]), [R, R, R]);
    assert_eq!(verdicts(xdp, tc, &[media(src, 4001), media(src, 4000)]), [XDP_DROP, XDP_DROP]);
    assert_eq!(reason_count(&maps, Reason::InFloodPackets), 2);
    assert!(learned(&maps, src, 4001).is_none(), "a dropped packet was learned");
    // Another source has buckets of its own.
    assert_eq!(verdicts(xdp, tc, &[media("203.0.113.51", 4000)]), [R]);

    // New flows: two source ports, then a third is dropped; a known port still passes.
    let src = "203.0.113.52";
    assert_eq!(verdicts(xdp, tc, &[media(src, 1), media(src, 2), media(src, 3), media(src, 1)]), [R, R, XDP_DROP, R]);
    assert_eq!(reason_count(&maps, Reason::InFloodFlows), 1);
    // A TCP SYN to a steered port is a new flow; the rest of a connection is not.
    let src = "203.0.113.53";
    let web = |sport, flags| Pkt::tcp(src, sport, "203.0.113.1", 80, flags, b"");
    assert_eq!(verdicts(xdp, tc, &[web(1, 0x02), web(2, 0x02), web(3, 0x02), web(1, 0x10)]), [R, R, XDP_DROP, R]);
    assert_eq!(reason_count(&maps, Reason::InFloodFlows), 2);

    // SYNs to the splitter's 443 (not steered: passed to the stack) take new-flow tokens;
    // segments that are not a lone SYN, and SYNs to other ports, are not looked at.
    let src = "203.0.113.54";
    let tls = |sport, dport, flags| Pkt::tcp(src, sport, "203.0.113.1", dport, flags, b"");
    let no_rule_before = reason_count(&maps, Reason::InNoRule);
    assert_eq!(
        verdicts(
            xdp,
            tc,
            &[tls(1, 443, 0x02), tls(2, 443, 0x02), tls(3, 443, 0x02), tls(1, 443, 0x10), tls(4, 444, 0x02)]
        ),
        [XDP_PASS, XDP_PASS, XDP_DROP, XDP_PASS, XDP_PASS]
    );
    assert_eq!(reason_count(&maps, Reason::InFloodConnections), 1);
    assert_eq!(reason_count(&maps, Reason::InNoRule), no_rule_before + 4);

    // IPv6: one source per /64. Two new flows from two of its addresses, and a third address's
    // is one too many; the known flows go on until the /64's packets run out.
    let media6 = |src: &str| Pkt::udp(src, 4000, "2001:db8:c::1", 10000, b"media6");
    let (a, b) = ("2001:db8:d::1", "2001:db8:d::2");
    assert_eq!(verdicts(xdp, tc, &[media6(a), media6(b), media6("2001:db8:d::ffff")]), [R, R, XDP_DROP]);
    assert_eq!(reason_count(&maps, Reason::InFloodFlows), 3);
    assert_eq!(verdicts(xdp, tc, &[media6(a), media6(b)]), [R, XDP_DROP]);
    assert_eq!(reason_count(&maps, Reason::InFloodPackets), 3);
    assert_eq!(verdicts(xdp, tc, &[media6("2001:db8:e::1")]), [R], "another /64");
    let (addr, family) = rules::addr16("2001:db8:d::".parse().unwrap());
    let key = jitsi_common::FloodKey { addr, family, _pad: [0; 3] };
    assert!(maps.flood_sources.get(&key, 0).is_ok(), "the /64's bucket");

    // An allowed network is never dropped, whatever it sends.
    let src = "198.51.100.9";
    let frames: Vec<Pkt> = (1..=10).map(|p| media(src, p)).collect();
    assert_eq!(verdicts(xdp, tc, &frames), [R; 10]);

    // Limits off: nothing is dropped, and no state is kept for a new source.
    set_flood(&mut maps, "enabled = false");
    assert_eq!(verdicts(xdp, tc, &[media("203.0.113.50", 4000), media("203.0.113.50", 4009)]), [R, R]);
    let (addr, family) = rules::addr16("203.0.113.60".parse().unwrap());
    assert_eq!(verdicts(xdp, tc, &[media("203.0.113.60", 1)]), [R]);
    assert!(maps.flood_sources.get(&jitsi_common::FloodKey { addr, family, _pad: [0; 3] }, 0).is_err());
}

/// The namespace of the generic-mode table: a tap as the uplink, and a veth at each ifindex
/// the table's backends and gateway resolve to, whose peer receives what is redirected there.
/// No addresses and no IPv6, so that nothing but the rows' frames moves.
fn generic_lab() -> (NetNs, Tap) {
    let ns = NetNs::new("jt-gen").expect("namespace");
    ns.sysctl("net.ipv6.conf.all.disable_ipv6", "1").unwrap();
    ns.sysctl("net.ipv6.conf.default.disable_ipv6", "1").unwrap();
    for index in REDIRECT_TARGETS {
        let (port, peer, peer_index) = (format!("vt{index}"), format!("pt{index}"), (index + 10).to_string());
        let index = index.to_string();
        ns.ip(&["link", "add", &port, "index", &index, "type", "veth", "peer", "name", &peer, "index", &peer_index])
            .unwrap();
        for dev in [&port, &peer] {
            ns.ip(&["link", "set", dev, "up"]).unwrap();
        }
    }
    let tap = Tap::create(&ns, "up0").expect("tap");
    ns.ip(&["link", "set", "up0", "up"]).unwrap();
    (ns, tap)
}

/// The ifindexes `setup` resolves the backends (7, 8, 9) and the bridge (3) to.
const REDIRECT_TARGETS: [u32; 4] = [3, 7, 8, 9];

/// Runs `f` on a thread inside `ns` (scoped: it may borrow), for the calls that act on the
/// calling thread's namespace (attaching by interface, packet sockets).
fn in_ns<T: Send>(ns: &NetNs, f: impl FnOnce() -> T + Send) -> T {
    let file = ns.file().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            assert_eq!(unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) }, 0, "setns");
            f()
        })
        .join()
        .expect("thread in the namespace")
    })
}

/// The table's `steer_in` rows again, with `steer_in` attached in generic (skb) mode to a
/// tap: each input frame is delivered by the tap as a received frame, and the verdict is read
/// from where the frame comes out: on the tap's receive side after the program (XDP_PASS), at
/// the peer of the veth it was redirected to (XDP_REDIRECT), or nowhere (XDP_DROP). The bytes
/// and the counter are checked as in `packet_table`.
#[test]
fn packet_table_in_generic_mode() {
    let (ns, tap) = generic_lab();
    let Env { mut bpf, maps, slots } = setup();
    let rows: Vec<Row> = rows().into_iter().filter(|r| matches!(r.prog, Prog::Xdp)).collect();
    assert!(rows.len() >= 30, "the table has {} steer_in rows", rows.len());
    let xdp: &mut Xdp = bpf.program_mut("steer_in").unwrap().try_into().unwrap();
    let count = |c: &Counts| counted(&maps, &slots, c);
    let (failures, skipped) = in_ns(&ns, || {
        xdp.attach("up0", XdpMode::Skb).expect("attaching steer_in in generic mode");
        let passed = Capture::here("up0").unwrap();
        // Where a redirect can come out: the veths' peers, the loopback (ifindex 1), and the
        // uplink's own transmit side (read from the tap, ifindex of up0).
        let mut targets: Vec<(u32, Capture)> =
            REDIRECT_TARGETS.iter().map(|i| (*i, Capture::here(&format!("pt{i}")).unwrap())).collect();
        targets.push((1, Capture::here("lo").unwrap()));
        let (mut failures, mut skipped) = (Vec::new(), Vec::new());
        for row in &rows {
            if row.input.len() < 14 {
                // tun takes no frame shorter than an Ethernet header; nor does a NIC deliver one.
                skipped.push(row.name);
                continue;
            }
            passed.drain().unwrap();
            for (_, t) in &targets {
                t.drain().unwrap();
            }
            while tap.recv(Duration::ZERO).unwrap().is_some() {}
            let before = count(&row.counts);
            tap.send(RxChecksum::None, &row.input).unwrap();
            let wait = if row.verdict == XDP_DROP { Duration::from_millis(100) } else { Duration::from_secs(1) };
            let (verdict, out, at) = come_out(&passed, &targets, &tap, wait);
            let after = count(&row.counts);
            failures.extend(judge(row, verdict, &out, (before, after)));
            // The redirect went to the device of the backend (or the bridge) whose MAC the
            // frame now carries, as `setup` resolved it.
            let want = row.output.as_ref().filter(|_| verdict == XDP_REDIRECT).map(|o| target_of(&o[..6]));
            if want.is_some_and(|w| Some(w) != at) {
                failures.push(format!("{}: redirected to ifindex {at:?}, expected {want:?}", row.name));
            }
        }
        (failures, skipped)
    });
    assert!(
        failures.is_empty(),
        "{} of {} rows failed in generic mode:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    assert!(skipped.len() <= 2, "rows skipped (shorter than an Ethernet header): {skipped:?}");
    eprintln!("{} steer_in rows in generic mode, skipped (under 14 bytes): {skipped:?}", rows.len());
    drop(tap);
}

/// Where a frame delivered to the tap came out within `wait`: (XDP verdict, bytes, the
/// ifindex a redirect reached; 0 for the uplink itself).
fn come_out(passed: &Capture, targets: &[(u32, Capture)], tap: &Tap, wait: Duration) -> (u32, Vec<u8>, Option<u32>) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(f) = passed.recv(Duration::from_millis(5)).unwrap() {
            return (XDP_PASS, f, None);
        }
        for (index, t) in targets {
            if let Some(f) = t.recv(Duration::ZERO).unwrap() {
                return (XDP_REDIRECT, f, Some(*index));
            }
        }
        if let Some((_, f)) = tap.recv(Duration::ZERO).unwrap() {
            return (XDP_REDIRECT, f, Some(0));
        }
    }
    (XDP_DROP, Vec::new(), None)
}

/// The ifindex `setup` resolves the owner of `mac` to.
fn target_of(mac: &[u8]) -> u32 {
    match <[u8; 6]>::try_from(mac).expect("a MAC") {
        JVB_MAC => 7,
        TURN_MAC => 8,
        WEB_MAC => 9,
        BRIDGE_MAC => 3,
        other => panic!("no device for {other:02x?}"),
    }
}
