//! Checks a parsed configuration: each failure names the key (`steer[1].port`) and says what
//! to do; `Config::parse` adds the file, line and column.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
};

use jitsi_common::{FLOOD_MAX_RATE, FLOOD_TOKEN, MAX_FLOOD_ALLOW, RULE_NAME_LEN};

use super::{Acme, Config, Http, PortRange, Protocol, Splitter, Stack, Tls};
use crate::names::{NameTable, Pattern};

/// Rule and route names: they are stored in the pinned maps (NUL-padded, 24 bytes).
fn name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() < RULE_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// For a rule or route that names a `container`: checks it (and that no `backend` is given
/// too) and returns (container, port). `None` for one with a `backend`; an error without either.
fn container_target(
    container: Option<&str>,
    port: Option<u16>,
    backend: &super::OneOrMany,
    key: &dyn Fn(&str) -> String,
) -> Result<Option<(String, u16)>, Invalid> {
    match (container, backend.as_slice().is_empty()) {
        (None, false) => Ok(None),
        (None, true) => {
            Err((key("backend"), "needs `backend` (ADDRESS:PORT) or `container` (a Docker service)".into()))
        }
        (Some(_), false) => Err((key("container"), "give `backend` or `container`, not both".into())),
        (Some(c), true) => {
            let ok = !c.is_empty()
                && c.len() <= 128
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err((key("container"), format!("`{c}`: a Compose service or container name")));
            }
            match port {
                Some(p) if p > 0 => Ok(Some((c.to_string(), p))),
                _ => Err((key("container_port"), "the container's port (1 to 65535) is required".into())),
            }
        }
    }
}

/// A key path and what is wrong with its value.
pub(super) type Invalid = (String, String);

impl Config {
    pub(super) fn validate(&self) -> Result<(), Invalid> {
        if !self.pin_dir.is_absolute() {
            return Err(("pin_dir".into(), "must be an absolute path on a bpffs".into()));
        }
        self.validate_uplink()?;
        let mut steer = SteerSeen::default();
        for (i, rule) in self.steer.iter().enumerate() {
            steer.check(i, rule)?;
        }
        if self.steer.len() > jitsi_common::MAX_RULES as usize {
            return Err(("steer".into(), format!("at most {} rules", jitsi_common::MAX_RULES)));
        }
        self.validate_range_entries()?;
        // coturn relays on `relay_ports` whatever a rule says: a `turn-relay` of the file's own
        // with other ports would leave them unsteered.
        if let Some(stack) = &self.stack
            && let Some((i, r)) = self.steer.iter().enumerate().find(|(_, r)| r.name == super::implied::TURN_RELAY)
            && (r.port != stack.relay_ports || r.protocol != Protocol::Udp)
        {
            return Err((
                format!("steer[{i}].port"),
                format!(
                    "{}/{}: coturn relays on udp/{} ([stack] relay_ports); set relay_ports instead",
                    r.protocol, r.port, stack.relay_ports
                ),
            ));
        }
        self.validate_splitter(&steer.backends)?;
        // XDP takes a steered port before any socket: a splitter could never see its own.
        for a in self.splitter_listens() {
            if let Some((i, r)) = self.steering(Protocol::Tcp, a.port()) {
                return Err((
                    format!("steer[{i}].port"),
                    format!("tcp/{} is a splitter's listen port ({a}): rule `{}` would take it first", r.port, r.name),
                ));
            }
        }
        if let Some(acme) = &self.acme {
            acme.validate(self.stack.is_some())?;
            // With [stack], port 80's splitter is implied (unless the file steers tcp/80).
            let steers_80 = self.steering(Protocol::Tcp, 80).is_some();
            if self.http.is_none() && (self.stack.is_none() || steers_80) {
                return Err((
                    "acme".into(),
                    "HTTP-01 challenges are answered on port 80: add an [http] section".into(),
                ));
            }
        }
        if let Some(stack) = &self.stack {
            stack.validate()?;
        }
        self.validate_flood()
    }

    fn validate_flood(&self) -> Result<(), Invalid> {
        let flood = self.flood();
        let key = |k: &str| format!("flood.{k}");
        for (name, v) in
            [("packets_per_second", flood.packets_per_second), ("flows_per_second", flood.flows_per_second)]
        {
            if !(1..=FLOOD_MAX_RATE).contains(&v) {
                return Err((
                    key(name),
                    format!("{v}: from 1 to {FLOOD_MAX_RATE} (`enabled = false` turns the limits off)"),
                ));
            }
        }
        let max_burst = u64::MAX / 2 / FLOOD_TOKEN;
        for (name, v) in [("packets_burst", flood.packets_burst), ("flows_burst", flood.flows_burst)] {
            if !(1..=max_burst).contains(&v) {
                return Err((key(name), format!("{v}: from 1 to {max_burst}")));
            }
        }
        if flood.allow.len() > MAX_FLOOD_ALLOW as usize {
            return Err((key("allow"), format!("at most {MAX_FLOOD_ALLOW} networks")));
        }
        // The buckets refill on the kernel's coarse clock (a tick of 1 to 10 ms): a burst
        // smaller than a tick's worth would cap the rate below the one configured.
        for (name, rate, burst) in [
            ("packets_burst", flood.packets_per_second, flood.packets_burst),
            ("flows_burst", flood.flows_per_second, flood.flows_burst),
        ] {
            if burst < rate / 50 {
                return Err((
                    key(name),
                    format!(
                        "{burst}: at least 20 ms at the rate ({}), as the buckets refill in clock ticks",
                        rate / 50
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The port ranges' entries in `rule_ranges` and `reply_ranges`: each range is stored as the
    /// prefixes that cover it, per address family, on the public side and on each backend's
    /// (where it may start elsewhere). At most half of each map, so that a reload that moves
    /// every range can write the new entries before it removes the old.
    fn validate_range_entries(&self) -> Result<(), Invalid> {
        let ranges = self.steer.iter().filter(|r| !r.port.is_single());
        let public: usize = ranges.clone().map(|r| 2 * r.port.prefixes().len()).sum();
        let backend: usize = ranges
            .map(|r| {
                let starts: Vec<u16> = match r.container {
                    Some(_) => vec![r.container_first_port(); 2],
                    None => r.backend.as_slice().iter().map(SocketAddr::port).collect(),
                };
                starts.iter().filter_map(|&p| r.port.moved_to(p)).map(|m| m.prefixes().len()).sum::<usize>()
            })
            .sum();
        let most = jitsi_common::MAX_RANGE_PREFIXES as usize / 2;
        if let Some(need) = [public, backend].into_iter().find(|n| *n > most) {
            return Err((
                "steer".into(),
                format!(
                    "the port ranges need {need} map entries, more than {most}: use fewer ranges, or ranges that \
                     start and end on round numbers (a power of two)"
                ),
            ));
        }
        Ok(())
    }

    fn validate_uplink(&self) -> Result<(), Invalid> {
        if self.uplink.interface.is_empty() || self.uplink.interface.len() > 15 {
            return Err(("uplink.interface".into(), "must be an interface name (1 to 15 bytes)".into()));
        }
        for (i, a) in self.uplink.addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return Err((format!("uplink.addresses[{i}]"), format!("{a} is not a unicast host address")));
            }
        }
        Ok(())
    }

    /// `[splitter]`, `[tls]` and `[http]`; `steer_backends` are the steering rules' backends.
    fn validate_splitter(&self, steer_backends: &SteerBackends<'_>) -> Result<(), Invalid> {
        let mut route_names = HashSet::new();
        if let Some(splitter) = &self.splitter {
            splitter.validate()?;
        }
        if let Some(tls) = &self.tls {
            tls.validate(steer_backends, &mut route_names)?;
        }
        if let Some(http) = &self.http {
            http.validate(steer_backends, &mut route_names)?;
            if let Some((i, a)) =
                http.listen.iter().enumerate().find(|(_, a)| self.tls.iter().any(|s| s.listen.contains(a)))
            {
                return Err((format!("http.listen[{i}]"), format!("{a} is also a [tls] listen address")));
            }
        }
        Ok(())
    }
}

/// The steering rules' backends: (protocol, address, the ports it receives, the rule). A
/// splitter route cannot share one either: replies are told apart by (protocol, address, port).
#[derive(Default)]
pub(super) struct SteerBackends<'a>(Vec<(Protocol, IpAddr, PortRange, &'a str)>);

impl<'a> SteerBackends<'a> {
    /// The rule whose backend ports on `a`'s address include `a`'s port.
    fn owner(&self, protocol: Protocol, a: SocketAddr) -> Option<&'a str> {
        self.overlapping(protocol, a.ip(), PortRange::one(a.port()))
    }

    fn overlapping(&self, protocol: Protocol, ip: IpAddr, ports: PortRange) -> Option<&'a str> {
        self.0.iter().find(|(p, i, r, _)| *p == protocol && *i == ip && r.overlaps(&ports)).map(|(.., n)| *n)
    }
}

/// What the `[[steer]]` rules checked so far take: names, ports, backends, containers (each
/// once).
#[derive(Default)]
struct SteerSeen<'a> {
    names: HashSet<&'a str>,
    ports: Vec<(Protocol, PortRange, &'a str)>,
    /// Backends and the rules that have them (a splitter route cannot share one either).
    backends: SteerBackends<'a>,
    /// (protocol, container, its ports, rule) of the rules that name a container.
    containers: Vec<(Protocol, String, PortRange, &'a str)>,
}

impl<'a> SteerSeen<'a> {
    /// Checks rule `i` against itself and the rules before it.
    fn check(&mut self, i: usize, rule: &'a super::SteerRule) -> Result<(), Invalid> {
        let key = |field: &str| format!("steer[{i}].{field}");
        if !name_ok(&rule.name) {
            return Err((
                key("name"),
                format!("`{}`: use 1 to {} letters, digits, `-` or `_`", rule.name, RULE_NAME_LEN - 1),
            ));
        }
        if !self.names.insert(rule.name.as_str()) {
            return Err((key("name"), format!("`{}` is used by another [[steer]] rule", rule.name)));
        }
        if let Some((.., other)) = self.ports.iter().find(|(p, r, _)| *p == rule.protocol && r.overlaps(&rule.port)) {
            return Err((key("port"), format!("{}/{} is steered by rule `{other}` too", rule.protocol, rule.port)));
        }
        self.ports.push((rule.protocol, rule.port, rule.name.as_str()));
        if rule.container.is_none() && rule.container_port.is_some() {
            return Err((key("container_port"), "only with `container` (a backend's port is in `backend`)".into()));
        }
        let port = Some(rule.container_first_port());
        let ranges_fit = |first: u16| {
            rule.port.moved_to(first).ok_or_else(|| {
                (
                    key(if rule.container.is_some() { "container_port" } else { "backend" }),
                    format!("{} ports from {first} run past 65535", rule.port.count()),
                )
            })
        };
        if let Some((container, first)) = container_target(rule.container.as_deref(), port, &rule.backend, &key)? {
            let ports = ranges_fit(first)?;
            if let Some((.., other)) =
                self.containers.iter().find(|(p, c, r, _)| *p == rule.protocol && *c == container && r.overlaps(&ports))
            {
                return Err((
                    key("container"),
                    format!("{}/{container}:{ports} is already the backend of rule `{other}`", rule.protocol),
                ));
            }
            self.containers.push((rule.protocol, container, ports, rule.name.as_str()));
            return Ok(());
        }
        let backends = rule.backend.as_slice();
        let v4 = backends.iter().filter(|a| a.is_ipv4()).count();
        let v6 = backends.iter().filter(|a| a.is_ipv6()).count();
        if backends.is_empty() {
            return Err((key("backend"), "needs at least one address".into()));
        }
        if v4 > 1 || v6 > 1 {
            return Err((key("backend"), "at most one backend per address family".into()));
        }
        for a in backends {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() || a.ip().is_loopback() {
                return Err((
                    key("backend"),
                    format!("{a}: needs a unicast, non-loopback address and a port (XDP cannot redirect to loopback)"),
                ));
            }
            let ports = ranges_fit(a.port())?;
            // Replies are matched by (protocol, backend address, port): two rules cannot share one.
            if let Some(other) = self.backends.overlapping(rule.protocol, a.ip(), ports) {
                return Err((
                    key("backend"),
                    format!(
                        "{}/{a} ({} port(s)) is already the backend of rule `{other}`; replies could not be told apart",
                        rule.protocol,
                        ports.count()
                    ),
                ));
            }
            self.backends.0.push((rule.protocol, a.ip(), ports, rule.name.as_str()));
        }
        Ok(())
    }
}

impl Config {
    /// The backends the splitter connects to from the client's address ([tls] and [http]):
    /// their replies are marked by `reply_out` and routed back to the agent's sockets.
    pub fn transparent_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let tls = self.tls.iter().flat_map(Tls::transparent_backends);
        tls.chain(self.http.iter().flat_map(Http::transparent_backends))
    }
}

impl Splitter {
    fn validate(&self) -> Result<(), Invalid> {
        let err = |k: &str, m: &str| Err((format!("splitter.{k}"), m.to_owned()));
        if [
            self.max_connections,
            self.max_connections_per_client,
            self.max_connections_per_ipv6_48,
            self.max_pending_connections,
        ]
        .contains(&0)
        {
            return err("max_connections", "limits must be at least 1");
        }
        if self.reply_mark == 0 || self.reply_mark == self.socket_mark {
            return err("reply_mark", "must be non-zero and differ from socket_mark");
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return err("route_table", "0, 253, 254 and 255 are the kernel's own tables");
        }
        Ok(())
    }
}

impl Tls {
    /// The backends of the routes that connect transparently (from the client's address).
    pub fn transparent_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.routes.iter().filter(|r| r.transparent).flat_map(|r| r.backend.as_slice().iter().copied())
    }

    /// Checks the section; `steer_backends` are the steering rules' backends (a TCP one cannot
    /// also be a splitter backend: the TC program could not tell their replies apart).
    fn validate<'a>(&'a self, steer_backends: &SteerBackends<'_>, names: &mut HashSet<&'a str>) -> Result<(), Invalid> {
        let err = |k: String, m: String| Err((k, m));
        if self.listen.is_empty() {
            return err("tls.listen".into(), "needs at least one address".into());
        }
        if !(512..=65536).contains(&self.max_hello_bytes) {
            return err("tls.max_hello_bytes".into(), "must be 512 to 65536".into());
        }
        let routes: Vec<RouteView> = self
            .routes
            .iter()
            .map(|r| RouteView {
                name: &r.name,
                patterns: &r.server_names,
                patterns_key: "server_names",
                backend: &r.backend,
                container: r.container.as_deref(),
                container_port: r.container_port,
            })
            .collect();
        check_routes("tls", &routes, self.default.as_deref(), steer_backends, names)
    }
}

/// What [[tls.route]] and [[http.route]] have in common, for one check of both.
struct RouteView<'a> {
    name: &'a str,
    patterns: &'a [Pattern],
    patterns_key: &'a str,
    backend: &'a super::OneOrMany,
    container: Option<&'a str>,
    container_port: Option<u16>,
}

/// Checks the routes of `section` (`tls` or `http`): names (unique within `names`, which the
/// other section's routes share: their counters are kept by name), name patterns, targets.
fn check_routes<'a>(
    section: &str,
    routes: &[RouteView<'a>],
    default: Option<&str>,
    steer_backends: &SteerBackends<'_>,
    names: &mut HashSet<&'a str>,
) -> Result<(), Invalid> {
    let err = |k: String, m: String| Err((k, m));
    let mut table = NameTable::default();
    for (i, r) in routes.iter().enumerate() {
        let key = |f: &str| format!("{section}.route[{i}].{f}");
        if !name_ok(r.name) {
            return err(
                key("name"),
                format!("`{}`: use 1 to {} letters, digits, `-` or `_`", r.name, RULE_NAME_LEN - 1),
            );
        }
        if !names.insert(r.name) {
            return err(key("name"), format!("`{}` is used by another [[tls.route]] or [[http.route]]", r.name));
        }
        for (j, n) in r.patterns.iter().enumerate() {
            let pkey = key(&format!("{}[{j}]", r.patterns_key));
            if let Some(other) = table.insert(n.clone(), i) {
                return err(pkey, format!("`{n}` is already routed by `{}`", routes[other].name));
            }
        }
        if r.patterns.is_empty() && default != Some(r.name) {
            return err(key(r.patterns_key), "empty, and the route is not the default: nothing would reach it".into());
        }
        if container_target(r.container, r.container_port, r.backend, &key)?.is_some() {
            continue;
        }
        let b = r.backend.as_slice();
        if b.is_empty() || b.iter().filter(|a| a.is_ipv4()).count() > 1 || b.iter().filter(|a| a.is_ipv6()).count() > 1
        {
            return err(key("backend"), "one address, or one per address family".into());
        }
        for a in b {
            if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                return err(key("backend"), format!("{a}: needs a unicast address and a port"));
            }
            if let Some(rule) = steer_backends.owner(Protocol::Tcp, *a) {
                return err(key("backend"), format!("{a} is also the backend of steering rule `{rule}`"));
            }
        }
    }
    if let Some(d) = default
        && !routes.iter().any(|r| r.name == d)
    {
        return err(format!("{section}.default"), format!("no [[{section}.route]] is named `{d}`"));
    }
    Ok(())
}

impl Http {
    /// The backends of the routes that connect transparently.
    pub fn transparent_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.routes.iter().filter(|r| r.transparent).flat_map(|r| r.backend.as_slice().iter().copied())
    }

    fn validate<'a>(&'a self, steer_backends: &SteerBackends<'_>, names: &mut HashSet<&'a str>) -> Result<(), Invalid> {
        if self.listen.is_empty() {
            return Err(("http.listen".into(), "needs at least one address".into()));
        }
        if !(1024..=65536).contains(&self.max_head_bytes) {
            return Err(("http.max_head_bytes".into(), "must be 1024 to 65536".into()));
        }
        let routes: Vec<RouteView> = self
            .routes
            .iter()
            .map(|r| RouteView {
                name: &r.name,
                patterns: &r.host_names,
                patterns_key: "host_names",
                backend: &r.backend,
                container: r.container.as_deref(),
                container_port: r.container_port,
            })
            .collect();
        check_routes("http", &routes, self.default.as_deref(), steer_backends, names)
    }
}

impl Acme {
    /// `stack`: with `[stack]`, the names default to the TURN name.
    fn validate(&self, stack: bool) -> Result<(), Invalid> {
        let err = |k: &str, m: String| Err((format!("acme.{k}"), m));
        if !self.email.contains('@') || self.email.chars().any(|c| c.is_whitespace() || c == ',') {
            return err("email", format!("`{}` is not an e-mail address", self.email));
        }
        if !self.directory.starts_with("https://") || self.directory.len() <= "https://".len() {
            return err("directory", format!("`{}`: the ACME directory's https:// URL", self.directory));
        }
        if self.names.is_empty() && !stack {
            return err(
                "names",
                "no name to obtain a certificate for (with [stack], the TURN name is the default)".into(),
            );
        }
        let mut seen = HashSet::new();
        for (i, n) in self.names.iter().enumerate() {
            if !seen.insert(&n.0) {
                return err(&format!("names[{i}]"), format!("`{n}` is listed twice"));
            }
        }
        if !self.state_dir.is_absolute() {
            return err("state_dir", "must be an absolute path".into());
        }
        if !(1..=60).contains(&self.renew_before_days) {
            return err("renew_before_days", "must be 1 to 60 (certificates last 90 days or less)".into());
        }
        Ok(())
    }
}

impl Stack {
    fn validate(&self) -> Result<(), Invalid> {
        let err = |k: &str, m: String| Err((format!("stack.{k}"), m));
        if self.meet_domain == self.turn_domain {
            return err("turn_domain", "must differ from meet_domain: TURN over 443 is told apart by its name".into());
        }
        if self.public_addresses.is_empty() {
            return err(
                "public_addresses",
                "the address(es) clients reach this host at (the router's public IP)".into(),
            );
        }
        for (i, a) in self.public_addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() || a.is_loopback() {
                return err(&format!("public_addresses[{i}]"), format!("{a} is not a public unicast address"));
            }
        }
        if !self.directory.is_absolute() {
            return err("directory", "must be an absolute path".into());
        }
        // coturn's listening ports (`EXPOSE 3478 3478/udp 5349 5349/udp` in
        // docker/coturn/debian/Dockerfile at docker/4.17.0-r0) and the videobridge's (JVB_PORT
        // 10000) are steered to them by rules of their own.
        if let Some(p) = [3478, 5349, 10000].into_iter().find(|p| self.relay_ports.contains(*p)) {
            return err(
                "relay_ports",
                format!("{}: includes port {p}, which coturn or the videobridge listens on", self.relay_ports),
            );
        }
        for (k, v) in [
            ("image_repo", &self.image_repo),
            ("image_tag", &self.image_tag),
            ("coturn_image", &self.coturn_image),
            ("timezone", &self.timezone),
        ] {
            if v.is_empty() || v.chars().any(|c| c.is_whitespace() || c == '$' || c == '"') {
                return err(k, format!("`{v}`: must be non-empty, without spaces, quotes or `$`"));
            }
        }
        if let Some(e) = &self.letsencrypt_email
            && (!e.contains('@') || e.chars().any(char::is_whitespace))
        {
            return err("letsencrypt_email", format!("`{e}` is not an e-mail address"));
        }
        Ok(())
    }
}
