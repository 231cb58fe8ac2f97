//! Relaying bytes both ways after the hello: half-close is passed on (EOF from one side
//! shuts down writing to the other), an error in either direction ends both, and a
//! connection idle in both directions for the idle timeout is closed.
//!
//! Two ways to move the bytes: [`Mode::Copy`] reads into a 64 KiB buffer and writes it out;
//! [`Mode::Splice`] moves them socket -> pipe -> socket with `splice(2)`, never copying them
//! into userspace.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::{io::Interest, net::TcpStream};

use super::splice::Pipe;

/// How bytes are moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Through a userspace buffer (default: measured as fast as splice in CPU and faster in
    /// wall time; see the README's benchmark table).
    #[default]
    Copy,
    /// With splice(2) through a pipe (zero-copy).
    Splice,
}

/// How a relay ended.
#[derive(Debug)]
pub struct Relayed {
    /// Client -> backend bytes (after the hello).
    pub up: u64,
    /// Backend -> client bytes.
    pub down: u64,
    /// Closed by the idle timeout.
    pub idle: bool,
    /// The I/O error that ended it (a reset by a peer...), if any.
    pub error: Option<std::io::Error>,
}

const BUF: usize = 64 * 1024;

struct Activity {
    clock: Instant,
    last_ms: AtomicU64,
    /// Directions that reached EOF.
    ended: AtomicU64,
}

impl Activity {
    /// Called by a direction at EOF: true for the first one, which must pass the half-close
    /// on; the second needs no `shutdown` (both sockets are closed right after, with a FIN).
    fn first_to_end(&self) -> bool {
        self.ended.fetch_add(1, Ordering::Relaxed) == 0
    }

    fn touch(&self) {
        self.last_ms.store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.clock.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// Copies `src` to `dst` until EOF (then shuts `dst` down for writing). The buffer is
/// allocated when the first bytes arrive (an idle connection holds none) and never zeroed:
/// reads go into its spare capacity.
async fn copy(src: &TcpStream, dst: &TcpStream, bytes: &AtomicU64, activity: &Activity) -> std::io::Result<()> {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        src.readable().await?;
        if buf.capacity() == 0 {
            buf.reserve_exact(BUF);
        }
        buf.clear();
        let n = match src.try_read_buf(&mut buf) {
            Ok(0) => return end(dst, activity),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        };
        let mut sent = 0;
        while sent < n {
            dst.writable().await?;
            match dst.try_write(&buf[sent..n]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// EOF from the other side: passed on as a half-close, unless the other direction has ended
/// already.
fn end(dst: &TcpStream, activity: &Activity) -> std::io::Result<()> {
    if activity.first_to_end() { socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write) } else { Ok(()) }
}

/// Splices `src` to `dst` through a pipe until EOF (then shuts `dst` down for writing). The
/// pipe is created when the first bytes arrive: an idle connection holds none.
async fn splice(src: &TcpStream, dst: &TcpStream, bytes: &AtomicU64, activity: &Activity) -> std::io::Result<()> {
    src.readable().await?;
    let pipe = Pipe::new()?;
    loop {
        let n = loop {
            src.readable().await?;
            match src.try_io(Interest::READABLE, || pipe.fill_from(src)) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return end(dst, activity);
        }
        let mut left = n;
        while left > 0 {
            dst.writable().await?;
            match dst.try_io(Interest::WRITABLE, || pipe.drain_to(dst, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Relays until both directions are done, an error occurs, or `idle` passes without traffic.
pub async fn relay(client: TcpStream, backend: TcpStream, idle: Duration, mode: Mode) -> Relayed {
    let activity = Activity { clock: Instant::now(), last_ms: AtomicU64::new(0), ended: AtomicU64::new(0) };
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let (up, down) = match mode {
        Mode::Copy => (
            futures::future::Either::Left(copy(&client, &backend, &up_bytes, &activity)),
            futures::future::Either::Left(copy(&backend, &client, &down_bytes, &activity)),
        ),
        Mode::Splice => (
            futures::future::Either::Right(splice(&client, &backend, &up_bytes, &activity)),
            futures::future::Either::Right(splice(&backend, &client, &down_bytes, &activity)),
        ),
    };
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    let ended = |idle, error| Relayed {
        up: up_bytes.load(Ordering::Relaxed),
        down: down_bytes.load(Ordering::Relaxed),
        idle,
        error,
    };
    while !(up_done && down_done) {
        let wait = idle.saturating_sub(activity.idle_for());
        tokio::select! {
            r = &mut up, if !up_done => match r {
                Ok(()) => up_done = true,
                Err(e) => return ended(false, Some(e)),
            },
            r = &mut down, if !down_done => match r {
                Ok(()) => down_done = true,
                Err(e) => return ended(false, Some(e)),
            },
            () = tokio::time::sleep(wait) => {
                if activity.idle_for() >= idle {
                    return ended(true, None);
                }
            }
        }
    }
    ended(false, None)
}
