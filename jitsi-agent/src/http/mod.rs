//! The HTTP front on port 80: reads the request head without answering it, routes by the
//! `Host` header to a `[[http.route]]` and hands the connection to the splitter core (which
//! connects transparently and relays), after replaying the bytes read. It answers itself only:
//! `400` for a malformed head, `421` for a host no route takes, `308` to `https://` on a
//! `redirect_https` route, and the ACME HTTP-01 challenges of the certificates the agent
//! obtains.

pub mod head;
pub mod router;

use std::{sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};
use tracing::{debug, info};

use self::{
    head::{Head, HeadError},
    router::{Decision, Router, response},
};
use crate::{
    acme::challenges::Challenges,
    config::Http,
    splitter::{
        front::FrontKind,
        limits::Caps,
        proxy::{Conn, Forward, Front, Served},
        read::{MAX_READS, READ_ROOM, ReadFailure, read_until},
        stats::{Refusal, Stats},
        table::Tables,
    },
};

/// The HTTP front: the `[http]` routing in force (swapped on reload; none once the section is
/// removed while a listener still drains) and the agent's own ACME challenges.
pub struct HttpFront {
    tables: Tables<Router>,
    challenges: Challenges,
}

impl HttpFront {
    /// A front for a validated `[http]` section, its routes counting into `stats`;
    /// `challenges` are the agent's own ACME tokens.
    pub fn new(settings: Option<Http>, stats: Arc<Stats>, challenges: Challenges) -> Arc<Self> {
        Arc::new(HttpFront { tables: Tables::new(settings, stats), challenges })
    }

    /// Swaps in a new `[http]` section (or none).
    pub fn update(&self, settings: Option<Http>) {
        self.tables.update(settings);
    }
}

/// Reads the request head; returns the bytes read (the head and whatever followed it).
async fn read_head(http: &Http, s: &mut TcpStream) -> Result<(Vec<u8>, Head), (Refusal, String)> {
    let deadline = tokio::time::Instant::now() + http.head_timeout_secs.get();
    let mut buf = Vec::with_capacity(READ_ROOM);
    let verdict = read_until(s, &mut buf, http.max_head_bytes, deadline, <[u8]>::len, |b| {
        match head::examine(b, http.max_head_bytes)? {
            head::Progress::Done(h) => Ok(Some(h)),
            head::Progress::NeedMore => Ok(None),
        }
    })
    .await;
    match verdict {
        Ok(Ok(h)) => Ok((buf, h)),
        Ok(Err(e @ HeadError::TooLarge { .. })) => Err((Refusal::HeadTooLarge, e.to_string())),
        Ok(Err(e)) => Err((Refusal::BadRequest, e.to_string())),
        Err(ReadFailure::Timeout) => {
            Err((Refusal::HeadTimeout, format!("{} bytes in {}", buf.len(), http.head_timeout_secs)))
        }
        Err(ReadFailure::Closed(detail)) => Err((Refusal::ClosedEarly, detail)),
        Err(ReadFailure::Trickled) => {
            Err((Refusal::BadRequest, format!("request head incomplete after {MAX_READS} reads")))
        }
    }
}

/// Writes a response the front gives itself, then closes gracefully: the write side first,
/// then what the client still sends is read and dropped (up to 64 KiB, for up to a second) so
/// that closing with unread bytes does not reset the connection and destroy the response
/// before the client has read it.
async fn answer(client: &mut TcpStream, bytes: &[u8]) {
    if client.write_all(bytes).await.is_err() || client.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 8192];
    let mut left: usize = 64 * 1024;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(1);
    while left > 0 {
        match tokio::time::timeout_at(deadline, client.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => left = left.saturating_sub(n),
            _ => break,
        }
    }
}

impl Front for HttpFront {
    const KIND: FrontKind = FrontKind::Http;

    async fn serve(&self, conn: Conn<'_, '_>) -> Served {
        let Conn { proxy, settings, admission, mut client, peer } = conn;
        let refuse = |reason, route: Option<&str>, detail: &dyn std::fmt::Display| {
            proxy.refuse(Self::KIND, reason, route, peer, detail)
        };
        // The table at accept time routes this connection, whatever a reload does meanwhile.
        let Some(http) = self.tables.current() else {
            return refuse(Refusal::NoHostRoute, None, &"[http] removed");
        };
        let (bytes, head) = match read_head(&http.settings, &mut client).await {
            Ok(x) => x,
            Err((reason, detail)) => {
                let reply = match reason {
                    Refusal::HeadTooLarge => Some(response(431, "Request Header Fields Too Large", None, "")),
                    Refusal::BadRequest => Some(response(400, "Bad Request", None, &format!("{detail}\n"))),
                    _ => None,
                };
                if let Some(r) = reply {
                    answer(&mut client, &r).await;
                }
                return refuse(reason, None, &detail);
            }
        };
        let (idx, whole) = match http.router.decide(&head, &self.challenges) {
            Decision::Route(i) => (i, true),
            Decision::ChallengeOnly(i) => (i, false),
            Decision::Redirect(i, location) => {
                debug!(route = %http.router.routes[i].target.name, client = %peer, %location, "http: redirected");
                answer(&mut client, &response(308, "Permanent Redirect", Some(&location), "")).await;
                return None;
            }
            Decision::Challenge(Some(key_authorization)) => {
                // The agent's own validation: out of the pending pool, which a flood churns.
                admission.unpool();
                info!(client = %peer, host = ?head.host.as_ref().map(ToString::to_string), "acme: answered an HTTP-01 challenge");
                answer(&mut client, &response(200, "OK", None, &key_authorization)).await;
                return None;
            }
            Decision::Challenge(None) => {
                answer(&mut client, &response(404, "Not Found", None, "unknown challenge\n")).await;
                return None;
            }
            Decision::NoRoute => {
                let host = head.host.as_ref().map_or("(none)".into(), ToString::to_string);
                answer(&mut client, &response(421, "Misdirected Request", None, "no site here by that name\n")).await;
                return refuse(Refusal::NoHostRoute, None, &host);
            }
        };
        let mut bytes = bytes;
        let route = &http.router.routes[idx].target;
        if whole {
            if let Err(reason) = admission.relay(&Caps::of(settings)) {
                return refuse(reason, Some(&route.name), &"limit reached");
            }
        } else {
            // Only the validation request: its head (a GET has no body), then the answer. It
            // takes no place in the pools, so a full pool never blocks a certificate.
            bytes.truncate(head.len);
            admission.unpool();
        }
        drop(head);
        let how = if whole { Forward::Relay(Self::KIND) } else { Forward::ChallengeOnly };
        proxy.forward(settings, route, &http.stats[idx], client, peer, bytes, how).await
    }
}
