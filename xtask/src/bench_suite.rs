//! `cargo xtask bench [udp|sni|prog|control|all]`: installs the peers (Debian packages), runs
//! every suite's contenders back to back in fresh labs for several rounds (`jitsi-lab bench`
//! prints one JSON line per measurement), then aggregates: median, min and max per figure,
//! `bench/results/<date>.json`, `bench/results/<date>.md` (the tables, also printed) and PNG
//! plots drawn by gnuplot.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{build, prereq};

/// The peers and tools the suites need.
const PACKAGES: &[&str] =
    &["haproxy", "nginx", "libnginx-mod-stream", "docker.io", "gnuplot-nox", "iptables", "nftables"];

/// A measurement's identity: suite, contender, parameters.
type Key = (String, String, String);

/// Figures of one measurement over the rounds.
#[derive(Default)]
struct Agg {
    params: Value,
    figures: BTreeMap<String, Vec<f64>>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() { 0.0 } else { s[s.len() / 2] }
}

fn spread(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

fn machine() -> Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            })
        })
        .map_or(0.0, |kb| kb / 1024.0 / 1024.0);
    json!({"cpu": cpu, "cores": cores, "kernel": kernel, "memory_gib": (mem_gib * 10.0).round() / 10.0})
}

fn today() -> Result<String> {
    let out = Command::new("date").args(["-u", "+%Y-%m-%d"]).output().context("date")?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Runs the suites and writes the results.
pub fn run(what: &str, rounds: u32, secs: f64) -> Result<()> {
    if !prereq::is_root() {
        bail!("cargo xtask bench needs root (it builds labs of network namespaces)");
    }
    prereq::apt(PACKAGES)?;
    let agent = build::agent()?;
    let lab = build::workspace_root().join("target/release/jitsi-lab");
    let suites: Vec<&str> = if what == "all" { vec!["prog", "control", "udp", "sni", "handover"] } else { vec![what] };
    // The handover suite installs the package under a real systemd.
    let deb = if suites.contains(&"handover") { Some(crate::dist::deb()?) } else { None };
    let mut aggs: BTreeMap<Key, Agg> = BTreeMap::new();
    let mut order: Vec<Key> = Vec::new();
    for round in 1..=rounds {
        for suite in &suites {
            eprintln!("xtask: bench round {round}/{rounds}: {suite}");
            let mut cmd = Command::new(&lab);
            cmd.args(["bench", "--suite", suite, "--secs", &secs.to_string(), "--agent"]).arg(&agent);
            if let Some(deb) = deb.as_ref().filter(|_| *suite == "handover") {
                cmd.arg("--deb").arg(deb);
            }
            let out = cmd.stderr(Stdio::inherit()).output().context("running jitsi-lab bench")?;
            if !out.status.success() {
                bail!("jitsi-lab bench --suite {suite} failed (round {round})");
            }
            for line in String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with('{')) {
                let v: Value = serde_json::from_str(line).with_context(|| format!("bench output: {line}"))?;
                let key = (
                    v["suite"].as_str().unwrap_or_default().to_string(),
                    v["contender"].as_str().unwrap_or_default().to_string(),
                    v["params"].to_string(),
                );
                if !aggs.contains_key(&key) {
                    order.push(key.clone());
                }
                let agg = aggs.entry(key).or_default();
                agg.params = v["params"].clone();
                for (name, f) in v["figures"].as_object().into_iter().flatten() {
                    if let Some(x) = f.as_f64() {
                        agg.figures.entry(name.clone()).or_default().push(x);
                    }
                }
                eprintln!("xtask:   {} {} {} -> {}", v["suite"], v["contender"], v["params"], v["figures"]);
            }
        }
    }
    let date = today()?;
    // A run of one suite is named after it, so that it never replaces a whole run's file.
    let name = if what == "all" { date.clone() } else { format!("{date}-{what}") };
    let dir = build::workspace_root().join("bench/results");
    std::fs::create_dir_all(&dir)?;
    let results: Vec<Value> = order
        .iter()
        .map(|k| {
            let a = &aggs[k];
            let figures: serde_json::Map<String, Value> = a
                .figures
                .iter()
                .map(|(n, v)| {
                    let (lo, hi) = spread(v);
                    (n.clone(), json!({"median": median(v), "min": lo, "max": hi, "samples": v}))
                })
                .collect();
            json!({"suite": k.0, "contender": k.1, "params": a.params, "figures": figures})
        })
        .collect();
    let doc = json!({"date": date, "machine": machine(), "rounds": rounds, "secs_per_run": secs, "results": results});
    let json_path = dir.join(format!("{name}.json"));
    std::fs::write(&json_path, serde_json::to_string_pretty(&doc)?)?;
    eprintln!("xtask: wrote {}", json_path.display());
    render(&json_path)
}

/// Writes the tables (`<date>.md` beside the JSON, and stdout) and the plots
/// (`bench/udp.png`, `bench/sni.png`) of a results file; a plot whose suite the file does not
/// hold (a run of other suites) is left as it is.
pub fn render(json_path: &Path) -> Result<()> {
    let text = std::fs::read_to_string(json_path).with_context(|| format!("reading {}", json_path.display()))?;
    let doc: Value =
        serde_json::from_str(&text).with_context(|| format!("{} is not a results file", json_path.display()))?;
    let md = tables(&doc);
    std::fs::write(json_path.with_extension("md"), &md)?;
    println!("{md}");
    let written = plots(&doc, &build::workspace_root().join("bench"))?;
    let plots = if written.is_empty() { "no plot".to_string() } else { written.join(", ") };
    eprintln!("xtask: wrote {} and {plots}", json_path.with_extension("md").display());
    Ok(())
}

/// The results of `suite`, with a figure's median and spread.
struct View<'a>(&'a Value);

impl View<'_> {
    fn rows(&self, suite: &str) -> Vec<&Value> {
        self.0["results"].as_array().into_iter().flatten().filter(|r| r["suite"] == suite).collect()
    }

    fn find(&self, suite: &str, contender: &str, pred: impl Fn(&Value) -> bool) -> Option<&Value> {
        self.rows(suite).into_iter().find(|r| r["contender"] == contender && pred(&r["params"]))
    }
}

fn med(r: &Value, f: &str) -> f64 {
    r["figures"][f]["median"].as_f64().unwrap_or(f64::NAN)
}

/// `median (min-max)` with `scale` applied and `digits` decimals.
fn cell(r: Option<&Value>, f: &str, scale: f64, digits: usize) -> String {
    match r {
        Some(r) if r["figures"][f].is_object() => {
            let x = &r["figures"][f];
            let g = |k: &str| x[k].as_f64().unwrap_or(f64::NAN) * scale;
            format!("{:.d$} ({:.d$}-{:.d$})", g("median"), g("min"), g("max"), d = digits)
        }
        _ => "-".into(),
    }
}

/// A table of the results file: the suites it shows, and how it is written.
type Section = (&'static [&'static str], fn(&View, &mut String));

fn tables(doc: &Value) -> String {
    let v = View(doc);
    let m = &doc["machine"];
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Measured {} on {} ({} cores, {} GiB, Linux {}); {} rounds, median (min-max). Absolute figures are this machine's; compare within a table.\n",
        doc["date"].as_str().unwrap_or(""),
        m["cpu"].as_str().unwrap_or(""),
        m["cores"],
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or(""),
        doc["rounds"]
    );
    // Only the suites the file holds: a run of one suite leaves the others' tables out.
    let sections: [Section; 8] = [
        (&["udp"], table_udp_saturation),
        (&["udp"], table_udp_flood),
        (&["udp"], table_udp_rates),
        (&["udp-rtt"], table_udp_rtt),
        (&["prog"], table_prog),
        (&["sni-connections", "sni-bulk", "sni-idle"], table_sni),
        (&["handover"], table_handover),
        (&["control"], table_control),
    ];
    for (suites, table) in sections {
        if suites.iter().any(|suite| !v.rows(suite).is_empty()) {
            table(&v, &mut s);
        }
    }
    s
}

/// The UDP saturation run (unlimited rate) of `contender` at `size` and `flows`.
fn saturation<'a>(v: &'a View, contender: &str, size: u64, flows: u64) -> Option<&'a Value> {
    v.find("udp", contender, |p| p["rate"] == 0 && p["size"] == size && p["flows"] == flows)
}

/// UDP saturation, per contender.
fn table_udp_saturation(v: &View, s: &mut String) {
    let udp = ["agent", "agent-generic", "iptables-dnat", "docker-proxy", "xdp-drop"];
    let _ = writeln!(
        s,
        "**UDP 10000 -> backend, saturation** (one sender thread, unlimited rate; kpps delivered to the backend; agent: `steer_in` in driver mode, agent-generic: in generic mode; xdp-drop: kpps the sender pushed through the uplink while XDP dropped them all, the ceiling):\n"
    );
    let _ = writeln!(
        s,
        "| contender | 100 B, 1 flow | 100 B, 1000 flows | 1200 B, 1 flow | 1200 B, 1000 flows | agent is x faster (100 B, 1000 flows) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    let sat = |c: &str, size: u64, flows: u64| saturation(v, c, size, flows);
    let pps = |c: &str| if c == "xdp-drop" { "sent_pps" } else { "delivered_pps" };
    for c in udp {
        let agent = sat("agent", 100, 1000).map(|r| med(r, "delivered_pps"));
        let this = sat(c, 100, 1000).map(|r| med(r, pps(c)));
        let ratio = match (agent, this) {
            (Some(a), Some(t)) if c != "agent" && c != "xdp-drop" && t > 0.0 => format!("{:.2}", a / t),
            _ => "-".into(),
        };
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {ratio} |",
            cell(sat(c, 100, 1), pps(c), 1e-3, 0),
            cell(sat(c, 100, 1000), pps(c), 1e-3, 0),
            cell(sat(c, 1200, 1), pps(c), 1e-3, 0),
            cell(sat(c, 1200, 1000), pps(c), 1e-3, 0),
        );
    }
}

/// A flood from one source, dropped by the flood limits, beside the XDP_DROP ceiling.
fn table_udp_flood(v: &View, s: &mut String) {
    let _ = writeln!(
        s,
        "\n**A flood from one source** (one sender thread, unlimited rate, from one address; agent-flood: `steer_in` in driver mode with the flood limits at their defaults, 10,000 packets/s a source; kpps the sender pushed, all dropped in XDP but what the limits let through; then packets/s delivered and machine CPU per packet sent, 100 B, 1 flow):\n"
    );
    let _ = writeln!(
        s,
        "| contender | 100 B, 1 flow | 100 B, 1000 flows | 1200 B, 1 flow | 1200 B, 1000 flows | delivered, packets/s | CPU ns/packet |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    let sat = |c: &str, size: u64, flows: u64| saturation(v, c, size, flows);
    for c in ["xdp-drop", "agent-flood"] {
        let delivered = if c == "xdp-drop" { "-".into() } else { cell(sat(c, 100, 1), "delivered_pps", 1.0, 0) };
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {delivered} | {} |",
            cell(sat(c, 100, 1), "sent_pps", 1e-3, 0),
            cell(sat(c, 100, 1000), "sent_pps", 1e-3, 0),
            cell(sat(c, 1200, 1), "sent_pps", 1e-3, 0),
            cell(sat(c, 1200, 1000), "sent_pps", 1e-3, 0),
            cell(sat(c, 100, 1), "cpu_ns_per_packet", 1.0, 0),
        );
    }
}

/// UDP at fixed rates: loss and CPU per packet.
fn table_udp_rates(v: &View, s: &mut String) {
    let udp = ["agent", "agent-generic", "iptables-dnat", "docker-proxy", "xdp-drop"];
    let _ = writeln!(
        s,
        "\n**UDP at fixed offered rates** (1000 flows): loss %, and machine CPU per packet (ns; everything busy on both cores divided by the packets counted, sender and receiver included), then that minus the xdp-drop run's (the sender and the uplink's receive up to XDP): the rest of the path under test plus the backend's receive, which is the same for every contender:\n"
    );
    let _ = writeln!(
        s,
        "| contender | size | loss @50k | loss @100k | loss @200k | loss @400k | CPU ns/packet @100k | beyond xdp-drop's |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for c in udp {
        for size in [100u64, 1200] {
            let at = |rate: u64| v.find("udp", c, |p| p["rate"] == rate && p["size"] == size);
            // The sender's share and the uplink's receive, from the xdp-drop run at the same
            // rate and size.
            let sender = v.find("udp", "xdp-drop", |p| p["rate"] == 100_000 && p["size"] == size);
            let beyond = match (at(100_000), sender) {
                (Some(r), Some(x)) if c != "xdp-drop" => {
                    format!("{:.0}", med(r, "cpu_ns_per_packet") - med(x, "cpu_ns_per_packet"))
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {c} | {size} B | {} | {} | {} | {} | {} | {beyond} |",
                cell(at(50_000), "loss_pct", 1.0, 2),
                cell(at(100_000), "loss_pct", 1.0, 2),
                cell(at(200_000), "loss_pct", 1.0, 2),
                cell(at(400_000), "loss_pct", 1.0, 2),
                cell(at(100_000), "cpu_ns_per_packet", 1.0, 0),
            );
        }
    }
}

/// UDP echo round trip.
fn table_udp_rtt(v: &View, s: &mut String) {
    let _ = writeln!(s, "\n**UDP echo round trip** (100 B, 2,000 packets/s, 4,000 packets), µs:\n");
    let _ = writeln!(s, "| contender | p50 | p99 | answered |");
    let _ = writeln!(s, "|---|---|---|---|");
    for c in ["agent", "agent-generic", "iptables-dnat", "docker-proxy"] {
        let r = v.find("udp-rtt", c, |_| true);
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} |",
            cell(r, "p50_us", 1.0, 1),
            cell(r, "p99_us", 1.0, 1),
            cell(r, "answered", 1.0, 0)
        );
    }
}

/// The steering program alone.
fn table_prog(v: &View, s: &mut String) {
    let _ = writeln!(s, "\n**The steering program alone** (BPF_PROG_TEST_RUN, 1,000,000 repeats, ns per packet):\n");
    let _ = writeln!(s, "| program | frame | ns/packet |");
    let _ = writeln!(s, "|---|---|---|");
    for r in v.rows("prog") {
        let _ = writeln!(
            s,
            "| {} | {} | {} |",
            r["contender"].as_str().unwrap_or(""),
            r["params"]["frame"].as_str().unwrap_or(""),
            cell(Some(r), "ns_per_packet", 1.0, 1)
        );
    }
}

/// The TLS splitter against HAProxy and nginx.
fn table_sni(v: &View, s: &mut String) {
    let sni = ["agent", "haproxy", "nginx", "direct"];
    let idle = v.find("sni-idle", "agent", |_| true).map_or(0, |r| r["params"]["connections"].as_u64().unwrap_or(0));
    let _ = writeln!(
        s,
        "\n**TLS splitter on 443 -> backend, transparent** (recorded Chromium ClientHello, 2,021 B with its X25519MLKEM768 key share; direct = no proxy, routed):\n"
    );
    let _ = writeln!(
        s,
        "| contender | new conn/s (hello, 1 KiB reply, close; 16 clients) | TTFB p50 µs | TTFB p99 µs | 1 stream MiB/s | 16 streams MiB/s | proxy CPU s/GiB (16 streams) | RSS per idle connection, bytes ({idle} held) |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|---|");
    for c in sni {
        let conn = v.find("sni-connections", c, |_| true);
        let b1 = v.find("sni-bulk", c, |p| p["streams"] == 1);
        let b16 = v.find("sni-bulk", c, |p| p["streams"] == 16);
        let idle = v.find("sni-idle", c, |_| true);
        let direct = c == "direct";
        let _ = writeln!(
            s,
            "| {c} | {} | {} | {} | {} | {} | {} | {} |",
            cell(conn, "connections_per_sec", 1.0, 0),
            cell(conn, "ttfb_p50_us", 1.0, 0),
            cell(conn, "ttfb_p99_us", 1.0, 0),
            cell(b1, "mib_per_sec", 1.0, 0),
            cell(b16, "mib_per_sec", 1.0, 0),
            if direct { "-".into() } else { cell(b16, "proxy_cpu_s_per_gib", 1.0, 3) },
            if direct { "-".into() } else { cell(idle, "bytes_per_connection", 1.0, 0) },
        );
    }
}

/// The handover across a restart.
fn table_handover(v: &View, s: &mut String) {
    let _ = writeln!(
        s,
        "\n**Handover across `systemctl restart`** (idle connections through 443 under the package's unit in a Debian 12 machine; ms; survived: connections still echoing afterwards):\n"
    );
    let _ = writeln!(
        s,
        "| connections | restart, operator's wall time | old agent: stop relays | old agent: all | new agent: take up | survived |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|");
    for r in v.rows("handover") {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            r["params"]["connections"],
            cell(Some(r), "restart_ms", 1.0, 0),
            cell(Some(r), "stop_relays_ms", 1.0, 0),
            cell(Some(r), "old_agent_ms", 1.0, 0),
            cell(Some(r), "new_agent_ms", 1.0, 0),
            cell(Some(r), "survived", 1.0, 0),
        );
    }
}

/// The control plane.
fn table_control(v: &View, s: &mut String) {
    let _ = writeln!(s, "\n**Control plane** (seconds):\n");
    let _ = writeln!(s, "| what | seconds |");
    let _ = writeln!(s, "|---|---|");
    for r in v.rows("control") {
        let _ =
            writeln!(s, "| {} | {} |", r["params"]["what"].as_str().unwrap_or(""), cell(Some(r), "seconds", 1.0, 3));
    }
}

/// Writes `data` and runs gnuplot on `script`.
fn gnuplot(dir: &Path, name: &str, data: &str, script: &str) -> Result<PathBuf> {
    let dat = dir.join(format!("{name}.dat"));
    std::fs::write(&dat, data)?;
    let png = dir.join(format!("{name}.png"));
    let full = format!(
        "set terminal png size 900,520\nset output '{}'\n{}",
        png.display(),
        script.replace("DATA", &dat.display().to_string())
    );
    let gp = dir.join(format!("{name}.gp"));
    std::fs::write(&gp, full)?;
    let status = Command::new("gnuplot").arg(&gp).status().context("running gnuplot")?;
    if !status.success() {
        bail!("gnuplot failed on {name}");
    }
    std::fs::remove_file(&dat)?;
    std::fs::remove_file(&gp)?;
    Ok(png)
}

/// The plots of the suites `doc` holds; returns the files written.
fn plots(doc: &Value, dir: &Path) -> Result<Vec<String>> {
    let v = View(doc);
    let mut written = Vec::new();
    if !v.rows("udp").is_empty() {
        written.push(plot_udp(&v, dir)?.display().to_string());
    }
    if !v.rows("sni-connections").is_empty() {
        written.push(plot_sni(&v, dir)?.display().to_string());
    }
    Ok(written)
}

fn plot_udp(v: &View, dir: &Path) -> Result<PathBuf> {
    // Delivered against what the sender managed to send: the fixed rates, then saturation
    // (where each contender's own cost limits the sender too); 100-byte packets, 1000 flows.
    let contenders = ["agent", "agent-generic", "iptables-dnat", "docker-proxy"];
    let mut data = String::new();
    for c in contenders {
        let _ = writeln!(data, "# {c}");
        let mut points: Vec<(f64, f64)> = v
            .rows("udp")
            .into_iter()
            .filter(|r| r["contender"] == c && r["params"]["size"] == 100 && r["params"]["flows"] == 1000)
            .map(|r| (med(r, "sent_pps") / 1000.0, med(r, "delivered_pps") / 1000.0))
            .collect();
        points.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (x, y) in points {
            let _ = writeln!(data, "{x:.1} {y:.1}");
        }
        data.push_str("\n\n");
    }
    gnuplot(
        dir,
        "udp",
        &data,
        "set title 'UDP 10000 -> backend: delivered vs sent (100 B, 1000 flows, median; last point: saturation)'\n\
         set xlabel 'sent, kpps'\nset ylabel 'delivered, kpps'\nset key top left\nset grid\nset xrange [0:*]\nset yrange [0:*]\n\
         names = 'agent agent-generic iptables-dnat docker-proxy'\n\
         plot x title 'all delivered' dt 2 lc 'gray', for [i=0:3] 'DATA' index i using 1:2 with linespoints lw 2 pt 7 title word(names, i+1)",
    )
}

/// The splitters: new connections per second and TTFB p99.
fn plot_sni(v: &View, dir: &Path) -> Result<PathBuf> {
    let mut data = String::from("contender conn_per_s ttfb_p99_ms\n");
    for c in ["agent", "haproxy", "nginx", "direct"] {
        let r = v.find("sni-connections", c, |_| true);
        let _ = writeln!(
            data,
            "{c} {:.0} {:.3}",
            r.map_or(f64::NAN, |r| med(r, "connections_per_sec")),
            r.map_or(f64::NAN, |r| med(r, "ttfb_p99_us") / 1000.0)
        );
    }
    gnuplot(
        dir,
        "sni",
        &data,
        "set title 'TLS splitter: new connections/s (bars) and TTFB p99 (points), median'\n\
         set style data histogram\nset style fill solid 0.7\nset boxwidth 0.6\nset grid y\n\
         set key top left\nset ylabel 'connections/s'\nset y2label 'TTFB p99, ms'\nset y2tics\nset ytics nomirror\nset yrange [0:*]\nset y2range [0:*]\n\
         plot 'DATA' using 2:xtic(1) title 'conn/s', '' using 0:3 axes x1y2 with points pt 7 ps 2 title 'TTFB p99'",
    )
}
