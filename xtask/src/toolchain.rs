//! Finding a rustc that can build `core` for `bpfel-unknown-none`.
//!
//! The eBPF target has no prebuilt standard library, so it needs `-Z build-std=core` and the
//! library source. Two routes work on Debian 12 (see docs/development.md): rustup's nightly with the
//! `rust-src` component, or Debian's `rustc-web` with `rust-web-src` and `RUSTC_BOOTSTRAP=1`.

use std::{
    path::Path,
    process::{Command, Stdio},
};

use anyhow::{Result, bail};

use crate::prereq;

/// How to invoke cargo for the eBPF build.
pub struct BpfToolchain {
    /// Human description printed once ("rustup nightly (rustc 1.97.0-nightly ...)").
    pub description: String,
    /// `+nightly` for rustup, empty otherwise.
    pub cargo_toolchain_arg: Option<&'static str>,
    /// Environment for the cargo invocation (`RUSTC`, `RUSTC_BOOTSTRAP`).
    pub env: Vec<(&'static str, String)>,
}

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn rustup_nightly() -> Option<BpfToolchain> {
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        return None;
    }
    let has_src = |s: &str| s.lines().any(|l| l.starts_with("rust-src"));
    let installed =
        output(Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if !has_src(&installed) {
        eprintln!("xtask: adding rust-src to the rustup nightly toolchain");
        let ok = Command::new("rustup")
            .args(["component", "add", "rust-src", "--toolchain", "nightly"])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("xtask: `rustup component add rust-src --toolchain nightly` failed; trying Debian's rustc");
            return None;
        }
    }
    let version = output(Command::new("rustc").arg("+nightly").arg("--version"))?;
    Some(BpfToolchain {
        description: format!("rustup nightly with rust-src ({version})"),
        cargo_toolchain_arg: Some("+nightly"),
        env: vec![],
    })
}

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_LIBRARY_SRC: &str = "/usr/lib/rustlib/src/rust/library";

fn debian_rustc() -> Option<BpfToolchain> {
    let usable = || Path::new(DEBIAN_RUSTC).exists() && Path::new(DEBIAN_LIBRARY_SRC).join("core").exists();
    if !usable() {
        eprintln!("xtask: installing Debian's rustc-web and rust-web-src (a rustc with its library source)");
        if let Err(e) = prereq::apt(&["rustc-web", "cargo-web", "rust-web-src"]) {
            eprintln!("xtask: {e:#}");
            return None;
        }
        if !usable() {
            return None;
        }
    }
    let version = output(Command::new(DEBIAN_RUSTC).arg("--version"))?;
    Some(BpfToolchain {
        description: format!("Debian {DEBIAN_RUSTC} with rust-web-src, RUSTC_BOOTSTRAP=1 ({version})"),
        cargo_toolchain_arg: None,
        env: vec![("RUSTC", DEBIAN_RUSTC.into()), ("RUSTC_BOOTSTRAP", "1".into())],
    })
}

/// Picks the first toolchain that works, installing pieces where that is possible.
pub fn find() -> Result<BpfToolchain> {
    if let Some(t) = rustup_nightly().or_else(debian_rustc) {
        return Ok(t);
    }
    bail!(
        "no Rust toolchain that can build core for bpfel-unknown-none was found. Install one of:\n  \
         rustup toolchain install nightly --component rust-src\n  \
         apt-get install rustc-web cargo-web rust-web-src   (Debian 12: rustc 1.96 with library source)"
    )
}
