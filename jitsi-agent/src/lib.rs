//! jitsi-agent: steers a Jitsi Meet stack's public ports to its containers with XDP/TC.
//!
//! `main.rs` is a thin CLI over this library; the integration tests drive the same code.

pub mod acme;
pub mod check;
pub mod config;
pub mod datapath;
pub mod docker;
pub mod ebpf_object;
pub mod error;
pub mod health;
pub mod http;
pub mod layout;
pub mod listeners;
pub mod metrics;
pub mod names;
pub mod netlink;
pub mod peer_napi;
pub mod policy_routing;
pub mod resolve;
pub mod rlimit;
pub mod rules;
pub mod run;
pub mod safe_fs;
pub mod sources;
pub mod splitter;
pub mod stack;
pub mod status;
pub mod teardown;
pub mod tls;

pub use error::Error;
