//! The fixed network: the subnet from `[stack] subnet` and each service's address in it.

use std::net::Ipv4Addr;

use crate::config::Stack;

/// The services, their host numbers in the subnet, and what the agent steers to them.
pub const SERVICES: [(&str, u8); 5] = [("jvb", 10), ("coturn", 11), ("web", 12), ("prosody", 13), ("jicofo", 14)];

/// A parsed IPv4 subnet with the services' addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (8 to 24).
    pub prefix: u8,
}

impl Layout {
    /// Parses `a.b.c.d/len`; the subnet must be private (RFC 1918) and hold the services.
    pub fn parse(subnet: &str) -> Result<Self, String> {
        let (addr, len) = subnet.split_once('/').ok_or_else(|| format!("`{subnet}`: write it as 172.18.0.0/24"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| format!("`{addr}` is not an IPv4 address"))?;
        let prefix: u8 = len.parse().map_err(|_| format!("`/{len}` is not a prefix length"))?;
        if !(8..=24).contains(&prefix) {
            return Err(format!("/{prefix}: use a prefix from /8 to /24"));
        }
        if !addr.is_private() {
            return Err(format!("{addr} is not a private (RFC 1918) address"));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(format!(
                "{addr}/{prefix} has host bits set (the network is {})",
                Ipv4Addr::from(u32::from(addr) & mask)
            ));
        }
        Ok(Layout { network: addr, prefix })
    }

    /// From a validated `[stack]`.
    pub fn of(stack: &Stack) -> Self {
        Self::parse(&stack.subnet).expect("validated")
    }

    /// The host `n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + u32::from(n))
    }

    /// The fixed address of `service`.
    pub fn addr(&self, service: &str) -> Ipv4Addr {
        let n = SERVICES.iter().find(|(s, _)| *s == service).map(|(_, n)| *n).expect("a known service");
        self.host(n)
    }

    /// Whether `ip` is in the subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == u32::from(self.network)
    }

    /// The last address of the subnet.
    pub fn host_last(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) | (u32::MAX >> self.prefix))
    }

    /// The bridge's own address (the gateway Docker gives the network).
    pub fn gateway(&self) -> Ipv4Addr {
        self.host(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_places_services() {
        let l = Layout::parse("172.18.0.0/24").unwrap();
        assert_eq!(l.addr("jvb"), Ipv4Addr::new(172, 18, 0, 10));
        assert_eq!(l.addr("web"), Ipv4Addr::new(172, 18, 0, 12));
        assert_eq!(l.gateway(), Ipv4Addr::new(172, 18, 0, 1));
        for bad in ["172.18.0.0", "172.18.0.1/24", "8.8.8.0/24", "172.18.0.0/28", "x/24"] {
            assert!(Layout::parse(bad).is_err(), "{bad}");
        }
    }
}
