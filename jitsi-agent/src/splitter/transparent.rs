//! Backend sockets that connect from the client's own address (IP_TRANSPARENT /
//! IPV6_TRANSPARENT, bound to the client's address and port) with the agent's SO_MARK.

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::{io::AsyncWriteExt, net::TcpStream};

fn set_transparent(sock: &Socket, v6: bool) -> io::Result<()> {
    let (level, name) =
        if v6 { (libc::SOL_IPV6, libc::IPV6_TRANSPARENT) } else { (libc::SOL_IP, libc::IP_TRANSPARENT) };
    let one: libc::c_int = 1;
    // SAFETY: a valid fd and a pointer to a c_int of the given size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn socket(backend: SocketAddr, from: Option<SocketAddr>, mark: u32) -> io::Result<Socket> {
    let sock = Socket::new(Domain::for_address(backend), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    if mark != 0 {
        sock.set_mark(mark)?;
    }
    if let Some(client) = from {
        set_transparent(&sock, backend.is_ipv6())?;
        sock.set_reuse_address(true)?;
        sock.bind(&SockAddr::from(client))?;
    }
    Ok(sock)
}

/// Connects and sends `first`: the write waits for the socket to become writable (the
/// handshake's end) and fails with the handshake's error (refused, unreachable), so no
/// `SO_ERROR` query is needed (`first` empty: one is made).
async fn connect_from(backend: SocketAddr, from: Option<SocketAddr>, mark: u32, first: &[u8]) -> io::Result<TcpStream> {
    let sock = socket(backend, from, mark)?;
    match sock.connect(&SockAddr::from(backend)) {
        Err(e) if e.raw_os_error() != Some(libc::EINPROGRESS) => return Err(e),
        _ => {}
    }
    let mut stream = TcpStream::from_std(sock.into())?;
    if first.is_empty() {
        stream.writable().await?;
        if let Some(e) = stream.take_error()? {
            return Err(e);
        }
    }
    stream.write_all(first).await?;
    Ok(stream)
}

/// Whether an error says the client's own port cannot be used towards the backend: bound by
/// another socket (`EADDRINUSE` at bind) or the whole 4-tuple taken, typically by a TIME_WAIT
/// of an earlier connection from the same address and port (`EADDRNOTAVAIL` at connect).
fn port_taken(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL))
}

/// Connects to `backend` and sends it `first` (the bytes a front has read); with
/// `from = Some(client)`, from the client's address, on its port if that is free towards the
/// backend, else on an ephemeral one (then `true` is returned).
pub async fn connect(
    backend: SocketAddr,
    from: Option<SocketAddr>,
    mark: u32,
    first: &[u8],
) -> io::Result<(TcpStream, bool)> {
    match connect_from(backend, from, mark, first).await {
        Err(e) if port_taken(&e) && from.is_some_and(|c| c.port() != 0) => {
            let ephemeral = from.map(|c| SocketAddr::new(c.ip(), 0));
            Ok((connect_from(backend, ephemeral, mark, first).await?, true))
        }
        r => r.map(|s| (s, false)),
    }
}

#[cfg(test)]
mod tests {
    use tokio::{io::AsyncReadExt, net::TcpListener};

    use super::*;

    async fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    }

    #[tokio::test]
    async fn the_first_bytes_reach_the_backend_with_the_connection() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (s, ephemeral) = connect(l.local_addr().unwrap(), None, 0, b"hello").await.unwrap();
        assert!(!ephemeral);
        let (mut b, from) = l.accept().await.unwrap();
        assert_eq!(from, s.local_addr().unwrap());
        let mut got = [0u8; 5];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
    }

    /// The handshake's failure comes back from the write of the first bytes (or, without
    /// any, from the socket's error): a refused backend is an error, never a stream.
    #[tokio::test]
    async fn a_refused_connection_is_an_error_with_or_without_first_bytes() {
        for first in [&b"hello"[..], b""] {
            let e = connect(closed_port().await, None, 0, first).await.unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e} (first: {} bytes)", first.len());
        }
    }

    /// Binding the client's address takes `IP_TRANSPARENT`, which needs `CAP_NET_ADMIN`:
    /// these run as root (`cargo xtask test`), and are skipped under a plain `cargo test`.
    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        if !root {
            eprintln!("skipped: binding the client's address needs root");
        }
        root
    }

    /// Connects from `from` and checks the fallback: made from another port of the same
    /// address, said so, and the first bytes delivered once.
    async fn falls_back(l: &TcpListener, from: SocketAddr) {
        let (s, ephemeral) = connect(l.local_addr().unwrap(), Some(from), 0, b"xy").await.unwrap();
        assert!(ephemeral, "the client's port was taken; no fallback said");
        let local = s.local_addr().unwrap();
        assert_eq!(local.ip(), from.ip());
        assert_ne!(local.port(), from.port());
        let (mut b, _) = l.accept().await.unwrap();
        drop(s);
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"xy");
    }

    /// The client's own port is bound by another socket (`EADDRINUSE` at bind).
    #[tokio::test]
    async fn a_client_port_bound_elsewhere_falls_back_to_an_ephemeral_one() {
        if !root() {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hold = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        falls_back(&l, hold.local_addr().unwrap()).await;
    }

    /// The whole 4-tuple is taken: a connection from the client's address and port to the
    /// backend exists already (`EADDRNOTAVAIL` at connect, as after a TIME_WAIT).
    #[tokio::test]
    async fn a_taken_four_tuple_falls_back_to_an_ephemeral_one() {
        if !root() {
            return;
        }
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let earlier = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
        earlier.set_reuse_address(true).unwrap();
        earlier.bind(&SockAddr::from("127.0.0.1:0".parse::<SocketAddr>().unwrap())).unwrap();
        earlier.connect(&SockAddr::from(l.local_addr().unwrap())).unwrap();
        let (_earlier_at_backend, _) = l.accept().await.unwrap();
        let from = earlier.local_addr().unwrap().as_socket().unwrap();
        falls_back(&l, from).await;
    }
}
