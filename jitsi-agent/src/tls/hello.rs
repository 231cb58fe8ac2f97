//! Reading a TLS ClientHello from the first bytes of a connection.
//!
//! The hello may arrive split across any number of TCP segments and TLS records
//! (post-quantum key shares make 1.7-2 KB hellos common, and some clients fragment the
//! handshake into several records); [`examine`] is called with everything read so far and
//! says whether it needs more. It never consumes or alters the bytes: the caller replays them
//! to the backend unchanged.

use tls_parser::{
    SNIType, TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions,
    parse_tls_message_handshake,
};

use crate::names::{ServerName, ServerNameError};

pub use crate::config::DEFAULT_MAX_HELLO;

const CONTENT_HANDSHAKE: u8 = 22;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const RECORD_HEADER: usize = 5;
/// RFC 8446 5.1: a TLSPlaintext fragment is at most 2^14 bytes.
const MAX_RECORD: usize = 1 << 14;

/// What the first bytes of a connection are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hello {
    /// A complete ClientHello (`len` bytes of records), with its server name if it has a
    /// valid one.
    Tls {
        /// The validated, lower-cased host name from the server_name extension.
        server_name: Option<ServerName>,
        /// Why a server_name extension that was present is not usable.
        invalid_name: Option<ServerNameError>,
        /// Bytes the hello's records take.
        len: usize,
    },
    /// Not a TLS handshake (plain HTTP, SSLv2-style hello, anything else).
    NotTls,
}

/// Why the bytes cannot be routed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HelloError {
    /// The hello is not complete within the configured maximum.
    #[error("ClientHello larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: usize,
    },
    /// The bytes start like TLS but are not a valid ClientHello.
    #[error("malformed ClientHello: {0}")]
    Malformed(&'static str),
}

/// Progress of reading the hello.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// Read more bytes and call again.
    NeedMore,
    /// Decided.
    Done(Hello),
}

/// Examines the bytes read so far (`buf`, from the start of the connection).
///
/// Only the first `max` bytes are ever looked at, so the verdict does not depend on how the
/// bytes were split into reads: a decision reached on a prefix stands for any longer input.
pub fn examine(buf: &[u8], max: usize) -> Result<Progress, HelloError> {
    let seen = &buf[..buf.len().min(max)];
    let Some(&first) = seen.first() else { return Ok(Progress::NeedMore) };
    if first != CONTENT_HANDSHAKE {
        return Ok(Progress::Done(Hello::NotTls));
    }
    if seen.len() >= 2 && seen[1] != 3 {
        // TLS record versions are 3.x; anything else is not TLS.
        return Ok(Progress::Done(Hello::NotTls));
    }
    // Collect the handshake bytes carried by the records present so far.
    let mut handshake = Vec::new();
    let mut off = 0;
    loop {
        if handshake.first().is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO) {
            return Err(HelloError::Malformed("first handshake message is not a ClientHello"));
        }
        if let Some(total) = complete_len(&handshake) {
            return parse(&handshake[..total], off).map(Progress::Done);
        }
        if handshake.len() >= 4 && 4 + hs_body_len(&handshake) > max {
            return Err(HelloError::TooLarge { max });
        }
        let Some(header) = seen.get(off..off + RECORD_HEADER) else { return need_more(buf, max) };
        if header[0] != CONTENT_HANDSHAKE {
            return Err(HelloError::Malformed("non-handshake record inside the ClientHello"));
        }
        if header[1] != 3 {
            return Err(HelloError::Malformed("bad record version"));
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Err(HelloError::Malformed("bad record length"));
        }
        let Some(body) = seen.get(off + RECORD_HEADER..off + RECORD_HEADER + len) else {
            return need_more(buf, max);
        };
        handshake.extend_from_slice(body);
        off += RECORD_HEADER + len;
    }
}

/// How many bytes [`examine`] (with the same `max`) needs before its verdict can change from
/// `NeedMore`: at most `buf.len()` once the complete records present decide it (the whole
/// first handshake message, one that is not a ClientHello or longer than `max`, a malformed
/// record, not TLS), else the end of the first record or record header still missing.
/// Walking the record headers costs a few comparisons per record, so a hello trickled in many
/// reads is parsed once it is complete, not once per read.
pub fn bytes_needed(buf: &[u8], max: usize) -> usize {
    if buf.first().is_some_and(|&b| b != CONTENT_HANDSHAKE) {
        return 1;
    }
    if buf.get(1).is_some_and(|&v| v != 3) {
        return 2; // not a TLS record version: examine says NotTls now
    }
    let mut off = 0;
    // The first four handshake bytes (type and length), how many of them are here, and how
    // many handshake bytes the complete records hold.
    let mut head = [0u8; 4];
    let mut filled = 0;
    let mut handshake = 0;
    loop {
        let Some(header) = buf.get(off..off + RECORD_HEADER) else { return off + RECORD_HEADER };
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if header[0] != CONTENT_HANDSHAKE || header[1] != 3 || len == 0 || len > MAX_RECORD {
            return off + RECORD_HEADER; // malformed: examine says so now
        }
        let Some(body) = buf.get(off + RECORD_HEADER..off + RECORD_HEADER + len) else {
            return off + RECORD_HEADER + len;
        };
        for &b in body.iter().take(4 - filled) {
            head[filled] = b;
            filled += 1;
        }
        handshake += len;
        off += RECORD_HEADER + len;
        let decided = head[0] != HANDSHAKE_CLIENT_HELLO
            || filled == 4 && (handshake >= 4 + hs_body_len(&head) || 4 + hs_body_len(&head) > max);
        if decided {
            return off;
        }
    }
}

/// Not decided within the bytes seen: more can only help while fewer than `max` were read.
fn need_more(buf: &[u8], max: usize) -> Result<Progress, HelloError> {
    if buf.len() >= max { Err(HelloError::TooLarge { max }) } else { Ok(Progress::NeedMore) }
}

fn hs_body_len(hs: &[u8]) -> usize {
    usize::from(hs[1]) << 16 | usize::from(hs[2]) << 8 | usize::from(hs[3])
}

/// Total length of the first handshake message if all of it is present.
fn complete_len(hs: &[u8]) -> Option<usize> {
    (hs.len() >= 4).then(|| 4 + hs_body_len(hs)).filter(|&total| hs.len() >= total)
}

fn parse(message: &[u8], len: usize) -> Result<Hello, HelloError> {
    let (_, msg) = parse_tls_message_handshake(message).map_err(|_| HelloError::Malformed("unparsable ClientHello"))?;
    let TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)) = msg else {
        return Err(HelloError::Malformed("first handshake message is not a ClientHello"));
    };
    let mut server_name = None;
    let mut invalid_name = None;
    if let Some(ext) = hello.ext {
        let (_, exts) =
            parse_tls_client_hello_extensions(ext).map_err(|_| HelloError::Malformed("unparsable extensions"))?;
        for e in exts {
            if let TlsExtension::SNI(names) = e {
                let host = names.iter().find(|(t, _)| *t == SNIType::HostName).map(|(_, n)| *n);
                match host.map(ServerName::parse) {
                    Some(Ok(n)) => server_name = Some(n),
                    Some(Err(e)) => invalid_name = Some(e),
                    None => {}
                }
            }
        }
    }
    Ok(Hello::Tls { server_name, invalid_name, len })
}

#[cfg(test)]
mod tests;
