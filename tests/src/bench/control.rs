//! The control plane: time from `run` to ready with nothing pinned and with everything pinned
//! (a restart adopting the datapath), and from SIGHUP with a new rule in the file to the first
//! packet answered through it.

use std::{net::SocketAddr, time::Instant};

use anyhow::{Context, Result};
use serde_json::json;

use super::emit;
use crate::{
    agent::AgentProcess,
    clients::udp_socket,
    lab::{HOST_V4, Lab},
    servers,
};

const RULE: &str = "[[steer]]\nname = \"jvb\"\nprotocol = \"udp\"\nport = 10000\nbackend = \"192.0.2.10:10000\"\n";
const NEW_RULE: &str = "[[steer]]\nname = \"jvb2\"\nprotocol = \"udp\"\nport = 10001\nbackend = \"192.0.2.10:10001\"\n";

/// One round.
pub fn round() -> Result<()> {
    let lab = Lab::new(&["jvb"]).context("building the lab")?;
    let jvb = lab.backend("jvb");
    let _echo = servers::udp(&jvb.ns, "192.0.2.10:10001".parse()?)?;
    let config = lab.write_config(RULE)?;
    let t = Instant::now();
    let first = AgentProcess::start(&lab.host, &config)?;
    let cold = t.elapsed().as_secs_f64();
    drop(first.stop()?);
    let t = Instant::now();
    let mut second = AgentProcess::start(&lab.host, &config)?;
    let warm = t.elapsed().as_secs_f64();
    emit("control", "agent", json!({"what": "start to ready, nothing pinned"}), json!({"seconds": cold}));
    emit("control", "agent", json!({"what": "start to ready, datapath pinned (restart)"}), json!({"seconds": warm}));

    // A rule added: the file rewritten, then SIGHUP; probe every millisecond.
    std::fs::write(&config, format!("{}{NEW_RULE}", std::fs::read_to_string(&config)?))?;
    let sock = udp_socket(&lab.inet, false)?;
    sock.set_read_timeout(Some(std::time::Duration::from_millis(1)))?;
    let to = SocketAddr::new(HOST_V4.into(), 10001);
    let t = Instant::now();
    second.signal(libc::SIGHUP);
    let mut buf = [0u8; 512];
    let took = loop {
        sock.send_to(b"probe", to)?;
        if sock.recv_from(&mut buf).is_ok() {
            break t.elapsed().as_secs_f64();
        }
        anyhow::ensure!(t.elapsed().as_secs() < 10, "the new rule never answered:\n{}", second.log());
    };
    emit(
        "control",
        "agent",
        json!({"what": "SIGHUP with a new rule to its first answered packet"}),
        json!({"seconds": took}),
    );
    second.wait_for_log("reloaded", std::time::Duration::from_secs(5))?;
    drop(second.stop()?);
    Ok(())
}
