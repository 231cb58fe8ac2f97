//! Building the eBPF object and the agent that embeds it.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{prereq, toolchain};

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask has a parent").to_path_buf()
}

/// Where `build-ebpf` leaves the object; `jitsi-agent/build.rs` embeds it from there.
pub fn ebpf_object_path() -> PathBuf {
    workspace_root().join("target/ebpf/bpfel-unknown-none/release/jitsi-ebpf")
}

/// Runs `cmd`, failing with its exit status if it fails.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

/// A `cargo <args> --package jitsi-ebpf` for `bpfel-unknown-none` with the toolchain found
/// (and bpf-linker installed) for it, building into `target/<target_dir>`.
fn ebpf_cargo(args: &[&str], target_dir: &str) -> Result<Command> {
    let linker = prereq::bpf_linker()?;
    let tc = toolchain::find()?;
    eprintln!("xtask: eBPF toolchain: {}", tc.description);
    let root = workspace_root();
    let mut cmd = Command::new("cargo");
    if let Some(arg) = tc.cargo_toolchain_arg {
        cmd.arg(arg);
    }
    cmd.current_dir(&root)
        .args(args)
        .args(["--package", "jitsi-ebpf", "--target", "bpfel-unknown-none", "-Z", "build-std=core", "--target-dir"])
        .arg(root.join("target").join(target_dir))
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WRAPPER");
    for (k, v) in &tc.env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

/// Builds `jitsi-ebpf` for `bpfel-unknown-none` with BTF and returns the object's path.
pub fn ebpf() -> Result<PathBuf> {
    ebpf_build("ebpf", &[])
}

/// The upgrade test's variant of the datapath (`--features upgrade-test`: other programs and
/// one map of another size), in `target/ebpf-upgrade-test/`; never embedded in an agent.
pub fn ebpf_upgrade_test() -> Result<PathBuf> {
    ebpf_build("ebpf-upgrade-test", &["--features", "upgrade-test"])
}

fn ebpf_build(target_dir: &str, extra: &[&str]) -> Result<PathBuf> {
    let mut cmd = ebpf_cargo(&[&["build", "--release"], extra].concat(), target_dir)?;
    cmd.env("CARGO_PROFILE_RELEASE_PANIC", "abort")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "2")
        .env("CARGO_PROFILE_RELEASE_LTO", "true")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        // BTF for the maps (bpftool prints field names) and the programs.
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS", "-C debuginfo=2 -C link-arg=--btf");
    run(&mut cmd)?;
    let obj = workspace_root().join("target").join(target_dir).join("bpfel-unknown-none/release/jitsi-ebpf");
    if !obj.exists() {
        bail!("the eBPF build succeeded but {} is missing", obj.display());
    }
    eprintln!("xtask: eBPF object at {}", obj.display());
    Ok(obj)
}

/// `cargo clippy -D warnings` for the eBPF crate (separately from the userspace crates: the
/// shared `jitsi-common` would otherwise unify its `user` feature into the kernel build).
pub fn ebpf_clippy() -> Result<()> {
    let mut cmd = ebpf_cargo(&["clippy"], "ebpf-clippy")?;
    cmd.args(["--", "-D", "warnings"]);
    run(&mut cmd)
}

/// Builds the eBPF object, then the release agent binary that embeds it.
pub fn agent() -> Result<PathBuf> {
    let obj = ebpf()?;
    let root = workspace_root();
    run(Command::new("cargo")
        .current_dir(&root)
        .args(["build", "--release", "--package", "jitsi-agent", "--package", "jitsi-tests", "--bins"])
        .env("JITSI_EBPF_OBJECT", &obj))?;
    let bin = root.join("target/release/jitsi-agent");
    eprintln!("xtask: agent binary with the eBPF object embedded at {}", bin.display());
    Ok(bin)
}
