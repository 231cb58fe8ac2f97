//! The handover of established connections across `systemctl restart`, under the real
//! systemd of the package tests (a Debian 12 machine booted with `systemd-nspawn`): `n` idle
//! connections through 443 to an echo backend, then a restart. Figures: the restart's wall
//! time seen by the operator (`systemctl restart` returning: the new agent adopted everything
//! and is ready), the old agent's part (stopping the relays, writing the handover), the new
//! agent's part (reading it, relaying on), and how many connections still echo afterwards.
//! With `n = 0` the restart's baseline.
//!
//! The agent holds two descriptors per connection: `n` stays below half of the machine's hard
//! open-file limit (the largest figure is the largest count that fits).

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail, ensure};
use serde_json::json;

use super::emit;
use crate::{
    clients::recorded_hello,
    lab::{HOST_V4, Lab},
    machine::Machine,
    netns::NetNs,
};

/// The connection counts measured (the last one is sized to the open-file limit).
const COUNTS: [usize; 3] = [0, 1000, 9000];

/// The web backend: echoes every connection (one task each, so thousands cost little).
fn echo_backend(ns: &NetNs, addr: SocketAddr) -> Result<tokio::runtime::Runtime> {
    let listener = ns.enter(move || std::net::TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.spawn(async move {
        let l = tokio::net::TcpListener::from_std(listener).expect("listener");
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    Ok(rt)
}

/// `n` connections through 443, each relayed (its hello echoed back), opened by 8 threads.
fn open(inet: &NetNs, n: usize) -> Result<Vec<TcpStream>> {
    let hello = recorded_hello("chromium-meet.bin");
    let to = SocketAddr::new(HOST_V4.into(), 443);
    std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let hello = &hello;
                scope.spawn(move || -> Result<Vec<TcpStream>> {
                    (t..n)
                        .step_by(8)
                        .map(|_| {
                            let mut s =
                                inet.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))??;
                            s.set_read_timeout(Some(Duration::from_secs(10)))?;
                            s.write_all(hello)?;
                            let mut echo = vec![0u8; hello.len()];
                            s.read_exact(&mut echo)?;
                            Ok(s)
                        })
                        .collect()
                })
            })
            .collect();
        let mut all = Vec::with_capacity(n);
        for t in threads {
            all.extend(t.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))??);
        }
        Ok(all)
    })
}

/// How many of `conns` still echo a byte.
fn alive(conns: &mut [TcpStream]) -> usize {
    let echoes = |s: &mut TcpStream| {
        let mut b = [0u8; 1];
        s.write_all(b"x").is_ok() && s.read_exact(&mut b).is_ok() && &b == b"x"
    };
    conns.iter_mut().map(echoes).filter(|ok| *ok).count()
}

/// The last `key=<number>` of the last journal line containing `needle`.
fn logged(journal: &str, needle: &str, key: &str) -> Option<f64> {
    let line = journal.lines().rev().find(|l| l.contains(needle))?;
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()?.parse().ok()
}

/// One round: a machine, then each count in turn.
pub fn round(deb: &Path) -> Result<()> {
    let lab = Lab::new(&["web"]).context("building the lab")?;
    let web = lab.backend("web");
    let _backend = echo_backend(&web.ns, web.addr4(8443))?;
    let most = *COUNTS.iter().max().expect("counts");
    let config = format!(
        "[uplink]\ninterface = \"up0\"\n\n[splitter]\nmax_connections = {most}0\nmax_connections_per_client = {most}0\n\
         max_pending_connections = {most}0\n\n[tls]\n[[tls.route]]\nname = \"web\"\nserver_names = [\"meet.example.test\"]\n\
         backend = \"{}\"\n{}",
        web.addr4(8443),
        crate::lab::CLIENT_ALLOWED
    );
    let machine = Machine::boot(&lab.host, deb, &[], |root| {
        let etc = root.join("etc/jitsi-agent");
        std::fs::create_dir_all(&etc)?;
        std::fs::write(etc.join("agent.toml"), &config)?;
        let dropin = root.join("etc/systemd/system/jitsi-agent.service.d");
        std::fs::create_dir_all(&dropin)?;
        std::fs::write(dropin.join("nofile.conf"), "[Service]\nLimitNOFILE=20000\n")?;
        Ok(())
    })?;
    let mount = machine.exec("mount", &["-t", "bpf", "bpffs", "/sys/fs/bpf"])?;
    ensure!(mount.status.success(), "mounting bpffs: {}", String::from_utf8_lossy(&mount.stderr));
    machine.systemctl(&["enable", "--now", "jitsi-agent.socket", "jitsi-agent.service"])?;
    for n in COUNTS {
        let mut conns = open(&lab.inet, n).with_context(|| format!("opening {n} connections"))?;
        let t = Instant::now();
        machine.systemctl(&["restart", "jitsi-agent.service"])?;
        let restart_ms = t.elapsed().as_secs_f64() * 1000.0;
        let survived = alive(&mut conns);
        let journal = machine.journal("jitsi-agent");
        let mut figures = json!({"restart_ms": restart_ms, "survived": survived});
        if n > 0 {
            let (Some(old), Some(stop), Some(new), Some(adopted)) = (
                logged(&journal, "handover: connections left to the next agent", "ms"),
                logged(&journal, "handover: connections left to the next agent", "stop_ms"),
                logged(&journal, "handover: relaying on the previous agent's connections", "ms"),
                logged(&journal, "handover: relaying on the previous agent's connections", "adopted"),
            ) else {
                bail!("no handover in the journal with {n} connections:\n{journal}");
            };
            ensure!(adopted as usize == n, "{adopted} of {n} adopted");
            figures = json!({"restart_ms": restart_ms, "survived": survived, "old_agent_ms": old,
                "stop_relays_ms": stop, "new_agent_ms": new});
        }
        emit("handover", "agent", json!({"connections": n}), figures);
        drop(conns);
        // Let the backend and the agent see the closes before the next count.
        std::thread::sleep(Duration::from_millis(500));
    }
    Ok(())
}
