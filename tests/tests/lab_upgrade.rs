//! The datapath upgraded in place. The agent is restarted onto another build of the eBPF
//! object (`--features upgrade-test`: other programs, and `task_health` with another size,
//! whose last slot counts the packets its `steer_in` sees), and back, while 5,000 UDP
//! datagrams/s stream to 10000/udp and TLS clients connect to 443 back to back (the listening
//! socket held as systemd's socket unit holds it). The object is named by
//! `JITSI_AGENT_EBPF_OBJECT`; `cargo xtask test` builds it and sets `JITSI_EBPF_UPGRADE_TEST`.

use std::{
    net::{SocketAddr, TcpListener},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::{ProgramInfo, links::PinnedLink},
};
use jitsi_common::RuleStats;
use jitsi_tests::{
    agent::AgentProcess,
    clients::{built_by_xtask, udp_round_trip, udp_socket, under_load},
    lab::{CLIENT_V4, HOST_V4, LAB_RULES, Lab, SNI_WEB},
    servers,
};

const OVERRIDE: &str = "JITSI_AGENT_EBPF_OBJECT";

fn upgrade_object() -> PathBuf {
    built_by_xtask("JITSI_EBPF_UPGRADE_TEST", "the upgrade test's object")
}

/// The id of the program behind the pinned link `name`.
fn linked_prog(pin_dir: &Path, name: &str) -> u32 {
    let link: aya::programs::links::FdLink = PinnedLink::from_pin(pin_dir.join(name)).unwrap().into();
    link.info().unwrap().program_id()
}

/// The id of the pinned link `name` itself (the same link, updated, keeps its id).
fn link_id(pin_dir: &Path, name: &str) -> u32 {
    let link: aya::programs::links::FdLink = PinnedLink::from_pin(pin_dir.join(name)).unwrap().into();
    link.info().unwrap().id()
}

/// The id and size of the map pinned as `name`.
fn map_id(pin_dir: &Path, name: &str) -> (u32, u32) {
    let info = aya::maps::MapInfo::from_pin(pin_dir.join(name)).unwrap();
    (info.id(), info.max_entries())
}

/// The entries of the pinned `source_prefixes`.
fn source_prefixes(pin_dir: &Path) -> usize {
    let map = Map::from_map_data(MapData::from_pin(pin_dir.join("source_prefixes")).unwrap()).unwrap();
    let t: aya::maps::lpm_trie::LpmTrie<MapData, jitsi_common::SourcePrefix, u32> = map.try_into().unwrap();
    t.keys().count()
}

fn pinned_prog(pin_dir: &Path, name: &str) -> u32 {
    ProgramInfo::from_pin(pin_dir.join(name)).unwrap().id()
}

/// `task_health` as pinned: its size, and its last slot.
fn task_health(pin_dir: &Path) -> (u32, u64) {
    let map = Map::from_map_data(MapData::from_pin(pin_dir.join("task_health")).unwrap()).unwrap();
    let a: Array<MapData, u64> = Array::try_from(map).unwrap();
    (a.len(), a.get(&(a.len() - 1), 0).unwrap())
}

/// The packets steered in by rule slot `slot`, summed over CPUs.
fn steered(pin_dir: &Path, slot: u32) -> u64 {
    let map = Map::from_map_data(MapData::from_pin(pin_dir.join("rule_stats")).unwrap()).unwrap();
    let a: PerCpuArray<MapData, RuleStats> = PerCpuArray::try_from(map).unwrap();
    a.get(&slot, 0).unwrap().iter().map(|s| s.packets_in).sum()
}

/// Stops `old` and starts an agent on `object` (`None`: the embedded one) under load (5,000
/// datagrams/s and a TLS connect loop, until a second after the new agent is ready); returns
/// the new agent.
fn restart_onto(
    lab: &Lab,
    jvb: &servers::Server,
    config: &Path,
    held: RawFd,
    old: AgentProcess,
    object: Option<&Path>,
) -> AgentProcess {
    let before = jvb.count() as u64;
    let object = object.map(|p| p.display().to_string());
    let env: Vec<(&str, &str)> = object.iter().map(|o| (OVERRIDE, o.as_str())).collect();
    let (new, load) = under_load(lab, 5000, || {
        old.stop().unwrap();
        AgentProcess::start_with_sockets_env(&lab.host, config, &[held], &env)
    });
    let new = new.unwrap();
    assert_eq!(load.delivered(jvb, before), load.sent, "datagrams lost across the upgrade:\n{}", new.log());
    assert!(
        load.failed.is_empty(),
        "{} connections failed across the upgrade: {:?}",
        load.failed.len(),
        &load.failed[..load.failed.len().min(3)]
    );
    assert!(load.connected > 5);
    new
}

#[test]
fn an_agent_of_another_build_swaps_the_programs_in_place_losing_nothing_and_counters_continue() {
    let object = upgrade_object();
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let jvb = lab.backend("jvb");
    let jvb_sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let web = lab.backend("web");
    let _web = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let config = lab.write_config(&format!("{LAB_RULES}{SNI_WEB}")).unwrap();
    let held = lab.host.enter(|| TcpListener::bind("0.0.0.0:443")).unwrap().unwrap();
    let first = AgentProcess::start_with_sockets(&lab.host, &config, &[held.as_raw_fd()]).unwrap();
    let pins = lab.pin_dir.clone();
    let client = udp_socket(&lab.inet, false).unwrap();
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "hello").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    let old_prog = pinned_prog(&pins, "prog_steer_in");
    assert_eq!(linked_prog(&pins, "link_xdp_up0"), old_prog);
    assert_eq!(task_health(&pins).0, jitsi_common::TASK_SLOTS);
    let slot = 0; // the first rule, jvb
    let counted = steered(&pins, slot);
    assert!(counted >= 1);
    let build = lab.status().unwrap()["build"].as_str().unwrap().to_string();
    let links = (link_id(&pins, "link_xdp_up0"), link_id(&pins, "link_tc_br0"));
    let kept: Vec<(u32, u32)> = ["rules", "rule_stats", "return_paths", "replies"].map(|m| map_id(&pins, m)).to_vec();
    let prefixes = map_id(&pins, "source_prefixes");

    // Onto the other build: swapped in place, nothing lost or refused.
    let second = restart_onto(&lab, &jvb_sink, &config, held.as_raw_fd(), first, Some(&object));
    let log = second.log();
    assert!(log.contains("upgrading the pinned datapath in place"), "{log}");
    assert!(log.contains("upgraded the datapath in place"), "{log}");
    assert!(log.contains("swapped in this build's steer_in"), "{log}");
    let new_prog = pinned_prog(&pins, "prog_steer_in");
    assert_ne!(new_prog, old_prog, "the new build's program is pinned");
    assert_eq!(linked_prog(&pins, "link_xdp_up0"), new_prog, "and attached");
    assert_eq!(linked_prog(&pins, "link_tc_br0"), pinned_prog(&pins, "prog_reply_out"));
    // The same links, updated (never detached and attached again).
    assert_eq!(
        (link_id(&pins, "link_xdp_up0"), link_id(&pins, "link_tc_br0")),
        links,
        "the links were updated in place"
    );
    // Maps of an unchanged definition are the same maps; source_prefixes (read by steer_in)
    // was recreated larger, and filled before the swap.
    let now: Vec<(u32, u32)> = ["rules", "rule_stats", "return_paths", "replies"].map(|m| map_id(&pins, m)).to_vec();
    assert_eq!(now, kept, "kept maps");
    let (id, size) = map_id(&pins, "source_prefixes");
    assert!(
        id != prefixes.0 && size == 2 * prefixes.1,
        "source_prefixes recreated: {prefixes:?} then {:?}",
        (id, size)
    );
    assert!(source_prefixes(&pins) > 5, "the martians are in the new source_prefixes");
    // task_health was recreated with the other size; the new steer_in counts in its last slot.
    let (len, marker) = task_health(&pins);
    assert_eq!(len, 2 * jitsi_common::TASK_SLOTS, "task_health recreated");
    assert!(marker > 1000, "the new program sees the stream: {marker}");
    // rule_stats kept: the counters continued (every datagram of the stream counted on top).
    assert!(steered(&pins, slot) >= counted + 5_000, "counters continued: {} then {}", counted, steered(&pins, slot));
    let status = lab.status().unwrap();
    let upgraded = status["build"].as_str().unwrap().to_string();
    assert_ne!(upgraded, build, "status names the new build");
    assert!(
        std::fs::read_dir(&pins).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("staged_"))
    );

    // And back: the embedded build swaps in again the same way, also when `xdp_mode` changed
    // meanwhile (an upgrade never detaches steer_in: it stays in driver mode until the next
    // start).
    let config = lab.write_config_xdp(Some("generic"), &format!("{LAB_RULES}{SNI_WEB}")).unwrap();
    let third = restart_onto(&lab, &jvb_sink, &config, held.as_raw_fd(), second, None);
    assert!(third.log().contains("upgraded the datapath in place"), "{}", third.log());
    assert!(
        third.log().contains("steer_in stays in the mode it runs in during this upgrade in place"),
        "{}",
        third.log()
    );
    let link = lab.host.ip(&["link", "show", "up0"]).unwrap();
    assert!(link.contains(" xdp ") && !link.contains("xdpgeneric"), "still driver mode, `ip link`:\n{link}");
    assert_eq!(task_health(&pins).0, jitsi_common::TASK_SLOTS);
    assert_eq!(lab.status().unwrap()["build"].as_str().unwrap(), build);
    let back = pinned_prog(&pins, "prog_steer_in");
    assert_eq!(linked_prog(&pins, "link_xdp_up0"), back);
    assert!(back != new_prog && back != old_prog);
    assert_eq!((link_id(&pins, "link_xdp_up0"), link_id(&pins, "link_tc_br0")), links, "the same links again");

    // A build that does not load leaves the running datapath alone and says why.
    third.stop().unwrap();
    let broken = lab.work_dir().join("broken.o");
    std::fs::write(&broken, b"\x7fELF not an object").unwrap();
    let refused = AgentProcess::start_with_sockets_env(
        &lab.host,
        &config,
        &[held.as_raw_fd()],
        &[(OVERRIDE, broken.to_str().unwrap())],
    );
    let said = match refused {
        Ok(a) => panic!("an agent on a broken object started:\n{}", a.log()),
        Err(e) => format!("{e:#}"),
    };
    assert!(said.contains("keeps running"), "{said}");
    assert!(
        std::fs::read_dir(&pins).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().starts_with("staged_")),
        "nothing staged is left"
    );
    assert_eq!(linked_prog(&pins, "link_xdp_up0"), back, "the attached program is unchanged");
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "still").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
}
