//! The benchmark suite behind `cargo xtask bench`: each contender runs in a fresh lab, back to
//! back with the others, and every measurement is printed as one JSON line (xtask aggregates
//! the rounds, writes `bench/results/<date>.json`, the plots and the Markdown table).

pub mod control;
pub mod handover;
pub mod load;
pub mod prog;
pub mod sni;
pub mod udp;

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

/// One measurement: what was measured, on which contender, with which parameters, and the
/// figures.
pub fn emit(suite: &str, contender: &str, params: serde_json::Value, figures: serde_json::Value) {
    let line = serde_json::json!({"suite": suite, "contender": contender, "params": params, "figures": figures});
    println!("{line}");
}

/// The `p`-th percentile (0-100) of `v` (sorted in place); 0 for none.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// Clock ticks per second of `/proc` times.
fn ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// Busy CPU seconds of the whole machine so far (all CPUs: everything but idle and iowait).
pub fn machine_busy_secs() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat.lines().next().context("/proc/stat is empty")?;
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    Ok((total - idle) / ticks())
}

/// User + system CPU seconds of process `pid` (its threads included).
pub fn process_cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the `(comm)`, which may contain spaces.
    let rest = &stat[stat.rfind(')').context("no comm")? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f[11].parse()?;
    let stime: f64 = f[12].parse()?;
    Ok((utime + stime) / ticks())
}

/// Resident memory of process `pid`, in bytes.
pub fn process_rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

/// The processes whose command line's first word ends with `name` (HAProxy's and nginx's
/// master and workers).
pub fn pids_named(name: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        // nginx rewrites its command line to `nginx: worker process`: the first word, sans `:`.
        let first = String::from_utf8_lossy(cmd.split(|b| *b == 0).next().unwrap_or_default()).into_owned();
        let word = first.split(' ').next().unwrap_or_default().trim_end_matches(':');
        if Path::new(word).file_name().is_some_and(|f| f.to_string_lossy() == name) {
            out.push(pid);
        }
    }
    out
}

/// Raises this process's open-file limit to its hard limit (children inherit it) and returns
/// it: 10,000 idle proxied connections need over 20,000 descriptors in the proxy. (Raising the
/// hard limit itself needs CAP_SYS_RESOURCE, which root may not have in a container.)
pub fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: a valid rlimit struct to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("reading RLIMIT_NOFILE");
    }
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: a valid rlimit struct.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("raising RLIMIT_NOFILE");
    }
    Ok(lim.rlim_max)
}

/// Waits until `done` or the deadline; false if it passed.
pub fn wait_until(deadline: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + deadline;
    while !done() {
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}
