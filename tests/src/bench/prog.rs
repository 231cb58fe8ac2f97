//! The steering program's own cost per packet, without any network around it: BPF_PROG_TEST_RUN
//! of the pinned `steer_in` (its maps filled by a running agent) repeated a million times on
//! one frame, next to an empty XDP program (`bench_pass`) on the same frame. The kernel reports
//! the average time per run. The flood limits are off but for the two frames that measure them
//! (within the limits, and over them: the cost of a dropped packet).

use std::path::PathBuf;

use anyhow::{Context, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use serde_json::json;

use jitsi_common::{FLOOD_MAX_RATE, FloodConfig};

use super::emit;
use crate::{agent::AgentProcess, lab::Lab, packet::Pkt};

const REPEAT: u32 = 1_000_000;
const XDP_REDIRECT: u32 = 4;

/// The rules: one port, a range of 2 ports and one of 16,384 ports (not aligned: 40000-56383
/// is 9 prefixes in the trie), all to the same backend, each range 1:1.
const RULES: &str = "[[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\nbackend = \"192.0.2.10:10000\"\n\
                     [[steer]]\nname = \"range2\"\nprotocol = \"udp\"\nport = \"30000-30001\"\nbackend = \"192.0.2.10:30000\"\n\
                     [[steer]]\nname = \"range16k\"\nprotocol = \"udp\"\nport = \"40000-56383\"\nbackend = \"192.0.2.10:40000\"\n";

/// A frame from `src` to the host's `port`, 100-byte payload.
fn from(src: &str, port: u16) -> Vec<u8> {
    Pkt::udp(src, 40000, "203.0.113.1", port, &[0x5au8; 100]).build()
}

/// A frame from the lab's client to the host's `port`.
fn to(port: u16) -> Vec<u8> {
    from("203.0.113.2", port)
}

/// (flood limits, what, frame): with the limits off, frames to the steered ports and one to a
/// port without a rule; then one steered frame with the limits on, first within them (the
/// source's bucket never runs out), then over them (every repetition dropped).
fn frames() -> Vec<(FloodConfig, &'static str, Vec<u8>)> {
    let off = FloodConfig::default();
    let on = |rate: u64, burst: u64| FloodConfig {
        enabled: 1,
        packets_per_second: rate,
        packets_burst: burst,
        flows_per_second: rate,
        flows_burst: burst,
        ..FloodConfig::default()
    };
    vec![
        (off, "steered udp/10000, 100-byte payload", to(10000)),
        (off, "steered udp/30001, a 2-port range", to(30001)),
        (off, "steered udp/50000, a 16,384-port range", to(50000)),
        (off, "unsteered udp/12345 (passed)", to(12345)),
        (on(FLOOD_MAX_RATE, 1_000_000_000), "steered udp/10000, flood limits on, within them", to(10000)),
        // Another source: its bucket starts with the one token the first repetition takes.
        (on(1, 1), "udp/10000 over the flood limits (dropped)", from("203.0.113.3", 10000)),
    ]
}

/// (average ns per run, return value) of `prog` on `frame`, as if received on interface
/// `ifindex` (the uplink: `steer_in` only steers what arrives there).
fn run(prog: &Xdp, frame: &[u8], ifindex: u32) -> Result<(f64, u32)> {
    let mut out = vec![0u8; frame.len() + 256];
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let md: [u32; 6] = [0, frame.len() as u32, 0, ifindex, 0, 0];
    let ctx: Vec<u8> = md.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let opts = TestRunOptions {
        data_in: Some(frame),
        data_out: Some(&mut out),
        ctx_in: Some(&ctx),
        repeat: REPEAT,
        ..Default::default()
    };
    let r = prog.test_run(opts).context("BPF_PROG_TEST_RUN")?;
    Ok((r.duration.as_nanos() as f64, r.return_value))
}

/// One round: the agent fills the maps, then both programs run on both frames.
pub fn round() -> Result<()> {
    let lab = Lab::new(&["jvb"]).context("building the lab")?;
    // A repeated run works on the same buffer, rewritten by the run before: the backend's
    // address is made a host address too, so every repetition is steered again (the full path:
    // parse, lookups, return path, rewrite, checksums, redirect) instead of passing as not local.
    // The flood limits are set per frame below, into the pinned map once the agent is gone.
    let config = lab.write_config(&format!("{RULES}[flood]\nenabled = false\n"))?;
    let text = std::fs::read_to_string(&config)?.replace(
        "[uplink]\ninterface = \"up0\"\n",
        "[uplink]\ninterface = \"up0\"\naddresses = [\"203.0.113.1\", \"192.0.2.10\"]\n",
    );
    std::fs::write(&config, text)?;
    // The agent fills the maps and leaves them pinned when it stops (as across a restart).
    AgentProcess::start(&lab.host, &config)?.stop()?;
    let pin: PathBuf = lab.pin_dir.join("prog_steer_in");
    let mut maps = jitsi_agent::datapath::Maps::open_pinned(&lab.pin_dir)?;
    let results = lab.host.enter(move || -> Result<Vec<(String, String, f64, u32)>> {
        let steer = Xdp::from_pin(&pin, XdpAttachType::Interface).context("opening the pinned steer_in")?;
        let mut bpf = aya::Ebpf::load(jitsi_agent::ebpf_object::bytes()?)?;
        let pass: &mut Xdp = bpf.program_mut("bench_pass").context("no bench_pass")?.try_into()?;
        pass.load()?;
        let name = std::ffi::CString::new(crate::lab::UPLINK).expect("no NUL");
        // SAFETY: a valid C string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        anyhow::ensure!(ifindex != 0, "no uplink in the host namespace");
        let mut out = Vec::new();
        for (flood, what, frame) in frames() {
            maps.flood_config.set(0, flood, 0).context("flood_config")?;
            let (ns, rv) = run(&steer, &frame, ifindex)?;
            out.push(("steer_in".to_string(), what.to_string(), ns, rv));
            let (ns, rv) = run(pass, &frame, ifindex)?;
            out.push(("empty XDP program".to_string(), what.to_string(), ns, rv));
        }
        Ok(out)
    })??;
    // Every repetition of each steered frame was steered: its rule counted them all.
    let st = lab.status()?;
    for rule in st["rules"].as_array().context("rules in status")? {
        let counted = rule["packets_in"].as_u64().unwrap_or(0);
        let steered =
            results.iter().filter(|r| r.0 == "steer_in" && r.1.starts_with("steered")).all(|r| r.3 == XDP_REDIRECT);
        if !steered || counted < u64::from(REPEAT) {
            anyhow::bail!("steer_in did not steer every repetition (counted {counted} for {}): {st}", rule["name"]);
        }
    }
    let dropped = st["reasons"].as_array().context("reasons")?.iter().find(|r| r["reason"] == "in_flood_packets");
    anyhow::ensure!(
        dropped.and_then(|r| r["packets"].as_u64()).is_some_and(|n| n + 1 >= u64::from(REPEAT)),
        "steer_in did not drop the frame over the flood limits: {st}"
    );
    for (program, frame, ns, rv) in results {
        emit(
            "prog",
            &program,
            json!({"frame": frame, "repeat": REPEAT}),
            json!({"ns_per_packet": ns, "return_value": rv}),
        );
    }
    Ok(())
}
