//! The agent's TOML configuration: parsed with unknown keys rejected, then validated before
//! anything on the host is touched.

use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use jitsi_common::{PROTO_TCP, PROTO_UDP, RULE_NAME_LEN};
use serde::Deserialize;

use crate::error::{Error, Result};

/// Default directory under bpffs for the pinned maps, programs and links.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/jitsi-agent";

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where maps, programs and links are pinned (must be on a bpffs).
    #[serde(default = "default_pin_dir")]
    pub pin_dir: PathBuf,
    /// The public-facing interface.
    pub uplink: Uplink,
    /// Kernel 1:1 steering rules.
    #[serde(default)]
    pub steer: Vec<SteerRule>,
    /// The SNI splitter (optional).
    pub sni: Option<Sni>,
}

fn default_pin_dir() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_DIR)
}

/// `[uplink]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Uplink {
    /// Interface the public traffic arrives on; XDP attaches here.
    pub interface: String,
    /// Host addresses packets must be sent to to be steered. Default: the interface's own
    /// global addresses, read at start.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

/// `udp` or `tcp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// UDP.
    Udp,
    /// TCP.
    Tcp,
}

impl Protocol {
    /// IANA protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Udp => PROTO_UDP,
            Protocol::Tcp => PROTO_TCP,
        }
    }

    /// From an IANA protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            PROTO_UDP => Some(Protocol::Udp),
            PROTO_TCP => Some(Protocol::Tcp),
            _ => None,
        }
    }
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Udp => "udp",
            Protocol::Tcp => "tcp",
        })
    }
}

/// One address or a list (`backend = "a:1"` or `backend = ["a:1", "[b::]:1"]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single address.
    One(SocketAddr),
    /// A list.
    Many(Vec<SocketAddr>),
}

impl OneOrMany {
    /// The addresses as a slice.
    pub fn as_slice(&self) -> &[SocketAddr] {
        match self {
            OneOrMany::One(a) => std::slice::from_ref(a),
            OneOrMany::Many(v) => v,
        }
    }

    /// The IPv4 address, if any.
    pub fn v4(&self) -> Option<SocketAddr> {
        self.as_slice().iter().copied().find(SocketAddr::is_ipv4)
    }

    /// The IPv6 address, if any.
    pub fn v6(&self) -> Option<SocketAddr> {
        self.as_slice().iter().copied().find(SocketAddr::is_ipv6)
    }
}

/// `[[steer]]`: packets for `protocol`/`port` on a host address go to `backend`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerRule {
    /// Unique name (letters, digits, `-`, `_`; at most 23 bytes).
    pub name: String,
    /// `udp` or `tcp`.
    pub protocol: Protocol,
    /// Public port on the uplink.
    pub port: u16,
    /// Backend address(es), at most one per address family.
    pub backend: OneOrMany,
}

/// `[sni]`: the TLS splitter on 443.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sni {
    /// Addresses to listen on.
    #[serde(default = "default_sni_listen")]
    pub listen: Vec<SocketAddr>,
    /// Route for no SNI, unknown names and non-TLS bytes; without one those connections are
    /// closed (TLS: with an `unrecognized_name` alert).
    pub default: Option<String>,
    /// Largest ClientHello accepted, in bytes (all its records).
    #[serde(default = "default_max_hello")]
    pub max_hello_bytes: usize,
    /// Time a client has to send its whole ClientHello.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_secs: f64,
    /// Time to connect to a backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: f64,
    /// A relayed connection with no byte in either direction for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: f64,
    /// Open connections at most, overall.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at most per client address.
    #[serde(default = "default_max_per_client")]
    pub max_connections_per_client: usize,
    /// Mark the TC program sets on replies from SNI backends; a policy rule sends packets
    /// with it to `route_table` (local delivery to the transparent socket).
    #[serde(default = "default_reply_mark")]
    pub reply_mark: u32,
    /// SO_MARK of the agent's backend sockets (for the operator's own firewall or routing
    /// rules; must differ from `reply_mark`, or those sockets' packets would loop back).
    #[serde(default = "default_socket_mark")]
    pub socket_mark: u32,
    /// Routing table holding the `local` default routes.
    #[serde(default = "default_route_table")]
    pub route_table: u32,
    /// Priority of the agent's policy rules.
    #[serde(default = "default_rule_priority")]
    pub rule_priority: u32,
    /// How bytes are relayed: `copy` (userspace buffer, default) or `splice` (zero-copy).
    #[serde(default)]
    pub relay: crate::sni::relay::Mode,
    /// Routes by server name.
    #[serde(default, rename = "route")]
    pub routes: Vec<SniRoute>,
}

fn default_sni_listen() -> Vec<SocketAddr> {
    vec!["0.0.0.0:443".parse().expect("literal"), "[::]:443".parse().expect("literal")]
}
fn default_max_hello() -> usize {
    crate::sni::hello::DEFAULT_MAX_HELLO
}
fn default_hello_timeout() -> f64 {
    10.0
}
fn default_connect_timeout() -> f64 {
    3.0
}
fn default_idle_timeout() -> f64 {
    600.0
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_per_client() -> usize {
    256
}
fn default_reply_mark() -> u32 {
    0x4a17
}
fn default_socket_mark() -> u32 {
    0x4a18
}
fn default_route_table() -> u32 {
    0x4a17
}
fn default_rule_priority() -> u32 {
    90
}

/// `[[sni.route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SniRoute {
    /// Unique name (used by `default` and in logs).
    pub name: String,
    /// Exact names or `*.domain` wildcards, matched case-insensitively.
    #[serde(default)]
    pub server_names: Vec<String>,
    /// Backend address(es), at most one per address family.
    pub backend: OneOrMany,
    /// Connect from the client's own address (default). `false`: a plain connection from the
    /// host, for backends that cannot route replies back through this host.
    #[serde(default = "default_true")]
    pub transparent: bool,
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let config: Config =
            toml::from_str(text).map_err(|e| Error::ConfigParse { path: path.into(), message: e.to_string() })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let invalid = |key: String, message: String| Error::ConfigInvalid { path: path.into(), key, message };
        if !self.pin_dir.is_absolute() {
            return Err(invalid("pin_dir".into(), "must be an absolute path on a bpffs".into()));
        }
        if self.uplink.interface.is_empty() || self.uplink.interface.len() > 15 {
            return Err(invalid("uplink.interface".into(), "must be an interface name (1 to 15 bytes)".into()));
        }
        for (i, a) in self.uplink.addresses.iter().enumerate() {
            if a.is_unspecified() || a.is_multicast() {
                return Err(invalid(format!("uplink.addresses[{i}]"), format!("{a} is not a unicast host address")));
            }
        }
        let mut names = HashSet::new();
        let mut ports = HashSet::new();
        let mut backends_seen = std::collections::HashMap::new();
        for (i, rule) in self.steer.iter().enumerate() {
            let key = |field: &str| format!("steer[{i}].{field}");
            let name_ok = !rule.name.is_empty()
                && rule.name.len() < RULE_NAME_LEN
                && rule.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !name_ok {
                return Err(invalid(
                    key("name"),
                    format!("`{}`: use 1 to {} letters, digits, `-` or `_`", rule.name, RULE_NAME_LEN - 1),
                ));
            }
            if !names.insert(rule.name.as_str()) {
                return Err(invalid(key("name"), format!("`{}` is used by another [[steer]] rule", rule.name)));
            }
            if rule.port == 0 {
                return Err(invalid(key("port"), "must be 1 to 65535".into()));
            }
            if !ports.insert((rule.protocol, rule.port)) {
                return Err(invalid(
                    key("port"),
                    format!("{}/{} is steered by another rule", rule.protocol, rule.port),
                ));
            }
            let backends = rule.backend.as_slice();
            let v4 = backends.iter().filter(|a| a.is_ipv4()).count();
            let v6 = backends.iter().filter(|a| a.is_ipv6()).count();
            if backends.is_empty() {
                return Err(invalid(key("backend"), "needs at least one address".into()));
            }
            if v4 > 1 || v6 > 1 {
                return Err(invalid(key("backend"), "at most one backend per address family".into()));
            }
            for a in backends {
                // Replies are matched by (protocol, backend address, port): two rules cannot share one.
                if let Some(other) = backends_seen.insert((rule.protocol, *a), rule.name.as_str()) {
                    return Err(invalid(
                        key("backend"),
                        format!(
                            "{}/{a} is already the backend of rule `{other}`; replies could not be told apart",
                            rule.protocol
                        ),
                    ));
                }
                if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() || a.ip().is_loopback() {
                    return Err(invalid(
                        key("backend"),
                        format!(
                            "{a}: needs a unicast, non-loopback address and a port (XDP cannot redirect to loopback)"
                        ),
                    ));
                }
            }
        }
        if self.steer.len() > jitsi_common::MAX_RULES as usize {
            return Err(invalid("steer".into(), format!("at most {} rules", jitsi_common::MAX_RULES)));
        }
        if let Some(sni) = &self.sni {
            sni.validate(&backends_seen).map_err(|(key, message)| invalid(key, message))?;
        }
        Ok(())
    }
}

impl Sni {
    /// The backends of the routes that connect transparently (from the client's address).
    pub fn transparent_backends(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.routes.iter().filter(|r| r.transparent).flat_map(|r| r.backend.as_slice().iter().copied())
    }

    /// Checks the section; `steer_backends` are the steering rules' backends (a TCP one cannot
    /// also be an SNI backend: the TC program could not tell their replies apart).
    fn validate(
        &self,
        steer_backends: &std::collections::HashMap<(Protocol, SocketAddr), &str>,
    ) -> std::result::Result<(), (String, String)> {
        use crate::sni::names::{NameTable, Pattern};
        let err = |k: String, m: String| Err((k, m));
        if self.listen.is_empty() {
            return err("sni.listen".into(), "needs at least one address".into());
        }
        if !(512..=65536).contains(&self.max_hello_bytes) {
            return err("sni.max_hello_bytes".into(), "must be 512 to 65536".into());
        }
        for (k, v) in [
            ("hello_timeout_secs", self.hello_timeout_secs),
            ("connect_timeout_secs", self.connect_timeout_secs),
            ("idle_timeout_secs", self.idle_timeout_secs),
        ] {
            if !(v > 0.0 && v <= 86_400.0) {
                return err(format!("sni.{k}"), "must be more than 0 and at most 86400 seconds".into());
            }
        }
        if self.max_connections == 0 || self.max_connections_per_client == 0 {
            return err("sni.max_connections".into(), "limits must be at least 1".into());
        }
        if self.reply_mark == 0 || self.reply_mark == self.socket_mark {
            return err("sni.reply_mark".into(), "must be non-zero and differ from socket_mark".into());
        }
        if matches!(self.route_table, 0 | 253..=255) {
            return err("sni.route_table".into(), "0, 253, 254 and 255 are the kernel's own tables".into());
        }
        let mut table = NameTable::default();
        let mut names = HashSet::new();
        let mut backends = HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let key = |f: &str| format!("sni.route[{i}].{f}");
            if r.name.is_empty() || !names.insert(r.name.as_str()) {
                return err(key("name"), format!("`{}` must be non-empty and unique", r.name));
            }
            for n in &r.server_names {
                let p = Pattern::parse(n).map_err(|e| (key("server_names"), format!("`{n}`: {e}")))?;
                if let Some(other) = table.insert(p, i) {
                    return err(
                        key("server_names"),
                        format!("`{n}` is already routed by `{}`", self.routes[other].name),
                    );
                }
            }
            if r.server_names.is_empty() && self.default.as_deref() != Some(r.name.as_str()) {
                return err(
                    key("server_names"),
                    "empty, and the route is not the default: nothing would reach it".into(),
                );
            }
            let b = r.backend.as_slice();
            if b.is_empty()
                || b.iter().filter(|a| a.is_ipv4()).count() > 1
                || b.iter().filter(|a| a.is_ipv6()).count() > 1
            {
                return err(key("backend"), "one address, or one per address family".into());
            }
            for a in b {
                if a.port() == 0 || a.ip().is_unspecified() || a.ip().is_multicast() {
                    return err(key("backend"), format!("{a}: needs a unicast address and a port"));
                }
                if let Some(rule) = steer_backends.get(&(Protocol::Tcp, *a)) {
                    return err(key("backend"), format!("{a} is also the backend of steering rule `{rule}`"));
                }
                backends.insert(*a);
            }
        }
        if let Some(d) = &self.default
            && !names.contains(d.as_str())
        {
            return err("sni.default".into(), format!("no [[sni.route]] is named `{d}`"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config> {
        Config::parse(s, Path::new("test.toml"))
    }

    const GOOD: &str = r#"
        [uplink]
        interface = "eth0"
        [[steer]]
        name = "jvb"
        protocol = "udp"
        port = 10000
        backend = ["172.18.0.10:10000", "[fd00::10]:10000"]
        [[steer]]
        name = "web"
        protocol = "tcp"
        port = 80
        backend = "172.18.0.12:8000"
    "#;

    #[test]
    fn sni_section_defaults_and_errors() {
        let base = "[uplink]\ninterface = \"eth0\"\n[[steer]]\nname=\"web\"\nprotocol=\"tcp\"\nport=80\nbackend=\"10.0.0.12:8000\"\n";
        let route = "[[sni.route]]\nname=\"web\"\nserver_names=[\"meet.example.org\", \"*.example.org\"]\nbackend=\"10.0.0.12:8443\"\n";
        let c = parse(&format!("{base}[sni]\n{route}")).unwrap();
        let sni = c.sni.unwrap();
        assert_eq!(sni.listen.len(), 2);
        assert_eq!((sni.max_hello_bytes, sni.hello_timeout_secs, sni.connect_timeout_secs), (16384, 10.0, 3.0));
        assert!(sni.routes[0].transparent);
        let cases: [(&str, &str); 10] = [
            ("[sni]\ndefault=\"nope\"\n", "`sni.default`: no [[sni.route]] is named `nope`"),
            ("[sni]\nlisten=[]\n", "`sni.listen`"),
            ("[sni]\nmax_hello_bytes=100\n", "`sni.max_hello_bytes`"),
            ("[sni]\nhello_timeout_secs=0\n", "`sni.hello_timeout_secs`"),
            ("[sni]\nreply_mark=5\nsocket_mark=5\n", "`sni.reply_mark`"),
            ("[sni]\nroute_table=254\n", "`sni.route_table`"),
            (
                "[sni]\n[[sni.route]]\nname=\"a\"\nserver_names=[\"a_b.org\"]\nbackend=\"10.0.0.1:1\"\n",
                "`sni.route[0].server_names`: `a_b.org`",
            ),
            ("[sni]\n[[sni.route]]\nname=\"a\"\nbackend=\"10.0.0.1:1\"\n", "not the default: nothing would reach it"),
            (
                "[sni]\n[[sni.route]]\nname=\"a\"\nserver_names=[\"x.org\"]\nbackend=\"10.0.0.12:8000\"\n",
                "also the backend of steering rule `web`",
            ),
            ("[sni]\nbogus=1\n", "unknown field `bogus`"),
        ];
        for (section, want) in cases {
            let e = err(&format!("{base}{section}"));
            assert!(e.contains(want), "{section:?}: {e}");
        }
        let dup = format!("{base}[sni]\n{route}{}", route.replace("name=\"web\"", "name=\"web2\""));
        assert!(
            err(&dup).contains("`sni.route[1].server_names`: `meet.example.org` is already routed by `web`"),
            "{}",
            err(&dup)
        );
    }

    #[test]
    fn an_empty_sni_table_is_all_defaults() {
        let sni: Sni = toml::from_str("").unwrap();
        assert_eq!((sni.reply_mark, sni.route_table, sni.rule_priority), (0x4a17, 0x4a17, 90));
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml");
        let c = Config::load(&path).unwrap();
        assert_eq!(c.uplink.interface, "eth0");
        let names: Vec<_> = c.steer.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["jvb", "turn", "web"]);
        let sni = c.sni.expect("the example has an [sni] section");
        assert_eq!(sni.routes.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["web", "turn"]);
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.pin_dir, Path::new(DEFAULT_PIN_DIR));
        assert_eq!(c.steer.len(), 2);
        assert_eq!(c.steer[0].backend.v4().unwrap().to_string(), "172.18.0.10:10000");
        assert_eq!(c.steer[0].backend.v6().unwrap().to_string(), "[fd00::10]:10000");
        assert!(c.steer[1].backend.v6().is_none());
        assert_eq!(c.steer[1].protocol, Protocol::Tcp);
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn rejects_bad_input_with_the_key() {
        let base = "[uplink]\ninterface = \"eth0\"\n";
        assert!(err(&format!("{base}bogus = 1")).contains("unknown field `bogus`"));
        assert!(
            err(&format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"sctp\"\nport=1\nbackend=\"10.0.0.1:1\""))
                .contains("unknown variant `sctp`")
        );
        let e = err(&format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=0\nbackend=\"10.0.0.1:1\""));
        assert!(e.contains("`steer[0].port`"), "{e}");
        let dup = format!(
            "{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"\n[[steer]]\nname=\"b\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.2:1\""
        );
        assert!(err(&dup).contains("`steer[1].port`: udp/1 is steered by another rule"));
        let two_v4 =
            format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=[\"10.0.0.1:1\",\"10.0.0.2:1\"]");
        assert!(err(&two_v4).contains("at most one backend per address family"));
        let lo = format!("{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"127.0.0.1:1\"");
        assert!(err(&lo).contains("loopback"));
        let shared = format!(
            "{base}[[steer]]\nname=\"a\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"\n[[steer]]\nname=\"b\"\nprotocol=\"udp\"\nport=2\nbackend=\"10.0.0.1:1\""
        );
        assert!(err(&shared).contains("already the backend of rule `a`"), "{}", err(&shared));
        let name = format!("{base}[[steer]]\nname=\"a b\"\nprotocol=\"udp\"\nport=1\nbackend=\"10.0.0.1:1\"");
        assert!(err(&name).contains("`steer[0].name`"));
        assert!(err("[uplink]\ninterface=\"eth0\"\npin_dir=\"relative\"").contains("`pin_dir`"));
        assert!(err("pin_dir = 3").contains("test.toml"));
    }
}
