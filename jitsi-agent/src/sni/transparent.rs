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

/// Connects to `backend`; with `from = Some(client)`, from the client's address (its port if
/// free, else an ephemeral one).
pub async fn connect(backend: SocketAddr, from: Option<SocketAddr>, mark: u32) -> io::Result<TcpStream> {
    let sock = Socket::new(Domain::for_address(backend), Type::STREAM.nonblocking().cloexec(), Some(Protocol::TCP))?;
    sock.set_tcp_nodelay(true)?;
    if mark != 0 {
        sock.set_mark(mark)?;
    }
    if let Some(client) = from {
        set_transparent(&sock, backend.is_ipv6())?;
        sock.set_reuse_address(true)?;
        if let Err(e) = sock.bind(&SockAddr::from(client)) {
            if e.raw_os_error() != Some(libc::EADDRINUSE) {
                return Err(e);
            }
            sock.bind(&SockAddr::from(SocketAddr::new(client.ip(), 0)))?;
        }
    }
    let std: std::net::TcpStream = sock.into();
    TcpSocket::from_std_stream(std).connect(backend).await
}
