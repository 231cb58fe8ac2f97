//! `cargo xtask test` and `cargo xtask demo`.

use std::process::Command;

use anyhow::{Result, bail};

use crate::{
    build::{self, run},
    prereq,
};

/// Debian packages the lab and the tests use: `ip` (iproute2) to build namespaces, `ethtool`
/// for veth offloads, `bpftool` to check pinned maps, nftables/iptables to prove the host
/// namespace has no rules, `systemd-analyze` to verify the shipped units, `docker-compose` to
/// check the generated stack, `docker.io` for the engine the stack test starts in its own
/// namespace, `coturn` (Debian's) for the real coturn image that test builds, and `chromium`,
/// `libnss3-tools` (its certificate database) and `python3-venv` (the WebRTC stand-in's
/// aiortc) for its browser sessions.
const LAB_PACKAGES: &[&str] = &[
    "iproute2",
    "ethtool",
    "bpftool",
    "nftables",
    "iptables",
    "systemd",
    "docker-compose",
    "docker.io",
    "pebble",
    "openssl",
    "curl",
    "coturn",
    "chromium",
    "libnss3-tools",
    "python3-venv",
    // The real systemd the package is tested under.
    "debootstrap",
    "systemd-container",
];

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(build::workspace_root()).args(args);
    cmd
}

fn require_root(what: &str) -> Result<()> {
    if !prereq::is_root() {
        bail!(
            "{what} needs root (network namespaces, BPF programs, bpffs); run it as root, e.g. `sudo -E cargo xtask ...`"
        );
    }
    Ok(())
}

/// Runs the ClientHello reader's fuzz target for `seconds`, its corpus seeded with the
/// recorded hellos (each prefixed with the size-limit byte the target reads first).
pub fn fuzz(seconds: u32) -> Result<()> {
    prereq::cargo_fuzz()?;
    let root = build::workspace_root();
    let corpus = root.join("fuzz/corpus/client_hello");
    std::fs::create_dir_all(&corpus)?;
    for e in std::fs::read_dir(root.join("tests/data/clienthello"))?.flatten() {
        let path = e.path();
        if path.extension().is_some_and(|x| x == "bin") {
            let mut seed = vec![0xff];
            seed.extend(std::fs::read(&path)?);
            std::fs::write(corpus.join(path.file_name().expect("file name")), seed)?;
        }
    }
    eprintln!("xtask: fuzzing the ClientHello reader for {seconds} s");
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root.join("fuzz"))
        .args(["+nightly", "fuzz", "run", "client_hello", "--fuzz-dir", "."])
        .arg(&corpus)
        .arg("--")
        .arg(format!("-max_total_time={seconds}"))
        .env_remove("RUSTFLAGS");
    run(&mut cmd)
}

/// Lints, builds everything and runs unit and integration tests, then the fuzz target.
pub fn test(lint: bool, filter: Option<&str>, fuzz_seconds: u32) -> Result<()> {
    require_root("cargo xtask test")?;
    prereq::apt(LAB_PACKAGES)?;
    if lint {
        eprintln!("xtask: cargo fmt --check");
        run(&mut cargo(&["fmt", "--all", "--", "--check"]))?;
        eprintln!("xtask: cargo clippy (userspace crates)");
        run(&mut cargo(&[
            "clippy",
            "--workspace",
            "--exclude",
            "jitsi-ebpf",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))?;
        eprintln!("xtask: cargo clippy (jitsi-ebpf)");
        build::ebpf_clippy()?;
        crate::modules::check(&build::workspace_root(), false)?;
    }
    let agent = build::agent()?;
    let obj = build::ebpf_object_path();
    let upgrade_obj = build::ebpf_upgrade_test()?;
    let python = prereq::webrtc_venv()?;
    let deb = crate::dist::deb()?;
    eprintln!("xtask: running unit and integration tests");
    let mut cmd = cargo(&["test", "--release", "--workspace", "--exclude", "jitsi-ebpf"]);
    if let Some(f) = filter {
        cmd.args(["--", f]);
    }
    cmd.env("JITSI_AGENT_BIN", &agent)
        .env("JITSI_EBPF_OBJECT", &obj)
        .env("JITSI_EBPF_UPGRADE_TEST", &upgrade_obj)
        .env("JITSI_WEBRTC_PYTHON", &python)
        .env("JITSI_DEB", &deb);
    run(&mut cmd)?;
    if fuzz_seconds > 0 && filter.is_none() {
        fuzz(fuzz_seconds)?;
    }
    Ok(())
}

/// Builds everything, then runs the lab demo as root.
pub fn demo() -> Result<()> {
    require_root("cargo xtask demo")?;
    prereq::apt(LAB_PACKAGES)?;
    let agent = build::agent()?;
    let lab = build::workspace_root().join("target/release/jitsi-lab");
    let mut cmd = Command::new(&lab);
    cmd.arg("demo").arg("--agent").arg(&agent);
    run(&mut cmd)
}
