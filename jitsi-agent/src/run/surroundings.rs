//! What the datapath must know about the uplink's surroundings to tell a participant from a
//! spoofed packet and to answer a flow it has not learned: the source prefixes (martians, the
//! host's own addresses and the backends' subnets can never arrive on the uplink; the uplink's
//! own subnets are on-link) and, per family, the fallback path through the default gateway.
//! Read from the kernel every tick and written to the maps only when it changed.

use std::{collections::BTreeMap, net::IpAddr};

use jitsi_common::{FALLBACK_V4, FALLBACK_V6, ReturnPath};
use rtnetlink::Handle;
use tracing::{info, warn};

use crate::{
    datapath::Maps,
    error::{Error, Result},
    netlink::{self, Link},
    rules::addr16,
    sources::{Prefix, from_trie_key, source_prefixes, trie_key},
};

/// What the maps should say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Surroundings {
    /// `source_prefixes`: prefix -> `SOURCE_SPOOFED` or `SOURCE_ON_LINK`.
    pub prefixes: BTreeMap<Prefix, u32>,
    /// `fallback_paths` by family (`ifindex == 0`: none).
    pub fallback: [ReturnPath; 2],
    /// The subnets the backends live on (the splitter connects clients from there
    /// non-transparently: their replies would not come back through the host).
    pub backend_nets: Vec<Prefix>,
}

/// Reads the surroundings of `uplink` from the kernel. The backends' subnets are those of
/// `backend_links` (their bridges). A gateway whose MAC is not known yet is asked for and
/// the family has no fallback path until it answers.
pub async fn observe(h: &Handle, uplink: &Link, host_addrs: &[IpAddr], backend_links: &[Link]) -> Result<Surroundings> {
    let uplink_nets = netlink::subnets(h, uplink.index).await?;
    let mut backend_nets = Vec::new();
    // A backend reached through the uplink itself (a route to a container host on the LAN)
    // makes no subnet internal: the uplink's clients come from there.
    for l in backend_links.iter().filter(|l| l.index != uplink.index) {
        backend_nets.extend(netlink::subnets(h, l.index).await?);
    }
    backend_nets.sort();
    backend_nets.dedup();
    let mut fallback = [ReturnPath::default(); 2];
    for (v6, slot) in [(false, FALLBACK_V4), (true, FALLBACK_V6)] {
        let Some(host) = host_addrs.iter().find(|a| a.is_ipv6() == v6) else { continue };
        let Some(gateway) = netlink::default_gateway(h, uplink.index, v6).await? else { continue };
        match netlink::neighbour_mac(h, uplink.index, gateway).await? {
            Some(mac) => {
                fallback[slot as usize] = ReturnPath {
                    host_addr: addr16(*host).0,
                    ifindex: uplink.index,
                    client_mac: mac,
                    host_mac: uplink.mac,
                }
            }
            None => netlink::trigger_resolution(h, uplink.index, gateway).await?,
        }
    }
    Ok(Surroundings { prefixes: source_prefixes(&uplink_nets, host_addrs, &backend_nets), fallback, backend_nets })
}

/// What the maps say now (after an adopted datapath: what an earlier agent wrote), as the
/// baseline the first `write` compares with, so that nothing stale survives.
pub fn current(maps: &Maps) -> Result<Surroundings> {
    let mut prefixes = BTreeMap::new();
    for entry in maps.source_prefixes.iter() {
        let (k, v) = entry.map_err(|source| Error::Map { map: "source_prefixes", source })?;
        prefixes.insert(from_trie_key(k.prefix_len(), k.data()), v);
    }
    let mut fallback = [ReturnPath::default(); 2];
    for (i, f) in fallback.iter_mut().enumerate() {
        *f = maps.fallback_paths.get(&(i as u32), 0).map_err(|source| Error::Map { map: "fallback_paths", source })?;
    }
    Ok(Surroundings { prefixes, fallback, backend_nets: Vec::new() })
}

/// Writes what changed between `old` and `new` to the maps: new and changed prefixes first,
/// then stale ones removed.
pub fn write(maps: &mut Maps, old: &Surroundings, new: &Surroundings) -> Result<()> {
    let trie = |source| Error::Map { map: "source_prefixes", source };
    for (p, kind) in &new.prefixes {
        if old.prefixes.get(p) != Some(kind) {
            maps.source_prefixes.insert(&trie_key(*p), kind, 0).map_err(trie)?;
        }
    }
    for p in old.prefixes.keys().filter(|p| !new.prefixes.contains_key(p)) {
        maps.source_prefixes.remove(&trie_key(*p)).map_err(trie)?;
    }
    for (i, path) in new.fallback.iter().enumerate() {
        if old.fallback[i] != *path {
            maps.fallback_paths
                .set(i as u32, path, 0)
                .map_err(|source| Error::Map { map: "fallback_paths", source })?;
            let family = if i as u32 == FALLBACK_V4 { "ipv4" } else { "ipv6" };
            if path.ifindex == 0 {
                warn!(
                    family,
                    "no default gateway on the uplink: replies to clients it has not seen are passed to the host stack"
                );
            } else {
                info!(family, gateway_mac = %crate::resolve::fmt_mac(&path.client_mac),
                    "fallback return path: through the default gateway");
            }
        }
    }
    Ok(())
}
