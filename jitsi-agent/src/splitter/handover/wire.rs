//! The handover's messages: JSON in a Unix `SOCK_SEQPACKET` socket pair, each batch of pairs
//! with its sockets attached (`SCM_RIGHTS`, two descriptors per pair, at most
//! [`PAIRS_PER_MESSAGE`] pairs per message), between a `begin` naming the format's version and
//! an `end` with the totals. Bytes a relay read and had not written follow a batch's JSON
//! after a NUL, in pair order (the JSON gives each pair's lengths); a batch stays within
//! [`MAX_MESSAGE`]. A connected pair has no queue-length limit, only the sender's buffer, which
//! is raised (`SO_SNDBUFFORCE`) and never waited on: a send that would block fails, and the
//! pairs not sent stay with the old process.

use std::{
    io::{IoSlice, IoSliceMut},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd},
};

use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg, sendmsg, setsockopt,
    socketpair, sockopt,
};
use serde::{Deserialize, Serialize};

use super::{Error, Pair, PairState, Received};
use crate::splitter::relay::{RelayState, Resume};

/// The format this build writes and reads.
pub const VERSION: u32 = 1;

/// Pairs per message: two descriptors each, within the kernel's 253 per message (`SCM_MAX_FD`).
pub const PAIRS_PER_MESSAGE: usize = 126;

/// The most descriptors one message carries.
const MAX_FDS: usize = 2 * PAIRS_PER_MESSAGE;

/// The largest message: one pair with what a relay can hold unwritten in both directions (a
/// splice pipe each, at most 1 MiB; 64 KiB in copy mode), or the JSON of 126 pairs (route
/// names are at most 23 bytes: about 20 KiB). A message above the socket's buffer fails, and
/// the pairs not yet sent stay with the old process.
pub const MAX_MESSAGE: usize = 2 * crate::splitter::splice::PIPE_SIZE as usize + 64 * 1024;

/// The sender's buffer: room for every message of 20,000 connections (two fronts at the
/// default limit) several times over; a cap, not an allocation.
const SEND_BUFFER: usize = 64 << 20;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum Message {
    Begin { version: u32 },
    Pairs { pairs: Vec<Entry> },
    End { pairs: u64, drained: u64 },
}

/// One pair in a `pairs` message.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    #[serde(flatten)]
    state: PairState,
    relay: RelayState,
    /// Unwritten bytes after the JSON, client -> backend then backend -> client.
    #[serde(default)]
    to_backend: usize,
    #[serde(default)]
    to_client: usize,
}

/// Bytes a batch takes in a message besides its JSON.
pub fn payload(p: &Pair) -> usize {
    p.resume.to_backend.len() + p.resume.to_client.len() + 160
}

fn nix_io(what: &'static str) -> impl FnOnce(nix::Error) -> Error {
    move |e| Error::Io { what, source: e.into() }
}

/// The sending end of a handover being written.
#[derive(Debug)]
pub struct Outbox {
    tx: OwnedFd,
    rx: OwnedFd,
    sent: u64,
}

impl Outbox {
    /// A new socket pair, with the `begin` message written.
    pub fn new() -> Result<Self, Error> {
        let (tx, rx) = socketpair(AddressFamily::Unix, SockType::SeqPacket, None, SockFlag::SOCK_CLOEXEC)
            .map_err(nix_io("creating the socket pair"))?;
        // Without CAP_NET_ADMIN the default buffer stays: the pairs that do not fit stay with
        // the old process and drain there.
        let _ = setsockopt(&tx, sockopt::SndBufForce, &SEND_BUFFER);
        let me = Outbox { tx, rx, sent: 0 };
        me.write(&Message::Begin { version: VERSION }, &[], &[])?;
        Ok(me)
    }

    fn write(&self, m: &Message, fds: &[RawFd], tail: &[&[u8]]) -> Result<(), Error> {
        let mut body = serde_json::to_vec(m).map_err(|e| Error::Format(e.to_string()))?;
        if !tail.is_empty() {
            body.push(0);
            for t in tail {
                body.extend_from_slice(t);
            }
        }
        if body.len() > MAX_MESSAGE {
            return Err(Error::Format(format!("a message of {} bytes (at most {MAX_MESSAGE})", body.len())));
        }
        let rights = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
        sendmsg::<()>(self.tx.as_raw_fd(), &[IoSlice::new(&body)], cmsgs, MsgFlags::MSG_DONTWAIT, None)
            .map_err(nix_io("sending a message"))?;
        Ok(())
    }

    /// Writes `pairs` (at most [`PAIRS_PER_MESSAGE`], their [`payload`]s within
    /// [`MAX_MESSAGE`]); on success the descriptors are in the socket's queue and this
    /// process's copies are closed. On failure the pairs come back.
    pub fn send(&mut self, pairs: Vec<Pair>) -> Result<(), (Error, Vec<Pair>)> {
        assert!(pairs.len() <= PAIRS_PER_MESSAGE, "at most {PAIRS_PER_MESSAGE} pairs per message");
        let fds: Vec<RawFd> = pairs.iter().flat_map(|p| [p.client.as_raw_fd(), p.backend.as_raw_fd()]).collect();
        let entries = pairs
            .iter()
            .map(|p| Entry {
                state: p.state.clone(),
                relay: p.resume.state,
                to_backend: p.resume.to_backend.len(),
                to_client: p.resume.to_client.len(),
            })
            .collect();
        let tail: Vec<&[u8]> =
            pairs.iter().flat_map(|p| [p.resume.to_backend.as_slice(), p.resume.to_client.as_slice()]).collect();
        let tail = if tail.iter().all(|t| t.is_empty()) { Vec::new() } else { tail };
        match self.write(&Message::Pairs { pairs: entries }, &fds, &tail) {
            Ok(()) => {
                self.sent += pairs.len() as u64;
                Ok(())
            }
            Err(e) => Err((e, pairs)),
        }
    }

    /// Pairs written so far.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// Writes the `end` message and returns the receiving end (to be stored; the sending end
    /// is closed here, so the reader sees the end of the stream after the last message).
    pub fn finish(self, drained: u64) -> Result<OwnedFd, (Error, OwnedFd)> {
        match self.write(&Message::End { pairs: self.sent, drained }, &[], &[]) {
            Ok(()) => Ok(self.rx),
            Err(e) => Err((e, self.rx)),
        }
    }

    /// Gives up: the receiving end, to read back what was written ([`receive`]).
    pub fn abandon(self) -> OwnedFd {
        self.rx
    }
}

/// One message as read: the JSON, the bytes after it, the descriptors.
type ReadMessage = (Message, Vec<u8>, Vec<OwnedFd>);

/// Takes ownership of descriptors received with a message.
fn owned(fds: Vec<RawFd>) -> Vec<OwnedFd> {
    // SAFETY: SCM_RIGHTS installed these descriptors in this process for this call alone.
    fds.into_iter().map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }).collect()
}

/// Reads one message, its bytes after the JSON and its descriptors; `None` at the end of the
/// stream.
fn read(rx: &impl AsFd, body: &mut Vec<u8>) -> Result<Option<ReadMessage>, Error> {
    body.resize(MAX_MESSAGE, 0);
    let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
    let (bytes, flags, fds) = {
        let mut iov = [IoSliceMut::new(body)];
        let msg = recvmsg::<()>(
            rx.as_fd().as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
        );
        let msg = match msg {
            // The old process closed its end: every message has been read. (EAGAIN: someone
            // still holds the sending end; nothing more is coming now either.)
            Err(nix::Error::EAGAIN) => return Ok(None),
            Err(e) => return Err(nix_io("reading a message")(e)),
            Ok(m) => m,
        };
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(nix_io("reading a message's descriptors"))? {
            if let ControlMessageOwned::ScmRights(r) = c {
                fds.extend(owned(r));
            }
        }
        (msg.bytes, msg.flags, fds)
    };
    if bytes == 0 {
        return Ok(None);
    }
    if flags.intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC) {
        return Err(Error::Format("a message or its descriptors were truncated".into()));
    }
    let body = &body[..bytes];
    // JSON never holds a raw NUL (serde_json escapes control characters).
    let (json, tail) = match body.iter().position(|b| *b == 0) {
        Some(at) => (&body[..at], body[at + 1..].to_vec()),
        None => (body, Vec::new()),
    };
    let m = serde_json::from_slice(json).map_err(|e| Error::Format(e.to_string()))?;
    Ok(Some((m, tail, fds)))
}

/// Reads a whole handover from `rx` (the stored receiving end). `Err` when nothing can be
/// taken (no `begin`, another version); a message that cannot be read after that ends the
/// reading, and what arrived before it is returned with `complete` false and the error.
pub fn receive(rx: OwnedFd) -> Result<Received, Error> {
    let mut body = Vec::new();
    match read(&rx, &mut body)? {
        Some((Message::Begin { version }, ..)) if version == VERSION => {}
        Some((Message::Begin { version }, ..)) => return Err(Error::Version { found: version, expected: VERSION }),
        Some(_) => return Err(Error::Format("the first message is not `begin`".into())),
        None => return Err(Error::Format("empty".into())),
    }
    let mut got = Received::default();
    if let Err(e) = read_pairs(&rx, &mut body, &mut got) {
        got.error = Some(e);
    }
    Ok(got)
}

/// The messages after `begin`, into `got`.
fn read_pairs(rx: &OwnedFd, body: &mut Vec<u8>, got: &mut Received) -> Result<(), Error> {
    while let Some((m, tail, fds)) = read(rx, body)? {
        match m {
            Message::Pairs { pairs } => {
                if fds.len() != 2 * pairs.len() {
                    return Err(Error::Format(format!("{} pairs with {} descriptors", pairs.len(), fds.len())));
                }
                let wanted: usize = pairs.iter().map(|e| e.to_backend + e.to_client).sum();
                if wanted != tail.len() {
                    return Err(Error::Format(format!("{wanted} unwritten bytes announced, {} sent", tail.len())));
                }
                let (mut fds, mut tail) = (fds.into_iter(), tail.as_slice());
                let mut take = |n: usize| {
                    let (head, rest) = tail.split_at(n);
                    tail = rest;
                    head.to_vec()
                };
                for e in pairs {
                    let (Some(client), Some(backend)) = (fds.next(), fds.next()) else { unreachable!("counted") };
                    let resume =
                        Resume { state: e.relay, to_backend: take(e.to_backend), to_client: take(e.to_client) };
                    got.pairs.push(Pair { client, backend, state: e.state, resume });
                }
            }
            Message::End { pairs, drained } => {
                if pairs != got.pairs.len() as u64 {
                    return Err(Error::Format(format!("end says {pairs} pairs, {} arrived", got.pairs.len())));
                }
                got.drained = drained;
                got.complete = true;
                return Ok(());
            }
            Message::Begin { .. } => return Err(Error::Format("a second `begin`".into())),
        }
    }
    Ok(())
}
