//! The lab: a reusable topology of fresh network namespaces (an "internet" client, a "host"
//! with the uplink and a Linux bridge, and backends standing in for jvb, coturn and web),
//! small servers that report the source address they saw, packet builders with an
//! independent checksum implementation, and a helper that runs the agent binary in the host
//! namespace. Used by the integration tests and by `cargo xtask demo`.
//!
//! Everything here needs root. Every namespace name is unique per lab, and everything is
//! removed on drop; nothing in the root namespace is changed.

pub mod agent;
pub mod bench;
pub mod cgroup;
pub mod clients;
pub mod docker;
pub mod lab;
pub mod machine;
pub mod netns;
pub mod packet;
pub mod pebble;
pub mod raw;
pub mod servers;
pub mod tap;
pub mod turn;
