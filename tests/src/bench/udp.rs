//! UDP steering, 10000/udp -> the videobridge's address: the agent's XDP/TC datapath against
//! what Docker installs (iptables DNAT + conntrack + MASQUERADE with forwarding on, and the
//! userland `docker-proxy`), with XDP_DROP on the uplink as the ceiling (what the sender can
//! push). Each contender gets a fresh lab.

use std::{net::SocketAddr, sync::mpsc, time::Duration};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    emit,
    load::{Receiver, UdpLoad, udp_rtt, udp_run},
    percentile,
};
use crate::{
    agent::AgentProcess,
    lab::{HOST_V4, Lab},
    netns::{Running, spawn_in},
    servers,
};

/// The contenders, in the order they run: the agent with `steer_in` in driver (native) XDP
/// mode, then in generic (skb) mode as on a NIC whose driver has no XDP; `agent-flood` is the
/// agent in driver mode with the flood limits at their defaults, flooded by the one sender
/// (saturation runs only: what it drops, beside `xdp-drop`).
pub const CONTENDERS: [&str; 6] =
    ["agent", "agent-generic", "iptables-dnat", "docker-proxy", "xdp-drop", "agent-flood"];

/// Whether `contender`'s figure is what the sender pushed (everything dropped in XDP), not
/// what reached the backend.
fn counts_sent(contender: &str) -> bool {
    contender == "xdp-drop" || contender == "agent-flood"
}

/// Offered rates of the loss runs (packets/s).
pub const RATES: [u64; 4] = [50_000, 100_000, 200_000, 400_000];
/// Payload sizes.
pub const SIZES: [usize; 2] = [100, 1200];

const BACKEND: &str = "192.0.2.10:10000";

/// The rules Docker 20.10 writes for `-p 10000:10000/udp` on a bridge network (names as in
/// `iptables-save` on a Docker host; the bridge is the lab's `br0`, the subnet 192.0.2.0/24).
const DOCKER_RULES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:DOCKER - [0:0]
-A PREROUTING -m addrtype --dst-type LOCAL -j DOCKER
-A OUTPUT ! -d 127.0.0.0/8 -m addrtype --dst-type LOCAL -j DOCKER
-A POSTROUTING -s 192.0.2.0/24 ! -o br0 -j MASQUERADE
-A POSTROUTING -s 192.0.2.10/32 -d 192.0.2.10/32 -p udp -m udp --dport 10000 -j MASQUERADE
-A DOCKER -i br0 -j RETURN
-A DOCKER ! -i br0 -p udp -m udp --dport 10000 -j DNAT --to-destination 192.0.2.10:10000
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:DOCKER - [0:0]
:DOCKER-ISOLATION-STAGE-1 - [0:0]
:DOCKER-ISOLATION-STAGE-2 - [0:0]
:DOCKER-USER - [0:0]
-A FORWARD -j DOCKER-USER
-A FORWARD -j DOCKER-ISOLATION-STAGE-1
-A FORWARD -o br0 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A FORWARD -o br0 -j DOCKER
-A FORWARD -i br0 ! -o br0 -j ACCEPT
-A FORWARD -i br0 -o br0 -j ACCEPT
-A DOCKER -d 192.0.2.10/32 ! -i br0 -o br0 -p udp -m udp --dport 10000 -j ACCEPT
-A DOCKER-ISOLATION-STAGE-1 -i br0 ! -o br0 -j DOCKER-ISOLATION-STAGE-2
-A DOCKER-ISOLATION-STAGE-1 -j RETURN
-A DOCKER-ISOLATION-STAGE-2 -o br0 -j DROP
-A DOCKER-ISOLATION-STAGE-2 -j RETURN
-A DOCKER-USER -j RETURN
COMMIT
";

/// docker-proxy as dockerd starts it for `-p 10000:10000/udp` (userland proxy on).
const DOCKER_PROXY: &str = "exec /usr/sbin/docker-proxy -proto udp -host-ip 203.0.113.1 -host-port 10000 \
    -container-ip 192.0.2.10 -container-port 10000 3>/dev/null";

/// What keeps a contender in place while it is measured.
enum Setup {
    Agent(AgentProcess),
    Process(Running),
    /// The thread in the host namespace holding `bench_drop` attached; dropping the sender
    /// detaches it there.
    XdpDrop(mpsc::Sender<()>, std::thread::JoinHandle<()>),
    Rules,
}

fn setup(contender: &str, lab: &Lab) -> Result<Setup> {
    Ok(match contender {
        "agent" | "agent-generic" => {
            let mode = (contender == "agent-generic").then_some("generic");
            let config = lab.write_config_xdp(
                mode,
                // One source sends far beyond a source's flood limit here: the limits are off,
                // and their cost is measured in the `prog` suite.
                &format!(
                    "[[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\nbackend = \"{BACKEND}\"\n\
                     [flood]\nenabled = false\n"
                ),
            )?;
            Setup::Agent(AgentProcess::start(&lab.host, &config)?)
        }
        // The defaults, written out so that the lab does not allowlist its client.
        "agent-flood" => {
            let config = lab.write_config(&format!(
                "[[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\nbackend = \"{BACKEND}\"\n\
                 [flood]\nenabled = true\n"
            ))?;
            Setup::Agent(AgentProcess::start(&lab.host, &config)?)
        }
        "iptables-dnat" => {
            lab.host.sysctl("net.ipv4.ip_forward", "1")?;
            let rules = lab.work_dir().join("docker-rules");
            std::fs::write(&rules, DOCKER_RULES)?;
            lab.host.exec("iptables-restore", &[&rules.to_string_lossy()])?;
            Setup::Rules
        }
        // docker-proxy reports its start on descriptor 3 (a pipe from dockerd) and closes it:
        // without one, it would close its own socket instead.
        "docker-proxy" => Setup::Process(spawn_in(
            &lab.host,
            "/bin/sh",
            &["-c", DOCKER_PROXY],
            &[],
            &lab.work_dir().join("docker-proxy.log"),
        )?),
        "xdp-drop" => {
            let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
            let (stop_tx, stop_rx) = mpsc::channel::<()>();
            let thread = lab.host.spawn(move || {
                let attached = (|| -> Result<aya::Ebpf> {
                    let mut bpf = aya::Ebpf::load(jitsi_agent::ebpf_object::bytes()?)?;
                    let prog: &mut aya::programs::Xdp =
                        bpf.program_mut("bench_drop").context("no bench_drop in the object")?.try_into()?;
                    prog.load()?;
                    prog.attach(crate::lab::UPLINK, aya::programs::XdpMode::Driver)?;
                    Ok(bpf)
                })();
                match attached {
                    Ok(bpf) => {
                        let _ = ready_tx.send(Ok(()));
                        let _ = stop_rx.recv();
                        drop(bpf);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("{e:#}")));
                    }
                }
            })?;
            ready_rx.recv().context("the XDP thread ended")?.map_err(anyhow::Error::msg)?;
            Setup::XdpDrop(stop_tx, thread)
        }
        other => anyhow::bail!("unknown UDP contender {other}"),
    })
}

fn teardown(s: Setup) -> Result<()> {
    match s {
        Setup::Agent(a) => drop(a.stop()?),
        Setup::Process(p) => drop(p),
        Setup::XdpDrop(stop, thread) => {
            drop(stop);
            let _ = thread.join();
        }
        Setup::Rules => {}
    }
    Ok(())
}

fn one(contender: &str, lab: &Lab, load: UdpLoad) -> Result<()> {
    let to = SocketAddr::new(HOST_V4.into(), 10000);
    let jvb = lab.backend("jvb");
    let receiver = if contender == "xdp-drop" { None } else { Some(Receiver::start(&jvb.ns, BACKEND.parse()?)?) };
    let r = udp_run(&lab.inet, to, load, receiver)?;
    let counted = if counts_sent(contender) { r.sent } else { r.delivered };
    if counted == 0 {
        let log = std::fs::read_to_string(lab.work_dir().join(format!("{contender}.log"))).unwrap_or_default();
        anyhow::bail!("{contender}: nothing arrived ({} sent); its log: {log}", r.sent);
    }
    emit(
        "udp",
        contender,
        json!({"size": load.size, "flows": load.flows, "rate": load.rate, "secs": load.secs}),
        json!({
            "sent": r.sent,
            "delivered": r.delivered,
            "sent_pps": r.sent as f64 / r.secs,
            "delivered_pps": r.delivered as f64 / r.secs,
            "loss_pct": if contender == "xdp-drop" || r.sent == 0 { 0.0 } else { 100.0 * (1.0 - r.delivered as f64 / r.sent as f64) },
            "busy_cpu_s": r.busy_cpu,
            "cpu_ns_per_packet": if counted == 0 { 0.0 } else { r.busy_cpu * 1e9 / counted as f64 },
        }),
    );
    Ok(())
}

/// One round of every contender.
/// The agent is the one `JITSI_AGENT_BIN` names (`jitsi-lab bench` sets it).
pub fn round(secs: f64, only: Option<&str>) -> Result<()> {
    for contender in CONTENDERS.into_iter().filter(|c| only.is_none_or(|o| o == *c)) {
        let lab = Lab::new(&["jvb"]).context("building the lab")?;
        // The sender knows the uplink's MAC from the start, for every contender: `xdp-drop`
        // drops ARP too, and without this its packets would stop at the sender's unresolved
        // neighbour instead of crossing the uplink.
        let mac = crate::raw::mac_text_of(&lab.host, crate::lab::UPLINK)?;
        lab.inet.ip(&["neigh", "replace", &HOST_V4.to_string(), "lladdr", &mac, "dev", "eth0", "nud", "permanent"])?;
        let s = setup(contender, &lab).with_context(|| format!("setting up {contender}"))?;
        std::thread::sleep(Duration::from_millis(200));
        // A flood's loss is the point: no fixed-rate runs and no round trip for it.
        let flood = contender == "agent-flood";
        for size in SIZES {
            for flows in [1, 1000] {
                one(contender, &lab, UdpLoad { size, flows, rate: 0, secs })?;
            }
            for rate in RATES.into_iter().filter(|_| !flood) {
                one(contender, &lab, UdpLoad { size, flows: 1000, rate, secs })?;
            }
        }
        if !counts_sent(contender) {
            let jvb = lab.backend("jvb");
            let echo = servers::udp(&jvb.ns, BACKEND.parse()?)?;
            let mut rtt = udp_rtt(&lab.inet, SocketAddr::new(HOST_V4.into(), 10000), 2000, 4000)?;
            drop(echo);
            let answered = rtt.len();
            emit(
                "udp-rtt",
                contender,
                json!({"size": 100, "rate": 2000, "count": 4000}),
                json!({"answered": answered, "p50_us": percentile(&mut rtt, 50.0), "p99_us": percentile(&mut rtt, 99.0)}),
            );
        }
        teardown(s)?;
    }
    Ok(())
}
