//! Relaying bytes both ways after the hello: half-close is passed on (EOF from one side
//! shuts down writing to the other), an error in either direction ends both, and a
//! connection idle in both directions for the idle timeout is closed.

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

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
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.clock.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        self.clock.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::Relaxed)))
    }
}

async fn pump<R, W>(mut r: R, mut w: W, bytes: &AtomicU64, activity: &Activity) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return w.shutdown().await;
        }
        w.write_all(&buf[..n]).await?;
        bytes.fetch_add(n as u64, Ordering::Relaxed);
        activity.touch();
    }
}

/// Relays until both directions are done, an error occurs, or `idle` passes without traffic.
pub async fn relay(client: TcpStream, backend: TcpStream, idle: Duration) -> Relayed {
    let activity = Activity { clock: Instant::now(), last_ms: AtomicU64::new(0) };
    let (up_bytes, down_bytes) = (AtomicU64::new(0), AtomicU64::new(0));
    let (cr, cw) = client.into_split();
    let (br, bw) = backend.into_split();
    let up = pump(cr, bw, &up_bytes, &activity);
    let down = pump(br, cw, &down_bytes, &activity);
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
