//! Relaying bytes both ways after the hello: half-close is passed on (EOF from one side
//! shuts down writing to the other), an error in either direction ends both, and a
//! connection idle in both directions for the idle timeout is closed.
//!
//! Two ways to move the bytes: [`Mode::Copy`] reads into a 64 KiB buffer and writes it out;
//! [`Mode::Splice`] moves them socket -> pipe -> socket with `splice(2)`, never copying them
//! into userspace.
//!
//! A relay can also be asked to stop for a handover (a restart that keeps connections): a
//! direction waiting to read stops at once; one blocked writing (a peer that does not read)
//! stops with the bytes it has not written yet, which go to the next agent with the sockets
//! and are written first there. What the peers send meanwhile waits in the kernel's socket
//! buffers, which move with the descriptors. The relay then returns both sockets, its
//! [`RelayState`] and those bytes ([`Resume`]).

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde::Deserialize;
use tokio::{io::Interest, net::TcpStream};
use tokio_util::sync::CancellationToken;

use super::splice::Pipe;

/// How bytes are moved (`[splitter] relay`).
pub use crate::config::RelayMode as Mode;

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

/// Where a relay stands, enough for another process to go on with it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, Deserialize)]
pub struct RelayState {
    /// The client sent its FIN (passed on to the backend).
    pub up_ended: bool,
    /// The backend sent its FIN (passed on to the client).
    pub down_ended: bool,
    /// How long both directions have been quiet, in milliseconds.
    pub idle_ms: u64,
}

/// Where a relay stands, with the bytes read and not yet written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resume {
    /// Half-closes and idle time.
    pub state: RelayState,
    /// Read from the client, not yet written to the backend.
    pub to_backend: Vec<u8>,
    /// Read from the backend, not yet written to the client.
    pub to_client: Vec<u8>,
}

/// A relay stopped for a handover: both sockets, where it stood and what it moved here.
#[derive(Debug)]
pub struct Stopped {
    /// The client's connection.
    pub client: TcpStream,
    /// The connection to the backend.
    pub backend: TcpStream,
    /// Where it stood.
    pub resume: Resume,
    /// Bytes moved in this process: client -> backend, backend -> client.
    pub up: u64,
    /// Backend -> client bytes moved in this process.
    pub down: u64,
}

/// How [`relay`] returned.
#[derive(Debug)]
pub enum Outcome {
    /// The connection ended (both sides closed, an error, or the idle timeout).
    Ended(Relayed),
    /// Stopped for a handover, every byte read written.
    Stopped(Stopped),
}

/// How one direction returned without an error.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Done {
    /// EOF, passed on.
    Eof,
    /// Asked to stop: with the bytes read and not written.
    Stopped(Vec<u8>),
}

/// One direction's sockets and shared state.
#[derive(Clone, Copy)]
struct Way<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
    bytes: &'a AtomicU64,
    activity: &'a Activity,
    stop: &'a CancellationToken,
}

impl Way<'_> {
    /// Writes `data` to `dst`; stopped part way, returns what is left.
    async fn write_out(&self, data: &[u8]) -> std::io::Result<Option<Vec<u8>>> {
        let mut sent = 0;
        while sent < data.len() {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => return Ok(Some(data[sent..].to_vec())),
                r = self.dst.writable() => r?,
            }
            match self.dst.try_write(&data[sent..]) {
                Ok(m) => sent += m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        if !data.is_empty() {
            self.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            self.activity.touch();
        }
        Ok(None)
    }

    /// Waits until `src` is readable; `false` once `stop` is cancelled (checked first: nothing
    /// has been read then).
    async fn readable(&self) -> std::io::Result<bool> {
        tokio::select! {
            biased;
            () = self.stop.cancelled() => Ok(false),
            r = self.src.readable() => r.map(|()| true),
        }
    }
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

/// Copies `src` to `dst` until EOF (then shuts `dst` down for writing) or `stop`, writing
/// `pending` first. The buffer is allocated when the first bytes arrive (an idle connection
/// holds none) and never zeroed: reads go into its spare capacity.
async fn copy(w: Way<'_>, pending: Vec<u8>) -> std::io::Result<Done> {
    if let Some(left) = w.write_out(&pending).await? {
        return Ok(Done::Stopped(left));
    }
    let mut buf = pending;
    loop {
        if !w.readable().await? {
            return Ok(Done::Stopped(Vec::new()));
        }
        // At most BUF bytes in hand: what a stop hands over stays bounded.
        buf.clear();
        if buf.capacity() > BUF {
            buf.shrink_to(BUF);
        }
        buf.reserve_exact(BUF);
        match w.src.try_read_buf(&mut buf) {
            Ok(0) => return end(w.dst, w.activity),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
        if let Some(left) = w.write_out(&buf).await? {
            return Ok(Done::Stopped(left));
        }
    }
}

/// EOF from the other side: passed on as a half-close, unless the other direction has ended
/// already.
fn end(dst: &TcpStream, activity: &Activity) -> std::io::Result<Done> {
    if activity.first_to_end() {
        socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
    }
    Ok(Done::Eof)
}

/// Splices `src` to `dst` through a pipe until EOF (then shuts `dst` down for writing) or
/// `stop`, writing `pending` first; stopped while the pipe holds bytes, they are read out and
/// returned. The pipe is created when the first bytes arrive: an idle connection holds none.
async fn splice(w: Way<'_>, pending: Vec<u8>) -> std::io::Result<Done> {
    if let Some(left) = w.write_out(&pending).await? {
        return Ok(Done::Stopped(left));
    }
    if !w.readable().await? {
        return Ok(Done::Stopped(Vec::new()));
    }
    let pipe = Pipe::new()?;
    loop {
        let n = loop {
            if !w.readable().await? {
                return Ok(Done::Stopped(Vec::new()));
            }
            match w.src.try_io(Interest::READABLE, || pipe.fill_from(w.src)) {
                Ok(n) => break n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return end(w.dst, w.activity);
        }
        let mut left = n;
        while left > 0 {
            tokio::select! {
                biased;
                () = w.stop.cancelled() => {
                    let rest = pipe.read_out(left)?;
                    w.bytes.fetch_add((n - left) as u64, Ordering::Relaxed);
                    return Ok(Done::Stopped(rest));
                }
                r = w.dst.writable() => r?,
            }
            match w.dst.try_io(Interest::WRITABLE, || pipe.drain_to(w.dst, left)) {
                Ok(m) => left -= m,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
        w.bytes.fetch_add(n as u64, Ordering::Relaxed);
        w.activity.touch();
    }
}

/// Relays until both directions are done, an error occurs, `idle` passes without traffic, or
/// `stop` is cancelled (then both sockets come back in [`Outcome::Stopped`]). `resume` is
/// where an earlier process left the relay (default for a new one).
pub async fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    mode: Mode,
    resume: Resume,
    stop: &CancellationToken,
) -> Outcome {
    let Resume { state, to_backend, to_client } = resume;
    let quiet = Duration::from_millis(state.idle_ms).min(idle);
    let clock = Instant::now().checked_sub(quiet).unwrap_or_else(Instant::now);
    let ended_before = u64::from(state.up_ended) + u64::from(state.down_ended);
    let activity = Activity { clock, last_ms: AtomicU64::new(0), ended: AtomicU64::new(ended_before) };
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let ended = |idle, error| Relayed {
        up: up_bytes.load(Ordering::Relaxed),
        down: down_bytes.load(Ordering::Relaxed),
        idle,
        error,
    };
    // Each direction: None while running, then how it finished. The futures borrow the
    // sockets: they are dropped at the end of this block, before the sockets are handed back.
    let (up_done, down_done) = {
        let up_way = Way { src: &client, dst: &backend, bytes: &up_bytes, activity: &activity, stop };
        let down_way = Way { src: &backend, dst: &client, bytes: &down_bytes, activity: &activity, stop };
        let (up, down) = match mode {
            Mode::Copy => (
                futures::future::Either::Left(copy(up_way, to_backend)),
                futures::future::Either::Left(copy(down_way, to_client)),
            ),
            Mode::Splice => (
                futures::future::Either::Right(splice(up_way, to_backend)),
                futures::future::Either::Right(splice(down_way, to_client)),
            ),
        };
        tokio::pin!(up, down);
        let mut up_done = state.up_ended.then_some(Done::Eof);
        let mut down_done = state.down_ended.then_some(Done::Eof);
        while up_done.is_none() || down_done.is_none() {
            let wait = idle.saturating_sub(activity.idle_for());
            tokio::select! {
                r = &mut up, if up_done.is_none() => match r {
                    Ok(d) => up_done = Some(d),
                    Err(e) => return Outcome::Ended(ended(false, Some(e))),
                },
                r = &mut down, if down_done.is_none() => match r {
                    Ok(d) => down_done = Some(d),
                    Err(e) => return Outcome::Ended(ended(false, Some(e))),
                },
                () = tokio::time::sleep(wait) => {
                    if activity.idle_for() >= idle {
                        return Outcome::Ended(ended(true, None));
                    }
                }
            }
        }
        (up_done, down_done)
    };
    let (up_done, down_done) = (up_done.expect("finished"), down_done.expect("finished"));
    let rest = |d: Done| match d {
        Done::Eof => (true, Vec::new()),
        Done::Stopped(left) => (false, left),
    };
    if up_done == Done::Eof && down_done == Done::Eof {
        return Outcome::Ended(ended(false, None));
    }
    let ((up_ended, to_backend), (down_ended, to_client)) = (rest(up_done), rest(down_done));
    let state = RelayState { up_ended, down_ended, idle_ms: activity.idle_for().as_millis() as u64 };
    let (up, down) = (up_bytes.load(Ordering::Relaxed), down_bytes.load(Ordering::Relaxed));
    Outcome::Stopped(Stopped { client, backend, resume: Resume { state, to_backend, to_client }, up, down })
}
