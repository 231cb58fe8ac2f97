//! Resolving a backend address to what XDP needs to deliver to it: the bridge port to redirect
//! into, the backend's MAC and the MAC of its gateway (the bridge), plus the interface the
//! backend's replies arrive on (where the TC program attaches).

use std::{net::IpAddr, time::Duration};

use rtnetlink::Handle;

use crate::{
    error::{Error, Result},
    netlink,
};

/// How to reach one backend address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Interface to redirect into (the bridge port / host-side veth of the backend).
    pub port_ifindex: u32,
    /// The backend's MAC.
    pub backend_mac: [u8; 6],
    /// The MAC of the interface routing to the backend (the bridge).
    pub gateway_mac: [u8; 6],
    /// The interface routing to the backend: replies arrive on it; `reply_out` attaches here.
    pub gateway: netlink::Link,
}

const LOOPBACK_IFINDEX: u32 = 1;
/// How long to wait for an ARP/ND answer from a backend.
const NEIGHBOUR_TIMEOUT: Duration = Duration::from_millis(1500);

/// Resolves `ip` through the host's routes, neighbour table and bridge forwarding database.
pub async fn backend(h: &Handle, ip: IpAddr) -> Result<Resolved> {
    let oif = netlink::route_oif(h, ip).await?;
    if oif == LOOPBACK_IFINDEX {
        return Err(Error::Backend {
            addr: ip,
            message: "routes to this host itself; XDP can only steer to a bridge or veth".into(),
        });
    }
    let gateway = netlink::link_by_index(h, oif).await?;
    let backend_mac = match netlink::neighbour_mac(h, oif, ip).await? {
        Some(mac) => mac,
        None => wait_for_neighbour(h, oif, ip).await?,
    };
    if !gateway.is_bridge {
        return Ok(Resolved { port_ifindex: oif, backend_mac, gateway_mac: gateway.mac, gateway });
    }
    if let Some(port) = netlink::fdb_port(h, oif, backend_mac).await? {
        return Ok(Resolved { port_ifindex: port, backend_mac, gateway_mac: gateway.mac, gateway });
    }
    // The bridge does not know where that MAC is (a restarted container keeps its address and
    // MAC on a new port, and stays silent): forget the neighbour entry and ask again; the
    // backend's answer teaches the bridge its port.
    netlink::forget_neighbour(h, oif, ip).await?;
    let backend_mac = wait_for_neighbour(h, oif, ip).await?;
    let port_ifindex = netlink::fdb_port(h, oif, backend_mac).await?.ok_or_else(|| Error::Backend {
        addr: ip,
        message: format!("MAC {} is not in bridge {}'s forwarding database", fmt_mac(&backend_mac), gateway.name),
    })?;
    Ok(Resolved { port_ifindex, backend_mac, gateway_mac: gateway.mac, gateway })
}

async fn wait_for_neighbour(h: &Handle, oif: u32, ip: IpAddr) -> Result<[u8; 6]> {
    netlink::trigger_resolution(h, oif, ip).await?;
    let deadline = tokio::time::Instant::now() + NEIGHBOUR_TIMEOUT;
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(mac) = netlink::neighbour_mac(h, oif, ip).await? {
            return Ok(mac);
        }
    }
    Err(Error::Backend { addr: ip, message: "no ARP/neighbour-discovery answer (is the backend up?)".into() })
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn fmt_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}
