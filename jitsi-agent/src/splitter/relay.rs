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
//!
//! The relay is one small state machine ([`Relay`]) polled by the connection's task: it
//! waits on the sockets' own readiness slots, holds one timer, set again only when it fires
//! (not on every byte), and a copy buffer only while bytes are in hand (taken when they
//! arrive, freed once they are written and the next read would wait); a quiet relayed
//! connection costs the task, this struct and the two sockets' registrations (in splice mode
//! also its pipes). The two directions take turns at being polled first.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll, ready},
    time::Duration,
};

use serde::Deserialize;
use tokio::{
    io::Interest,
    net::TcpStream,
    time::{Instant, Sleep},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

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

const BUF: usize = 64 * 1024;

/// One direction: what it has read and not yet written, and how it finished.
#[derive(Default)]
struct Way {
    /// Bytes to write out: `buf[pos..]` (copy mode, and the bytes a handover left).
    buf: Vec<u8>,
    pos: usize,
    /// Splice mode: the pipe (made when the first bytes arrive) and how many bytes it holds.
    pipe: Option<Pipe>,
    in_pipe: usize,
    /// Bytes written out.
    bytes: u64,
    /// How it finished, once it has.
    done: Option<Done>,
}

/// The two sockets as one direction sees them.
struct Ends<'a> {
    src: &'a TcpStream,
    dst: &'a TcpStream,
}

impl Way {
    fn pending(&self) -> &[u8] {
        &self.buf[self.pos..]
    }

    /// Writes what is pending; `Ready(Ok(true))` once all is written, `Ok(false)` when it
    /// must stop (with what is left handed over).
    fn poll_write_pending(&mut self, cx: &mut Context<'_>, e: &Ends<'_>, t: &mut Shared) -> Poll<io::Result<bool>> {
        while !self.pending().is_empty() {
            if t.stopping {
                self.done = Some(Done::Stopped(self.pending().to_vec()));
                return Poll::Ready(Ok(false));
            }
            ready!(e.dst.poll_write_ready(cx))?;
            match e.dst.try_write(self.pending()) {
                Ok(m) => {
                    self.pos += m;
                    self.bytes += m as u64;
                    t.touch();
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
        Ok(true).into()
    }

    /// Copies `src` to `dst` until EOF, an error or a stop (`Ready` then, with `done` set).
    /// The buffer is allocated when bytes arrive (never zeroed) and freed when all of them
    /// are written and the read side is not ready.
    fn poll_copy(&mut self, cx: &mut Context<'_>, e: &Ends<'_>, t: &mut Shared) -> Poll<io::Result<()>> {
        loop {
            if !ready!(self.poll_write_pending(cx, e, t))? {
                return Ok(()).into();
            }
            if t.stopping {
                return self.stop_empty();
            }
            if e.src.poll_read_ready(cx)?.is_pending() {
                // Everything read is written and nothing more to read (or the task's budget is
                // spent): the buffer goes; the next bytes take one again.
                self.release();
                return Poll::Pending;
            }
            // At most BUF bytes in hand: what a stop hands over stays bounded.
            self.buf.clear();
            self.pos = 0;
            if self.buf.capacity() > BUF {
                self.buf.shrink_to(BUF);
            }
            self.buf.reserve_exact(BUF);
            match e.src.try_read_buf(&mut self.buf) {
                Ok(0) => return self.end(e.dst, t).into(),
                Ok(_) => {}
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Splices `src` to `dst` through a pipe (bytes a handover left are written first);
    /// stopped while the pipe holds bytes, they are read out and handed over.
    fn poll_splice(&mut self, cx: &mut Context<'_>, e: &Ends<'_>, t: &mut Shared) -> Poll<io::Result<()>> {
        if !ready!(self.poll_write_pending(cx, e, t))? {
            return Ok(()).into();
        }
        // What a handover left is written: splicing needs no buffer.
        self.release();
        loop {
            while self.in_pipe > 0 {
                let pipe = self.pipe.as_ref().expect("bytes in the pipe");
                if t.stopping {
                    self.done = Some(Done::Stopped(pipe.read_out(self.in_pipe)?));
                    return Ok(()).into();
                }
                ready!(e.dst.poll_write_ready(cx))?;
                match e.dst.try_io(Interest::WRITABLE, || pipe.drain_to(e.dst, self.in_pipe)) {
                    Ok(m) => {
                        self.in_pipe -= m;
                        self.bytes += m as u64;
                        t.touch();
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                    Err(err) => return Poll::Ready(Err(err)),
                }
            }
            if t.stopping {
                return self.stop_empty();
            }
            ready!(e.src.poll_read_ready(cx))?;
            if self.pipe.is_none() {
                self.pipe = Some(Pipe::new()?);
            }
            let pipe = self.pipe.as_ref().expect("made above");
            match e.src.try_io(Interest::READABLE, || pipe.fill_from(e.src)) {
                Ok(0) => return self.end(e.dst, t).into(),
                Ok(n) => self.in_pipe = n,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => {}
                Err(err) => return Poll::Ready(Err(err)),
            }
        }
    }

    /// Frees the buffer; only called with nothing pending in it.
    fn release(&mut self) {
        debug_assert!(self.pending().is_empty());
        if self.buf.capacity() != 0 {
            self.buf = Vec::new();
            self.pos = 0;
        }
    }

    /// Stopped with nothing in hand.
    fn stop_empty(&mut self) -> Poll<io::Result<()>> {
        self.done = Some(Done::Stopped(Vec::new()));
        Ok(()).into()
    }

    /// EOF from `src`: passed on as a half-close, unless the other direction has ended
    /// already (both sockets are closed right after, with a FIN).
    fn end(&mut self, dst: &TcpStream, t: &mut Shared) -> io::Result<()> {
        t.ended += 1;
        if t.ended == 1 {
            socket2::SockRef::from(dst).shutdown(std::net::Shutdown::Write)?;
        }
        self.done = Some(Done::Eof);
        Ok(())
    }
}

/// What both directions share: the idle clock, the half-closes seen, and whether a handover
/// asked the relay to stop.
struct Shared {
    /// When bytes last moved.
    last: Instant,
    /// Directions that reached EOF.
    ended: u8,
    /// The handover token was cancelled.
    stopping: bool,
}

impl Shared {
    fn touch(&mut self) {
        self.last = Instant::now();
    }
}

pin_project_lite::pin_project! {
    /// A relay in progress (see [`relay`]).
    pub struct Relay<'s> {
        sockets: Option<(TcpStream, TcpStream)>,
        up: Way,
        down: Way,
        mode: Mode,
        // Which direction is polled first; it alternates, so that one flooding its way cannot
        // spend the task's whole budget every time while the other waits.
        up_first: bool,
        idle: Duration,
        timing: Shared,
        #[pin]
        stop: WaitForCancellationFuture<'s>,
        // Fires at the earliest moment the idle timeout could pass; when it fires early
        // (bytes moved since), it is set again from the last activity.
        #[pin]
        timer: Sleep,
    }
}

/// Relays until both directions are done, an error occurs, `idle` passes without traffic, or
/// `stop` is cancelled (then both sockets come back in [`Outcome::Stopped`]). `resume` is
/// where an earlier process left the relay (default for a new one).
pub fn relay(
    client: TcpStream,
    backend: TcpStream,
    idle: Duration,
    mode: Mode,
    resume: Resume,
    stop: &CancellationToken,
) -> Relay<'_> {
    let Resume { state, to_backend, to_client } = resume;
    let quiet = Duration::from_millis(state.idle_ms).min(idle);
    let now = Instant::now();
    let last = now.checked_sub(quiet).unwrap_or(now);
    let way = |buf: Vec<u8>, ended: bool| Way { buf, done: ended.then_some(Done::Eof), ..Way::default() };
    Relay {
        sockets: Some((client, backend)),
        up: way(to_backend, state.up_ended),
        down: way(to_client, state.down_ended),
        mode,
        up_first: true,
        idle,
        timing: Shared { last, ended: u8::from(state.up_ended) + u8::from(state.down_ended), stopping: false },
        stop: stop.cancelled(),
        timer: tokio::time::sleep_until(last + idle),
    }
}

impl Future for Relay<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let mut me = self.project();
        if !me.timing.stopping && me.stop.as_mut().poll(cx).is_ready() {
            me.timing.stopping = true;
        }
        let (client, backend) = me.sockets.as_ref().expect("polled after it returned");
        let first = *me.up_first;
        *me.up_first = !first;
        for up in [first, !first] {
            let (way, e) = if up {
                (&mut *me.up, Ends { src: client, dst: backend })
            } else {
                (&mut *me.down, Ends { src: backend, dst: client })
            };
            if way.done.is_some() {
                continue;
            }
            let r = match me.mode {
                Mode::Copy => way.poll_copy(cx, &e, me.timing),
                Mode::Splice => way.poll_splice(cx, &e, me.timing),
            };
            if let Poll::Ready(Err(error)) = r {
                return Poll::Ready(Outcome::Ended(ended(me.up, me.down, false, Some(error))));
            }
        }
        match (&me.up.done, &me.down.done) {
            (Some(Done::Eof), Some(Done::Eof)) => {
                return Poll::Ready(Outcome::Ended(ended(me.up, me.down, false, None)));
            }
            (Some(_), Some(_)) => {
                let (client, backend) = me.sockets.take().expect("polled after it returned");
                return Poll::Ready(Outcome::Stopped(stopped(client, backend, me.up, me.down, me.timing)));
            }
            _ => {}
        }
        while me.timer.as_mut().poll(cx).is_ready() {
            let deadline = me.timing.last + *me.idle;
            if Instant::now() >= deadline {
                return Poll::Ready(Outcome::Ended(ended(me.up, me.down, true, None)));
            }
            me.timer.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

fn ended(up: &Way, down: &Way, idle: bool, error: Option<io::Error>) -> Relayed {
    Relayed { up: up.bytes, down: down.bytes, idle, error }
}

/// Both directions done, not both at EOF: stopped for a handover.
fn stopped(client: TcpStream, backend: TcpStream, up: &mut Way, down: &mut Way, t: &Shared) -> Stopped {
    let rest = |w: &mut Way| match w.done.take() {
        Some(Done::Stopped(left)) => (false, left),
        _ => (true, Vec::new()),
    };
    let ((up_ended, to_backend), (down_ended, to_client)) = (rest(up), rest(down));
    let state = RelayState { up_ended, down_ended, idle_ms: t.last.elapsed().as_millis() as u64 };
    Stopped { client, backend, resume: Resume { state, to_backend, to_client }, up: up.bytes, down: down.bytes }
}

#[cfg(test)]
mod tests {
    use std::future::poll_fn;

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    use super::*;

    /// A client, the relay's two sockets (its accepted end and its connection to the
    /// backend) and the backend's end.
    async fn sockets() -> (TcpStream, TcpStream, TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        let upstream = TcpStream::connect(listener.local_addr().unwrap()).await.unwrap();
        let (backend, _) = listener.accept().await.unwrap();
        (client, accepted, upstream, backend)
    }

    async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        got
    }

    #[tokio::test]
    async fn each_sides_eof_is_passed_on_and_the_relay_ends_once_both_have_closed() {
        for mode in [Mode::Copy, Mode::Splice] {
            let (mut client, a, b, mut backend) = sockets().await;
            let stop = CancellationToken::new();
            let relay = tokio::spawn(async move {
                let Outcome::Ended(r) = relay(a, b, Duration::from_secs(60), mode, Resume::default(), &stop).await
                else {
                    panic!("not stopped")
                };
                r
            });
            client.write_all(b"ping").await.unwrap();
            client.shutdown().await.unwrap();
            assert_eq!(read_to_end(&mut backend).await, b"ping", "{mode:?}: the client's bytes, then its FIN");
            // Half-closed: the other way still carries bytes.
            backend.write_all(b"pong!").await.unwrap();
            backend.shutdown().await.unwrap();
            assert_eq!(read_to_end(&mut client).await, b"pong!", "{mode:?}: the backend's bytes, then its FIN");
            let r = relay.await.unwrap();
            assert_eq!((r.up, r.down, r.idle), (4, 5, false), "{mode:?}");
            assert!(r.error.is_none(), "{mode:?}: {:?}", r.error);
        }
    }

    #[tokio::test]
    async fn a_reset_from_the_backend_ends_the_relay_with_the_error_and_closes_the_client() {
        let (mut client, a, b, backend) = sockets().await;
        let stop = CancellationToken::new();
        let relay =
            tokio::spawn(
                async move { relay(a, b, Duration::from_secs(60), Mode::Copy, Resume::default(), &stop).await },
            );
        socket2::SockRef::from(&backend).set_linger(Some(Duration::ZERO)).unwrap();
        drop(backend);
        let Outcome::Ended(r) = relay.await.unwrap() else { panic!("not stopped") };
        assert_eq!(r.error.map(|e| e.kind()), Some(io::ErrorKind::ConnectionReset));
        assert!(read_to_end(&mut client).await.is_empty(), "the client's connection is closed");
    }

    /// Real time (a paused clock would run ahead to the timeout while a byte is still in the
    /// kernel's loopback): a 2 s idle timeout, a byte at 0.5 s.
    #[tokio::test]
    async fn a_relay_quiet_both_ways_for_the_idle_timeout_ends_and_bytes_put_it_off() {
        let (mut client, a, b, mut backend) = sockets().await;
        let stop = CancellationToken::new();
        let start = Instant::now();
        let relay = tokio::spawn(async move {
            let out = relay(a, b, Duration::from_secs(2), Mode::Copy, Resume::default(), &stop).await;
            (out, start.elapsed())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        client.write_all(b"x").await.unwrap();
        let sent = start.elapsed();
        let mut one = [0u8; 1];
        backend.read_exact(&mut one).await.unwrap();
        let (out, after) = relay.await.unwrap();
        let Outcome::Ended(r) = out else { panic!("not stopped") };
        assert!(r.idle && r.error.is_none() && r.up == 1, "{r:?}");
        assert!(after >= sent + Duration::from_secs(2), "2 s after the last byte (at {sent:?}), not {after:?}");
        assert!(read_to_end(&mut client).await.is_empty() && read_to_end(&mut backend).await.is_empty());
    }

    #[tokio::test]
    async fn a_relay_that_moved_bytes_and_went_quiet_holds_no_copy_buffer() {
        let (mut client, a, b, mut backend) = sockets().await;
        let stop = CancellationToken::new();
        let mut relay = Box::pin(relay(a, b, Duration::from_secs(60), Mode::Copy, Resume::default(), &stop));
        client.write_all(&[7u8; 3000]).await.unwrap();
        backend.write_all(&[9u8; 2000]).await.unwrap();
        let (mut up, mut down) = (vec![0u8; 3000], vec![0u8; 2000]);
        tokio::select! {
            _ = relay.as_mut() => panic!("the relay ended"),
            r = async { tokio::join!(backend.read_exact(&mut up), client.read_exact(&mut down)) } => {
                r.0.unwrap();
                r.1.unwrap();
            }
        }
        assert!(up == [7u8; 3000] && down == [9u8; 2000]);
        // Polled again with nothing to read: both directions let their buffer go.
        assert!(poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx).is_pending())).await);
        let me = relay.as_mut().project();
        assert_eq!((me.up.buf.capacity(), me.down.buf.capacity()), (0, 0));
        assert_eq!((me.up.bytes, me.down.bytes), (3000, 2000));
    }

    #[tokio::test]
    async fn a_splice_relay_frees_the_bytes_a_handover_left_once_it_has_written_them() {
        let (_client, a, b, mut backend) = sockets().await;
        let stop = CancellationToken::new();
        let resume = Resume { to_backend: vec![5u8; 100_000], ..Resume::default() };
        let mut relay = Box::pin(relay(a, b, Duration::from_secs(60), Mode::Splice, resume, &stop));
        let mut got = vec![0u8; 100_000];
        tokio::select! {
            _ = relay.as_mut() => panic!("the relay ended"),
            r = backend.read_exact(&mut got) => { r.unwrap(); }
        }
        assert!(got == [5u8; 100_000]);
        assert!(poll_fn(|cx| Poll::Ready(relay.as_mut().poll(cx).is_pending())).await);
        assert_eq!(relay.as_mut().project().up.buf.capacity(), 0);
    }
}
