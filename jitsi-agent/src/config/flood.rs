//! `[flood]`: the per-source limits the XDP program enforces before anything is steered or
//! reaches the host's stack, and the networks they never apply to.
//!
//! The defaults are sized for a conference, per source address (an office or a campus behind
//! one NAT address counts as one source; an IPv6 source per /64):
//! - a participant sending its camera at 720p with simulcast sends at most 2.2 Mbit/s of VP8
//!   (`maxBitratesVideo` low + standard + high: 200k + 500k + 1500k, `STANDARD_CODEC_SETTINGS`
//!   in lib-jitsi-meet's `service/RTC/StandardVideoQualitySettings.ts`), about 230 packets/s of
//!   1,200 bytes, plus 50 packets/s of Opus audio (20 ms frames), RTCP and retransmissions:
//!   about 400 packets/s; a screen share (`ssHigh`, 2.5 Mbit/s) adds about 260. 10,000
//!   packets/s is 25 camera senders, or 15 that also share a screen, behind one address; a
//!   burst of 20,000 holds two seconds of that (a key frame of every layer at once is a few
//!   hundred packets);
//! - a participant opens a handful of flows: one ICE flow to the videobridge, TURN
//!   allocations, a few TCP connections to 443 (the page, the XMPP and bridge WebSockets).
//!   100 new flows/s with a burst of 1,000 lets 100 participants of one address join at once
//!   (about 10 flows each) and go on joining at 10 a second.

use std::net::IpAddr;

use jitsi_common::{FloodConfig, MAX_GUARDED_PORTS};
use serde::Deserialize;

/// `[flood]` (optional: every default).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Flood {
    /// Whether the limits apply at all.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Packets per second to steered ports, per source.
    #[serde(default = "default_packets_per_second")]
    pub packets_per_second: u64,
    /// Packets a source may send at once above its rate.
    #[serde(default = "default_packets_burst")]
    pub packets_burst: u64,
    /// New flows per second, per source: TCP connections to steered ports and to the
    /// splitters' ports, UDP flows (source ports) to steered ports.
    #[serde(default = "default_flows_per_second")]
    pub flows_per_second: u64,
    /// New flows a source may open at once above its rate.
    #[serde(default = "default_flows_burst")]
    pub flows_burst: u64,
    /// Networks never limited (`"192.0.2.0/24"`, `"2001:db8::/48"`, or one address).
    #[serde(default)]
    pub allow: Vec<Network>,
}

impl Default for Flood {
    fn default() -> Self {
        Flood {
            enabled: true,
            packets_per_second: default_packets_per_second(),
            packets_burst: default_packets_burst(),
            flows_per_second: default_flows_per_second(),
            flows_burst: default_flows_burst(),
            allow: Vec::new(),
        }
    }
}

impl Flood {
    /// The `flood_config` value: these limits, guarding the splitters' listen `ports` (at
    /// most [`MAX_GUARDED_PORTS`], which validation ensures).
    pub fn kernel_config(&self, ports: &[u16]) -> FloodConfig {
        let mut guarded_ports = [0; MAX_GUARDED_PORTS];
        for (slot, port) in guarded_ports.iter_mut().zip(ports) {
            *slot = *port;
        }
        FloodConfig {
            enabled: u32::from(self.enabled),
            allowed: self.allow.len() as u32,
            packets_per_second: self.packets_per_second,
            packets_burst: self.packets_burst,
            flows_per_second: self.flows_per_second,
            flows_burst: self.flows_burst,
            guarded_ports,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_packets_per_second() -> u64 {
    10_000
}
fn default_packets_burst() -> u64 {
    20_000
}
fn default_flows_per_second() -> u64 {
    100
}
fn default_flows_burst() -> u64 {
    1_000
}

/// A network: an address and a prefix length, with no host bits set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct Network {
    /// The network address.
    pub addr: IpAddr,
    /// The prefix length.
    pub len: u8,
}

/// Why a network does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    /// Not an address.
    #[error("`{0}` is not an IP address")]
    Address(String),
    /// The length is not a number within the family's bits.
    #[error("`/{len}` is not a prefix length for an {family} network (0-{max})")]
    Length {
        /// As written.
        len: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// 32 or 128.
        max: u8,
    },
    /// Bits set past the prefix.
    #[error("`{written}` has bits set past its prefix; the network is `{network}`")]
    HostBits {
        /// As written.
        written: String,
        /// The network it is in.
        network: String,
    },
}

impl TryFrom<String> for Network {
    type Error = NetworkError;
    fn try_from(s: String) -> Result<Self, NetworkError> {
        s.parse()
    }
}

impl std::str::FromStr for Network {
    type Err = NetworkError;
    fn from_str(s: &str) -> Result<Self, NetworkError> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| NetworkError::Address(addr.into()))?;
        let (family, max) = if addr.is_ipv4() { ("IPv4", 32) } else { ("IPv6", 128) };
        let len = match len {
            None => max,
            Some(l) => l.trim().parse::<u8>().ok().filter(|n| *n <= max).ok_or_else(|| NetworkError::Length {
                len: l.into(),
                family,
                max,
            })?,
        };
        let network = Network { addr: crate::netlink::network(addr, len), len };
        if network.addr != addr {
            return Err(NetworkError::HostBits { written: s.into(), network: network.to_string() });
        }
        Ok(network)
    }
}

impl std::fmt::Display for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_with_their_family_s_lengths() {
        let n: Network = "192.0.2.0/24".parse().unwrap();
        assert_eq!(n.to_string(), "192.0.2.0/24");
        assert_eq!("198.51.100.7".parse::<Network>().unwrap().to_string(), "198.51.100.7/32");
        assert_eq!("2001:db8::/32".parse::<Network>().unwrap().to_string(), "2001:db8::/32");
        assert_eq!("0.0.0.0/0".parse::<Network>().unwrap().len, 0);
        assert_eq!(
            "192.0.2.1/24".parse::<Network>().unwrap_err().to_string(),
            "`192.0.2.1/24` has bits set past its prefix; the network is `192.0.2.0/24`"
        );
        assert_eq!(
            "192.0.2.0/33".parse::<Network>().unwrap_err().to_string(),
            "`/33` is not a prefix length for an IPv4 network (0-32)"
        );
        assert_eq!("example.org/24".parse::<Network>().unwrap_err().to_string(), "`example.org` is not an IP address");
    }
}
