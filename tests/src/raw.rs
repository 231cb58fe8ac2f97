//! Hand-built Ethernet frames sent out of an interface (AF_PACKET): sources no socket could
//! send from, such as a spoofed flood from a hundred thousand addresses.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// An AF_PACKET socket bound for sending on one interface of a namespace.
pub struct RawLink {
    fd: OwnedFd,
    ifindex: i32,
}

impl RawLink {
    /// Opens the socket inside `ns`, for `ifname` there.
    pub fn open(ns: &NetNs, ifname: &str) -> Result<Self> {
        let name = std::ffi::CString::new(ifname)?;
        let (fd, ifindex) = ns.enter(move || -> io::Result<(OwnedFd, i32)> {
            // SAFETY: plain system calls; the descriptor is owned at once.
            unsafe {
                let ifindex = libc::if_nametoindex(name.as_ptr());
                if ifindex == 0 {
                    return Err(io::Error::last_os_error());
                }
                // Protocol 0: a socket that sends and receives nothing.
                let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok((OwnedFd::from_raw_fd(fd), ifindex as i32))
            }
        })??;
        Ok(RawLink { fd, ifindex })
    }

    /// Sends one whole frame (its MACs included) out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_ll is valid; the frame outlives the call.
        unsafe {
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = self.ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&frame[..6]);
            let n = libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&raw const to).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            if n < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
        }
    }
}

/// The MAC address of `ifname` in `ns`.
pub fn mac_of(ns: &NetNs, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    let text = v[0]["address"].as_str().context("no address")?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}
