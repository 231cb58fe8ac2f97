//! The load generators: UDP at a paced or unlimited rate from many flows (`sendmmsg`),
//! a counting receiver (`recvmmsg`), a UDP round-trip prober, and TCP clients and a backend
//! for the splitter benchmarks (new connections, bulk streams, idle connections). All are
//! plain threads with blocking sockets created inside the lab's namespaces.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use crate::netns::NetNs;

/// Packets per `sendmmsg`/`recvmmsg` call.
const BATCH: usize = 64;

fn set_timeout(fd: i32, opt: libc::c_int, d: Duration) {
    let tv = libc::timeval { tv_sec: d.as_secs() as libc::time_t, tv_usec: d.subsec_micros() as libc::suseconds_t };
    // SAFETY: a valid timeval for SO_RCVTIMEO/SO_SNDTIMEO.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as u32,
        );
    }
}

fn force_buffer(fd: i32, opt: libc::c_int, bytes: i32) {
    // SAFETY: an int option value.
    unsafe {
        libc::setsockopt(fd, libc::SOL_SOCKET, opt, (&bytes as *const i32).cast(), size_of::<i32>() as u32);
    }
}

/// A UDP load: `flows` source ports, `size`-byte payloads, `rate` packets/s (0: as fast as
/// the sender can), for `secs`.
#[derive(Debug, Clone, Copy)]
pub struct UdpLoad {
    /// Payload bytes.
    pub size: usize,
    /// Distinct source ports.
    pub flows: usize,
    /// Packets per second; 0 for unlimited.
    pub rate: u64,
    /// Duration.
    pub secs: f64,
}

/// What a UDP run measured.
#[derive(Debug, Clone, Copy)]
pub struct UdpRun {
    /// Packets the sender handed to the kernel.
    pub sent: u64,
    /// Packets the receiver got (0 without a receiver).
    pub delivered: u64,
    /// Seconds the sender ran.
    pub secs: f64,
    /// Machine-wide busy CPU seconds from the start of sending to the receiver going quiet.
    pub busy_cpu: f64,
}

/// A counting receiver on `addr` in `ns`.
pub struct Receiver {
    count: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds `addr` in `ns` (64 MiB receive buffer: the receiver must not be where packets
    /// are lost) and counts datagrams.
    pub fn start(ns: &NetNs, addr: SocketAddr) -> Result<Self> {
        let sock = ns.enter(move || UdpSocket::bind(addr))?.with_context(|| format!("binding {addr}"))?;
        force_buffer(sock.as_raw_fd(), libc::SO_RCVBUFFORCE, 64 << 20);
        set_timeout(sock.as_raw_fd(), libc::SO_RCVTIMEO, Duration::from_millis(50));
        let (count, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
        let (c, s) = (count.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut bufs = vec![[0u8; 2048]; BATCH];
            let mut iov: Vec<libc::iovec> =
                bufs.iter_mut().map(|b| libc::iovec { iov_base: b.as_mut_ptr().cast(), iov_len: b.len() }).collect();
            // SAFETY: zeroed mmsghdr is valid; each points at its own iovec.
            let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
            for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
                m.msg_hdr.msg_iov = v;
                m.msg_hdr.msg_iovlen = 1;
            }
            loop {
                // SAFETY: msgs/iov/bufs outlive the call.
                let n = unsafe {
                    libc::recvmmsg(sock.as_raw_fd(), msgs.as_mut_ptr(), BATCH as u32, 0, std::ptr::null_mut())
                };
                if n > 0 {
                    c.fetch_add(n as u64, Ordering::Relaxed);
                } else if s.load(Ordering::Relaxed) {
                    // Quiet for a receive timeout after the stop: done.
                    break;
                }
            }
        });
        Ok(Receiver { count, stop, thread: Some(thread) })
    }

    /// Datagrams so far.
    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Waits until nothing arrived for 50 ms, stops, and returns the total.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.count()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sends `load` from `ns` to `to` on one thread; with `receiver`, counts what arrived.
pub fn udp_run(ns: &NetNs, to: SocketAddr, load: UdpLoad, receiver: Option<Receiver>) -> Result<UdpRun> {
    let socks: Vec<UdpSocket> = ns
        .enter(move || -> std::io::Result<Vec<UdpSocket>> {
            (0..load.flows)
                .map(|_| {
                    let s = UdpSocket::bind(SocketAddr::new(
                        if to.is_ipv4() { [0u8; 4].into() } else { [0u16; 8].into() },
                        0,
                    ))?;
                    s.connect(to)?;
                    Ok(s)
                })
                .collect()
        })?
        .context("creating the flows' sockets")?;
    for s in &socks {
        force_buffer(s.as_raw_fd(), libc::SO_SNDBUFFORCE, 4 << 20);
    }
    let payload = vec![0x5au8; load.size];
    let mut iov: Vec<libc::iovec> =
        (0..BATCH).map(|_| libc::iovec { iov_base: payload.as_ptr() as *mut _, iov_len: payload.len() }).collect();
    // SAFETY: zeroed mmsghdr is valid; each points at its iovec (connected sockets: no name).
    let mut msgs: Vec<libc::mmsghdr> = (0..BATCH).map(|_| unsafe { std::mem::zeroed() }).collect();
    for (m, v) in msgs.iter_mut().zip(iov.iter_mut()) {
        m.msg_hdr.msg_iov = v;
        m.msg_hdr.msg_iovlen = 1;
    }
    let busy0 = super::machine_busy_secs()?;
    let start = Instant::now();
    let mut sent: u64 = 0;
    let mut flow = 0;
    let duration = Duration::from_secs_f64(load.secs);
    loop {
        let elapsed = start.elapsed();
        if elapsed >= duration {
            break;
        }
        let want = if load.rate == 0 {
            BATCH as u64
        } else {
            let due = (load.rate as f64 * elapsed.as_secs_f64()) as u64;
            if due <= sent {
                std::thread::sleep(Duration::from_micros(50));
                continue;
            }
            (due - sent).min(BATCH as u64)
        };
        // SAFETY: msgs/iov/payload outlive the call.
        let n = unsafe { libc::sendmmsg(socks[flow].as_raw_fd(), msgs.as_mut_ptr(), want as u32, 0) };
        if n > 0 {
            sent += n as u64;
        }
        flow = (flow + 1) % socks.len();
    }
    let secs = start.elapsed().as_secs_f64();
    let delivered = receiver.map_or(0, Receiver::finish);
    let busy_cpu = super::machine_busy_secs()? - busy0;
    Ok(UdpRun { sent, delivered, secs, busy_cpu })
}

/// Round-trip times (µs) of `count` datagrams sent at `rate` per second from `ns` to an echo
/// at `to` (the lab's echo server: `seen <addr> <payload>`); lost ones are left out.
pub fn udp_rtt(ns: &NetNs, to: SocketAddr, rate: u64, count: u64) -> Result<Vec<f64>> {
    let sock = ns.enter(move || UdpSocket::bind("0.0.0.0:0"))??;
    sock.connect(to)?;
    sock.set_read_timeout(Some(Duration::from_millis(500)))?;
    let reader = sock.try_clone()?;
    let clock = Instant::now();
    let rtts = Arc::new(Mutex::new(Vec::with_capacity(count as usize)));
    let r = rtts.clone();
    let rx = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        let mut got = 0;
        while got < count {
            let n = match reader.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => continue,
                Err(_) => break,
            };
            if n < 16 {
                continue;
            }
            let sent_ns = u64::from_be_bytes(buf[n - 8..n].try_into().expect("8 bytes"));
            let now = clock.elapsed().as_nanos() as u64;
            r.lock().expect("lock").push(now.saturating_sub(sent_ns) as f64 / 1000.0);
            got += 1;
        }
    });
    let gap = Duration::from_secs_f64(1.0 / rate as f64);
    for i in 0..count {
        let due = gap * i as u32;
        if let Some(wait) = due.checked_sub(clock.elapsed()) {
            std::thread::sleep(wait);
        }
        let mut msg = vec![0u8; 100];
        msg[84..92].copy_from_slice(&i.to_be_bytes());
        msg[92..100].copy_from_slice(&(clock.elapsed().as_nanos() as u64).to_be_bytes());
        // A refused datagram (ICMP port unreachable) is a lost one, not an error.
        let _ = sock.send(&msg);
    }
    let _ = rx.join();
    let v = rtts.lock().expect("lock").clone();
    Ok(v)
}

/// What the splitter benchmark's backend does with a connection after reading the hello.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Write 1 KiB, close.
    Reply = 0,
    /// Write `stream_bytes`, close.
    Stream = 1,
    /// Keep the connection open, idle.
    Hold = 2,
}

/// The splitter benchmark's backend: reads exactly the hello's length, then acts per [`Mode`].
pub struct TcpBackend {
    mode: Arc<AtomicU8>,
    /// Bytes each connection gets in [`Mode::Stream`].
    pub stream_bytes: Arc<AtomicU64>,
    /// Connections that completed their hello.
    pub accepted: Arc<AtomicU64>,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl TcpBackend {
    /// Listens on `addr` in `ns`; hellos are `hello_len` bytes.
    pub fn start(ns: &NetNs, addr: SocketAddr, hello_len: usize) -> Result<Self> {
        let listener = ns.enter(move || TcpListener::bind(addr))?.with_context(|| format!("binding {addr}"))?;
        set_timeout(listener.as_raw_fd(), libc::SO_RCVTIMEO, Duration::from_millis(100));
        // A long accept queue (std listens with 128): thousands of connections arrive at once.
        // SAFETY: listen() again on a listening socket only changes its backlog.
        unsafe { libc::listen(listener.as_raw_fd(), 4096) };
        let listener = Arc::new(listener);
        let mut me = TcpBackend {
            mode: Arc::new(AtomicU8::new(Mode::Reply as u8)),
            stream_bytes: Arc::new(AtomicU64::new(0)),
            accepted: Arc::new(AtomicU64::new(0)),
            held: Arc::default(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Vec::new(),
        };
        for _ in 0..2 {
            let (l, mode, bytes, accepted, held, stop) = (
                listener.clone(),
                me.mode.clone(),
                me.stream_bytes.clone(),
                me.accepted.clone(),
                me.held.clone(),
                me.stop.clone(),
            );
            me.threads.push(std::thread::spawn(move || {
                let reply = vec![0x42u8; 1024];
                let mut hello = vec![0u8; hello_len];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((mut s, _)) = l.accept() else { continue };
                    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                    if s.read_exact(&mut hello).is_err() {
                        continue;
                    }
                    accepted.fetch_add(1, Ordering::Relaxed);
                    match mode.load(Ordering::Relaxed) {
                        0 => {
                            let _ = s.write_all(&reply);
                        }
                        1 => {
                            let n = bytes.load(Ordering::Relaxed);
                            std::thread::spawn(move || {
                                let chunk = vec![0x42u8; 256 * 1024];
                                let mut left = n;
                                while left > 0 {
                                    let k = left.min(chunk.len() as u64) as usize;
                                    if s.write_all(&chunk[..k]).is_err() {
                                        break;
                                    }
                                    left -= k as u64;
                                }
                            });
                        }
                        _ => held.lock().expect("lock").push(s),
                    }
                }
            }));
        }
        Ok(me)
    }

    /// Sets what the next connections get.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Closes the connections held in [`Mode::Hold`].
    pub fn release(&self) {
        self.held.lock().expect("lock").clear();
    }
}

impl Drop for TcpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// New connections for `secs` from `threads` clients: connect, send the hello, read the
/// 1 KiB reply to the end. Returns (completed, failed, time to first byte in µs for each).
pub fn conn_rate(ns: &NetNs, to: SocketAddr, hello: &[u8], threads: usize, secs: f64) -> Result<(u64, u64, Vec<f64>)> {
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let failed = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for _ in 0..threads {
        let (hello, failed) = (hello.to_vec(), failed.clone());
        handles.push(ns.spawn(move || {
            let mut ttfb = Vec::new();
            let mut buf = [0u8; 2048];
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let ok = (|| -> std::io::Result<bool> {
                    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
                    s.set_read_timeout(Some(Duration::from_secs(3)))?;
                    s.set_nodelay(true)?;
                    s.write_all(&hello)?;
                    let mut got = s.read(&mut buf)?;
                    if got == 0 {
                        return Ok(false);
                    }
                    ttfb.push(t0.elapsed().as_secs_f64() * 1e6);
                    while got < 1024 {
                        let n = s.read(&mut buf)?;
                        if n == 0 {
                            return Ok(false);
                        }
                        got += n;
                    }
                    Ok(true)
                })();
                if !matches!(ok, Ok(true)) {
                    failed.fetch_add(1, Ordering::Relaxed);
                    ttfb.truncate(ttfb.len().saturating_sub(usize::from(ok.is_ok())));
                }
            }
            ttfb
        })?);
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("a client thread panicked"))?);
    }
    let done = all.len() as u64;
    Ok((done, failed.load(Ordering::Relaxed), all))
}

/// `streams` connections at once, each sending the hello and reading `bytes` to the end.
/// Returns the wall time in seconds.
pub fn bulk(ns: &NetNs, to: SocketAddr, hello: &[u8], streams: usize, bytes: u64) -> Result<f64> {
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..streams {
        let hello = hello.to_vec();
        handles.push(ns.spawn(move || -> std::io::Result<u64> {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(&hello)?;
            let mut buf = vec![0u8; 256 * 1024];
            let mut got = 0u64;
            loop {
                let n = s.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                got += n as u64;
            }
            Ok(got)
        })?);
    }
    for h in handles {
        let got = h.join().map_err(|_| anyhow::anyhow!("a stream thread panicked"))??;
        anyhow::ensure!(got == bytes, "a stream got {got} of {bytes} bytes");
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Opens `n` connections from `ns` to `to`, each sending the hello, and keeps them.
pub fn idle_conns(ns: &NetNs, to: SocketAddr, hello: &[u8], n: usize) -> Result<Vec<TcpStream>> {
    let hello = hello.to_vec();
    ns.enter(move || -> std::io::Result<Vec<TcpStream>> {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
            s.write_all(&hello)?;
            v.push(s);
        }
        Ok(v)
    })?
    .context("opening idle connections")
}
