//! A stand-in for the Jitsi and coturn containers in the Docker test: built into `FROM scratch`
//! images (no registry is reachable), it answers on the ports the real service uses in the way
//! the lab's test servers do, reporting the peer address it sees.
//!
//! `jitsi-standin web|jvb|coturn|prosody|jicofo [ignored args...]`

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, UdpSocket},
    thread,
};

fn udp_echo(port: u16) {
    let sock = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("binding a UDP port");
    thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, peer)) = sock.recv_from(&mut buf) {
            let mut reply = format!("seen {peer} ").into_bytes();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, peer);
        }
    });
}

fn tcp_greet_echo(port: u16) {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("binding a TCP port");
    thread::spawn(move || {
        for s in listener.incoming().flatten() {
            thread::spawn(move || {
                let mut s = s;
                let peer = s.peer_addr().map(|p| p.to_string()).unwrap_or_default();
                if s.write_all(format!("seen {peer}\n").as_bytes()).is_err() {
                    return;
                }
                let mut buf = [0u8; 16384];
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// coturn re-reads its TLS certificate on SIGUSR2: the stand-in says it got one (in
/// `docker logs`), which is what the test checks after the agent renewed the certificate.
extern "C" fn on_sigusr2(_: libc::c_int) {
    const MSG: &[u8] = b"jitsi-standin coturn: SIGUSR2: reloading the TLS certificate\n";
    // SAFETY: write(2) is async-signal-safe; MSG is a static buffer.
    unsafe {
        libc::write(1, MSG.as_ptr().cast(), MSG.len());
    }
}

fn main() {
    let role = std::env::args().nth(1).unwrap_or_default();
    if role == "coturn" {
        // SAFETY: installs a handler that only calls an async-signal-safe function.
        unsafe {
            libc::signal(libc::SIGUSR2, on_sigusr2 as *const () as libc::sighandler_t);
        }
    }
    match role.as_str() {
        "web" => {
            tcp_greet_echo(8000);
            tcp_greet_echo(8443);
        }
        "jvb" => udp_echo(10000),
        "coturn" => {
            udp_echo(3478);
            tcp_greet_echo(5349);
        }
        "prosody" | "jicofo" => {}
        other => {
            eprintln!("jitsi-standin: unknown role `{other}` (web, jvb, coturn, prosody, jicofo)");
            std::process::exit(2);
        }
    }
    println!("jitsi-standin {role}: ready");
    loop {
        thread::park();
    }
}
