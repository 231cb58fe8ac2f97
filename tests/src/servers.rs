//! Stand-in backends that report the source address they saw: a UDP server answering
//! `seen <addr> <payload>` and a TCP server that greets with `seen <addr>\n` then echoes.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::Result;

use crate::netns::NetNs;

/// What a server received: (peer address, bytes received).
pub type Seen = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// A server thread stopped on drop.
pub struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Every datagram or connection it saw.
    pub seen: Seen,
    /// The address it listens on.
    pub addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Server {
    /// Distinct peer addresses seen.
    pub fn peers(&self) -> Vec<SocketAddr> {
        let mut v: Vec<_> = self.seen.lock().expect("lock").iter().map(|(a, _)| *a).collect();
        v.dedup();
        v
    }

    /// Number of datagrams / connections seen.
    pub fn count(&self) -> usize {
        self.seen.lock().expect("lock").len()
    }
}

/// Starts a UDP server on `addr` inside `ns`: records each datagram and answers
/// `seen <peer> <payload>` (so a client can check both the peer address and the payload).
pub fn udp(ns: &NetNs, addr: SocketAddr) -> Result<Server> {
    let sock = ns.enter(move || UdpSocket::bind(addr))??;
    sock.set_read_timeout(Some(Duration::from_millis(50)))?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let (stop2, seen2) = (stop.clone(), seen.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 65536];
        while !stop2.load(Ordering::Relaxed) {
            if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                seen2.lock().expect("lock").push((peer, buf[..n].to_vec()));
                let mut reply = format!("seen {peer} ").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, peer);
            }
        }
    });
    Ok(Server { stop, thread: Some(thread), seen, addr })
}

/// Greets with `seen <peer>\n`, echoes until the client closes, then records what it got.
fn echo(mut s: std::net::TcpStream, peer: SocketAddr, seen: &Seen) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = s.write_all(format!("seen {peer}\n").as_bytes());
    let mut got = Vec::new();
    let mut buf = [0u8; 16384];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || s.write_all(&buf[..n]).is_err() {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    seen.lock().expect("lock").push((peer, got));
}

/// Starts a TCP server on `addr` inside `ns`: for each connection (concurrently) writes
/// `seen <peer>\n`, then echoes everything until the client closes. A connection is recorded
/// in `seen` when it ends.
pub fn tcp(ns: &NetNs, addr: SocketAddr) -> Result<Server> {
    let listener = ns.enter(move || TcpListener::bind(addr))??;
    listener.set_nonblocking(true)?;
    let stop = Arc::new(AtomicBool::new(false));
    let seen: Seen = Arc::default();
    let (stop2, seen2) = (stop.clone(), seen.clone());
    let thread = std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((s, peer)) => {
                    let seen = seen2.clone();
                    // One thread per connection: concurrent clients are served concurrently.
                    std::thread::spawn(move || echo(s, peer, &seen));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    });
    Ok(Server { stop, thread: Some(thread), seen, addr })
}
