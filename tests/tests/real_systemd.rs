//! The Debian package under a real systemd 252: a Debian 12 root from `debootstrap`, booted
//! with `systemd-nspawn` in the lab's host namespace, the package installed with
//! `apt-get install ./jitsi-agent_*.deb`, the units enabled, and traffic from the lab's
//! internet namespace. The agent runs with the unit's capabilities and sandbox, not root's.
//! Needs root and the package (`cargo xtask test` builds it and sets `JITSI_DEB`).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    time::{Duration, Instant},
};

use jitsi_tests::{
    clients::{recorded_hello, udp_round_trip, udp_socket, udp_stream},
    lab::{CLIENT_V4, HOST_V4, LAB_RULES, Lab},
    machine::Machine,
    netns::NetNs,
    servers,
};

const SNI_WEB: &str = r#"
[sni]
[[sni.route]]
name = "web"
server_names = ["meet.example.test"]
backend = "192.0.2.12:8443"
"#;

/// The capabilities the unit grants: CHOWN, NET_BIND_SERVICE, NET_ADMIN, SYS_ADMIN, PERFMON, BPF.
const UNIT_CAPS: &str = "000000c000201401";

fn deb() -> PathBuf {
    let deb = std::env::var_os("JITSI_DEB")
        .map(PathBuf::from)
        .expect("JITSI_DEB: run through `cargo xtask test`, which builds the package");
    assert!(deb.is_file(), "{} missing", deb.display());
    deb
}

/// Connects to the host's 443, sends a recorded hello and reads the backend's greeting line.
fn sni_greeting(inet: &NetNs) -> std::io::Result<String> {
    let to = SocketAddr::new(HOST_V4.into(), 443);
    let mut s = inet.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5))).unwrap()?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.write_all(&recorded_hello("chromium-meet.bin"))?;
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while b[0] != b'\n' {
        s.read_exact(&mut b)?;
        line.push(b[0]);
    }
    Ok(String::from_utf8_lossy(&line).trim().to_string())
}

fn write(path: PathBuf, text: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(path.parent().unwrap())?;
    std::fs::write(path, text)?;
    Ok(())
}

#[test]
fn the_package_under_a_real_systemd_steers_splits_reloads_and_restarts_losing_nothing() {
    let deb = deb();
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let (jvb, turn, web) = (lab.backend("jvb"), lab.backend("turn"), lab.backend("web"));
    let jvb_sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let _turn = servers::udp(&turn.ns, turn.addr4(3478)).unwrap();
    let _turn5000 = servers::udp(&turn.ns, turn.addr4(5000)).unwrap();
    let _web = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let config = format!("[uplink]\ninterface = \"up0\"\n\n{LAB_RULES}{SNI_WEB}");
    let machine = Machine::boot(&lab.host, &deb, |root| {
        write(root.join("etc/jitsi-agent/agent.toml"), &config)?;
        // This machine's hard open-file limit is below the unit's LimitNOFILE=1048576.
        write(root.join("etc/systemd/system/jitsi-agent.service.d/nofile.conf"), "[Service]\nLimitNOFILE=20000\n")
    })
    .expect("booting the machine");

    // What systemd mounts at boot on a host (not in a container): a bpffs on /sys/fs/bpf, so
    // that the pins outlive the service's own mount namespace.
    let mount = machine.exec("mount", &["-t", "bpf", "bpffs", "/sys/fs/bpf"]).unwrap();
    assert!(mount.status.success(), "{}", String::from_utf8_lossy(&mount.stderr));
    // Installed, not started: there was no configuration of the operator's yet.
    for (query, expected) in [("is-enabled", "disabled"), ("is-active", "inactive")] {
        let out = machine.exec("systemctl", &[query, "jitsi-agent.service"]).unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), expected, "systemctl {query}");
    }
    // `enable --now` returns once the agent said READY=1 (Type=notify).
    machine.systemctl(&["enable", "--now", "jitsi-agent.socket", "jitsi-agent.service"]).unwrap();
    assert_eq!(machine.systemctl(&["is-active", "jitsi-agent.service"]).unwrap(), "active");
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("ready"), "{journal}");

    // The unit's capabilities and sandbox, not root's.
    let pid = machine.main_pid("jitsi-agent.service").unwrap();
    let status = machine.proc_status(pid).unwrap();
    let field = |k: &str| status.lines().find_map(|l| l.strip_prefix(k)).map(str::trim).unwrap_or("").to_string();
    assert_eq!(field("CapEff:"), UNIT_CAPS, "{status}");
    assert_eq!(field("NoNewPrivs:"), "1");
    assert_eq!(field("Seccomp:"), "2", "the system call filter is in force");

    // The datapath steers and the splitter routes, with the client's address.
    let client = udp_socket(&lab.inet, false).unwrap();
    let (from, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "hello").unwrap();
    assert_eq!(from, SocketAddr::new(HOST_V4.into(), 10000));
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    let greeting = sni_greeting(&lab.inet).unwrap();
    assert!(greeting.starts_with(&format!("seen {CLIENT_V4}:")), "{greeting}");

    // `systemctl reload` applies a changed file: a new rule, 5000/udp to the coturn container.
    let more = format!(
        "{config}\n[[steer]]\nname = \"alt\"\nprotocol = \"udp\"\nport = 5000\nbackend = \"192.0.2.11:5000\"\n"
    );
    std::fs::write(machine.path("/etc/jitsi-agent/agent.toml"), more).unwrap();
    machine.systemctl(&["reload", "jitsi-agent.service"]).unwrap();
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("reloaded"), "{journal}");
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 5000), "alt").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");

    // `systemctl restart` under UDP load loses no packet and under connect load refuses none.
    let before = jvb_sink.count() as u64;
    let stream = udp_stream(udp_socket(&lab.inet, false).unwrap(), SocketAddr::new(HOST_V4.into(), 10000), 2000, 3);
    let stop = AtomicBool::new(false);
    let (ok, failed) = (AtomicU64::new(0), std::sync::Mutex::new(Vec::new()));
    std::thread::scope(|scope| {
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match sni_greeting(&lab.inet) {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        });
        std::thread::sleep(Duration::from_millis(700));
        machine.systemctl(&["restart", "jitsi-agent.service"]).unwrap();
        std::thread::sleep(Duration::from_millis(1000));
        stop.store(true, Ordering::Relaxed);
    });
    let sent = stream.join().unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    while (jvb_sink.count() as u64) < before + sent && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        jvb_sink.count() as u64 - before,
        sent,
        "UDP packets lost across systemctl restart:\n{}",
        machine.journal("jitsi-agent")
    );
    let failed = failed.into_inner().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed across the restart: {:?}",
        failed.len(),
        ok.load(Ordering::Relaxed) as usize + failed.len(),
        &failed[..failed.len().min(3)]
    );
    assert!(ok.load(Ordering::Relaxed) > 5);
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("adopted the pinned datapath"), "the restarted agent adopted the pins:\n{journal}");

    // The journal: one plain line per event, no colour codes.
    assert!(!journal.contains('\u{1b}'), "colour codes in the journal:\n{journal}");
    assert!(journal.lines().all(|l| !l.trim().is_empty()));

    // `systemctl stop` leaves the datapath steering.
    machine.systemctl(&["stop", "jitsi-agent.service", "jitsi-agent.socket"]).unwrap();
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "stopped").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
}
