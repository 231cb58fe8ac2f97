//! `jitsi-agent stack ...`: the docker-jitsi-meet Compose project this host runs (web,
//! prosody, jicofo, jvb) plus coturn, generated from `[stack]` with its secrets, TURN wiring
//! and NAT settings, on a fixed network so that the agent can steer to fixed addresses.

pub mod compose;
pub mod compose_cli;
pub mod coturn;
pub mod env;
pub mod init;
pub mod preflight;
pub mod secrets;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod tests;
