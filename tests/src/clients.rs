//! Clients in the lab's "internet" namespace.

use std::{
    io::{Read, Write},
    net::{Shutdown, SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// A UDP socket in `ns`, of the family of `to`, with a 2 s receive timeout.
pub fn udp_socket(ns: &NetNs, v6: bool) -> Result<UdpSocket> {
    let bind: SocketAddr = if v6 { "[::]:0".parse()? } else { "0.0.0.0:0".parse()? };
    let s = ns.enter(move || UdpSocket::bind(bind))??;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// A UDP socket in `ns` bound to `ip` (one of the namespace's addresses), any port, with a
/// 2 s receive timeout.
pub fn udp_socket_from(ns: &NetNs, ip: std::net::IpAddr) -> Result<UdpSocket> {
    let s = ns.enter(move || UdpSocket::bind(SocketAddr::new(ip, 0)))??;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok(s)
}

/// Sends `msg` to `to` and returns the reply and the address it came from.
pub fn udp_round_trip(sock: &UdpSocket, to: SocketAddr, msg: &str) -> Result<(SocketAddr, String)> {
    sock.send_to(msg.as_bytes(), to)?;
    let mut buf = [0u8; 2048];
    let (len, from) = sock.recv_from(&mut buf).with_context(|| format!("no reply from {to} to `{msg}`"))?;
    Ok((from, String::from_utf8_lossy(&buf[..len]).into_owned()))
}

/// What a TCP exchange with a stand-in web server returned.
pub struct TcpExchange {
    /// The client's own address.
    pub local: SocketAddr,
    /// The address the client is connected to.
    pub peer: SocketAddr,
    /// The server's first line (`seen <addr>`).
    pub greeting: String,
    /// Everything echoed back after `data` was sent and the write side closed.
    pub echoed: Vec<u8>,
}

/// Connects from `ns` to `to`, sends `data` and half-closes (on a thread, from the start: a
/// splitter only reaches the backend once it has the first bytes), reads the greeting line,
/// then the echo to the end.
pub fn tcp_echo(ns: &NetNs, to: SocketAddr, data: Vec<u8>) -> Result<TcpExchange> {
    let stream = ns
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(3)))?
        .with_context(|| format!("connecting to {to}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let (local, peer) = (stream.local_addr()?, stream.peer_addr()?);
    let mut writer = stream.try_clone()?;
    let sender = std::thread::spawn(move || -> std::io::Result<()> {
        writer.write_all(&data)?;
        writer.shutdown(Shutdown::Write)
    });
    let mut reader = stream.try_clone()?;
    let mut greeting = Vec::new();
    let mut byte = [0u8; 1];
    while byte[0] != b'\n' {
        reader.read_exact(&mut byte).context("reading the greeting")?;
        greeting.push(byte[0]);
    }
    let mut echoed = Vec::new();
    reader.read_to_end(&mut echoed).context("reading the echo")?;
    match sender.join() {
        Ok(r) => r.context("sending")?,
        Err(_) => bail!("sender panicked"),
    }
    Ok(TcpExchange { local, peer, greeting: String::from_utf8_lossy(&greeting).trim_end().to_string(), echoed })
}

/// Streams datagrams `seq-0`, `seq-1`, ... to `to` from `sock` at a steady `rate` per second
/// for `secs` seconds, in a thread; joining it gives how many were sent.
pub fn udp_stream(sock: UdpSocket, to: SocketAddr, rate: u64, secs: u64) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let start = std::time::Instant::now();
        let total = rate * secs;
        for i in 0..total {
            let due = start + std::time::Duration::from_secs_f64(i as f64 / rate as f64);
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            sock.send_to(format!("seq-{i}").as_bytes(), to).expect("sending a datagram");
        }
        total
    })
}

/// A recorded ClientHello from `tests/data/clienthello/` (see its README).
pub fn recorded_hello(name: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("data/clienthello").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `GET /metrics` from inside `ns`; asserts a 200 and returns the whole response.
pub fn scrape_metrics(ns: &NetNs, addr: &str) -> String {
    let addr: SocketAddr = addr.parse().expect("ADDRESS:PORT");
    let mut s = ns.enter(move || TcpStream::connect(addr)).expect("entering the namespace").expect("connecting");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("sending");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("reading");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// A TCP connection from `from` (an address of `ns`; port 0 for any) to `to`, with
/// `SO_REUSEADDR` so that a port just used can be used again, and a 5 s read timeout.
pub fn tcp_connect_from(ns: &NetNs, from: SocketAddr, to: SocketAddr) -> Result<TcpStream> {
    let s = ns.enter(move || -> std::io::Result<TcpStream> {
        let sock = socket2::Socket::new(socket2::Domain::for_address(to), socket2::Type::STREAM, None)?;
        sock.set_reuse_address(true)?;
        sock.bind(&from.into())?;
        sock.connect_timeout(&to.into(), Duration::from_secs(3))?;
        Ok(sock.into())
    })?;
    let s = s.with_context(|| format!("connecting from {from} to {to}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(s)
}

/// Connects to the lab host's 443 from `inet`, sends `hello` and checks that the backend's
/// greeting begins (`seen `): the connection, to read the rest of the greeting or relay more.
pub fn sni_exchange(inet: &NetNs, hello: &[u8]) -> std::io::Result<TcpStream> {
    let to = SocketAddr::new(crate::lab::HOST_V4.into(), 443);
    let mut s = inet
        .enter(move || TcpStream::connect_timeout(&to, Duration::from_secs(5)))
        .map_err(std::io::Error::other)??;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(hello)?;
    let mut greeting = [0u8; 5];
    s.read_exact(&mut greeting)?;
    if &greeting != b"seen " {
        return Err(std::io::Error::other(format!("greeting {greeting:?}")));
    }
    Ok(s)
}

/// A path a test needs from `cargo xtask test`, which builds it and names it in `var`.
pub fn built_by_xtask(var: &str, what: &str) -> std::path::PathBuf {
    let p = std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| panic!("{var}: run through `cargo xtask test`, which builds {what}"));
    assert!(p.is_file(), "{} missing", p.display());
    p
}

/// Sends `seq-N` datagrams from `sock` to `to` at `rate` per second until `stop` is set;
/// returns how many were sent.
pub fn udp_stream_until(sock: &UdpSocket, to: SocketAddr, rate: u64, stop: &std::sync::atomic::AtomicBool) -> u64 {
    let start = std::time::Instant::now();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        let due = start + Duration::from_secs_f64(i as f64 / rate as f64);
        if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
            std::thread::sleep(wait);
        }
        sock.send_to(format!("seq-{i}").as_bytes(), to).expect("sending a datagram");
        i += 1;
    }
    i
}

/// What crossed a step run [`under_load`].
pub struct Load {
    /// Datagrams sent to the host's 10000/udp.
    pub sent: u64,
    /// TLS connections through 443 that got the backend's greeting.
    pub connected: u64,
    /// Why the others failed.
    pub failed: Vec<String>,
}

impl Load {
    /// How many datagrams `sink` got beyond the `before` it had, waiting up to 3 s for the
    /// last ones.
    pub fn delivered(&self, sink: &crate::servers::Server, before: u64) -> u64 {
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while (sink.count() as u64) < before + self.sent && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        sink.count() as u64 - before
    }
}

/// Sets the flag when dropped: the load's threads end even when the step panics (the scope
/// would otherwise wait for them for ever).
struct SetOnDrop<'a>(&'a std::sync::atomic::AtomicBool);

impl Drop for SetOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Runs `step` while `rate` datagrams/s stream from the lab's internet to the host's 10000/udp
/// and TLS clients (a recorded Chromium hello) connect to its 443 back to back, from 0.7 s
/// before the step until 1 s after it returned.
pub fn under_load<T>(lab: &crate::lab::Lab, rate: u64, step: impl FnOnce() -> T) -> (T, Load) {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let hello = recorded_hello("chromium-meet.bin");
    let sock = udp_socket(&lab.inet, false).expect("a UDP socket");
    let to = SocketAddr::new(crate::lab::HOST_V4.into(), 10000);
    let stop = AtomicBool::new(false);
    let (connected, failed) = (AtomicU64::new(0), std::sync::Mutex::new(Vec::new()));
    let (out, sent) = std::thread::scope(|scope| {
        let stream = scope.spawn(|| udp_stream_until(&sock, to, rate, &stop));
        scope.spawn(|| {
            while !stop.load(Ordering::Relaxed) {
                match sni_exchange(&lab.inet, &hello) {
                    Ok(_) => connected.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        failed.lock().expect("lock").push(e.to_string());
                        0
                    }
                };
            }
        });
        let stop_all = SetOnDrop(&stop);
        std::thread::sleep(Duration::from_millis(700));
        let out = step();
        std::thread::sleep(Duration::from_millis(1000));
        drop(stop_all);
        (out, stream.join().expect("the stream"))
    });
    let load = Load { sent, connected: connected.into_inner(), failed: failed.into_inner().expect("lock") };
    (out, load)
}
