//! Listening sockets: taken over from the service manager (systemd socket activation,
//! `LISTEN_FDS`) when it holds them, bound here otherwise.
//!
//! A socket the service manager holds outlives the agent: while the agent restarts, new
//! connections wait in its backlog instead of being refused, and the new agent accepts them.
//! The descriptor a previous agent left in the file descriptor store for the handover of its
//! established connections arrives the same way, named `handover` (see `crate::splitter::handover`).

use std::{
    collections::HashMap,
    net::SocketAddr,
    os::fd::{FromRawFd, OwnedFd, RawFd},
    sync::Mutex,
};

use socket2::{Domain, Socket, Type};
use tokio::net::TcpListener;
use tracing::{info, warn};

/// Backlog of sockets bound by the agent itself.
const BACKLOG: i32 = 1024;

/// Sockets inherited from the service manager, by local address.
#[derive(Debug, Default)]
pub struct Listeners {
    inherited: Mutex<HashMap<SocketAddr, std::net::TcpListener>>,
    handover: Mutex<Option<OwnedFd>>,
}

impl Listeners {
    /// Takes the listening TCP sockets passed by the service manager.
    ///
    /// # Safety
    /// Unsets `LISTEN_PID`/`LISTEN_FDS` (so children do not inherit them): call it before any
    /// other thread exists, like [`std::env::remove_var`].
    pub unsafe fn from_env() -> Self {
        // SAFETY: the caller guarantees no other thread runs.
        let fds: Vec<(RawFd, String)> = match unsafe { sd_notify::listen_fds_with_names_and_unset_env() } {
            Ok(fds) => fds.collect(),
            Err(e) => {
                warn!(error = %e, "ignoring the sockets passed by the service manager (LISTEN_FDS)");
                Vec::new()
            }
        };
        let mut inherited = HashMap::new();
        let mut handover = None;
        for (fd, name) in fds {
            if name == crate::splitter::handover::systemd::FD_NAME {
                info!(fd, "a previous agent handed over its connections");
                // SAFETY: as below; a second one replaces (and closes) the first.
                handover = Some(unsafe { OwnedFd::from_raw_fd(fd) });
                continue;
            }
            // SAFETY: LISTEN_FDS hands these descriptors to this process, each exactly once.
            let sock = unsafe { Socket::from_raw_fd(fd) };
            match (sock.r#type(), sock.is_listener(), sock.local_addr().ok().and_then(|a| a.as_socket())) {
                (Ok(Type::STREAM), Ok(true), Some(addr)) => {
                    let _ = sock.set_nonblocking(true);
                    info!(%addr, fd, "using the listening socket passed by the service manager");
                    inherited.insert(addr, sock.into());
                }
                _ => warn!(fd, "ignoring a passed descriptor that is not a listening TCP socket"),
            }
        }
        Listeners { inherited: Mutex::new(inherited), handover: Mutex::new(handover) }
    }

    /// The handover socket a previous agent left, once.
    pub fn take_handover(&self) -> Option<OwnedFd> {
        self.handover.lock().expect("listeners lock").take()
    }

    /// A listener on `addr`: a copy of the inherited socket for it (which stays here, to be
    /// handed out again on a reload), else a socket bound now. IPv6 sockets are IPv6-only, so
    /// `0.0.0.0:443` and `[::]:443` coexist. Either way `TCP_NODELAY` is set on the listener:
    /// Linux copies it to every connection accepted from it, which saves a `setsockopt` per
    /// connection.
    pub fn tcp(&self, addr: SocketAddr) -> std::io::Result<TcpListener> {
        if let Some(l) = self.inherited.lock().expect("listeners lock").get(&addr) {
            let l = l.try_clone()?;
            socket2::SockRef::from(&l).set_tcp_nodelay(true)?;
            return TcpListener::from_std(l);
        }
        let sock = Socket::new(Domain::for_address(addr), Type::STREAM.cloexec(), None)?;
        sock.set_reuse_address(true)?;
        sock.set_tcp_nodelay(true)?;
        if addr.is_ipv6() {
            sock.set_only_v6(true)?;
        }
        sock.set_nonblocking(true)?;
        sock.bind(&addr.into())?;
        sock.listen(BACKLOG)?;
        TcpListener::from_std(sock.into())
    }

    /// Whether `addr` is held by the service manager.
    pub fn is_inherited(&self, addr: &SocketAddr) -> bool {
        self.inherited.lock().expect("listeners lock").contains_key(addr)
    }

    /// Inherited sockets no configured address uses (logged: a `.socket` unit out of step
    /// with the configuration).
    pub fn unused(&self, used: &[SocketAddr]) -> Vec<SocketAddr> {
        self.inherited.lock().expect("listeners lock").keys().filter(|a| !used.contains(a)).copied().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the splitter relies on instead of a `setsockopt` per connection: a connection
    /// accepted from the listener has `TCP_NODELAY`, on a socket bound here and on one passed
    /// by the service manager (bound without the option).
    #[tokio::test]
    async fn accepted_connections_have_nodelay() {
        let passed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let passed_addr = passed.local_addr().unwrap();
        passed.set_nonblocking(true).unwrap();
        let listeners = Listeners::default();
        listeners.inherited.lock().unwrap().insert(passed_addr, passed);
        for addr in [passed_addr, "127.0.0.1:0".parse().unwrap()] {
            let l = listeners.tcp(addr).unwrap();
            let _c = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
            let (a, _) = l.accept().await.unwrap();
            assert!(a.nodelay().unwrap(), "accepted on {addr} without TCP_NODELAY");
        }
    }
}
