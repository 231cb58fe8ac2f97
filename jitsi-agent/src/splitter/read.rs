//! Reading the first bytes of a connection (a ClientHello, a request head) under a deadline
//! and a bound on reads, for either front.

use tokio::{io::AsyncReadExt, net::TcpStream};

/// Reads at most this many times for one hello or request head: real clients send it in one
/// to a few segments; a client trickling it in more is refused, so it costs a bounded number
/// of wake-ups and parses.
pub const MAX_READS: usize = 64;

/// The least room made for a read: a whole ClientHello of today's browsers (about 2 KB with a
/// post-quantum key share) or a request head usually arrives in one read.
pub const READ_ROOM: usize = 4096;

/// Why reading stopped without a verdict.
pub enum ReadFailure {
    /// The deadline passed.
    Timeout,
    /// The client closed or failed.
    Closed(String),
    /// More than [`MAX_READS`] reads.
    Trickled,
}

/// Reads from `s` into `buf` until `examine` has a verdict, at most [`MAX_READS`] times and
/// about `max + 1` bytes, before `deadline`. `examine` runs only once `needed` bytes are there
/// (or `max`): the bytes are read into the buffer's spare room, never zero-filled first.
pub async fn read_until<T, E>(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    max: usize,
    deadline: tokio::time::Instant,
    needed: impl Fn(&[u8]) -> usize,
    examine: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Result<T, E>, ReadFailure> {
    for _ in 0..MAX_READS {
        // Room for what the bytes so far are known to need (the rest of a TLS record), at
        // least READ_ROOM: a connection's buffer grows with its hello or head from 4 KiB,
        // instead of taking 16 KiB for every one.
        let left = (max + 1).saturating_sub(buf.len());
        let want = needed(buf).saturating_sub(buf.len()).max(READ_ROOM).min(left);
        buf.reserve(want);
        let read = tokio::time::timeout_at(deadline, s.read_buf(buf)).await;
        match read {
            Err(_) => return Err(ReadFailure::Timeout),
            Ok(Ok(0)) => return Err(ReadFailure::Closed(format!("after {} bytes", buf.len()))),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(ReadFailure::Closed(e.to_string())),
        }
        if buf.len() >= needed(buf).min(max) {
            match examine(buf) {
                Ok(Some(v)) => return Ok(Ok(v)),
                Ok(None) => {}
                Err(e) => return Ok(Err(e)),
            }
        }
    }
    Err(ReadFailure::Trickled)
}
