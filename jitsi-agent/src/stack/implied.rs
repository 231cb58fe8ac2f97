//! With `[stack]`, the rules that wire it need not be written out: the videobridge's and
//! coturn's UDP ports, port 80 to the web container when Let's Encrypt is on, and the SNI routes
//! for the meet and TURN names. Rules and routes the file defines itself (by name, or for the
//! same protocol and port) win.

use crate::config::{Config, OneOrMany, Protocol, Sni, SniRoute, SteerRule};

fn steer(name: &str, protocol: Protocol, port: u16, container: &str, container_port: u16) -> SteerRule {
    SteerRule {
        name: name.into(),
        protocol,
        port,
        backend: OneOrMany::default(),
        container: Some(container.into()),
        container_port: Some(container_port),
    }
}

fn route(name: &str, server_name: &str, container: &str, port: u16) -> SniRoute {
    SniRoute {
        name: name.into(),
        server_names: vec![server_name.to_string()],
        backend: OneOrMany::default(),
        container: Some(container.into()),
        container_port: Some(port),
        transparent: true,
    }
}

/// `config` plus the rules `[stack]` implies (unchanged without `[stack]`).
pub fn add_implied(mut config: Config) -> Config {
    let Some(stack) = config.stack.clone() else { return config };
    let mut implied =
        vec![steer("jvb", Protocol::Udp, 10000, "jvb", 10000), steer("turn", Protocol::Udp, 3478, "coturn", 3478)];
    if stack.letsencrypt_email.is_some() {
        // HTTP-01 for the meet name: answered by the web container's acme.sh on 8000.
        implied.push(steer("web-http", Protocol::Tcp, 80, "web", 8000));
    }
    for r in implied {
        let taken = config.steer.iter().any(|s| s.name == r.name || (s.protocol == r.protocol && s.port == r.port));
        if !taken {
            config.steer.push(r);
        }
    }
    let sni = config.sni.get_or_insert_with(|| toml::from_str::<Sni>("").expect("an empty [sni] is all defaults"));
    for r in [route("web", &stack.meet_domain, "web", 8443), route("turn", &stack.turn_domain, "coturn", 5349)] {
        let taken = sni
            .routes
            .iter()
            .any(|s| s.name == r.name || s.server_names.iter().any(|n| n.eq_ignore_ascii_case(&r.server_names[0])));
        if !taken {
            sni.routes.push(r);
        }
    }
    if sni.default.is_none() && sni.routes.iter().any(|r| r.name == "web") {
        sni.default = Some("web".into());
    }
    config
}
