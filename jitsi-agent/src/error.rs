//! Typed errors of the agent library.

use std::{net::IpAddr, path::PathBuf};

/// Everything the library can fail with; the CLI adds context with `anyhow`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration file could not be read.
    #[error("cannot read config file {path}")]
    ConfigRead {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration file is not valid TOML or does not match the schema.
    #[error("{at}: {message}")]
    ConfigParse {
        /// `file:line:column` of the offending text.
        at: String,
        /// The parser's message.
        message: String,
    },
    /// The configuration parsed but a value is not acceptable.
    #[error("{at}: `{key}`: {message}")]
    ConfigInvalid {
        /// `file:line:column` of the offending key (just the file if it cannot be located).
        at: String,
        /// The offending key, e.g. `steer[1].port`.
        key: String,
        /// What is wrong and what to do.
        message: String,
    },
    /// A netlink request failed.
    #[error("netlink: {what}")]
    Netlink {
        /// What was asked.
        what: String,
        /// The error from the kernel or the socket.
        #[source]
        source: rtnetlink::Error,
    },
    /// A network interface named in the configuration does not exist.
    #[error("interface `{0}` not found")]
    NoSuchInterface(String),
    /// `uplink.interface` does not exist.
    #[error("uplink.interface `{0}`: no such interface (see `ip link`)")]
    NoUplink(String),
    /// The uplink has no global address and none is configured.
    #[error("uplink.interface `{0}` has no global address; set uplink.addresses")]
    NoHostAddress(String),
    /// A backend address cannot be reached in a way XDP can redirect to.
    #[error("backend {addr}: {message}")]
    Backend {
        /// The backend address.
        addr: IpAddr,
        /// Why it cannot be steered to.
        message: String,
    },
    /// The namespace of a bridge port's veth peer could not be entered.
    #[error("bridge port #{port}: {message}")]
    PeerNetns {
        /// The bridge port (host-side veth) index.
        port: u32,
        /// What is wrong and what to do.
        message: String,
    },
    /// The pin directory is not usable.
    #[error("pin directory {path}: {message}")]
    PinDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The agent was built without the eBPF object.
    #[error("this jitsi-agent binary was built without the eBPF object; build it with `cargo xtask build`")]
    NoEbpfObject,
    /// Loading, attaching or pinning the eBPF programs failed.
    #[error("{what}")]
    Ebpf {
        /// What was being done.
        what: String,
        /// aya's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading or writing a map failed.
    #[error("map `{map}`")]
    Map {
        /// The map name.
        map: &'static str,
        /// aya's error.
        #[source]
        source: aya::maps::MapError,
    },
    /// The Docker engine did not answer, or refused a request.
    #[error("docker: {what} (is the Docker engine running? DOCKER_HOST)")]
    Docker {
        /// What was asked.
        what: String,
        /// bollard's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// The Docker engine closed its event stream.
    #[error("docker: the event stream ended")]
    DockerEventsEnded,
    /// Docker Compose is not installed, or it failed.
    #[error("{what}: {problem}")]
    Compose {
        /// What was run (or looked for).
        what: String,
        /// What went wrong and what to do.
        problem: String,
    },
    /// A program or map the agent needs is not in the eBPF object.
    #[error("{what}: missing in the eBPF object")]
    MissingInObject {
        /// The program or map.
        what: String,
    },
    /// A test override of the eBPF object was refused.
    #[error("the eBPF object {path} (JITSI_AGENT_EBPF_OBJECT): {problem}", path = path.display())]
    ObjectOverride {
        /// The file named by the variable.
        path: PathBuf,
        /// Why it was refused.
        problem: &'static str,
    },
    /// A worker thread (blocking work off the async runtime) panicked or was cancelled.
    #[error("{what}: the worker thread failed")]
    Worker {
        /// What it was doing.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// The operating system's random source failed.
    #[error("{what}: the random source failed")]
    Random {
        /// What the bytes were for.
        what: &'static str,
        /// getrandom's error.
        #[source]
        source: getrandom::Error,
    },
    /// A certificate could not be made.
    #[error("{what}")]
    Certificate {
        /// Which certificate.
        what: String,
        /// The certificate library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A system call failed.
    #[error("{what}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// The message with its whole chain of causes, `a: b: c` (for log lines).
    pub fn report(&self) -> String {
        let mut out = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            out.push_str(": ");
            out.push_str(&c.to_string());
            cause = c.source();
        }
        out
    }

    pub(crate) fn ebpf(what: impl Into<String>, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Error::Ebpf { what: what.into(), source: Box::new(source) }
    }

    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }
}

/// Result alias of the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;
