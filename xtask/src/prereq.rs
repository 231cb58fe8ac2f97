//! Installing what a fresh Debian machine lacks: Debian packages and `bpf-linker`.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::Once,
};

use anyhow::{Context, Result, bail};

/// The bpf-linker release built against Debian's LLVM 22 (see docs/development.md).
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Whether Debian package `name` is installed.
fn dpkg_installed(name: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", name])
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Installs the Debian packages of `names` that are missing, with `apt-get`.
pub fn apt(names: &[&str]) -> Result<()> {
    let missing: Vec<&str> = names.iter().copied().filter(|n| !dpkg_installed(n)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "missing Debian packages: {} — install them with `sudo apt-get install {}` or run as root",
            missing.join(" "),
            missing.join(" ")
        );
    }
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        eprintln!("xtask: apt-get update");
        let _ = Command::new("apt-get").args(["update", "-q"]).stdout(Stdio::null()).status();
    });
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    // Packages with a daemon (docker.io) must not start it: the tests run their own engine
    // in a namespace, and one in the root namespace would add a bridge and firewall rules there.
    // policy-rc.d answering 101 ("action forbidden") is Debian's switch for that.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let placed = !policy.exists()
        && std::fs::write(policy, "#!/bin/sh\n# placed by cargo xtask during apt-get install\nexit 101\n").is_ok()
        && std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755)).is_ok();
    let status = Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::null())
        .status()
        .context("running apt-get");
    if placed {
        let _ = std::fs::remove_file(policy);
    }
    let status = status?;
    if !status.success() {
        bail!("`apt-get install {}` failed ({status})", missing.join(" "));
    }
    Ok(())
}

/// Where cargo installs binaries.
fn cargo_bin_dir() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

/// The Python packages of the browser test's WebRTC videobridge stand-in
/// (`tests/webrtc/jvb_standin.py` patches aioice 0.13's candidate gathering: keep them pinned).
const WEBRTC_PACKAGES: &[&str] = &["aiortc==1.16.0", "aioice==0.13.0", "aiohttp==3.14.5"];

/// A venv under `target/` with Debian's Python and the WebRTC stand-in's packages from PyPI,
/// made once (kept while the pins are unchanged); returns its `python`.
pub fn webrtc_venv() -> Result<PathBuf> {
    let dir = crate::build::workspace_root().join("target/webrtc-venv");
    let python = dir.join("bin/python");
    let stamp = dir.join("jitsi-packages.txt");
    let want = WEBRTC_PACKAGES.join("\n");
    if python.exists() && std::fs::read_to_string(&stamp).is_ok_and(|s| s == want) {
        return Ok(python);
    }
    eprintln!("xtask: making the WebRTC stand-in's venv ({})", WEBRTC_PACKAGES.join(" "));
    let _ = std::fs::remove_dir_all(&dir);
    let ok = Command::new("/usr/bin/python3").arg("-m").arg("venv").arg(&dir).status().context("python3 -m venv")?;
    if !ok.success() {
        bail!("`/usr/bin/python3 -m venv {}` failed (apt-get install python3-venv)", dir.display());
    }
    let ok = Command::new(&python)
        .args(["-m", "pip", "install", "-q", "--disable-pip-version-check"])
        .args(WEBRTC_PACKAGES)
        .status()
        .context("pip install")?;
    if !ok.success() {
        bail!("pip could not install {}", WEBRTC_PACKAGES.join(" "));
    }
    std::fs::write(&stamp, want)?;
    Ok(python)
}

/// Makes sure `cargo fuzz` is available, installing cargo-fuzz from crates.io when missing.
pub fn cargo_fuzz() -> Result<()> {
    let works = || {
        Command::new("cargo")
            .args(["fuzz", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if works() {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz");
    let status =
        Command::new("cargo").args(["install", "--locked", "cargo-fuzz"]).status().context("running cargo install")?;
    if !status.success() || !works() {
        bail!("installing cargo-fuzz failed; install it with `cargo install cargo-fuzz`");
    }
    Ok(())
}

/// Path of a working `bpf-linker`, installing it (and LLVM 22) when missing.
pub fn bpf_linker() -> Result<PathBuf> {
    let candidates = [cargo_bin_dir().join("bpf-linker"), PathBuf::from("bpf-linker")];
    for c in &candidates {
        if Command::new(c)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Ok(c.clone());
        }
    }
    eprintln!("xtask: bpf-linker not found; installing bpf-linker {BPF_LINKER_VERSION} against LLVM 22");
    apt(&["llvm-22-dev", "libzstd-dev", "zlib1g-dev"])?;
    let status = Command::new("cargo")
        .args(["install", "--locked", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features", "llvm-22"])
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .status()
        .context("running cargo install bpf-linker")?;
    if !status.success() {
        bail!(
            "installing bpf-linker failed; install it by hand with \
             `apt-get install llvm-22-dev libzstd-dev zlib1g-dev && LLVM_PREFIX={LLVM_PREFIX} \
             cargo install bpf-linker --version {BPF_LINKER_VERSION} --no-default-features --features llvm-22`"
        );
    }
    Ok(candidates[0].clone())
}
