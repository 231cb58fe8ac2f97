//! The stack's fixed network: the Compose project, its services, the subnet from
//! `[stack] subnet` and each service's address in it. A leaf: the configuration parses into it,
//! the stack generator, the Docker follower and the ACME reloader read it.

use std::net::Ipv4Addr;

/// The Compose project name (`COMPOSE_PROJECT_NAME` in the generated `.env`).
pub const PROJECT: &str = "jitsi";

/// A service of the generated stack (its Compose service name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// The videobridge.
    Jvb,
    /// The TURN server.
    Coturn,
    /// The web front-end (nginx).
    Web,
    /// The XMPP server.
    Prosody,
    /// The conference focus.
    Jicofo,
}

impl Service {
    /// Every service, in address order.
    pub const ALL: [Service; 5] = [Service::Jvb, Service::Coturn, Service::Web, Service::Prosody, Service::Jicofo];

    /// The Compose service name: `web`, `prosody`, `jicofo` and `jvb` are the services of
    /// docker-jitsi-meet's `docker-compose.yml` at `stable-11146-2` (the stack's pinned
    /// `image_tag`); `coturn` is the stack's own.
    pub fn name(self) -> &'static str {
        match self {
            Service::Jvb => "jvb",
            Service::Coturn => "coturn",
            Service::Web => "web",
            Service::Prosody => "prosody",
            Service::Jicofo => "jicofo",
        }
    }

    /// Its host number in the subnet (.10 jvb to .14 jicofo).
    fn host_number(self) -> u8 {
        match self {
            Service::Jvb => 10,
            Service::Coturn => 11,
            Service::Web => 12,
            Service::Prosody => 13,
            Service::Jicofo => 14,
        }
    }
}

impl std::fmt::Display for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a subnet was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SubnetError {
    /// Not `a.b.c.d/len`.
    #[error("`{0}`: write it as 172.18.0.0/24")]
    Syntax(String),
    /// The address part is not IPv4.
    #[error("`{0}` is not an IPv4 address")]
    Address(String),
    /// The length is not a number.
    #[error("`/{0}` is not a prefix length")]
    Length(String),
    /// Too small for the services, or too large to be one network.
    #[error("/{0}: use a prefix from /8 to /24")]
    Size(u8),
    /// Not RFC 1918.
    #[error("{0} is not a private (RFC 1918) address")]
    Public(Ipv4Addr),
    /// Not a network address.
    #[error("{addr}/{prefix} has host bits set (the network is {network})")]
    HostBits {
        /// As written.
        addr: Ipv4Addr,
        /// As written.
        prefix: u8,
        /// The network it lies in.
        network: Ipv4Addr,
    },
}

/// A parsed IPv4 subnet with the services' addresses (`[stack] subnet`, written
/// `"172.18.0.0/24"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Layout {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (8 to 24).
    pub prefix: u8,
}

impl Layout {
    /// Parses `a.b.c.d/len`; the subnet must be private (RFC 1918) and hold the services.
    pub fn parse(subnet: &str) -> Result<Self, SubnetError> {
        let (addr, len) = subnet.split_once('/').ok_or_else(|| SubnetError::Syntax(subnet.into()))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| SubnetError::Address(addr.into()))?;
        let prefix: u8 = len.parse().map_err(|_| SubnetError::Length(len.into()))?;
        if !(8..=24).contains(&prefix) {
            return Err(SubnetError::Size(prefix));
        }
        if !addr.is_private() {
            return Err(SubnetError::Public(addr));
        }
        let mask = u32::MAX << (32 - prefix);
        if u32::from(addr) & !mask != 0 {
            return Err(SubnetError::HostBits { addr, prefix, network: Ipv4Addr::from(u32::from(addr) & mask) });
        }
        Ok(Layout { network: addr, prefix })
    }

    /// The host `n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + u32::from(n))
    }

    /// The fixed address of `service`.
    pub fn addr(&self, service: Service) -> Ipv4Addr {
        self.host(service.host_number())
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

impl TryFrom<String> for Layout {
    type Error = SubnetError;
    fn try_from(s: String) -> Result<Self, SubnetError> {
        Layout::parse(&s)
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_places_services() {
        let l = Layout::parse("172.18.0.0/24").unwrap();
        assert_eq!(l.addr(Service::Jvb), Ipv4Addr::new(172, 18, 0, 10));
        assert_eq!(l.addr(Service::Web), Ipv4Addr::new(172, 18, 0, 12));
        assert_eq!(l.gateway(), Ipv4Addr::new(172, 18, 0, 1));
        for bad in ["172.18.0.0", "172.18.0.1/24", "8.8.8.0/24", "172.18.0.0/28", "x/24"] {
            assert!(Layout::parse(bad).is_err(), "{bad}");
        }
    }
}
