//! `cargo xtask bench sni-relay`: the splitter's relay, `copy` against `splice`, in the
//! same lab, alternating, several rounds. (The full benchmark suite is issue #6.)

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::{build, prereq};

struct Sample {
    seconds: f64,
    cpu: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the relay benchmark and prints a Markdown table.
pub fn sni_relay(rounds: u32, mib: u32) -> Result<()> {
    if !prereq::is_root() {
        bail!("cargo xtask bench needs root (it builds the lab)");
    }
    let agent = build::agent()?;
    let lab = build::workspace_root().join("target/release/jitsi-lab");
    let modes = ["copy", "splice"];
    let mut samples: Vec<Vec<Sample>> = modes.iter().map(|_| Vec::new()).collect();
    for round in 1..=rounds {
        for (i, mode) in modes.iter().enumerate() {
            let out = Command::new(&lab)
                .args(["relay-bench", "--mode", mode, "--mib", &mib.to_string(), "--agent"])
                .arg(&agent)
                .output()
                .context("running jitsi-lab relay-bench")?;
            if !out.status.success() {
                bail!("relay-bench {mode} failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            let line = String::from_utf8_lossy(&out.stdout);
            let v: serde_json::Value = serde_json::from_str(line.trim()).context("relay-bench output")?;
            let s = Sample {
                seconds: v["seconds"].as_f64().context("seconds")?,
                cpu: v["agent_cpu_seconds"].as_f64().context("agent_cpu_seconds")?,
            };
            eprintln!("xtask: round {round} {mode}: {:.3} s, agent CPU {:.3} s", s.seconds, s.cpu);
            samples[i].push(s);
        }
    }
    let gib_relayed = 2.0 * f64::from(mib) / 1024.0;
    println!(
        "\n{mib} MiB echoed through the splitter (both directions: {gib_relayed:.2} GiB relayed), {rounds} rounds, median (min-max):\n"
    );
    println!("| relay | wall time, s | throughput each way, MiB/s | agent CPU s per GiB relayed |");
    println!("|---|---|---|---|");
    for (mode, s) in modes.iter().zip(&samples) {
        let secs: Vec<f64> = s.iter().map(|x| x.seconds).collect();
        let cpu: Vec<f64> = s.iter().map(|x| x.cpu / gib_relayed).collect();
        let (smin, smax) = (secs.iter().copied().fold(f64::MAX, f64::min), secs.iter().copied().fold(0.0, f64::max));
        let (cmin, cmax) = (cpu.iter().copied().fold(f64::MAX, f64::min), cpu.iter().copied().fold(0.0, f64::max));
        let smed = median(secs);
        println!(
            "| {mode} | {smed:.3} ({smin:.3}-{smax:.3}) | {:.0} | {:.3} ({cmin:.3}-{cmax:.3}) |",
            f64::from(mib) / smed,
            median(cpu)
        );
    }
    Ok(())
}
