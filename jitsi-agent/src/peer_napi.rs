//! XDP_REDIRECT into a veth delivers a frame only if the veth's *peer* has NAPI enabled
//! (an XDP program on it, or GRO on: kernel >= 5.13). Docker leaves GRO off on the container
//! side of its veths, where frames would then be dropped silently. This module finds the
//! network namespace of a bridge port's peer and turns GRO on there.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::fs::MetadataExt as _},
    path::{Path, PathBuf},
};

use futures::StreamExt;
use netlink_packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload};
use netlink_packet_route::{
    RouteNetlinkMessage,
    link::{InfoKind, LinkAttribute, LinkInfo},
    nsid::{NsidAttribute, NsidMessage},
};
use rtnetlink::Handle;

use crate::error::{Error, Result};

/// What was done for a bridge port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerNapi {
    /// Not a veth: the device has its own `ndo_xdp_xmit`; nothing to do.
    NotVeth,
    /// GRO was already on at the peer.
    AlreadyOn,
    /// GRO was turned on at the peer, in the namespace found at this path.
    Enabled(PathBuf),
}

/// Where network namespaces are commonly pinned: iproute2's and Docker's directories.
const NETNS_DIRS: [&str; 2] = ["/run/netns", "/var/run/docker/netns"];

/// Makes sure frames redirected into bridge port `port` (a veth in this namespace) reach its peer.
pub async fn ensure(h: &Handle, port: u32) -> Result<PeerNapi> {
    let msg = futures::TryStreamExt::try_next(&mut h.link().get().match_index(port).execute())
        .await
        .map_err(|source| Error::Netlink { what: format!("getting link #{port}"), source })?
        .ok_or_else(|| Error::NoSuchInterface(format!("#{port}")))?;
    let mut is_veth = false;
    let mut peer_index = None;
    let mut peer_nsid = None;
    for a in &msg.attributes {
        match a {
            LinkAttribute::LinkInfo(infos) => {
                is_veth = infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::Veth)))
            }
            LinkAttribute::Link(i) => peer_index = Some(*i),
            LinkAttribute::LinkNetNsId(n) => peer_nsid = Some(*n),
            _ => {}
        }
    }
    let (true, Some(peer_index)) = (is_veth, peer_index) else { return Ok(PeerNapi::NotVeth) };
    let netns = match peer_nsid {
        None => PathBuf::from("/proc/self/ns/net"),
        Some(nsid) => find_netns(h, nsid).await?.ok_or_else(|| Error::PeerNetns {
            port,
            message: format!(
                "its peer is in the namespace with nsid {nsid}, which is not under {} or any process; \
                 enable GRO inside that namespace yourself (`ethtool -K <peer> gro on`)",
                NETNS_DIRS.join(" or ")
            ),
        })?,
    };
    let file = File::open(&netns).map_err(|e| Error::io(format!("opening {}", netns.display()), e))?;
    // A thread of its own (never a pooled one: it leaves the host's namespace for good), awaited
    // without blocking the async workers.
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // SAFETY: setns on a valid namespace fd; it changes only this short-lived thread.
        let outcome = if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            enable_gro(peer_index)
        };
        let _ = tx.send(outcome);
    });
    let changed = rx
        .await
        .map_err(|_| Error::PeerNetns { port, message: "the GRO thread ended without an answer".into() })?
        .map_err(|e| Error::io(format!("turning GRO on for the peer of #{port}"), e))?;
    Ok(if changed { PeerNapi::Enabled(netns) } else { PeerNapi::AlreadyOn })
}

/// The namespace file whose nsid (as seen from here) is `nsid`.
async fn find_netns(h: &Handle, nsid: i32) -> Result<Option<PathBuf>> {
    let candidates = tokio::task::spawn_blocking(netns_files)
        .await
        .map_err(|source| Error::Worker { what: "listing network namespaces", source })?;
    for path in candidates {
        if nsid_of(h, &path).await? == Some(nsid) {
            return Ok(Some(path));
        }
    }
    Ok(None)
}

/// The network namespace files under [`NETNS_DIRS`] and of every process, one per namespace.
fn netns_files() -> Vec<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    for dir in NETNS_DIRS {
        if let Ok(rd) = std::fs::read_dir(dir) {
            candidates.extend(rd.flatten().map(|e| e.path()));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        candidates.extend(
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
                .map(|e| e.path().join("ns/net")),
        );
    }
    let mut seen = std::collections::HashSet::new();
    candidates.retain(|path| std::fs::metadata(path).is_ok_and(|meta| seen.insert((meta.dev(), meta.ino()))));
    candidates
}

/// `RTM_GETNSID` for the namespace file at `path`.
async fn nsid_of(h: &Handle, path: &Path) -> Result<Option<i32>> {
    let Ok(file) = File::open(path) else { return Ok(None) };
    let mut msg = NsidMessage::default();
    msg.attributes = vec![NsidAttribute::Fd(file.as_raw_fd() as u32)];
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetNsId(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    let mut resp = h.clone().request(req).map_err(|source| Error::Netlink { what: "RTM_GETNSID".into(), source })?;
    let mut id = None;
    while let Some(m) = resp.next().await {
        if let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNsId(m)) = m.payload {
            id = m.attributes.iter().find_map(|a| if let NsidAttribute::Id(i) = a { Some(*i) } else { None });
        }
    }
    drop(file);
    Ok(id.filter(|i| *i >= 0))
}

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GGRO: u32 = 0x2b;
const ETHTOOL_SGRO: u32 = 0x2c;

#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut EthtoolValue,
    _pad: [u8; 16],
}

/// Turns GRO on for interface `index` in the calling thread's namespace; returns whether it
/// was off.
fn enable_gro(index: u32) -> std::io::Result<bool> {
    let mut name = [0 as libc::c_char; libc::IFNAMSIZ];
    // SAFETY: the buffer has IFNAMSIZ bytes as if_indextoname requires.
    if unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null() {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a plain datagram socket for the ioctl, closed by OwnedFd.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: sock is a fresh fd we own.
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut value = EthtoolValue { cmd: ETHTOOL_GGRO, data: 0 };
    let mut req = IfReq { name, data: &mut value, _pad: [0; 16] };
    // SAFETY: req points to a valid ifreq whose data points to a valid ethtool_value.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if value.data != 0 {
        return Ok(false);
    }
    value = EthtoolValue { cmd: ETHTOOL_SGRO, data: 1 };
    req.data = &mut value;
    // SAFETY: as above.
    if unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(true)
}
