//! What `stack init` and `stack up` find out about the host before they act: the uplink's own
//! addresses (advertised by the videobridge for LAN participants) and whether port 80 is
//! served for the meet name (the web container's acme.sh needs it at start).

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    time::Duration,
};

use crate::config::{Config, Protocol};

/// The uplink's addresses: `[uplink] addresses`, else the interface's global ones. An
/// interface that cannot be read gives none, with the reason.
pub async fn uplink_addresses(config: &Config) -> (Vec<IpAddr>, Option<String>) {
    if !config.uplink.addresses.is_empty() {
        return (config.uplink.addresses.clone(), None);
    }
    let read = async {
        let h = crate::netlink::connect()?;
        let link = crate::netlink::link_by_name(&h, &config.uplink.interface).await?;
        crate::netlink::global_addresses(&h, link.index).await
    };
    match read.await {
        Ok(a) => (a, None),
        Err(e) => (vec![], Some(format!("the uplink's addresses are not advertised to LAN participants ({e})"))),
    }
}

/// Why `stack up` must not start the web container now, if it must not: with Let's Encrypt on,
/// its init runs `acme.sh --issue` for the meet name over HTTP-01 at start (a CA request when
/// it has no certificate or one is due) and exits 1 on failure
/// (`web/rootfs/etc/s6-overlay/scripts/config` at `stable-11146-2`), so a port 80 that nothing
/// answers makes a restart loop that spends the CA's failed-validation limit.
///
/// Port 80 counts as served when the agent's HTTP front answers a request for the meet name
/// with its redirect (a `308` to `https://<meet name>/`), or when the file steers tcp/80 in the
/// kernel (the operator's own arrangement).
pub fn port_80_refusal(config: &Config) -> Option<String> {
    let stack = config.stack.as_ref()?;
    stack.letsencrypt_email.as_ref()?;
    if config.steering(Protocol::Tcp, 80).is_some() {
        return None;
    }
    let Some(http) = &config.http else {
        return Some("no [http] section serves port 80".into());
    };
    let mut tried = Vec::new();
    for listen in &http.listen {
        let addr = match listen.ip() {
            IpAddr::V4(a) if a.is_unspecified() => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), listen.port()),
            IpAddr::V6(a) if a.is_unspecified() => SocketAddr::new(Ipv6Addr::LOCALHOST.into(), listen.port()),
            _ => *listen,
        };
        match redirect_from(addr, stack.meet_domain.as_str()) {
            Ok(()) => return None,
            Err(e) => tried.push(format!("{addr}: {e}")),
        }
    }
    Some(format!("nothing answers http://{}/ on port 80 ({})", stack.meet_domain, tried.join("; ")))
}

/// Why port 80 did not answer with the agent's redirect.
#[derive(Debug, thiserror::Error)]
enum NoRedirect {
    /// Connecting, writing or reading failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// Something else answers.
    #[error("answered `{0}`, not the agent's redirect")]
    Other(String),
}

fn redirect_from(addr: SocketAddr, meet: &str) -> Result<(), NoRedirect> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {meet}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut head = Vec::new();
    let _ = s.take(4096).read_to_end(&mut head);
    let head = String::from_utf8_lossy(&head);
    let location = format!("location: https://{meet}/");
    if head.starts_with("HTTP/1.1 308") && head.to_ascii_lowercase().contains(&location) {
        Ok(())
    } else {
        Err(NoRedirect::Other(head.lines().next().unwrap_or("").to_owned()))
    }
}
