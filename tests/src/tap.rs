//! A tap device as a lab uplink: frames written to it are received by the host the way a
//! virtio-net NIC delivers them, each with a virtio-net header that sets the skb's checksum
//! state. virtio-net's receive path and tun's both hand that header to the kernel's
//! `virtio_net_hdr_to_skb`, so `NEEDS_CSUM` makes a `CHECKSUM_PARTIAL` skb on either; this is
//! what a cloud VM's uplink gives generic XDP when the host left the checksum to the guest.
//! Frames the host sends out of the device are read back with their header.

use std::{
    fs::File,
    io::{self, Read, Write},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// `struct virtio_net_hdr`'s `flags`: the checksum is left to the receiver, from
/// `csum_start`, written at `csum_start + csum_offset`.
pub const NEEDS_CSUM: u8 = 1;
/// The header tun reads and writes without `TUNSETVNETHDRSZ`: `struct virtio_net_hdr`.
const VNET_HDR_LEN: usize = 10;

/// The checksum state a frame is delivered with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RxChecksum {
    /// No flags: `CHECKSUM_NONE`, the stack verifies the checksum in the frame.
    None,
    /// `NEEDS_CSUM` for the TCP/UDP header at byte `start` of the frame (its checksum field at
    /// `start + offset`): `CHECKSUM_PARTIAL`.
    Partial {
        /// Where the L4 header starts, from the frame's first byte.
        start: u16,
        /// The checksum field's offset in the L4 header (6 for UDP, 16 for TCP).
        offset: u16,
    },
}

/// A tap device, gone with its descriptor.
pub struct Tap {
    file: File,
}

impl Tap {
    /// Creates tap `name` in `ns` (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`, non-blocking reads).
    pub fn create(ns: &NetNs, name: &str) -> Result<Self> {
        if name.len() >= libc::IFNAMSIZ {
            bail!("tap name {name} too long");
        }
        let name = name.to_owned();
        let fd = ns
            .enter(move || -> io::Result<OwnedFd> {
                // SAFETY: plain system calls on a descriptor owned at once; ifreq is zeroed and
                // its name NUL-terminated (checked length).
                unsafe {
                    let fd = libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC | libc::O_NONBLOCK);
                    if fd < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    let fd = OwnedFd::from_raw_fd(fd);
                    let mut req: libc::ifreq = std::mem::zeroed();
                    for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
                        *d = s as libc::c_char;
                    }
                    req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short;
                    if libc::ioctl(fd.as_raw_fd(), libc::TUNSETIFF, &raw mut req) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                    Ok(fd)
                }
            })?
            .context("creating the tap device")?;
        Ok(Tap { file: File::from(fd) })
    }

    /// Delivers `frame` to the host as received on this device, in checksum state `state`.
    pub fn send(&self, state: RxChecksum, frame: &[u8]) -> io::Result<()> {
        let mut hdr = [0u8; VNET_HDR_LEN];
        if let RxChecksum::Partial { start, offset } = state {
            // flags, gso_type (none), hdr_len, gso_size, csum_start, csum_offset; the
            // host's byte order (tun's default on a little-endian machine).
            hdr[0] = NEEDS_CSUM;
            hdr[6..8].copy_from_slice(&start.to_le_bytes());
            hdr[8..10].copy_from_slice(&offset.to_le_bytes());
        }
        let mut buf = hdr.to_vec();
        buf.extend_from_slice(frame);
        let n = (&self.file).write(&buf)?;
        if n != buf.len() {
            return Err(io::Error::other(format!("tap took {n} of {} bytes", buf.len())));
        }
        Ok(())
    }

    /// The next frame the host sent out of this device, with its header's flags, or `None`
    /// after `timeout`.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(u8, Vec<u8>)>> {
        let mut buf = vec![0u8; 65536];
        crate::raw::recv_within(self.file.as_raw_fd(), timeout, || match (&self.file).read(&mut buf) {
            Ok(n) if n >= VNET_HDR_LEN => Ok(Some((buf[0], buf[VNET_HDR_LEN..n].to_vec()))),
            Ok(n) => Err(io::Error::other(format!("a {n}-byte read from the tap"))),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        })
    }
}
