//! The eBPF object embedded at build time (see `build.rs`), or the one a test names in
//! [`OVERRIDE_ENV`].

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

#[cfg(jitsi_ebpf_embedded)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jitsi-ebpf.o"));

/// Names an eBPF object file the agent loads instead of the embedded one: for trying a
/// datapath build with the agent that runs it (the upgrade test runs two builds this way).
/// Not for production: the unit does not set it, and the agent warns when it is set.
pub const OVERRIDE_ENV: &str = "JITSI_AGENT_EBPF_OBJECT";

static OVERRIDE: OnceLock<&'static [u8]> = OnceLock::new();

/// The eBPF object's bytes.
pub fn bytes() -> Result<&'static [u8]> {
    if let Some(b) = OVERRIDE.get() {
        return Ok(b);
    }
    if let Some(path) = std::env::var_os(OVERRIDE_ENV) {
        let what = format!("the eBPF object {} ({OVERRIDE_ENV})", path.to_string_lossy());
        let refuse = |problem| Error::ObjectOverride { path: path.clone().into(), problem };
        // Never under the service manager: the unit runs the embedded object only.
        if std::env::var_os("INVOCATION_ID").is_some() {
            return Err(refuse("refused under systemd (for tests run by hand only)"));
        }
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io(what.clone(), e))?;
        {
            use std::os::unix::fs::MetadataExt as _;
            if !meta.is_file() || meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                return Err(refuse("must be a regular file owned by root and writable by root only"));
            }
        }
        let data = std::fs::read(&path).map_err(|e| Error::io(what.clone(), e))?;
        let sha: String = build_id(&data).iter().map(|b| format!("{b:02x}")).collect();
        tracing::warn!(path = %path.to_string_lossy(), sha256 = %sha, "using the eBPF object {OVERRIDE_ENV} names, not the embedded one");
        // Read once for the process's life.
        return Ok(OVERRIDE.get_or_init(|| Box::leak(data.into_boxed_slice())));
    }
    embedded()
}

#[cfg(jitsi_ebpf_embedded)]
fn embedded() -> Result<&'static [u8]> {
    Ok(EMBEDDED)
}

#[cfg(not(jitsi_ebpf_embedded))]
fn embedded() -> Result<&'static [u8]> {
    Err(Error::NoEbpfObject)
}

/// The build of an object: the SHA-256 of its bytes.
pub fn build_id(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}
