//! Building Ethernet frames for the packet-table tests, with checksums computed from scratch
//! (RFC 1071) — independent of the datapath's incremental updates, which they check.

use std::net::IpAddr;

/// Internet checksum (RFC 1071) over `data`, starting from `initial` (a partial sum).
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        sum += u32::from(*last) << 8;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_sum(src: IpAddr, dst: IpAddr, proto: u8, len: usize) -> u32 {
    let mut bytes = Vec::new();
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
            bytes.extend([0, proto]);
            bytes.extend((len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            bytes.extend(s.octets());
            bytes.extend(d.octets());
            bytes.extend((len as u32).to_be_bytes());
            bytes.extend([0, 0, 0, proto]);
        }
        _ => panic!("mixed address families"),
    }
    // Unfolded, uninverted sum of the pseudo header.
    bytes.chunks_exact(2).map(|c| u32::from(u16::from_be_bytes([c[0], c[1]]))).sum()
}

/// A frame description; `build()` produces its bytes.
#[derive(Clone, Debug)]
pub struct Pkt {
    /// Destination MAC.
    pub dst_mac: [u8; 6],
    /// Source MAC.
    pub src_mac: [u8; 6],
    /// 802.1Q tag (TPID, VLAN id) inserted after the MACs.
    pub vlan: Option<(u16, u16)>,
    /// Source address (its family picks IPv4 or IPv6).
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 options (padded to a multiple of 4 by the caller).
    pub ip_options: Vec<u8>,
    /// IPv4 flags + fragment offset field.
    pub frag: u16,
    /// IPv4 header length override (in 32-bit words), to build malformed headers.
    pub ihl_override: Option<u8>,
    /// IP version override, to build malformed headers.
    pub version_override: Option<u8>,
    /// IPv6: an extension header of this type before the L4 header.
    pub v6_ext: Option<u8>,
    /// L4 protocol number (6, 17, 1, 58, ...).
    pub proto: u8,
    /// Source port (TCP/UDP).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
    /// TCP flags byte.
    pub tcp_flags: u8,
    /// L4 payload.
    pub payload: Vec<u8>,
    /// Send a UDP checksum of 0 ("none").
    pub udp_zero_checksum: bool,
    /// What the TCP/UDP checksum field holds.
    pub l4_check: L4Check,
}

/// What a frame's TCP/UDP checksum field holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4Check {
    /// The checksum (RFC 1071), as on the wire.
    Full,
    /// The pseudo header's folded sum, not complemented: what a sender that leaves the
    /// checksum to the NIC writes (`CHECKSUM_PARTIAL`; the kernel's `~csum_tcpudp_magic(.., 0)`).
    Partial,
    /// A checksum that is wrong by a fixed amount (never 0, "none", for UDP).
    Wrong,
}

/// MAC of the "internet" side (the client or its router) in table tests.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0xc1, 0x1e, 0x00, 0x00, 0x02];
/// MAC of the uplink in table tests.
pub const UPLINK_MAC: [u8; 6] = [0x02, 0x0a, 0x00, 0x00, 0x00, 0x01];

impl Pkt {
    /// A UDP packet from `src:sport` to `dst:dport` with `payload`.
    pub fn udp(src: &str, sport: u16, dst: &str, dport: u16, payload: &[u8]) -> Self {
        Pkt {
            dst_mac: UPLINK_MAC,
            src_mac: CLIENT_MAC,
            vlan: None,
            src: src.parse().expect("address"),
            dst: dst.parse().expect("address"),
            ip_options: vec![],
            frag: 0x4000, // DF
            ihl_override: None,
            version_override: None,
            v6_ext: None,
            proto: 17,
            sport,
            dport,
            tcp_flags: 0,
            payload: payload.to_vec(),
            udp_zero_checksum: false,
            l4_check: L4Check::Full,
        }
    }

    /// A TCP segment with `flags` (0x02 SYN, 0x18 PSH|ACK, ...).
    pub fn tcp(src: &str, sport: u16, dst: &str, dport: u16, flags: u8, payload: &[u8]) -> Self {
        Pkt { proto: 6, tcp_flags: flags, ..Pkt::udp(src, sport, dst, dport, payload) }
    }

    /// Same packet with other MACs.
    pub fn macs(mut self, dst: [u8; 6], src: [u8; 6]) -> Self {
        self.dst_mac = dst;
        self.src_mac = src;
        self
    }

    /// Same packet with another source.
    pub fn from(mut self, src: &str, sport: u16) -> Self {
        self.src = src.parse().expect("address");
        self.sport = sport;
        self
    }

    /// Same packet to another destination.
    pub fn to(mut self, dst: &str, dport: u16) -> Self {
        self.dst = dst.parse().expect("address");
        self.dport = dport;
        self
    }

    fn l4(&self) -> Vec<u8> {
        let mut l4 = Vec::new();
        match self.proto {
            17 => {
                let len = 8 + self.payload.len();
                l4.extend(self.sport.to_be_bytes());
                l4.extend(self.dport.to_be_bytes());
                l4.extend((len as u16).to_be_bytes());
                l4.extend([0, 0]);
                l4.extend(&self.payload);
                if !self.udp_zero_checksum {
                    let mut c = self.l4_field(checksum(pseudo_sum(self.src, self.dst, 17, len), &l4), len);
                    if c == 0 {
                        c = 0xffff;
                    }
                    l4[6..8].copy_from_slice(&c.to_be_bytes());
                }
            }
            6 => {
                l4.extend(self.sport.to_be_bytes());
                l4.extend(self.dport.to_be_bytes());
                l4.extend(1000u32.to_be_bytes()); // seq
                l4.extend(if self.tcp_flags & 0x10 != 0 { 2000u32 } else { 0 }.to_be_bytes());
                l4.extend([5 << 4, self.tcp_flags]);
                l4.extend(64240u16.to_be_bytes());
                l4.extend([0, 0, 0, 0]); // checksum, urgent pointer
                l4.extend(&self.payload);
                let c = self.l4_field(checksum(pseudo_sum(self.src, self.dst, 6, l4.len()), &l4), l4.len());
                l4[16..18].copy_from_slice(&c.to_be_bytes());
            }
            1 | 58 => {
                // ICMP / ICMPv6 echo request (checksum left 0: the datapath never reads it).
                l4.extend([if self.proto == 1 { 8 } else { 128 }, 0, 0, 0, 0, 1, 0, 1]);
                l4.extend(&self.payload);
            }
            _ => l4.extend(&self.payload),
        }
        l4
    }

    /// The L4 checksum field for [`Pkt::l4_check`], given the right checksum `full` of a
    /// segment `len` bytes long.
    fn l4_field(&self, full: u16, len: usize) -> u16 {
        match self.l4_check {
            L4Check::Full => full,
            L4Check::Partial => !checksum(pseudo_sum(self.src, self.dst, self.proto, len), &[]),
            L4Check::Wrong if full == 0x0101 => 0x0303,
            L4Check::Wrong => full ^ 0x0101,
        }
    }

    /// The UDP checksum this packet's contents compute to, before the "0 is sent as 0xFFFF"
    /// rule (used to find payloads whose checksum is exactly 0).
    pub fn raw_udp_checksum(&self) -> u16 {
        let zero = Pkt { udp_zero_checksum: true, ..self.clone() };
        let l4 = zero.l4();
        checksum(pseudo_sum(self.src, self.dst, 17, l4.len()), &l4)
    }

    /// The frame's bytes.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend(self.dst_mac);
        f.extend(self.src_mac);
        if let Some((tpid, vid)) = self.vlan {
            f.extend(tpid.to_be_bytes());
            f.extend(vid.to_be_bytes());
        }
        let l4 = self.l4();
        match (self.src, self.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend(0x0800u16.to_be_bytes());
                let hlen = 20 + self.ip_options.len();
                let ihl = self.ihl_override.unwrap_or((hlen / 4) as u8);
                let version = self.version_override.unwrap_or(4);
                let mut ip = vec![(version << 4) | ihl, 0];
                ip.extend(((hlen + l4.len()) as u16).to_be_bytes());
                ip.extend(0x1234u16.to_be_bytes());
                ip.extend(self.frag.to_be_bytes());
                ip.extend([64, self.proto, 0, 0]);
                ip.extend(s.octets());
                ip.extend(d.octets());
                ip.extend(&self.ip_options);
                let c = checksum(0, &ip);
                ip[10..12].copy_from_slice(&c.to_be_bytes());
                f.extend(ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend(0x86ddu16.to_be_bytes());
                let ext_len = if self.v6_ext.is_some() { 8 } else { 0 };
                let version = self.version_override.unwrap_or(6);
                f.extend([version << 4, 0, 0, 0]);
                f.extend(((ext_len + l4.len()) as u16).to_be_bytes());
                f.push(self.v6_ext.unwrap_or(self.proto));
                f.push(64);
                f.extend(s.octets());
                f.extend(d.octets());
                if self.v6_ext.is_some() {
                    // 8-byte extension header: next header, length 0, then padding/fragment data.
                    f.extend([self.proto, 0, 0, 0, 0, 0, 0, 0]);
                }
            }
            _ => panic!("mixed address families"),
        }
        f.extend(l4);
        f
    }
}

/// A TCP or UDP frame as read off a link (an untagged Ethernet frame).
#[derive(Clone, Debug)]
pub struct Parsed {
    /// Source address and port.
    pub src: std::net::SocketAddr,
    /// Destination address and port.
    pub dst: std::net::SocketAddr,
    /// 6 or 17.
    pub proto: u8,
    /// TCP flags (0 for UDP).
    pub tcp_flags: u8,
    /// Whether the L4 checksum is right (RFC 1071 over the pseudo header and the segment).
    pub checksum_ok: bool,
    /// The L4 payload.
    pub payload: Vec<u8>,
}

/// Parses a TCP or UDP frame; `None` for anything else (ARP, ICMP, neighbour discovery).
pub fn parse(frame: &[u8]) -> Option<Parsed> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (src, dst, proto, l4): (IpAddr, IpAddr, u8, &[u8]) = match ethertype {
        0x0800 => {
            let ip = frame.get(14..)?;
            let ihl = usize::from(ip.first()? & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*ip.get(2)?, *ip.get(3)?]));
            let s: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let d: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            (Ipv4Addr::from(s).into(), Ipv4Addr::from(d).into(), ip[9], ip.get(ihl..total)?)
        }
        0x86dd => {
            let ip = frame.get(14..)?;
            let len = usize::from(u16::from_be_bytes([*ip.get(4)?, *ip.get(5)?]));
            let s: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let d: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into(), ip[6], ip.get(40..40 + len)?)
        }
        _ => return None,
    };
    let (hlen, tcp_flags) = match proto {
        17 if l4.len() >= 8 => (8, 0),
        6 => (usize::from(l4.get(12)? >> 4) * 4, *l4.get(13)?),
        _ => return None,
    };
    let (sport, dport) =
        (u16::from_be_bytes(l4.get(0..2)?.try_into().ok()?), u16::from_be_bytes(l4.get(2..4)?.try_into().ok()?));
    Some(Parsed {
        src: SocketAddr::new(src, sport),
        dst: SocketAddr::new(dst, dport),
        proto,
        tcp_flags,
        checksum_ok: checksum(pseudo_sum(src, dst, proto, l4.len()), l4) == 0,
        payload: l4.get(hlen..)?.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_of_rfc1071_example() {
        // RFC 1071 section 3 example bytes: sum 0xddf2, checksum !0xddf2.
        assert_eq!(checksum(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7]), !0xddf2);
    }

    #[test]
    fn built_packets_verify() {
        for p in [
            Pkt::udp("192.0.2.1", 1, "192.0.2.2", 2, b"hello"),
            Pkt::tcp("2001:db8::1", 1, "2001:db8::2", 2, 0x18, b"x"),
        ] {
            let b = p.build();
            let (l3, proto, l4_off, len) =
                if b[12] == 0x08 { (14, b[23], 34, b.len() - 34) } else { (14, b[20], 54, b.len() - 54) };
            let _ = l3;
            // A correct checksum makes the sum over pseudo header + segment fold to 0.
            assert_eq!(checksum(pseudo_sum(p.src, p.dst, proto, len), &b[l4_off..]), 0);
        }
    }

    #[test]
    fn parse_reads_back_built_frames_and_judges_their_checksums() {
        let p = Pkt::udp("192.0.2.1", 1000, "192.0.2.2", 2000, b"hello");
        let seen = parse(&p.build()).unwrap();
        assert_eq!((seen.src.to_string(), seen.dst.to_string()), ("192.0.2.1:1000".into(), "192.0.2.2:2000".into()));
        assert!(seen.checksum_ok);
        assert_eq!(seen.payload, b"hello");
        let syn = Pkt::tcp("2001:db8::1", 1, "2001:db8::2", 80, 0x02, b"");
        let seen = parse(&syn.build()).unwrap();
        assert_eq!((seen.proto, seen.tcp_flags, seen.checksum_ok), (6, 0x02, true));
        for check in [L4Check::Partial, L4Check::Wrong] {
            let bad = Pkt { l4_check: check, ..p.clone() };
            assert!(!parse(&bad.build()).unwrap().checksum_ok, "{check:?}");
        }
    }

    #[test]
    fn a_partial_checksum_completed_over_the_segment_is_the_full_one() {
        // What a NIC (or the kernel's skb_checksum_help) does with CHECKSUM_PARTIAL: the
        // complement of the sum from csum_start, over the field as the sender left it.
        for p in [
            Pkt::udp("192.0.2.1", 1, "192.0.2.2", 2, b"abc"),
            Pkt::tcp("2001:db8::1", 1, "2001:db8::2", 2, 0x18, b"xy"),
        ] {
            let (full, partial) = (p.build(), Pkt { l4_check: L4Check::Partial, ..p.clone() }.build());
            let (start, at) = if p.src.is_ipv4() {
                (34, 34 + if p.proto == 17 { 6 } else { 16 })
            } else {
                (54, 54 + if p.proto == 17 { 6 } else { 16 })
            };
            assert_eq!(checksum(0, &partial[start..]).to_be_bytes(), full[at..at + 2]);
        }
    }
}
