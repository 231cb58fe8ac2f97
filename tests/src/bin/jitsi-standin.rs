//! A stand-in for the Jitsi containers in the Docker test: built into `FROM scratch` images (no
//! registry is reachable), it keeps the start-up contract of docker-jitsi-meet's images at the
//! pinned tag (`stable-11146-2`) and answers on the ports the real service uses in the way the
//! lab's test servers do, reporting the peer address it sees.
//!
//! The contract, each point from upstream's files at that tag:
//! - runs as uid 1000 (`base/Dockerfile`: `USER s6`, the first user `adduser` makes), and
//!   prosody's user is also in group `prosody` (`prosody/Dockerfile`: `usermod -a -G
//!   prosody,sasl s6`): an explicit `user:` in Compose that drops it fails here;
//! - the root is read-only and s6-overlay keeps its state in `/run` (`base/Dockerfile`:
//!   `S6_READ_ONLY_ROOT=1`, s6-overlay v3.2.3.0): its setuid-root pre-init creates `/run/s6`
//!   and hands `/run` to the user, which fails with `EROFS` unless `/run` is a tmpfs; then each
//!   service's init renders its config into `/run/<service>`
//!   (`*/rootfs/etc/s6-overlay/scripts/config`) and writes to `/tmp`. The stand-in is installed
//!   setuid root in its image to do the same, and drops root before anything else;
//! - `/config` is read (copied into `/run/<service>/config`), and jvb, jicofo and prosody exit
//!   when their service passwords are empty;
//! - stricter than upstream, for the test only: `/tmp` must be writable (upstream's Compose
//!   file gives it a tmpfs) and prosody's user in a group `prosody` of gid 101 (the image's own
//!   gid is not known here);
//! - web checks `/storage` writable (`check-writable /storage`), prosody `/var/lib/prosody`
//!   and `/var/lib/prosody/data` (`base/rootfs/usr/bin/check-writable`: a real write probe);
//! - the same ports: web 8000 and 8443, prosody 5222/5269/5347/5280, jicofo 8888, jvb
//!   10000/udp and 8080;
//! - `/usr/local/bin/healthcheck.sh` (prosody, jicofo, jvb; web has none) does
//!   `curl --fail-with-body http://127.0.0.1:<port>/<health path>`: this binary, run under that
//!   name, does the same request.
//!
//! `jitsi-standin web|jvb|coturn|prosody|jicofo [ignored args...]`, or as `healthcheck.sh`.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::Path,
    thread,
    time::Duration,
};

/// The uid the real images run as.
const JITSI_UID: u32 = 1000;
/// The group prosody's user must be in (the stand-in image's `/etc/group` defines it).
const PROSODY_GID: u32 = 101;

fn fatal(msg: &str) -> ! {
    println!("FATAL ERROR: {msg}");
    std::process::exit(1);
}

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

/// A health endpoint: `200 OK` on any request, as the services' `/health` and
/// `/about/health` answer when up.
fn http_health(port: u16) {
    let listener = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port))).expect("binding a TCP port");
    thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok");
        }
    });
}

/// `healthcheck.sh`: the request upstream's script makes with curl, exit 0 on a 200.
fn healthcheck(role: &str) -> ! {
    let (port, path) = match role {
        "prosody" => (5280, "/health"),
        "jicofo" => (8888, "/about/health"),
        "jvb" => (8080, "/about/health"),
        other => fatal(&format!("no healthcheck for `{other}`")),
    };
    let ok = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), Duration::from_secs(2))
        .and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())?;
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf)?;
            Ok(buf[..n].starts_with(b"HTTP/1.1 200"))
        })
        .unwrap_or(false);
    std::process::exit(if ok { 0 } else { 1 })
}

/// `check-writable`: a real write probe, like upstream's script.
fn check_writable(dir: &str, hint: &str) {
    if !Path::new(dir).is_dir() {
        fatal(&format!("required directory '{dir}' is missing. It maps to a host volume ({hint})."));
    }
    let probe = format!("{dir}/.docker-jitsi-meet-write-test.{}", std::process::id());
    if std::fs::File::create(&probe).is_err() {
        fatal(&format!("directory '{dir}' is not writable by the container user (uid {JITSI_UID}) ({hint})."));
    }
    let _ = std::fs::remove_file(&probe);
}

/// s6-overlay's setuid pre-init: as root, `/run/s6` created and `/run` given to the user
/// (impossible on a read-only root), then root dropped for good.
fn preinit() {
    // SAFETY: plain id system calls.
    let (uid, gid, euid) = unsafe { (libc::getuid(), libc::getgid(), libc::geteuid()) };
    if euid != 0 {
        fatal("s6-overlay-suexec: unable to gain root privileges (is the suid bit set?)");
    }
    // s6-overlay's preinit: /init crashes when /run is mounted noexec.
    // SAFETY: statvfs with a NUL-terminated path and an out-struct.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c"/run".as_ptr(), &mut st) } == 0 && st.f_flag & libc::ST_NOEXEC != 0 {
        fatal("s6-overlay: /run is mounted noexec: /init cannot run");
    }
    if let Err(e) = std::fs::create_dir_all("/run/s6") {
        fatal(&format!("s6-overlay: unable to mkdir /run/s6: {e} (the root is read-only: /run must be a tmpfs)"));
    }
    if let Err(e) = std::os::unix::fs::chown("/run", Some(uid), Some(gid)) {
        fatal(&format!("s6-overlay: unable to chown /run: {e}"));
    }
    // SAFETY: as root, setgid/setuid to the real ids drop every privilege.
    if unsafe { libc::setgid(gid) } != 0 || unsafe { libc::setuid(uid) } != 0 {
        fatal("s6-overlay: unable to drop root");
    }
}

/// What every image's init does before its service starts.
fn init(role: &str) {
    preinit();
    // SAFETY: getuid has no preconditions.
    let uid = unsafe { libc::getuid() };
    if uid != JITSI_UID {
        fatal(&format!("running as uid {uid}; the image runs as uid {JITSI_UID}"));
    }
    // The service's config script.
    let dir = format!("/run/{role}/config");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        fatal(&format!("unable to mkdir {dir}: {e}"));
    }
    if let Err(e) = std::fs::write(format!("/tmp/.{role}-init"), b"") {
        fatal(&format!("/tmp is not writable: {e} (the root is read-only: /tmp must be a tmpfs)"));
    }
    if let Err(e) = std::fs::read_dir("/config") {
        fatal(&format!("cannot read /config: {e}"));
    }
    // jvb/, jicofo/ and prosody/rootfs/etc/s6-overlay/scripts/config: the service account's
    // password must be set.
    let required: &[&str] = match role {
        "jvb" => &["JVB_AUTH_PASSWORD"],
        "jicofo" => &["JICOFO_AUTH_PASSWORD"],
        "prosody" => &["JICOFO_AUTH_PASSWORD", "JVB_AUTH_PASSWORD"],
        _ => &[],
    };
    for name in required {
        if std::env::var(name).unwrap_or_default().is_empty() {
            fatal(&format!("{name} must be set"));
        }
    }
    match role {
        "web" => check_writable("/storage", "${CONFIG}/storage/web"),
        "prosody" => {
            let mut groups = [0 as libc::gid_t; 64];
            // SAFETY: the buffer holds 64 entries and we pass that size.
            let n = unsafe { libc::getgroups(64, groups.as_mut_ptr()) };
            if n < 0 || !groups[..n as usize].contains(&PROSODY_GID) {
                fatal(&format!("uid {uid} is not in group prosody ({PROSODY_GID}): an explicit `user:` dropped it"));
            }
            check_writable("/var/lib/prosody", "${CONFIG}/storage/prosody");
            let _ = std::fs::create_dir_all("/var/lib/prosody/data");
            check_writable("/var/lib/prosody/data", "${CONFIG}/storage/prosody");
        }
        _ => {}
    }
}

/// coturn re-reads its TLS certificate on SIGUSR2: the stand-in says it got one (in
/// `docker logs`).
extern "C" fn on_sigusr2(_: libc::c_int) {
    const MSG: &[u8] = b"jitsi-standin coturn: SIGUSR2: reloading the TLS certificate\n";
    // SAFETY: write(2) is async-signal-safe; MSG is a static buffer.
    unsafe {
        libc::write(1, MSG.as_ptr().cast(), MSG.len());
    }
}

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    let role = std::env::args().nth(1).unwrap_or_default();
    if role == "image-setup" {
        // Run once at image build time, as root (the build context carries neither the setuid
        // nor the sticky bit): the stand-in setuid root like s6-overlay-suexec, and `/run`
        // (0755) and `/tmp` (1777) as the images' Debian base has them (a tmpfs mounted over an
        // existing directory takes that directory's mode when the container is restarted).
        use std::os::unix::fs::PermissionsExt as _;
        for (path, mode) in [("/standin", 0o4755), ("/run", 0o755), ("/tmp", 0o1777)] {
            if path != "/standin" {
                std::fs::create_dir_all(path).expect("mkdir");
            }
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
        }
        return;
    }
    if argv0.ends_with("healthcheck.sh") {
        // The image's role is in its environment (set by the stand-in image).
        healthcheck(&std::env::var("STANDIN_ROLE").unwrap_or_default());
    }
    match role.as_str() {
        "web" => {
            init("web");
            tcp_greet_echo(8000);
            tcp_greet_echo(8443);
        }
        "jvb" => {
            init("jvb");
            // The browser test puts its WebRTC peer in this container's namespace instead.
            if !Path::new("/config/standin-media-off").exists() {
                udp_echo(10000);
            }
            http_health(8080);
        }
        "prosody" => {
            init("prosody");
            for port in [5222, 5269, 5347] {
                tcp_greet_echo(port);
            }
            http_health(5280);
        }
        "jicofo" => {
            init("jicofo");
            http_health(8888);
        }
        "coturn" => {
            // SAFETY: installs a handler that only calls an async-signal-safe function.
            unsafe {
                libc::signal(libc::SIGUSR2, on_sigusr2 as *const () as libc::sighandler_t);
            }
            udp_echo(3478);
            tcp_greet_echo(5349);
        }
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
