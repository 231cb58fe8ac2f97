//! A minimal STUN/TURN client (RFC 5389/5766) for the tests that talk to a real coturn: a
//! Binding request over UDP, and an Allocate over TLS (through the agent's TLS front) with
//! coturn's REST-API credentials (`use-auth-secret`), so a test sees what coturn saw.

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream, UdpSocket},
    path::Path,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use md5::Digest as _;

use crate::netns::NetNs;

const MAGIC: u32 = 0x2112_A442;
const BINDING: u16 = 0x0001;
const ALLOCATE: u16 = 0x0003;
const USERNAME: u16 = 0x0006;
const INTEGRITY: u16 = 0x0008;
const ERROR_CODE: u16 = 0x0009;
const REALM: u16 = 0x0014;
const NONCE: u16 = 0x0015;
const XOR_RELAYED: u16 = 0x0016;
const TRANSPORT: u16 = 0x0019;
const XOR_MAPPED: u16 = 0x0020;
const CREATE_PERMISSION: u16 = 0x0008;
const SEND_INDICATION: u16 = 0x0016;
const DATA_INDICATION: u16 = 0x0017;
const XOR_PEER: u16 = 0x0012;
const DATA: u16 = 0x0013;

/// An IPv4 address as an XOR-*-ADDRESS attribute value.
fn xor_v4(a: SocketAddr) -> Result<Vec<u8>> {
    let IpAddr::V4(ip) = a.ip() else { bail!("{a}: only IPv4 peers here") };
    let mut v = vec![0, 1];
    v.extend_from_slice(&(a.port() ^ (MAGIC >> 16) as u16).to_be_bytes());
    v.extend_from_slice(&(u32::from(ip) ^ MAGIC).to_be_bytes());
    Ok(v)
}

/// A STUN message being built.
struct Msg(Vec<u8>);

impl Msg {
    fn new(kind: u16) -> Self {
        let mut b = Vec::with_capacity(128);
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&0u16.to_be_bytes());
        b.extend_from_slice(&MAGIC.to_be_bytes());
        let mut tx = [0u8; 12];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut tx).expect("random");
        b.extend_from_slice(&tx);
        Msg(b)
    }

    fn attr(mut self, t: u16, v: &[u8]) -> Self {
        self.0.extend_from_slice(&t.to_be_bytes());
        self.0.extend_from_slice(&(v.len() as u16).to_be_bytes());
        self.0.extend_from_slice(v);
        self.0.resize(self.0.len().next_multiple_of(4), 0);
        self.set_len(self.0.len() - 20);
        self
    }

    fn set_len(&mut self, len: usize) {
        self.0[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    }

    /// MESSAGE-INTEGRITY with the long-term key MD5(user:realm:password).
    fn integrity(mut self, key: &[u8]) -> Vec<u8> {
        self.set_len(self.0.len() - 20 + 24);
        let tag = ring::hmac::sign(&ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, key), &self.0);
        self.attr(INTEGRITY, tag.as_ref()).0
    }
}

/// A parsed response: its type and attributes.
#[derive(Debug)]
pub struct Response {
    /// Message type (`0x0103` Allocate success, `0x0113` error...).
    pub kind: u16,
    attrs: Vec<(u16, Vec<u8>)>,
    tx: [u8; 12],
}

impl Response {
    fn parse(b: &[u8]) -> Result<Self> {
        if b.len() < 20 || u32::from_be_bytes(b[4..8].try_into()?) != MAGIC {
            bail!("not a STUN message");
        }
        let mut attrs = Vec::new();
        let mut i = 20;
        while i + 4 <= b.len() {
            let t = u16::from_be_bytes([b[i], b[i + 1]]);
            let l = u16::from_be_bytes([b[i + 2], b[i + 3]]) as usize;
            let v = b.get(i + 4..i + 4 + l).context("truncated attribute")?.to_vec();
            attrs.push((t, v));
            i += 4 + l.next_multiple_of(4);
        }
        Ok(Response { kind: u16::from_be_bytes([b[0], b[1]]), attrs, tx: b[8..20].try_into()? })
    }

    fn get(&self, t: u16) -> Option<&[u8]> {
        self.attrs.iter().find(|(k, _)| *k == t).map(|(_, v)| v.as_slice())
    }

    /// The error code (`401`, `403`...), if it is an error response.
    pub fn error(&self) -> Option<u16> {
        self.get(ERROR_CODE).filter(|v| v.len() >= 4).map(|v| u16::from(v[2] & 7) * 100 + u16::from(v[3]))
    }

    fn xor_addr(&self, t: u16) -> Option<SocketAddr> {
        let v = self.get(t)?;
        let port = u16::from_be_bytes([v[2], v[3]]) ^ (MAGIC >> 16) as u16;
        match v[1] {
            1 => {
                Some(SocketAddr::new(Ipv4Addr::from(u32::from_be_bytes(v[4..8].try_into().ok()?) ^ MAGIC).into(), port))
            }
            2 => {
                let mut key = MAGIC.to_be_bytes().to_vec();
                key.extend_from_slice(&self.tx);
                let a: [u8; 16] = std::array::from_fn(|i| v[4 + i] ^ key[i]);
                Some(SocketAddr::new(IpAddr::from(a), port))
            }
            _ => None,
        }
    }

    /// XOR-MAPPED-ADDRESS: the client's address as the server saw it.
    pub fn mapped(&self) -> Option<SocketAddr> {
        self.xor_addr(XOR_MAPPED)
    }

    /// XOR-RELAYED-ADDRESS: the allocation's address as announced.
    pub fn relayed(&self) -> Option<SocketAddr> {
        self.xor_addr(XOR_RELAYED)
    }

    /// XOR-PEER-ADDRESS: the peer a Data indication came from.
    pub fn peer(&self) -> Option<SocketAddr> {
        self.xor_addr(XOR_PEER)
    }

    /// DATA: what a Data indication carries.
    pub fn data(&self) -> Option<&[u8]> {
        self.get(DATA)
    }
}

/// A Binding request over UDP from `sock` to `to`: the address the server saw.
pub fn binding(sock: &UdpSocket, to: SocketAddr) -> Result<SocketAddr> {
    sock.send_to(&Msg::new(BINDING).0, to)?;
    let mut buf = [0u8; 1024];
    let (n, _) = sock.recv_from(&mut buf).with_context(|| format!("no STUN answer from {to}"))?;
    Response::parse(&buf[..n])?.mapped().context("no XOR-MAPPED-ADDRESS")
}

/// coturn's REST-API credentials for `secret` (`use-auth-secret`): `<expiry>:<user>` and
/// base64(HMAC-SHA1(secret, username)).
pub fn rest_credentials(secret: &str, user: &str) -> (String, String) {
    let expiry = SystemTime::now().duration_since(UNIX_EPOCH).expect("after 1970").as_secs() + 3600;
    let username = format!("{expiry}:{user}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(ring::hmac::sign(&key, username.as_bytes()));
    (username, password)
}

/// A TLS connection from `ns` to `to` for `server_name`, verified against the PEM roots in
/// `roots` (the connection fails if the served certificate does not chain to them).
pub struct TurnTls {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    /// After a successful Allocate: what the requests that follow authenticate with.
    auth: Option<Auth>,
}

/// USERNAME, REALM, NONCE and the long-term key of an allocation.
#[derive(Clone)]
struct Auth {
    user: Vec<u8>,
    realm: Vec<u8>,
    nonce: Vec<u8>,
    key: Vec<u8>,
}

impl TurnTls {
    /// Connects and completes the handshake.
    pub fn connect(ns: &NetNs, to: SocketAddr, server_name: &str, roots: &Path) -> Result<Self> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut store = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(roots)? {
            store.add(c?)?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(store)
            .with_no_client_auth();
        let name = ServerName::try_from(server_name.to_string())?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        let tcp = ns.enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))??;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut s = rustls::StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock).context("TLS handshake")?;
        }
        Ok(TurnTls { stream: s, auth: None })
    }

    /// The next STUN message from the server.
    pub fn read(&mut self) -> Result<Response> {
        let mut head = [0u8; 20];
        self.stream.read_exact(&mut head).context("reading a STUN header")?;
        let len = u16::from_be_bytes([head[2], head[3]]) as usize;
        let mut body = vec![0u8; len];
        self.stream.read_exact(&mut body)?;
        Response::parse(&[&head[..], &body].concat())
    }

    fn exchange(&mut self, msg: &[u8]) -> Result<Response> {
        self.stream.write_all(msg)?;
        self.read()
    }

    /// A CreatePermission for `peer` (after a successful [`Self::allocate`]). Returns the answer.
    pub fn create_permission(&mut self, peer: SocketAddr) -> Result<Response> {
        let Auth { user, realm, nonce, key } = self.auth.clone().context("no allocation yet")?;
        let msg = Msg::new(CREATE_PERMISSION)
            .attr(XOR_PEER, &xor_v4(peer)?)
            .attr(USERNAME, &user)
            .attr(REALM, &realm)
            .attr(NONCE, &nonce)
            .integrity(&key);
        self.exchange(&msg)
    }

    /// A Send indication: `data` to `peer` through the allocation's relay.
    pub fn send(&mut self, peer: SocketAddr, data: &[u8]) -> Result<()> {
        let msg = Msg::new(SEND_INDICATION).attr(XOR_PEER, &xor_v4(peer)?).attr(DATA, data);
        Ok(self.stream.write_all(&msg.0)?)
    }

    /// The next Data indication: (the peer it came from, its data).
    pub fn receive(&mut self) -> Result<(SocketAddr, Vec<u8>)> {
        let m = self.read()?;
        if m.kind != DATA_INDICATION {
            bail!("expected a Data indication, got message type {:#06x}", m.kind);
        }
        Ok((m.peer().context("no XOR-PEER-ADDRESS")?, m.data().context("no DATA")?.to_vec()))
    }

    /// An Allocate for a UDP relay; with `creds`, answered with the realm and nonce of the
    /// first (401) answer. Returns the last answer.
    pub fn allocate(&mut self, creds: Option<(&str, &str)>) -> Result<Response> {
        let udp = [17u8, 0, 0, 0];
        let first = self.exchange(&Msg::new(ALLOCATE).attr(TRANSPORT, &udp).0)?;
        let Some((user, password)) = creds else { return Ok(first) };
        let realm = first.get(REALM).context("no REALM in the 401")?.to_vec();
        let nonce = first.get(NONCE).context("no NONCE in the 401")?.to_vec();
        let key = md5::Md5::digest([user.as_bytes(), b":", &realm, b":", password.as_bytes()].concat());
        let msg = Msg::new(ALLOCATE)
            .attr(TRANSPORT, &udp)
            .attr(USERNAME, user.as_bytes())
            .attr(REALM, &realm)
            .attr(NONCE, &nonce)
            .integrity(&key);
        let answer = self.exchange(&msg)?;
        if answer.error().is_none() {
            self.auth = Some(Auth { user: user.as_bytes().to_vec(), realm, nonce, key: key.to_vec() });
        }
        Ok(answer)
    }
}
