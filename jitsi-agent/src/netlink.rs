//! The few rtnetlink queries the agent needs: links, addresses, routes, neighbours, the
//! bridge forwarding database. Everything through the `rtnetlink` crate, nothing shelled out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use futures::TryStreamExt;
use netlink_packet_route::{
    AddressFamily,
    address::{AddressAttribute, AddressScope},
    link::{InfoKind, LinkAttribute, LinkInfo, LinkMessage, LinkXdp, XdpAttached},
    neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState},
    route::{RouteAddress, RouteAttribute, RouteHeader},
};
use rtnetlink::{Handle, RouteMessageBuilder};

use crate::error::{Error, Result};

/// Opens a netlink connection in the calling thread's network namespace and spawns its
/// driver on the current tokio runtime.
pub fn connect() -> Result<Handle> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| Error::io("opening a netlink socket", e))?;
    tokio::spawn(conn);
    Ok(handle)
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let what = what.into();
    move |source| Error::Netlink { what, source }
}

/// What the agent needs to know about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// MAC address (zero if the link has none).
    pub mac: [u8; 6],
    /// Whether it is a Linux bridge.
    pub is_bridge: bool,
    /// The XDP programs attached: id and mode ("driver", "generic", "offload"), one per mode
    /// at most, driver first.
    pub xdp: Vec<(u32, &'static str)>,
}

impl Link {
    /// The first attached program that is one of `ids`, with its mode.
    pub fn xdp_among(&self, ids: &[u32]) -> Option<(u32, &'static str)> {
        self.xdp.iter().copied().find(|(p, _)| ids.contains(p))
    }
}

/// The programs an `IFLA_XDP` nest reports: each attached program's id comes in
/// `IFLA_XDP_{DRV,SKB,HW}_PROG_ID`; `IFLA_XDP_ATTACHED` names the mode and `IFLA_XDP_PROG_ID`
/// the id only when there is one program (several: `XDP_ATTACHED_MULTI` and no
/// `IFLA_XDP_PROG_ID`; Linux's net/core/rtnetlink.c, rtnl_xdp_fill).
fn xdp_programs(nest: Vec<LinkXdp>) -> Vec<(u32, &'static str)> {
    let (mut single, mut id, mut per_mode) = (None, None, [None; 3]);
    for x in nest {
        match x {
            LinkXdp::Attached(XdpAttached::Driver) => single = Some("driver"),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => single = Some("generic"),
            LinkXdp::Attached(XdpAttached::Hardware) => single = Some("offload"),
            LinkXdp::ProgId(p) => id = Some(p),
            LinkXdp::DrvProgId(p) => per_mode[0] = Some(p),
            LinkXdp::SkbProgId(p) => per_mode[1] = Some(p),
            LinkXdp::HwProgId(p) => per_mode[2] = Some(p),
            _ => {}
        }
    }
    let each: Vec<_> =
        per_mode.into_iter().zip(["driver", "generic", "offload"]).filter_map(|(p, m)| Some((p?, m))).collect();
    match (id, single) {
        (Some(id), Some(mode)) if each.is_empty() => vec![(id, mode)],
        _ => each,
    }
}

fn link_from(msg: LinkMessage) -> Link {
    let mut link =
        Link { index: msg.header.index, name: String::new(), mac: [0; 6], is_bridge: false, xdp: Vec::new() };
    for attr in msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) if a.len() == 6 => link.mac.copy_from_slice(&a),
            LinkAttribute::LinkInfo(infos) => {
                link.is_bridge = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Bridge)));
            }
            LinkAttribute::Xdp(xdp) => link.xdp = xdp_programs(xdp),
            _ => {}
        }
    }
    link
}

/// The interface called `name`.
pub async fn link_by_name(h: &Handle, name: &str) -> Result<Link> {
    match h.link().get().match_name(name.to_string()).execute().try_next().await {
        Ok(Some(msg)) => Ok(link_from(msg)),
        Ok(None) => Err(Error::NoSuchInterface(name.into())),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => {
            Err(Error::NoSuchInterface(name.into()))
        }
        Err(e) => Err(nl(format!("getting link {name}"))(e)),
    }
}

/// The interface with index `index`.
pub async fn link_by_index(h: &Handle, index: u32) -> Result<Link> {
    let msg =
        h.link().get().match_index(index).execute().try_next().await.map_err(nl(format!("getting link #{index}")))?;
    msg.map(link_from).ok_or_else(|| Error::NoSuchInterface(format!("#{index}")))
}

/// Global-scope addresses of interface `index` with their prefix lengths (link-local and
/// host-scope ones excluded).
async fn addresses_with_prefix(h: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>> {
    let msgs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(index)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing addresses"))?;
    let mut out = Vec::new();
    for m in msgs {
        if m.header.index != index || m.header.scope != AddressScope::Universe {
            continue;
        }
        for a in &m.attributes {
            if let AddressAttribute::Address(ip) = a {
                out.push((*ip, m.header.prefix_len));
            }
        }
    }
    Ok(out)
}

/// Global-scope addresses of interface `index` (link-local and host-scope ones excluded).
pub async fn global_addresses(h: &Handle, index: u32) -> Result<Vec<IpAddr>> {
    Ok(addresses_with_prefix(h, index).await?.into_iter().map(|(ip, _)| ip).collect())
}

/// Global-scope subnets of interface `index`: each address with its prefix length, the
/// address's host bits cleared.
pub async fn subnets(h: &Handle, index: u32) -> Result<Vec<(IpAddr, u8)>> {
    let mut out: Vec<_> =
        addresses_with_prefix(h, index).await?.into_iter().map(|(ip, len)| (network(ip, len), len)).collect();
    out.sort();
    out.dedup();
    Ok(out)
}

/// `ip` with all but its first `len` bits cleared.
pub fn network(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len.min(32))).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len.min(128))).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

/// The gateway of the main table's default route through interface `index` for one family
/// (`None` without such a route).
pub async fn default_gateway(h: &Handle, index: u32, v6: bool) -> Result<Option<IpAddr>> {
    let msg = if v6 {
        RouteMessageBuilder::<Ipv6Addr>::new().build()
    } else {
        RouteMessageBuilder::<Ipv4Addr>::new().build()
    };
    let routes: Vec<_> = h.route().get(msg).execute().try_collect().await.map_err(nl("listing routes"))?;
    for r in routes {
        let main = r.header.table == RouteHeader::RT_TABLE_MAIN
            || r.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Table(t) if *t == u32::from(RouteHeader::RT_TABLE_MAIN)));
        if r.header.destination_prefix_length != 0 || !main {
            continue;
        }
        let oif = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
        let gateway = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(IpAddr::V4(*g)),
            RouteAttribute::Gateway(RouteAddress::Inet6(g)) => Some(IpAddr::V6(*g)),
            _ => None,
        });
        if oif == Some(index)
            && let Some(g) = gateway
        {
            return Ok(Some(g));
        }
    }
    Ok(None)
}

/// The output interface of the route the kernel picks for `dst`.
pub async fn route_oif(h: &Handle, dst: IpAddr) -> Result<u32> {
    let msg = match dst {
        IpAddr::V4(a) => RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(a, 32).build(),
        IpAddr::V6(a) => RouteMessageBuilder::<Ipv6Addr>::new().destination_prefix(a, 128).build(),
    };
    let route = h
        .route()
        .get(msg)
        .execute()
        .try_next()
        .await
        .map_err(nl(format!("route get {dst}")))?
        .ok_or_else(|| Error::Backend { addr: dst, message: "no route".into() })?;
    route
        .attributes
        .iter()
        .find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None })
        .ok_or_else(|| Error::Backend { addr: dst, message: "the route has no output interface".into() })
}

fn neigh_addr(ip: IpAddr) -> NeighbourAddress {
    match ip {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }
}

/// The MAC of neighbour `ip` on interface `index`, if the kernel has a usable entry.
pub async fn neighbour_mac(h: &Handle, index: u32, ip: IpAddr) -> Result<Option<[u8; 6]>> {
    let family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    let msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(family)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing neighbours"))?;
    let want = neigh_addr(ip);
    for m in msgs {
        let usable =
            !matches!(m.header.state, NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None);
        if m.header.ifindex != index || !usable {
            continue;
        }
        let mut dst = None;
        let mut mac = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(d) => dst = Some(d.clone()),
                NeighbourAttribute::LinkLayerAddress(l) if l.len() == 6 => {
                    mac = Some(<[u8; 6]>::try_from(l.as_slice()).expect("length checked"));
                }
                _ => {}
            }
        }
        if dst.as_ref() == Some(&want) {
            return Ok(mac);
        }
    }
    Ok(None)
}

/// Asks the kernel to resolve neighbour `ip` on `index` (`NTF_USE`: sends an ARP/ND probe
/// without touching any existing entry's state).
pub async fn trigger_resolution(h: &Handle, index: u32, ip: IpAddr) -> Result<()> {
    h.neighbours()
        .add(index, ip)
        .flags(NeighbourFlags::Use)
        .replace()
        .execute()
        .await
        .map_err(nl(format!("resolving neighbour {ip}")))
}

/// Deletes the neighbour entry of `ip` on `index` (a missing one is fine), so that the next
/// resolution asks the network afresh.
pub async fn forget_neighbour(h: &Handle, index: u32, ip: IpAddr) -> Result<()> {
    let mut msg = NeighbourMessage::default();
    msg.header.family = if ip.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.header.ifindex = index;
    msg.attributes.push(NeighbourAttribute::Destination(neigh_addr(ip)));
    match h.neighbours().del(msg).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT => Ok(()),
        Err(e) => Err(nl(format!("forgetting neighbour {ip}"))(e)),
    }
}

/// The bridge port (interface index) behind which `mac` was learned on `bridge`.
pub async fn fdb_port(h: &Handle, bridge: u32, mac: [u8; 6]) -> Result<Option<u32>> {
    let msgs: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing the bridge forwarding database"))?;
    for m in msgs {
        let mut lladdr = None;
        let mut master = None;
        for a in &m.attributes {
            match a {
                NeighbourAttribute::LinkLayerAddress(l) => lladdr = Some(l.clone()),
                NeighbourAttribute::Controller(c) => master = Some(*c),
                _ => {}
            }
        }
        if lladdr.as_deref() == Some(&mac[..]) && master == Some(bridge) && m.header.ifindex != bridge {
            return Ok(Some(m.header.ifindex));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_attached_xdp_program_is_read_with_its_mode() {
        // One program, as the kernel reports it (its per-mode id too).
        let one = vec![LinkXdp::SkbProgId(41), LinkXdp::Attached(XdpAttached::SocketBuffer), LinkXdp::ProgId(41)];
        assert_eq!(xdp_programs(one), [(41, "generic")]);
        // Only the single-program attributes (an older kernel's shape).
        assert_eq!(xdp_programs(vec![LinkXdp::Attached(XdpAttached::Driver), LinkXdp::ProgId(7)]), [(7, "driver")]);
        // Two, in generic and driver mode: no IFLA_XDP_PROG_ID.
        let two = vec![LinkXdp::SkbProgId(9), LinkXdp::DrvProgId(8), LinkXdp::Attached(XdpAttached::Multiple)];
        assert_eq!(xdp_programs(two), [(8, "driver"), (9, "generic")]);
        assert!(xdp_programs(vec![LinkXdp::Attached(XdpAttached::None)]).is_empty());
        let link = Link {
            index: 1,
            name: "up0".into(),
            mac: [0; 6],
            is_bridge: false,
            xdp: vec![(8, "driver"), (9, "generic")],
        };
        assert_eq!((link.xdp_among(&[10, 9]), link.xdp_among(&[10])), (Some((9, "generic")), None));
    }
}
