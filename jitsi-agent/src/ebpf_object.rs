//! The eBPF object embedded at build time (see `build.rs`).

#[cfg(not(jitsi_ebpf_embedded))]
use crate::error::Error;
use crate::error::Result;

#[cfg(jitsi_ebpf_embedded)]
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/jitsi-ebpf.o"));

/// The eBPF object's bytes.
pub fn bytes() -> Result<&'static [u8]> {
    #[cfg(jitsi_ebpf_embedded)]
    {
        Ok(EMBEDDED)
    }
    #[cfg(not(jitsi_ebpf_embedded))]
    {
        Err(Error::NoEbpfObject)
    }
}
