//! With `[stack]`, the rules that wire it need not be written out: the videobridge's and
//! coturn's UDP ports (coturn's relay range included), the TLS routes for the meet and TURN
//! names, port 80's Host route for the meet name, and (with `letsencrypt_email`, or an `[acme]`
//! section without names) the TURN name's certificate. Rules and routes the file defines itself
//! (by name, or for the same protocol and ports, or the same server name) win.

use crate::{
    config::{Acme, CertName, Config, Http, HttpRoute, OneOrMany, PortRange, Protocol, SteerRule, Tls, TlsRoute},
    names::{Pattern, ServerName},
};

/// The implied rule for coturn's relay ports (`[stack] relay_ports`).
pub const TURN_RELAY: &str = "turn-relay";

fn steer(name: &str, protocol: Protocol, port: PortRange, container: &str, container_port: u16) -> SteerRule {
    SteerRule {
        name: name.into(),
        protocol,
        port,
        backend: OneOrMany::default(),
        container: Some(container.into()),
        container_port: Some(container_port),
    }
}

fn route(name: &str, server_name: &ServerName, container: &str, port: u16) -> TlsRoute {
    TlsRoute {
        name: name.into(),
        server_names: vec![Pattern::Exact(server_name.clone())],
        backend: OneOrMany::default(),
        container: Some(container.into()),
        container_port: Some(port),
        transparent: true,
    }
}

/// `config` plus the rules `[stack]` implies (unchanged without `[stack]`).
pub fn add_implied(mut config: Config) -> Config {
    let Some(stack) = config.stack.clone() else { return config };
    // The containers' ports: jvb's media port (JVB_PORT, default 10000: jvb/rootfs/defaults/
    // jvb.conf at docker-jitsi-meet stable-11146-2), web's 8000 and 8443 (web/Dockerfile
    // `EXPOSE 8000 8443`), coturn's 3478 and 5349 (the listening ports `stack init` writes,
    // coturn's defaults: `EXPOSE 3478 3478/udp 5349 5349/udp` in docker/coturn/debian/Dockerfile
    // at docker/4.17.0-r0).
    // coturn's relay ports, 1:1: coturn announces a relay on the public address with the port
    // it has in the container (`map_addr_from_private_to_public` keeps the port:
    // src/client/ns_turn_ioaddr.c at 4.17.0), so that a peer reaches a participant's relay.
    let relay = stack.relay_ports;
    let implied = vec![
        steer("jvb", Protocol::Udp, PortRange::one(10000), "jvb", 10000),
        steer("turn", Protocol::Udp, PortRange::one(3478), "coturn", 3478),
        steer(TURN_RELAY, Protocol::Udp, relay, "coturn", relay.min),
    ];
    for r in implied {
        // Replaced by a rule of the same name or the very same ports; a rule that only overlaps
        // is kept beside it, and validation refuses the overlap (never a silent half).
        let taken = config.steer.iter().any(|s| s.name == r.name || (s.protocol == r.protocol && s.port == r.port));
        if !taken {
            config.steer.push(r);
        }
    }
    let tls = config.tls.get_or_insert_with(Tls::default);
    for r in [route("web", &stack.meet_domain, "web", 8443), route("turn", &stack.turn_domain, "coturn", 5349)] {
        let taken =
            tls.routes.iter().any(|s| s.name == r.name || s.server_names.iter().any(|n| *n == r.server_names[0]));
        if !taken {
            tls.routes.push(r);
        }
    }
    if tls.default.is_none() && tls.routes.iter().any(|r| r.name == "web") {
        tls.default = Some("web".into());
    }
    // Port 80 through the HTTP front: the meet name to the web container's plain HTTP,
    // where its acme.sh answers the meet name's challenges; every other request to https://.
    // (Unless the file steers tcp/80 in the kernel itself.)
    if config.steering(Protocol::Tcp, 80).is_none() {
        let http = config.http.get_or_insert_with(Http::default);
        let meet = Pattern::Exact(stack.meet_domain.clone());
        let taken = http.routes.iter().any(|r| r.name == "web-http" || r.host_names.contains(&meet));
        if !taken {
            http.routes.push(HttpRoute {
                name: "web-http".into(),
                host_names: vec![meet],
                backend: OneOrMany::default(),
                container: Some("web".into()),
                container_port: Some(8000),
                transparent: true,
                redirect_https: true,
            });
        }
    }
    // The TURN name's certificate, obtained by the agent and installed where coturn reads it.
    if config.acme.is_none()
        && let Some(email) = &stack.letsencrypt_email
    {
        config.acme = Some(Acme::with_email(email));
    }
    if let Some(acme) = &mut config.acme {
        if acme.names.is_empty() {
            acme.names.push(CertName(stack.turn_domain.clone()));
        }
        if acme.reload_container.is_none() && acme.names.iter().any(|n| n.0 == stack.turn_domain) {
            acme.reload_container = Some("coturn".into());
        }
    }
    config
}
