//! Established splitter connections passed from one agent process to the next across a
//! restart, so that a participant's signalling websocket survives an upgrade.
//!
//! The old process stops its relays at a clean point (every byte read has been written),
//! writes each client/backend socket pair with its [`RelayState`] into a Unix
//! `SOCK_SEQPACKET` socket pair ([`wire`]), and leaves the receiving end in systemd's file
//! descriptor store ([`systemd`]): the descriptors in flight in that socket's queue live as
//! long as systemd holds it, one stored descriptor whatever the number of connections. The
//! next process finds it among its `LISTEN_FDS` (named `handover`), reads the pairs and relays
//! on. Only a stop that is part of a restart job hands over; `systemctl stop` drains as before.
//! Design and reasons: `docs/handover.md`.

pub mod systemd;
pub mod wire;

use std::os::fd::OwnedFd;

use tracing::warn;

use serde::{Deserialize, Serialize};

use crate::splitter::{front::FrontKind, relay::Resume};

/// Which connection a pair is, for the next process: its front and route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairState {
    /// The splitter the client came in through.
    pub front: FrontKind,
    /// The route it was relayed to (its counters continue under that name).
    pub route: String,
}

/// One relayed connection: the client's socket, the backend's, and their state.
#[derive(Debug)]
pub struct Pair {
    /// The accepted connection from the client.
    pub client: OwnedFd,
    /// The (transparent) connection to the backend.
    pub backend: OwnedFd,
    /// Front and route.
    pub state: PairState,
    /// Where the relay stood, with the bytes it had read and not written.
    pub resume: Resume,
}

/// What a handover carried, as the receiving process saw it.
#[derive(Debug, Default)]
pub struct Received {
    /// The pairs, in the order sent.
    pub pairs: Vec<Pair>,
    /// Connections the previous process could not hand over and drained itself.
    pub drained: u64,
    /// Whether the end marker arrived (else the previous process stopped part way).
    pub complete: bool,
    /// Why reading stopped before the end marker, if a message could not be read.
    pub error: Option<Error>,
}

/// Why a handover could not be written, read or stored.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket call failed.
    #[error("handover: {what}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// A message that is not a handover message of this format.
    #[error("handover: unreadable message: {0}")]
    Format(String),
    /// A format from another agent version.
    #[error("handover: format version {found}, this agent reads version {expected}")]
    Version {
        /// The version in the message.
        found: u32,
        /// The one this build reads.
        expected: u32,
    },
    /// The worker thread doing blocking work failed.
    #[error("handover: {what}: the worker thread failed")]
    Worker {
        /// What it was doing.
        what: &'static str,
        /// The runtime's error.
        #[source]
        source: tokio::task::JoinError,
    },
    /// Asking systemd over D-Bus failed.
    #[error("handover: asking systemd: {0}")]
    Bus(Box<zbus::Error>),
}

impl From<zbus::Error> for Error {
    fn from(e: zbus::Error) -> Self {
        Error::Bus(Box::new(e))
    }
}

impl Error {
    pub(crate) fn io(what: &'static str) -> impl FnOnce(std::io::Error) -> Self {
        move |source| Error::Io { what, source }
    }
}

/// How a handover went.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Pairs now in systemd's store for the next process.
    pub handed: usize,
    /// Pairs that stay here (not written, or read back after a failure), to relay on and drain.
    pub back: Vec<Pair>,
    /// What went wrong, if anything did.
    pub error: Option<Error>,
}

/// Writes `pairs` and leaves them in systemd's store for the next process, `drained` being the
/// connections this one keeps until its drain. Pairs that do not fit in the socket stay here;
/// if the end marker or the store fails, every pair written is read back and stays here too.
pub async fn hand_over(pairs: Vec<Pair>, drained: u64) -> Outcome {
    let mut out = match wire::Outbox::new() {
        Ok(o) => o,
        Err(e) => return Outcome { handed: 0, back: pairs, error: Some(e) },
    };
    let mut back = Vec::new();
    let mut error = None;
    let mut rest = pairs.into_iter().peekable();
    loop {
        let (mut batch, mut size) = (Vec::new(), 0);
        while let Some(p) = rest.next_if(|p| {
            batch.len() < wire::PAIRS_PER_MESSAGE && (batch.is_empty() || size + wire::payload(p) <= wire::MAX_MESSAGE)
        }) {
            size += wire::payload(&p);
            batch.push(p);
        }
        if batch.is_empty() {
            break;
        }
        if let Err((e, returned)) = out.send(batch) {
            back.extend(returned);
            back.extend(rest);
            error = Some(e);
            break;
        }
    }
    let handed = out.sent() as usize;
    if handed == 0 {
        return Outcome { handed, back, error };
    }
    let drained = drained + back.len() as u64;
    let rx = match out.finish(drained) {
        Ok(rx) => rx,
        Err((e, rx)) => {
            back.extend(read_back(rx));
            return Outcome { handed: 0, back, error: Some(e) };
        }
    };
    match systemd::store(&rx).await {
        Ok(()) => Outcome { handed, back, error },
        Err(e) => {
            back.extend(read_back(rx));
            Outcome { handed: 0, back, error: Some(e) }
        }
    }
}

/// The next process's side: reads the handover a previous agent left in `rx` (what cannot be
/// read is logged and counts as nothing) and drops systemd's copy of the socket.
pub fn take(rx: OwnedFd) -> Received {
    let received = wire::receive(rx).unwrap_or_else(|e| {
        warn!(error = %e, "handover: nothing taken up from the previous agent");
        Received::default()
    });
    if let Err(e) = systemd::unstore() {
        warn!(error = %e, "handover: the service manager keeps a copy of the handover socket");
    }
    received
}

/// What was written into a handover that is given up.
fn read_back(rx: OwnedFd) -> Vec<Pair> {
    match wire::receive(rx) {
        Ok(r) => r.pairs,
        Err(e) => {
            warn!(error = %e, "handover: reading back what was written failed; those connections are closed");
            Vec::new()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{os::fd::AsRawFd, time::Duration};

    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::{TcpListener, TcpStream},
    };
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::splitter::relay::{Mode, Outcome, RelayState, Relayed, relay};

    /// A backend that echoes every byte back.
    async fn echo_backend() -> std::net::SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                    let _ = w.shutdown().await;
                });
            }
        });
        addr
    }

    /// A client connected through a relay to the echo backend: (client, relay's client side,
    /// relay's backend side).
    async fn relayed_pair(backend: std::net::SocketAddr) -> (TcpStream, TcpStream, TcpStream) {
        let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(front.local_addr().unwrap()).await.unwrap();
        let (accepted, _) = front.accept().await.unwrap();
        let upstream = TcpStream::connect(backend).await.unwrap();
        (client, accepted, upstream)
    }

    fn pair_of(s: crate::splitter::relay::Stopped, route: &str) -> Pair {
        Pair {
            client: s.client.into_std().unwrap().into(),
            backend: s.backend.into_std().unwrap().into(),
            state: PairState { front: FrontKind::Tls, route: route.into() },
            resume: s.resume,
        }
    }

    /// The receiving process's side: the pairs read from `rx`, relayed on until `stop`.
    fn adopt_all(
        rx: OwnedFd,
        stop: &CancellationToken,
        modes: Mode,
    ) -> (Received, Vec<tokio::task::JoinHandle<Outcome>>) {
        let mut got = wire::receive(rx).unwrap();
        let tasks = std::mem::take(&mut got.pairs)
            .into_iter()
            .map(|p| {
                let to_stream = |fd: OwnedFd| {
                    let s = std::net::TcpStream::from(fd);
                    s.set_nonblocking(true).unwrap();
                    TcpStream::from_std(s).unwrap()
                };
                let (c, b, resume) = (to_stream(p.client), to_stream(p.backend), p.resume);
                let stop = stop.clone();
                tokio::spawn(async move { relay(c, b, Duration::from_secs(60), modes, resume, &stop).await })
            })
            .collect();
        (got, tasks)
    }

    /// 40 clients each send a numbered line every 2 ms and check the echoes; the relays are
    /// stopped, written into a handover, read back as another process would and relayed on,
    /// twice (once with splice). Every line comes back once and in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn relays_stopped_handed_over_and_taken_up_lose_and_repeat_nothing() {
        let backend = echo_backend().await;
        let mut relays = Vec::new();
        let mut clients = Vec::new();
        let stop = CancellationToken::new();
        for _ in 0..40 {
            let (client, a, b) = relayed_pair(backend).await;
            let stop = stop.clone();
            relays.push(tokio::spawn(async move {
                relay(a, b, Duration::from_secs(60), Mode::Copy, Resume::default(), &stop).await
            }));
            clients.push(client);
        }
        let done = CancellationToken::new();
        let talkers: Vec<_> = clients
            .into_iter()
            .map(|c| {
                let done = done.clone();
                tokio::spawn(async move {
                    let (mut r, mut w) = c.into_split();
                    let writer = tokio::spawn(async move {
                        let mut n = 0u64;
                        while !done.is_cancelled() {
                            w.write_all(format!("{n:08}\n").as_bytes()).await.unwrap();
                            n += 1;
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        w.shutdown().await.unwrap();
                        n
                    });
                    let mut echoed = Vec::new();
                    r.read_to_end(&mut echoed).await.unwrap();
                    let sent = writer.await.unwrap();
                    (sent, echoed)
                })
            })
            .collect();
        let mut stop = stop;
        for (round, mode) in [Mode::Splice, Mode::Copy].into_iter().enumerate() {
            tokio::time::sleep(Duration::from_millis(100)).await;
            stop.cancel();
            let mut out = wire::Outbox::new().unwrap();
            let mut batch = Vec::new();
            for r in relays.drain(..) {
                match r.await.unwrap() {
                    Outcome::Stopped(s) => batch.push(pair_of(s, "web")),
                    Outcome::Ended(e) => panic!("round {round}: a relay ended: {e:?}"),
                }
            }
            // Two messages: 26 pairs, then 14.
            let rest = batch.split_off(26);
            out.send(batch).unwrap();
            out.send(rest).unwrap();
            let rx = out.finish(3).unwrap();
            stop = CancellationToken::new();
            let (got, tasks) = adopt_all(rx, &stop, mode);
            assert!(got.complete);
            assert_eq!(got.drained, 3);
            relays = tasks;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        done.cancel();
        for t in talkers {
            let (sent, echoed) = t.await.unwrap();
            let want: String = (0..sent).map(|n| format!("{n:08}\n")).collect();
            assert!(sent > 50, "{sent} lines");
            assert_eq!(String::from_utf8(echoed).unwrap(), want, "every line once, in order");
        }
        for r in relays {
            assert!(matches!(r.await.unwrap(), Outcome::Ended(_)), "the last relays end with their connection");
        }
    }

    /// A client that has sent its FIN before the handover: the state says so, the next
    /// process does not read that side again, and the backend's later answer and close still
    /// reach the client.
    #[tokio::test]
    async fn a_half_closed_connection_is_handed_over_as_such() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let backend = l.local_addr().unwrap();
        let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            s.read_to_end(&mut got).await.unwrap();
            wait.await.unwrap();
            s.write_all(b"bye").await.unwrap();
            got
        });
        let (mut client, a, b) = relayed_pair(backend).await;
        let stop = CancellationToken::new();
        let task = {
            let stop = stop.clone();
            tokio::spawn(
                async move { relay(a, b, Duration::from_secs(60), Mode::Copy, Resume::default(), &stop).await },
            )
        };
        client.write_all(b"last words").await.unwrap();
        client.shutdown().await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        stop.cancel();
        let Outcome::Stopped(s) = task.await.unwrap() else { panic!("the backend has not closed yet") };
        let st = s.resume.state;
        assert_eq!(st, RelayState { up_ended: true, down_ended: false, idle_ms: st.idle_ms });
        let mut out = wire::Outbox::new().unwrap();
        out.send(vec![pair_of(s, "web")]).unwrap();
        let (_, tasks) = adopt_all(out.finish(0).unwrap(), &CancellationToken::new(), Mode::Copy);
        go_on.send(()).unwrap();
        let mut rest = Vec::new();
        client.read_to_end(&mut rest).await.unwrap();
        assert_eq!(rest, b"bye");
        assert_eq!(server.await.unwrap(), b"last words", "once, then EOF");
        for t in tasks {
            assert!(matches!(t.await.unwrap(), Outcome::Ended(Relayed { error: None, .. })));
        }
    }

    /// Bad input: another format version, a stream without `begin`, pairs without their
    /// descriptors: refused with the reason, nothing adopted.
    #[test]
    fn a_handover_in_another_format_is_refused_with_the_reason() {
        use nix::sys::socket::{AddressFamily, MsgFlags, SockFlag, SockType, send, socketpair};
        let cases: [(&[u8], &str); 4] = [
            (br#"{"kind":"begin","version":2}"#, "format version 2, this agent reads version 1"),
            (br#"{"kind":"end","pairs":0,"drained":0}"#, "the first message is not `begin`"),
            (b"not json", "unreadable message"),
            (br#"{"kind":"pairs","pairs":[]}"#, "the first message is not `begin`"),
        ];
        for (first, why) in cases {
            let (tx, rx) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
            send(tx.as_raw_fd(), first, MsgFlags::empty()).unwrap();
            drop(tx);
            let e = wire::receive(rx).unwrap_err().to_string();
            assert!(e.contains(why), "{e}");
        }
        let (tx, rx) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC).unwrap();
        send(tx.as_raw_fd(), br#"{"kind":"begin","version":1}"#, MsgFlags::empty()).unwrap();
        let pairs = br#"{"kind":"pairs","pairs":[{"front":"tls","route":"web","relay":{"up_ended":false,"down_ended":false,"idle_ms":0}}]}"#;
        send(tx.as_raw_fd(), pairs, MsgFlags::empty()).unwrap();
        drop(tx);
        let got = wire::receive(rx).unwrap();
        assert!(!got.complete && got.pairs.is_empty());
        let e = got.error.unwrap().to_string();
        assert!(e.contains("1 pairs with 0 descriptors"), "{e}");
    }

    /// A backend that does not read while the client sends 8 MiB (every socket buffer on the
    /// way is set to 128 KiB, so they cannot take it all whatever the host's autotuning
    /// limits): once the client's writes stall, the relay is blocked writing; it is stopped
    /// then, hands over the bytes it holds, and the next relay writes them first; the backend,
    /// reading at last, gets every byte once and in order. Both modes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_relay_blocked_writing_hands_over_the_bytes_it_holds() {
        for mode in [Mode::Copy, Mode::Splice] {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let backend = l.local_addr().unwrap();
            let (go_on, wait) = tokio::sync::oneshot::channel::<()>();
            let small = |s: &TcpStream| {
                let s = socket2::SockRef::from(s);
                s.set_send_buffer_size(128 << 10).unwrap();
                s.set_recv_buffer_size(128 << 10).unwrap();
            };
            let server = tokio::spawn(async move {
                let (mut s, _) = l.accept().await.unwrap();
                small(&s);
                wait.await.unwrap();
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                got
            });
            let (client, a, b) = relayed_pair(backend).await;
            for s in [&client, &a, &b] {
                small(s);
            }
            let stop = CancellationToken::new();
            let task = {
                let stop = stop.clone();
                tokio::spawn(async move { relay(a, b, Duration::from_secs(60), mode, Resume::default(), &stop).await })
            };
            let data: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 24) as u8).collect();
            let (_, mut w) = client.into_split();
            let written = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let writer = {
                let (data, written) = (data.clone(), written.clone());
                tokio::spawn(async move {
                    for chunk in data.chunks(64 << 10) {
                        w.write_all(chunk).await.unwrap();
                        written.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                    w.shutdown().await.unwrap();
                    w
                })
            };
            // Every buffer on the way full: the client's writes stall for three looks in a row
            // (not a fixed wait, which a loaded machine outlasts before the bytes get there).
            let (mut last, mut same) = (0, 0);
            let deadline = std::time::Instant::now() + Duration::from_secs(30);
            while same < 3 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let now = written.load(std::sync::atomic::Ordering::Relaxed);
                assert!(!writer.is_finished(), "{mode:?}: the writer ended after {now} bytes");
                assert!(std::time::Instant::now() < deadline, "{mode:?}: no stall within 30 s ({now} bytes)");
                same = if now == last && now > 0 { same + 1 } else { 0 };
                last = now;
            }
            stop.cancel();
            let Outcome::Stopped(s) = task.await.unwrap() else { panic!("{mode:?}: the relay ended") };
            assert!(!s.resume.to_backend.is_empty(), "{mode:?}: stopped while holding bytes");
            let mut out = wire::Outbox::new().unwrap();
            out.send(vec![pair_of(s, "web")]).unwrap();
            let (got, tasks) = adopt_all(out.finish(0).unwrap(), &CancellationToken::new(), mode);
            assert!(got.complete && got.error.is_none());
            go_on.send(()).unwrap();
            let _w = writer.await.unwrap();
            let received = server.await.unwrap();
            assert_eq!(received.len(), data.len(), "{mode:?}");
            assert!(received == data, "{mode:?}: every byte once, in order");
            drop(tasks);
        }
    }
}
