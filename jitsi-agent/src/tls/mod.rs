//! The TLS front on 443: reads the ClientHello without terminating TLS, picks a `[[tls.route]]`
//! by server name and hands the connection to the splitter core, which connects to the
//! backend transparently (from the client's own address) and relays.

pub mod hello;
pub mod router;

use std::{sync::Arc, time::Instant};

use tokio::{io::AsyncWriteExt, net::TcpStream};

use self::{
    hello::{Hello, HelloError, Progress, bytes_needed, examine},
    router::{ALERT_UNRECOGNIZED_NAME, Decision, Router},
};
use crate::{
    config::Tls,
    splitter::{
        front::FrontKind,
        limits::Caps,
        proxy::{Conn, Forward, Front, Served},
        read::{MAX_READS, READ_ROOM, ReadFailure, read_until},
        stats::{Refusal, Stats},
        table::Tables,
    },
};

/// The TLS front: the `[tls]` routing in force (swapped on reload).
pub struct TlsFront {
    tables: Tables<Router>,
}

impl TlsFront {
    /// A front for a validated `[tls]` section, its routes counting into `stats`. Without the
    /// section (only `[http]` configured) it has no route: a TLS client that still reaches it
    /// (accepted just before a reload removed `[tls]`) gets an `unrecognized_name` alert.
    pub fn new(settings: Option<Tls>, stats: Arc<Stats>) -> Arc<Self> {
        Arc::new(TlsFront { tables: Tables::new(Some(settings.unwrap_or_default()), stats) })
    }

    /// Swaps in a new `[tls]` section (or none).
    pub fn update(&self, settings: Option<Tls>) {
        self.tables.update(Some(settings.unwrap_or_default()));
    }
}

/// Reads until the hello is complete; returns the bytes read and the verdict.
async fn read_hello(settings: &Tls, s: &mut TcpStream) -> Result<(Vec<u8>, Hello), (Refusal, String)> {
    let deadline = tokio::time::Instant::now() + settings.hello_timeout_secs.get();
    let mut buf = Vec::with_capacity(READ_ROOM);
    let max = settings.max_hello_bytes;
    let verdict = read_until(
        s,
        &mut buf,
        max,
        deadline,
        |b| bytes_needed(b, max),
        |b| match examine(b, max)? {
            Progress::Done(h) => Ok(Some(h)),
            Progress::NeedMore => Ok(None),
        },
    )
    .await;
    match verdict {
        Ok(Ok(h)) => Ok((buf, h)),
        Ok(Err(e @ HelloError::TooLarge { .. })) => Err((Refusal::HelloTooLarge, e.to_string())),
        Ok(Err(e @ HelloError::Malformed(_))) => Err((Refusal::MalformedHello, e.to_string())),
        Err(ReadFailure::Timeout) => {
            Err((Refusal::HelloTimeout, format!("{} bytes in {}", buf.len(), settings.hello_timeout_secs)))
        }
        Err(ReadFailure::Closed(detail)) => Err((Refusal::ClosedEarly, detail)),
        Err(ReadFailure::Trickled) => Err((
            Refusal::MalformedHello,
            format!("ClientHello incomplete after {MAX_READS} reads ({} bytes)", buf.len()),
        )),
    }
}

impl Front for TlsFront {
    const KIND: FrontKind = FrontKind::Tls;

    async fn serve(&self, conn: Conn<'_, '_>) -> Served {
        let Conn { proxy, settings, admission, mut client, peer } = conn;
        let refuse = |reason, route: Option<&str>, detail: &dyn std::fmt::Display| {
            proxy.refuse(Self::KIND, reason, route, peer, detail)
        };
        // The table at accept time routes this connection, whatever a reload does meanwhile.
        let table = self.tables.current().expect("the TLS front always has a table");
        let started = Instant::now();
        let (hello_bytes, hello) = match read_hello(&table.settings, &mut client).await {
            Ok(x) => x,
            Err((reason, detail)) => return refuse(reason, None, &detail),
        };
        proxy.stats.hello_seconds.observe(started.elapsed().as_secs_f64());
        let idx = match table.router.decide(&hello) {
            Decision::Route(i) => i,
            Decision::Alert => {
                let _ = client.write_all(&ALERT_UNRECOGNIZED_NAME).await;
                let name = match &hello {
                    Hello::Tls { server_name: Some(n), .. } => n.to_string(),
                    _ => "(no server name)".into(),
                };
                return refuse(Refusal::NoRoute, None, &name);
            }
            Decision::Close => return refuse(Refusal::NoRoute, None, &"not TLS"),
        };
        drop(hello);
        let route = &table.router.routes[idx];
        if let Err(reason) = admission.relay(&Caps::of(settings)) {
            return refuse(reason, Some(&route.name), &"limit reached");
        }
        let how = Forward::Relay(Self::KIND);
        proxy.forward(settings, route, &table.stats[idx], client, peer, hello_bytes, how).await
    }
}
