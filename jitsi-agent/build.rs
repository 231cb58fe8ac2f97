//! Embeds the eBPF object built by `cargo xtask build-ebpf` into the agent binary, so the
//! release binary is one file to copy to a server. Without the object (a plain `cargo build`
//! or `cargo test` on a machine without the BPF toolchain) the agent still builds; commands
//! that need the datapath then say how to build it.

use std::{env, path::PathBuf};

fn main() {
    println!("cargo::rustc-check-cfg=cfg(jitsi_ebpf_embedded)");
    println!("cargo::rerun-if-env-changed=JITSI_EBPF_OBJECT");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let obj = env::var_os("JITSI_EBPF_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| manifest.join("../target/ebpf/bpfel-unknown-none/release/jitsi-ebpf"));
    println!("cargo::rerun-if-changed={}", obj.display());
    if obj.is_file() {
        let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("jitsi-ebpf.o");
        std::fs::copy(&obj, &out).expect("copying the eBPF object into OUT_DIR");
        println!("cargo::rustc-cfg=jitsi_ebpf_embedded");
    }
}
