//! The Debian package under a real systemd 252: a Debian 12 root from `debootstrap`, booted
//! with `systemd-nspawn` in the lab's host namespace, the package installed with
//! `apt-get install ./jitsi-agent_*.deb`, the units enabled, and traffic from the lab's
//! internet namespace. The agent runs with the unit's capabilities and sandbox, not root's:
//! it steers, splits, reloads (asked, and on its own when the file changes), restarts and is
//! upgraded without losing a packet or refusing a connection, is removed and purged without
//! leaving anything attached; with `[acme]` it installs the TURN name's certificate from
//! Pebble into coturn's directory and signals a real coturn container through Docker.
//! Needs root and the package (`cargo xtask test` builds it and sets `JITSI_DEB`).

use std::{
    io::Read,
    net::SocketAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use jitsi_tests::{
    clients::{built_by_xtask, recorded_hello, sni_exchange, udp_round_trip, udp_socket, under_load},
    docker::DockerEngine,
    lab::{CLIENT_ALLOWED, CLIENT_V4, HOST_V4, LAB_RULES, Lab, SNI_WEB},
    machine::Machine,
    netns::NetNs,
    pebble::Pebble,
    servers,
};

/// The capabilities the unit grants: CHOWN, NET_BIND_SERVICE, NET_ADMIN, SYS_ADMIN, PERFMON, BPF.
const UNIT_CAPS: &str = "000000c000201401";

fn deb() -> PathBuf {
    built_by_xtask("JITSI_DEB", "the package")
}

/// Connects to the host's 443, sends a recorded hello and reads the backend's greeting line.
fn sni_greeting(inet: &NetNs) -> std::io::Result<String> {
    let mut s = sni_exchange(inet, &recorded_hello("chromium-meet.bin"))?;
    let mut line = b"seen ".to_vec();
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

/// The package again with Debian revision 2 (the same files): what an upgrade installs.
fn next_revision(deb: &std::path::Path, dir: &std::path::Path) -> PathBuf {
    let tree = dir.join("deb-tree");
    let _ = std::fs::remove_dir_all(&tree);
    let run = |args: &[&str]| {
        let out = std::process::Command::new("dpkg-deb").args(args).output().expect("dpkg-deb");
        assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["-R", deb.to_str().unwrap(), tree.to_str().unwrap()]);
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = text.lines().find_map(|l| l.strip_prefix("Version: ")).unwrap().to_string();
    let next = format!("{}-2", version.strip_suffix("-1").expect("the package's revision is 1"));
    assert_ne!(version, next, "the package's revision is 1");
    std::fs::write(&control, text.replace(&format!("Version: {version}"), &format!("Version: {next}"))).unwrap();
    let out = dir.join(format!("jitsi-agent_{next}.deb"));
    run(&["--root-owner-group", "-b", tree.to_str().unwrap(), out.to_str().unwrap()]);
    out
}

/// Runs `step` under load (2,000 datagrams/s to 10000/udp and a TLS connect loop on 443);
/// asserts that the jvb backend got every datagram and that no connection failed.
fn losing_nothing(lab: &Lab, jvb: &servers::Server, machine: &Machine, what: &str, step: impl FnOnce()) {
    let before = jvb.count() as u64;
    let ((), load) = under_load(lab, 2000, step);
    assert_eq!(
        load.delivered(jvb, before),
        load.sent,
        "UDP datagrams lost across {what}:\n{}",
        machine.journal("jitsi-agent")
    );
    assert!(
        load.failed.is_empty(),
        "{} of {} connections failed across {what}: {:?}",
        load.failed.len(),
        load.connected as usize + load.failed.len(),
        &load.failed[..load.failed.len().min(3)]
    );
    assert!(load.connected > 5, "connections went through during {what}");
}

#[test]
fn the_package_under_a_real_systemd_steers_splits_reloads_restarts_upgrades_and_purges() {
    let deb = deb();
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let (jvb, turn, web) = (lab.backend("jvb"), lab.backend("turn"), lab.backend("web"));
    let jvb_sink = servers::udp(&jvb.ns, jvb.addr4(10000)).unwrap();
    let _turn = servers::udp(&turn.ns, turn.addr4(3478)).unwrap();
    let _turn5000 = servers::udp(&turn.ns, turn.addr4(5000)).unwrap();
    let _turn5001 = servers::udp(&turn.ns, turn.addr4(5001)).unwrap();
    let _web = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    // The client's connect loop is far beyond one address's flood limits (see CLIENT_ALLOWED).
    let config = format!("[uplink]\ninterface = \"up0\"\n\n{LAB_RULES}{SNI_WEB}{CLIENT_ALLOWED}");
    let machine = Machine::boot(&lab.host, &deb, &[], |root| {
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
    // (ExecReload= returns once the signal is sent; the journal says when it is applied.)
    let rule = |port: u16| {
        format!(
            "\n[[steer]]\nname = \"alt{port}\"\nprotocol = \"udp\"\nport = {port}\nbackend = \"192.0.2.11:{port}\"\n"
        )
    };
    let more = format!("{config}{}", rule(5000));
    std::fs::write(machine.path("/etc/jitsi-agent/agent.toml"), &more).unwrap();
    let reloaded = || machine.journal("jitsi-agent").matches("reloaded").count();
    // Answered by the backend behind `port` (retried while the change is being applied).
    let answered = |port: u16| {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), port), "alt") {
                Ok((_, reply)) => return reply,
                Err(e) if Instant::now() > deadline => panic!("{port}/udp: {e:#}\n{}", machine.journal("jitsi-agent")),
                Err(_) => {}
            }
        }
    };
    // (The file watcher may apply the write before the signal arrives: either way it applies.)
    let before = reloaded();
    machine.systemctl(&["reload", "jitsi-agent.service"]).unwrap();
    machine.wait_journal("jitsi-agent", "reloaded", before + 1, Duration::from_secs(10)).unwrap();
    let reply = answered(5000);
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");
    // The file changed without a reload: the agent sees it (inotify, under the unit's sandbox).
    let (before, changes) = (reloaded(), machine.journal("jitsi-agent").matches("configuration file changed").count());
    std::fs::write(machine.path("/etc/jitsi-agent/agent.toml"), format!("{more}{}", rule(5001))).unwrap();
    machine.wait_journal("jitsi-agent", "reloaded", before + 1, Duration::from_secs(10)).unwrap();
    let now = machine.journal("jitsi-agent").matches("configuration file changed").count();
    assert_eq!(now, changes + 1, "applied by the file watcher");
    let reply = answered(5001);
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");

    // `systemctl restart` under UDP load loses no packet and under connect load refuses none.
    losing_nothing(&lab, &jvb_sink, &machine, "systemctl restart", || {
        machine.systemctl(&["restart", "jitsi-agent.service"]).unwrap();
    });
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("adopted the pinned datapath"), "the restarted agent adopted the pins:\n{journal}");

    // The journal: one plain line per event, no colour codes.
    assert!(!journal.contains('\u{1b}'), "colour codes in the journal:\n{journal}");
    assert!(journal.lines().all(|l| !l.trim().is_empty()));

    // An upgrade (`apt-get install` of the next revision) restarts the agent with the new
    // binary, under the same load, losing nothing.
    let before = machine.main_pid("jitsi-agent.service").unwrap();
    let next = next_revision(&deb, lab.work_dir());
    losing_nothing(&lab, &jvb_sink, &machine, "the package's upgrade", || {
        machine.install(&next).unwrap();
    });
    let after = machine.main_pid("jitsi-agent.service").unwrap();
    assert_ne!(before, after, "the upgrade restarted the agent");
    let version = machine.exec("dpkg-query", &["-W", "-f", "${Version}", "jitsi-agent"]).unwrap();
    assert!(String::from_utf8_lossy(&version.stdout).ends_with("-2"), "{version:?}");
    assert_eq!(machine.systemctl(&["is-enabled", "jitsi-agent.service"]).unwrap(), "enabled", "still enabled");

    // `systemctl stop` leaves the datapath steering.
    machine.systemctl(&["stop", "jitsi-agent.service", "jitsi-agent.socket"]).unwrap();
    let (_, reply) = udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "stopped").unwrap();
    assert!(reply.starts_with(&format!("seen {CLIENT_V4}:")), "{reply}");

    // Removing the package detaches the datapath (nothing would manage it) and keeps the
    // configuration; purging removes the rest.
    machine.systemctl(&["start", "jitsi-agent.socket", "jitsi-agent.service"]).unwrap();
    machine.apt(&["remove", "-y", "-q", "jitsi-agent"]).unwrap();
    let xdp = |lab: &Lab| {
        let out = lab.host.enter(|| std::process::Command::new("ip").args(["-d", "link", "show", "up0"]).output());
        String::from_utf8_lossy(&out.unwrap().unwrap().stdout).contains("prog/xdp")
    };
    assert!(!xdp(&lab), "the XDP program is detached after removal");
    assert!(udp_round_trip(&client, SocketAddr::new(HOST_V4.into(), 10000), "removed").is_err(), "no longer steered");
    assert!(machine.path("/etc/jitsi-agent/agent.toml").exists(), "the configuration stays until purge");
    assert!(!machine.path("/sys/fs/bpf/jitsi-agent").exists(), "no pins left");
    let active = machine.exec("systemctl", &["is-active", "jitsi-agent.service"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "inactive");
    // Installed again after the removal: the units are unmasked and enabled as they were.
    machine.install(&next).unwrap();
    assert_eq!(machine.systemctl(&["is-enabled", "jitsi-agent.service"]).unwrap(), "enabled");
    machine.apt(&["remove", "-y", "-q", "jitsi-agent"]).unwrap();
    // The test's own drop-in is the operator's file, not the package's: it goes by hand.
    std::fs::remove_dir_all(machine.path("/etc/systemd/system/jitsi-agent.service.d")).unwrap();
    machine.apt(&["purge", "-y", "-q", "jitsi-agent"]).unwrap();
    for gone in ["/etc/jitsi-agent", "/var/lib/jitsi-agent", "/etc/systemd/system/jitsi-agent.service"] {
        assert!(!machine.path(gone).exists(), "{gone} is left after purge");
    }
    let enabled = machine.exec("sh", &["-c", "ls -R /etc/systemd/system /var/lib/systemd/deb-systemd-helper-enabled"]);
    let listing = String::from_utf8_lossy(&enabled.unwrap().stdout).into_owned();
    assert!(!listing.contains("jitsi-agent"), "units still enabled or masked after purge:\n{listing}");
}

/// `[stack]` with `[acme]`: the certificate for the TURN name comes from Pebble over port 80
/// and goes into the stack's `coturn/certs` (the unit's ReadWritePaths=), owned by coturn's
/// group (CAP_CHOWN), and coturn (Debian's, in a container of a Docker engine whose socket the
/// machine has at /run/docker.sock) is told to reload it (SIGUSR2 through the Docker API).
#[test]
fn acme_under_the_unit_installs_the_turn_certificate_in_coturns_directory_and_signals_coturn() {
    let deb = deb();
    let lab = Lab::new(&[]).expect("lab");
    let engine = DockerEngine::start(&lab.host, lab.work_dir()).unwrap();
    engine.build_coturn("jitsi-test/coturn:debian").unwrap();
    engine.docker(&["network", "create", "--subnet", "172.18.0.0/24", "jitsi_meet.jitsi"]).unwrap();
    let pebble = Pebble::start(&lab.inet, lab.work_dir(), HOST_V4).unwrap();
    let config = format!(
        "[uplink]\ninterface = \"up0\"\n\n[stack]\nmeet_domain = \"meet.example.test\"\n\
         turn_domain = \"turn.example.test\"\npublic_addresses = [\"{HOST_V4}\"]\n\
         coturn_image = \"jitsi-test/coturn:debian\"\nsubnet = \"172.18.0.0/24\"\n\n\
         [acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\nca_root = \"/etc/jitsi-agent/acme-ca.pem\"\n",
        pebble.directory
    );
    let ca = std::fs::read(&pebble.ca_root).unwrap();
    let socket = engine.host.trim_start_matches("unix://").to_string();
    let machine = Machine::boot(&lab.host, &deb, &[format!("{socket}:/run/docker.sock")], |root| {
        write(root.join("etc/jitsi-agent/agent.toml"), &config)?;
        std::fs::write(root.join("etc/jitsi-agent/acme-ca.pem"), &ca)?;
        write(root.join("etc/systemd/system/jitsi-agent.service.d/nofile.conf"), "[Service]\nLimitNOFILE=20000\n")
    })
    .expect("booting the machine");
    let mount = machine.exec("mount", &["-t", "bpf", "bpffs", "/sys/fs/bpf"]).unwrap();
    assert!(mount.status.success(), "{}", String::from_utf8_lossy(&mount.stderr));
    // The operator's step before starting the agent: the stack's files, with coturn's
    // directory and the placeholder certificate it starts with.
    let init = machine.exec("jitsi-agent", &["stack", "init", "--config", "/etc/jitsi-agent/agent.toml"]).unwrap();
    assert!(init.status.success(), "stack init: {}", String::from_utf8_lossy(&init.stderr));
    // coturn as the generated Compose file runs it (`docker-compose.yml`'s coturn service).
    let coturn_dir = machine.path("/srv/jitsi-meet/coturn");
    let volume = format!("{}:{}:ro", coturn_dir.display(), jitsi_agent::stack::coturn::MOUNT);
    engine
        .docker(&[
            "run",
            "-d",
            "--name",
            "jitsi_coturn_1",
            "--network",
            "jitsi_meet.jitsi",
            "--ip",
            "172.18.0.11",
            "--label",
            "com.docker.compose.project=jitsi",
            "--label",
            "com.docker.compose.service=coturn",
            "-v",
            &volume,
            "jitsi-test/coturn:debian",
            "-c",
            jitsi_agent::stack::coturn::CONF,
            "--use-auth-secret",
        ])
        .unwrap();

    // The agent turns GRO on at the container's end of its veth (XDP redirects need it) from
    // the container's namespace file, which a host has under /run/docker/netns; this machine
    // sees neither that file nor the container's processes, so the test does it.
    let pid = engine.docker(&["inspect", "--format", "{{.State.Pid}}", "jitsi_coturn_1"]).unwrap();
    let gro = std::process::Command::new("nsenter")
        .args(["-t", pid.trim(), "-n", "ethtool", "-K", "eth0", "gro", "on"])
        .output()
        .unwrap();
    assert!(gro.status.success(), "{}", String::from_utf8_lossy(&gro.stderr));

    machine.systemctl(&["enable", "--now", "jitsi-agent.socket", "jitsi-agent.service"]).unwrap();
    machine
        .wait_journal("jitsi-agent", "acme: sent SIGUSR2 to reload the certificate", 1, Duration::from_secs(60))
        .unwrap();
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("acme: answered an HTTP-01 challenge"), "Pebble validated over port 80:\n{journal}");

    // The certificate is Pebble's, for the TURN name, owned and moded for coturn's group.
    let certs = coturn_dir.join("certs");
    let chain = std::fs::read(certs.join("turn.crt")).unwrap();
    assert!(!jitsi_agent::acme::cert::is_placeholder(&chain), "the placeholder was replaced");
    use std::os::unix::fs::MetadataExt as _;
    let key = std::fs::metadata(certs.join("turn.key")).unwrap();
    let dir = std::fs::metadata(&certs).unwrap();
    assert_eq!((key.uid(), key.gid(), key.mode() & 0o777), (0, dir.gid(), 0o640), "turn.key");
    assert_ne!(dir.gid(), 0, "coturn's directory belongs to its group");

    // 3478/udp is steered into the coturn container, which sees the client's own address.
    let client = udp_socket(&lab.inet, false).unwrap();
    let mapped = jitsi_tests::turn::binding(&client, SocketAddr::new(HOST_V4.into(), 3478)).unwrap();
    assert_eq!(mapped, SocketAddr::new(CLIENT_V4.into(), client.local_addr().unwrap().port()), "coturn saw the client");
    // coturn got the signal and reloaded.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = engine.docker(&["logs", "jitsi_coturn_1"]).unwrap_or_default();
        if logs.contains("Reloading TLS certificates and keys") {
            break;
        }
        assert!(Instant::now() < deadline, "coturn did not reload:\n{logs}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// One websocket-like connection through the splitters: after its hello (a recorded TLS
/// ClientHello on 443, or an HTTP upgrade request on 80) and the echo backend's greeting and
/// echo of it, a numbered line every 50 ms, each answered before the next.
struct Chatty {
    stream: std::net::TcpStream,
    name: String,
    /// The bytes the backend must have seen, in order.
    sent: Vec<u8>,
}

const UPGRADE: &str =
    "GET /xmpp-websocket HTTP/1.1\r\nHost: meet.example.test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";

impl Chatty {
    fn open(inet: &NetNs, i: usize) -> anyhow::Result<Self> {
        let (mut stream, first, name) = if i.is_multiple_of(2) {
            let hello = recorded_hello("chromium-meet.bin");
            (sni_exchange(inet, &hello)?, hello, format!("tls{i:03}"))
        } else {
            let to = SocketAddr::new(HOST_V4.into(), 80);
            let mut s = inet.enter(move || std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
            s.set_read_timeout(Some(Duration::from_secs(15)))?;
            std::io::Write::write_all(&mut s, UPGRADE.as_bytes())?;
            (s, UPGRADE.as_bytes().to_vec(), format!("web{i:03}"))
        };
        // The rest of the greeting (`seen <client>\n`, its first five bytes read for TLS), then
        // the echo of what was sent.
        let mut line = Vec::new();
        let mut b = [0u8; 1];
        while b[0] != b'\n' {
            stream.read_exact(&mut b)?;
            line.push(b[0]);
        }
        let line = String::from_utf8_lossy(&line).into_owned();
        anyhow::ensure!(line.contains(&format!("{CLIENT_V4}:")), "{name}: greeting {line:?}");
        let mut echo = vec![0u8; first.len()];
        stream.read_exact(&mut echo)?;
        anyhow::ensure!(echo == first, "{name}: the hello's echo differs");
        Ok(Chatty { stream, name, sent: first })
    }

    /// Sends line `n` and reads its echo.
    fn exchange(&mut self, n: u32) -> anyhow::Result<()> {
        let line = format!("{} {n:06}\n", self.name);
        std::io::Write::write_all(&mut self.stream, line.as_bytes())?;
        let mut echo = vec![0u8; line.len()];
        self.stream.read_exact(&mut echo).map_err(|e| anyhow::anyhow!("{}: echo of line {n}: {e}", self.name))?;
        anyhow::ensure!(
            echo == line.as_bytes(),
            "{}: line {n} came back as {:?}",
            self.name,
            String::from_utf8_lossy(&echo)
        );
        self.sent.extend_from_slice(line.as_bytes());
        Ok(())
    }
}

/// `systemctl restart` hands the splitters' established connections to the next agent: 200
/// websocket-like connections (100 through 443, 100 through 80) exchanging a line every 50 ms
/// stay open across three restarts, every line arriving once and in order at the backend,
/// which sees the client's own address throughout; one more, blocked writing both ways (its
/// client sends 4 MiB without reading), is handed over with the bytes its relay holds and
/// gets all 4 MiB back intact; `systemctl stop` still drains and closes.
#[test]
fn established_connections_live_through_three_restarts_and_a_stop_drains_them() {
    let deb = deb();
    let lab = Lab::new(&["jvb", "turn", "web"]).expect("lab");
    let web = lab.backend("web");
    let tls_echo = servers::tcp(&web.ns, web.addr4(8443)).unwrap();
    let http_echo = servers::tcp(&web.ns, web.addr4(8000)).unwrap();
    let config = "[uplink]\ninterface = \"up0\"\n\n[[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\n\
                  backend = \"192.0.2.10:10000\"\n\n[splitter]\ndrain_timeout_secs = 2\n\n[tls]\n[[tls.route]]\nname = \"web\"\n\
                  server_names = [\"meet.example.test\"]\nbackend = \"192.0.2.12:8443\"\n\n[http]\n\n[[http.route]]\n\
                  name = \"meet\"\nhost_names = [\"meet.example.test\"]\nbackend = \"192.0.2.12:8000\"\n";
    let config = &format!("{config}{CLIENT_ALLOWED}");
    let machine = Machine::boot(&lab.host, &deb, &[], |root| {
        write(root.join("etc/jitsi-agent/agent.toml"), config)?;
        write(root.join("etc/systemd/system/jitsi-agent.service.d/nofile.conf"), "[Service]\nLimitNOFILE=20000\n")
    })
    .expect("booting the machine");
    let mount = machine.exec("mount", &["-t", "bpf", "bpffs", "/sys/fs/bpf"]).unwrap();
    assert!(mount.status.success(), "{}", String::from_utf8_lossy(&mount.stderr));
    machine.systemctl(&["enable", "--now", "jitsi-agent.socket", "jitsi-agent.service"]).unwrap();

    let conns: Vec<Chatty> = (0..200).map(|i| Chatty::open(&lab.inet, i).unwrap()).collect();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let talkers: Vec<_> = conns
        .into_iter()
        .map(|mut c| {
            let stop = stop.clone();
            std::thread::spawn(move || -> anyhow::Result<(Chatty, u32)> {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    c.exchange(n)?;
                    n += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Ok((c, n))
            })
        })
        .collect();
    // And one that does not read while it sends 4 MiB: the echo backend stops reading when its
    // answers pile up, so the relay is blocked writing both ways when the restarts come.
    let bulk: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
    let mut stuck = Chatty::open(&lab.inet, 200).unwrap();
    let writer = {
        let (mut w, bulk) = (stuck.stream.try_clone().unwrap(), bulk.clone());
        std::thread::spawn(move || std::io::Write::write_all(&mut w, &bulk))
    };
    let adopted = || machine.journal("jitsi-agent").matches("adopted=201 ").count();
    for round in 1..=3 {
        std::thread::sleep(Duration::from_secs(1));
        let pid = machine.main_pid("jitsi-agent.service").unwrap();
        machine.systemctl(&["restart", "jitsi-agent.service"]).unwrap();
        assert_ne!(machine.main_pid("jitsi-agent.service").unwrap(), pid, "restart {round}: a new process");
        assert_eq!(adopted(), round, "restart {round}: all 201 taken up\n{}", machine.journal("jitsi-agent"));
    }
    std::thread::sleep(Duration::from_secs(1));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut finished = Vec::new();
    for t in talkers {
        let (c, n) = t.join().unwrap().unwrap_or_else(|e| panic!("{e:#}\n{}", machine.journal("jitsi-agent")));
        assert!(n >= 40, "{}: {n} lines in about 4 s", c.name);
        finished.push(c);
    }
    // The blocked one: every byte comes back, once and in order.
    let mut echoed = vec![0u8; bulk.len()];
    stuck.stream.read_exact(&mut echoed).unwrap();
    assert!(echoed == bulk, "the 4 MiB came back altered");
    writer.join().unwrap().unwrap();
    let journal = machine.journal("jitsi-agent");
    for l in journal.lines().filter(|l| l.contains("handover:")) {
        eprintln!("{l}");
    }
    assert_eq!(journal.matches("handed_over=201 drain=0 ").count(), 3, "nothing left to drain:\n{journal}");
    assert_eq!(journal.matches("handover: connections left to the next agent").count(), 3, "{journal}");
    assert!(!journal.contains("draining open connections"), "a restart drains nothing:\n{journal}");
    // Closed by the client: the backend has seen, per connection, exactly what was sent.
    for mut c in finished {
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let mut rest = Vec::new();
        c.stream.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{}: {} bytes after the last echo", c.name, rest.len());
        let server = if c.name.starts_with("tls") { &tls_echo } else { &http_echo };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The client's own address and port, then the bytes: both must match.
            let me = c.stream.local_addr().unwrap();
            let seen = server.seen.lock().unwrap().iter().any(|(peer, got)| *peer == me && *got == c.sent);
            if seen {
                break;
            }
            assert!(Instant::now() < deadline, "{}: the backend did not see exactly the lines sent, once each", c.name);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    // `systemctl stop` is not a restart: open connections drain (2 s here), then close.
    let mut held = Chatty::open(&lab.inet, 0).unwrap();
    held.exchange(0).unwrap();
    let t0 = Instant::now();
    machine.systemctl(&["stop", "jitsi-agent.service"]).unwrap();
    let mut rest = Vec::new();
    let closed = held.stream.read_to_end(&mut rest);
    let ended = t0.elapsed();
    // A FIN or a reset, not the 15 s read timeout.
    let timed_out = closed
        .as_ref()
        .is_err_and(|e| matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut));
    assert!(!timed_out, "the connection stayed open after the stop");
    assert!(ended >= Duration::from_millis(1900) && ended < Duration::from_secs(8), "closed after {ended:?}");
    let journal = machine.journal("jitsi-agent");
    assert!(journal.contains("draining open connections"), "{journal}");
    assert_eq!(journal.matches("handover: connections left to the next agent").count(), 3, "no handover at a stop");
}
