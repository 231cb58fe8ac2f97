//! Backend sockets that connect from the client's own address (IP_TRANSPARENT /
//! IPV6_TRANSPARENT, bound to the client's address and port) with the agent's SO_MARK.

use std::{io, net::SocketAddr, os::fd::AsRawFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};

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

async fn connect_from(backend: SocketAddr, from: Option<SocketAddr>, mark: u32) -> io::Result<TcpStream> {
    let std: std::net::TcpStream = socket(backend, from, mark)?.into();
    TcpSocket::from_std_stream(std).connect(backend).await
}

/// Whether an error says the client's own port cannot be used towards the backend: bound by
/// another socket (`EADDRINUSE` at bind) or the whole 4-tuple taken, typically by a TIME_WAIT
/// of an earlier connection from the same address and port (`EADDRNOTAVAIL` at connect).
fn port_taken(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EADDRINUSE | libc::EADDRNOTAVAIL))
}

/// Connects to `backend`; with `from = Some(client)`, from the client's address, on its port
/// if that is free towards the backend, else on an ephemeral one (then `true` is returned).
pub async fn connect(backend: SocketAddr, from: Option<SocketAddr>, mark: u32) -> io::Result<(TcpStream, bool)> {
    match connect_from(backend, from, mark).await {
        Err(e) if port_taken(&e) && from.is_some_and(|c| c.port() != 0) => {
            let ephemeral = from.map(|c| SocketAddr::new(c.ip(), 0));
            Ok((connect_from(backend, ephemeral, mark).await?, true))
        }
        r => r.map(|s| (s, false)),
    }
}
