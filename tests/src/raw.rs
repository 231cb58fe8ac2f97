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
    let text = mac_text_of(ns, ifname)?;
    let mut mac = [0u8; 6];
    for (b, part) in mac.iter_mut().zip(text.split(':')) {
        *b = u8::from_str_radix(part, 16)?;
    }
    Ok(mac)
}

/// The MAC address of `ifname` in `ns` as `ip` writes it (`02:00:00:00:00:01`).
pub fn mac_text_of(ns: &NetNs, ifname: &str) -> Result<String> {
    let out = ns.ip(&["-j", "link", "show", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("ip -j link")?;
    Ok(v[0]["address"].as_str().context("no address")?.to_owned())
}

/// Calls `try_recv` until it yields something, waiting in between (poll) for `fd` to become
/// readable, for at most `timeout` in all; `None` once that has passed.
pub fn recv_within<T>(
    fd: std::os::fd::RawFd,
    timeout: std::time::Duration,
    mut try_recv: impl FnMut() -> io::Result<Option<T>>,
) -> io::Result<Option<T>> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(got) = try_recv()? {
            return Ok(Some(got));
        }
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        unsafe { libc::poll(&raw mut pfd, 1, left.as_millis().clamp(1, 1000) as i32) };
    }
}

/// An AF_PACKET socket that receives every frame arriving at one interface of the current
/// thread's namespace (not those it sends), with an 802.1Q/802.1ad tag the stack took off
/// put back, as libpcap does, so that the bytes are the frame's as it arrived.
pub struct Capture {
    fd: OwnedFd,
}

impl Capture {
    /// Opens it on `ifname` in the calling thread's network namespace (non-blocking).
    pub fn here(ifname: &str) -> io::Result<Self> {
        let name = std::ffi::CString::new(ifname).map_err(io::Error::other)?;
        // SAFETY: plain system calls; the descriptor is owned at once; sockaddr_ll zeroed.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            if ifindex == 0 {
                return Err(io::Error::last_os_error());
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                i32::from(proto),
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let on: libc::c_int = 1;
            let len = std::mem::size_of::<libc::c_int>() as u32;
            if libc::setsockopt(fd.as_raw_fd(), libc::SOL_PACKET, libc::PACKET_AUXDATA, (&raw const on).cast(), len) < 0
            {
                return Err(io::Error::last_os_error());
            }
            let mut at: libc::sockaddr_ll = std::mem::zeroed();
            at.sll_family = libc::AF_PACKET as u16;
            at.sll_protocol = proto;
            at.sll_ifindex = ifindex as i32;
            if libc::bind(fd.as_raw_fd(), (&raw const at).cast(), std::mem::size_of::<libc::sockaddr_ll>() as u32) < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Capture { fd })
        }
    }

    /// The next frame that arrived, waiting at most `timeout`.
    pub fn recv(&self, timeout: std::time::Duration) -> io::Result<Option<Vec<u8>>> {
        recv_within(self.fd.as_raw_fd(), timeout, || self.try_recv())
    }

    /// Throws away what has arrived so far.
    pub fn drain(&self) -> io::Result<()> {
        while self.try_recv()?.is_some() {}
        Ok(())
    }

    fn try_recv(&self) -> io::Result<Option<Vec<u8>>> {
        let mut buf = vec![0u8; 65536];
        let mut ctl = [0u64; 16];
        loop {
            // SAFETY: the iovec, address and control buffers outlive the call; msghdr zeroed.
            let (n, from, msg) = unsafe {
                let mut from: libc::sockaddr_ll = std::mem::zeroed();
                let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_name = (&raw mut from).cast();
                msg.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
                msg.msg_iov = &raw mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = ctl.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&ctl);
                (libc::recvmsg(self.fd.as_raw_fd(), &raw mut msg, 0), from, msg)
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                return if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) };
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            let mut frame = buf[..n as usize].to_vec();
            // SAFETY: the control messages lie in `ctl`, as recvmsg described them in `msg`.
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&raw const msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_PACKET && (*c).cmsg_type == libc::PACKET_AUXDATA {
                        let aux: libc::tpacket_auxdata = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                        if aux.tp_status & libc::TP_STATUS_VLAN_VALID != 0 && frame.len() >= 12 {
                            let tpid = if aux.tp_status & libc::TP_STATUS_VLAN_TPID_VALID != 0 {
                                aux.tp_vlan_tpid
                            } else {
                                libc::ETH_P_8021Q as u16
                            };
                            let tag = [tpid.to_be_bytes(), aux.tp_vlan_tci.to_be_bytes()].concat();
                            frame.splice(12..12, tag);
                        }
                    }
                    c = libc::CMSG_NXTHDR(&raw const msg, c);
                }
            }
            return Ok(Some(frame));
        }
    }
}
