//! The agent's TOML configuration: parsed with unknown keys rejected, then validated before
//! anything on the host is touched.

mod flood;
pub mod implied;
mod legacy;
mod locate;
mod port_range;
mod validate;

use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use jitsi_common::{PROTO_TCP, PROTO_UDP};
use serde::Deserialize;

pub use flood::{Flood, Network, NetworkError};
pub use port_range::{PortRange, PortRangeError};

use crate::{
    error::{Error, Result},
    layout::Layout,
    names::{Pattern, ServerName},
};

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
    /// Connection settings of both splitter fronts (optional: every default).
    pub splitter: Option<Splitter>,
    /// The TLS front on 443, routing by server name (optional).
    pub tls: Option<Tls>,
    /// The HTTP front on port 80, routing by `Host` (optional).
    pub http: Option<Http>,
    /// `[sni]`, the former name of `[tls]` and `[splitter]` together: accepted and split into
    /// them, with a warning in [`Config::warnings`].
    #[serde(rename = "sni", default, skip_serializing)]
    legacy_sni: Option<legacy::LegacySni>,
    /// What the operator should change though it works (a deprecated section, a section
    /// with no effect): logged at start and on reload, printed by `check`.
    #[serde(skip)]
    pub warnings: Vec<String>,
    /// Certificates the agent obtains and renews over ACME (optional).
    pub acme: Option<Acme>,
    /// The Prometheus endpoint (optional; off without the section).
    pub metrics: Option<Metrics>,
    /// The Jitsi Meet container stack `jitsi-agent stack ...` provisions (optional).
    pub stack: Option<Stack>,
    /// The per-source flood limits in the kernel (optional: on, with every default).
    pub flood: Option<Flood>,
}

/// `[stack]`: what `stack init` generates the Docker Compose project from.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stack {
    /// The meeting's public name (`https://<meet_domain>`).
    pub meet_domain: ServerName,
    /// coturn's public name: TURN over TLS on 443 (SNI) and STUN/TURN on 3478/udp.
    pub turn_domain: ServerName,
    /// The public address(es) clients reach this host at (the NAT router's): advertised by
    /// the videobridge (`JVB_ADVERTISE_IPS`) and coturn (`external-ip`).
    pub public_addresses: Vec<IpAddr>,
    /// Where the Compose project lives (`docker-compose.yml`, `.env`, `config/`, `coturn/`).
    #[serde(default = "default_stack_dir")]
    pub directory: PathBuf,
    /// Registry and repository of the Jitsi images.
    #[serde(default = "default_image_repo")]
    pub image_repo: String,
    /// Tag of the Jitsi images (pinned; upgrade by changing it).
    #[serde(default = "default_image_tag")]
    pub image_tag: String,
    /// The coturn image.
    #[serde(default = "default_coturn_image")]
    pub coturn_image: String,
    /// The Docker network's IPv4 subnet (a /24 or larger); the containers get fixed addresses
    /// in it (.10 jvb, .11 coturn, .12 web, .13 prosody, .14 jicofo).
    #[serde(default = "default_stack_subnet")]
    pub subnet: Layout,
    /// With an e-mail, the web container obtains the meet name's Let's Encrypt certificate
    /// (HTTP-01 on port 80, which the agent then steers to it).
    pub letsencrypt_email: Option<String>,
    /// Time zone of the containers.
    #[serde(default = "default_tz")]
    pub timezone: String,
    /// coturn's relay ports (`min-port`/`max-port`), steered 1:1 to coturn (rule `turn-relay`).
    /// Default 61000-65535: above Linux's default ephemeral range (`ip_local_port_range`
    /// 32768-60999), whose ports the host's and the containers' own UDP flows (DNS) use.
    #[serde(default = "default_relay_ports")]
    pub relay_ports: PortRange,
}

fn default_stack_dir() -> PathBuf {
    PathBuf::from("/srv/jitsi-meet")
}
fn default_image_repo() -> String {
    "ghcr.io/jitsi".into()
}
fn default_image_tag() -> String {
    "stable-11146-2".into()
}
fn default_coturn_image() -> String {
    // coturn's own image at its release tag `docker/4.17.0-r0` (coturn/coturn,
    // `docker/coturn/debian/Dockerfile`): a full version and revision, not a moving `4.17`.
    "coturn/coturn:4.17.0-r0".into()
}
fn default_stack_subnet() -> Layout {
    Layout::parse("172.18.0.0/24").expect("literal")
}
fn default_relay_ports() -> PortRange {
    // Not coturn's own default (49152-65535, `examples/etc/turnserver.conf` at coturn 4.17.0):
    // the XDP steering has no connection tracking, so a steered port must never be one the
    // host or a container picks for its own outgoing UDP (Linux's default
    // `net.ipv4.ip_local_port_range` is 32768-60999: Documentation/networking/ip-sysctl.rst);
    // 4536 ports, one per allocation.
    PortRange { min: 61000, max: 65535 }
}
fn default_tz() -> String {
    "UTC".into()
}

/// `[metrics]`: Prometheus text exposition over HTTP.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// Address to serve `/metrics` on; keep it on localhost or a management network.
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

/// Default `[metrics] listen`.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9477";

fn default_metrics_listen() -> SocketAddr {
    DEFAULT_METRICS_LISTEN.parse().expect("literal")
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
    /// How `steer_in` attaches: `auto` (driver mode, else generic), `driver` or `generic`.
    #[serde(default)]
    pub xdp_mode: XdpModeSetting,
}

/// `[uplink] xdp_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Driver (native) mode where the driver supports it, else generic mode.
    #[default]
    Auto,
    /// Driver mode only: the agent does not start if the driver refuses it.
    Driver,
    /// Generic (skb) mode, whatever the driver supports.
    Generic,
}

impl XdpModeSetting {
    /// Whether a program attached in `mode` (`driver`, `generic`) is what this asks for.
    pub fn accepts(self, mode: &str) -> bool {
        match self {
            XdpModeSetting::Auto => true,
            XdpModeSetting::Driver => mode == "driver",
            XdpModeSetting::Generic => mode == "generic",
        }
    }
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OneOrMany {
    /// A single address.
    One(SocketAddr),
    /// A list.
    Many(Vec<SocketAddr>),
}

impl<'de> Deserialize<'de> for OneOrMany {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Visit;
        fn addr<E: serde::de::Error>(s: &str) -> std::result::Result<SocketAddr, E> {
            s.parse()
                .map_err(|_| E::custom(format!("`{s}` is not ADDRESS:PORT (e.g. 172.18.0.10:10000, [fd00::10]:10000)")))
        }
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = OneOrMany;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("\"ADDRESS:PORT\" or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> std::result::Result<OneOrMany, E> {
                addr(s).map(OneOrMany::One)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<OneOrMany, A::Error> {
                let mut v = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    v.push(addr(&s)?);
                }
                Ok(OneOrMany::Many(v))
            }
        }
        d.deserialize_any(Visit)
    }
}

impl Default for OneOrMany {
    /// No address (a rule that names a `container` instead).
    fn default() -> Self {
        OneOrMany::Many(Vec::new())
    }
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

/// `[[steer]]`: packets for `protocol`/`port` on a host address go to `backend`. A range of
/// ports is steered 1:1: its first port to the backend's port, the next to the next.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerRule {
    /// Unique name (letters, digits, `-`, `_`; at most 23 bytes).
    pub name: String,
    /// `udp` or `tcp`.
    pub protocol: Protocol,
    /// Public port on the uplink, or an inclusive range (`"20000-20050"`).
    pub port: PortRange,
    /// Backend address(es), at most one per address family (or `container`).
    #[serde(default)]
    pub backend: OneOrMany,
    /// A Docker container (Compose service or container name) whose address(es) are the
    /// backend, followed through the Docker Engine API.
    pub container: Option<String>,
    /// The container's port (default: `port`; for a range, where it starts on the container).
    pub container_port: Option<u16>,
}

impl SteerRule {
    /// The port a container's range starts at: `container_port`, or the public one.
    pub fn container_first_port(&self) -> u16 {
        self.container_port.unwrap_or(self.port.min)
    }
}

/// `[splitter]`: how both splitter fronts (`[tls]` on 443, `[http]` on 80) treat connections:
/// timeouts, limits, the marks and routing table of the transparent connections, the relay.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Splitter {
    /// Time to connect to a backend.
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout_secs: Secs,
    /// A relayed connection with no byte in either direction for this long is closed.
    #[serde(default = "default_idle_timeout")]
    pub idle_timeout_secs: Secs,
    /// On SIGTERM the splitter stops accepting and gives open connections this long to finish
    /// before closing them (a restart under socket activation queues new connections meanwhile).
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout_secs: Secs,
    /// Relayed connections at most, per front (443 and 80 each).
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Open connections at most per client: an IPv4 address or an IPv6 /64.
    #[serde(default = "default_max_per_client")]
    pub max_connections_per_client: usize,
    /// Open connections at most per IPv6 /48 (one site's many /64s).
    #[serde(default = "default_max_per_ipv6_48")]
    pub max_connections_per_ipv6_48: usize,
    /// Connections still sending their hello or request head, per front; when full, the
    /// oldest of them is closed to make room for a new one.
    #[serde(default = "default_max_pending")]
    pub max_pending_connections: usize,
    /// Mark the TC program sets on replies from transparent backends; a policy rule sends
    /// packets with it to `route_table` (local delivery to the transparent socket).
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
    pub relay: RelayMode,
}

/// A time in seconds, as the file writes it (`hello_timeout_secs = 2.5`): more than 0 and at
/// most a day.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd, Deserialize)]
#[serde(try_from = "f64")]
pub struct Secs(std::time::Duration);

/// A time outside (0, 86400] seconds.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{0}: must be more than 0 and at most 86400 seconds")]
pub struct SecsError(f64);

impl TryFrom<f64> for Secs {
    type Error = SecsError;
    fn try_from(s: f64) -> std::result::Result<Self, SecsError> {
        if s > 0.0 && s <= 86_400.0 { Ok(Secs(std::time::Duration::from_secs_f64(s))) } else { Err(SecsError(s)) }
    }
}

impl Secs {
    /// A default written in the code.
    fn literal(s: f64) -> Self {
        Secs::try_from(s).expect("a literal in range")
    }

    /// The duration.
    pub fn get(self) -> std::time::Duration {
        self.0
    }
}

impl std::fmt::Display for Secs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}s", self.0.as_secs_f64())
    }
}

/// How a splitter relays the bytes of an established connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Through a userspace buffer per direction (default: measured as fast as splice in CPU
    /// and faster in wall time; see bench/README.md).
    #[default]
    Copy,
    /// `splice(2)` through a pipe per direction: the bytes stay in the kernel.
    Splice,
}

/// `[tls]`: the TLS front on 443, routing by the ClientHello's server name.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// Addresses to listen on.
    #[serde(default = "default_tls_listen")]
    pub listen: Vec<SocketAddr>,
    /// Route for no SNI, unknown names and non-TLS bytes; without one those connections are
    /// closed (TLS: with an `unrecognized_name` alert).
    pub default: Option<String>,
    /// Largest ClientHello accepted, in bytes (all its records).
    #[serde(default = "default_max_hello")]
    pub max_hello_bytes: usize,
    /// Time a client has to send its whole ClientHello.
    #[serde(default = "default_hello_timeout")]
    pub hello_timeout_secs: Secs,
    /// Routes by server name.
    #[serde(default, rename = "route")]
    pub routes: Vec<TlsRoute>,
}

/// Default `[tls] max_hello_bytes`: the upper bound on the bytes read before the hello is
/// complete.
pub const DEFAULT_MAX_HELLO: usize = 16 * 1024;

/// Default `[http] max_head_bytes`.
pub const DEFAULT_MAX_HEAD: usize = 16 * 1024;

fn default_tls_listen() -> Vec<SocketAddr> {
    vec!["0.0.0.0:443".parse().expect("literal"), "[::]:443".parse().expect("literal")]
}
fn default_max_hello() -> usize {
    DEFAULT_MAX_HELLO
}
fn default_hello_timeout() -> Secs {
    Secs::literal(10.0)
}
fn default_connect_timeout() -> Secs {
    Secs::literal(3.0)
}
fn default_idle_timeout() -> Secs {
    Secs::literal(600.0)
}
fn default_drain_timeout() -> Secs {
    Secs::literal(10.0)
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_per_client() -> usize {
    256
}
fn default_max_per_ipv6_48() -> usize {
    1024
}
fn default_max_pending() -> usize {
    1024
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

/// `[[tls.route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsRoute {
    /// Unique name (used by `default` and in logs).
    pub name: String,
    /// Exact names or `*.domain` wildcards, matched case-insensitively.
    #[serde(default)]
    pub server_names: Vec<Pattern>,
    /// Backend address(es), at most one per address family (or `container`).
    #[serde(default)]
    pub backend: OneOrMany,
    /// A Docker container (Compose service or container name) to connect to instead.
    pub container: Option<String>,
    /// The container's port (required with `container`).
    pub container_port: Option<u16>,
    /// Connect from the client's own address (default). `false`: a plain connection from the
    /// host, for backends that cannot route replies back through this host.
    #[serde(default = "default_true")]
    pub transparent: bool,
}

fn default_true() -> bool {
    true
}

/// `[http]`: the HTTP front on port 80, routing by `Host`. Its connections are governed by
/// `[splitter]` like those of `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Addresses to listen on.
    #[serde(default = "default_http_listen")]
    pub listen: Vec<SocketAddr>,
    /// Route for unknown hosts and HTTP/1.0 requests without `Host`; without one those get
    /// `421 Misdirected Request`.
    pub default: Option<String>,
    /// Largest request head (request line and headers) accepted, in bytes.
    #[serde(default = "default_max_head")]
    pub max_head_bytes: usize,
    /// Time a client has to send its whole request head.
    #[serde(default = "default_hello_timeout")]
    pub head_timeout_secs: Secs,
    /// Routes by `Host`.
    #[serde(default, rename = "route")]
    pub routes: Vec<HttpRoute>,
}

fn default_http_listen() -> Vec<SocketAddr> {
    vec!["0.0.0.0:80".parse().expect("literal"), "[::]:80".parse().expect("literal")]
}
fn default_max_head() -> usize {
    DEFAULT_MAX_HEAD
}

/// `[[http.route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpRoute {
    /// Unique name among `[[http.route]]` and `[[tls.route]]` (they share counters).
    pub name: String,
    /// Exact names or `*.domain` wildcards, matched case-insensitively against `Host`.
    #[serde(default)]
    pub host_names: Vec<Pattern>,
    /// Backend address(es), at most one per address family (or `container`).
    #[serde(default)]
    pub backend: OneOrMany,
    /// A Docker container (Compose service or container name) to connect to instead.
    pub container: Option<String>,
    /// The container's port (required with `container`).
    pub container_port: Option<u16>,
    /// Connect from the client's own address (default).
    #[serde(default = "default_true")]
    pub transparent: bool,
    /// Answer every request with `308` to the same URL on `https://`, except
    /// `/.well-known/acme-challenge/...`, which is relayed to the backend.
    #[serde(default)]
    pub redirect_https: bool,
}

/// `[acme]`: certificates the agent obtains over ACME (HTTP-01 answered on port 80 by the
/// HTTP front) and renews in the background.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Acme {
    /// Contact e-mail for the ACME account (expiry warnings from the CA).
    pub email: String,
    /// The ACME server's directory URL.
    #[serde(default = "default_acme_directory")]
    pub directory: String,
    /// Names to obtain a certificate for, one certificate each (default with `[stack]`: the
    /// TURN name).
    #[serde(default)]
    pub names: Vec<CertName>,
    /// Where the account key and the certificates of names outside the stack are kept.
    #[serde(default = "default_acme_state_dir")]
    pub state_dir: PathBuf,
    /// A PEM root to trust for the ACME server's own HTTPS (a test or private CA such as
    /// Pebble); default: the system's roots.
    pub ca_root: Option<PathBuf>,
    /// Renew when the certificate expires within this many days.
    #[serde(default = "default_renew_days")]
    pub renew_before_days: u32,
    /// A container sent SIGUSR2 after a certificate changed (default with `[stack]`: coturn,
    /// which reloads its certificate on that signal).
    pub reload_container: Option<String>,
}

/// A name to obtain a certificate for: a host name, not a wildcard (HTTP-01 cannot validate
/// one).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "String")]
pub struct CertName(pub ServerName);

/// Why a `[acme] names` entry was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertNameError {
    /// `*.domain`.
    #[error("`{0}`: HTTP-01 cannot validate a wildcard")]
    Wildcard(String),
    /// Not a host name.
    #[error(transparent)]
    Invalid(crate::names::InvalidName),
}

impl TryFrom<String> for CertName {
    type Error = CertNameError;
    fn try_from(text: String) -> std::result::Result<Self, CertNameError> {
        ServerName::try_from(text).map(CertName).map_err(|e| match e.reason {
            crate::names::ServerNameError::Wildcard => CertNameError::Wildcard(e.text),
            _ => CertNameError::Invalid(e),
        })
    }
}

impl std::fmt::Display for CertName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn default_acme_directory() -> String {
    LETS_ENCRYPT.into()
}
fn default_acme_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/jitsi-agent/acme")
}
fn default_renew_days() -> u32 {
    30
}

impl Default for Splitter {
    /// Every default.
    fn default() -> Self {
        toml::from_str("").expect("an empty [splitter] table uses every default")
    }
}

impl Default for Tls {
    /// Listening on 443 (IPv4 and IPv6), no route.
    fn default() -> Self {
        toml::from_str("").expect("an empty [tls] table uses every default")
    }
}

impl Default for Http {
    /// Listening on port 80 (IPv4 and IPv6), no route.
    fn default() -> Self {
        toml::from_str("").expect("an empty [http] table uses every default")
    }
}

impl Acme {
    /// Every default, with this contact and no name yet.
    pub fn with_email(email: &str) -> Self {
        Acme {
            email: email.to_owned(),
            directory: default_acme_directory(),
            names: Vec::new(),
            state_dir: default_acme_state_dir(),
            ca_root: None,
            renew_before_days: default_renew_days(),
            reload_container: None,
        }
    }
}

impl Config {
    /// The first `[[steer]]` rule (with its index) that steers `protocol`/`port` in the kernel.
    pub fn steering(&self, protocol: Protocol, port: u16) -> Option<(usize, &SteerRule)> {
        self.steer.iter().enumerate().find(|(_, r)| r.protocol == protocol && r.port.contains(port))
    }

    /// The flood limits in force: `[flood]`, or its defaults without the section.
    pub fn flood(&self) -> Flood {
        self.flood.clone().unwrap_or_default()
    }

    /// The splitters' listen addresses (`[tls]`'s, then `[http]`'s, implied ones included).
    pub fn splitter_listens(&self) -> impl Iterator<Item = &SocketAddr> {
        self.tls.iter().flat_map(|t| &t.listen).chain(self.http.iter().flat_map(|h| &h.listen))
    }

    /// The splitters' TCP listen ports, each once, lowest first.
    pub fn splitter_ports(&self) -> Vec<u16> {
        let mut ports: Vec<u16> = self.splitter_listens().map(|a| a.port()).collect();
        ports.sort_unstable();
        ports.dedup();
        ports
    }

    /// The settings the splitter runs with: `[splitter]` (or its defaults) when a front
    /// (`[tls]`, `[http]`) is configured; `None` without either.
    pub fn splitter(&self) -> Option<Splitter> {
        (self.tls.is_some() || self.http.is_some()).then(|| self.splitter.clone().unwrap_or_default())
    }

    /// Splits a former `[sni]` section into `[splitter]` and `[tls]` (an error next to either),
    /// noting the deprecation.
    fn split_legacy_sni(&mut self) -> std::result::Result<(), (String, String)> {
        let Some(sni) = self.legacy_sni.take() else { return Ok(()) };
        if self.tls.is_some() || self.splitter.is_some() {
            return Err((
                "sni".into(),
                "`[sni]` is the former name of `[tls]` and `[splitter]`: write only the new sections".into(),
            ));
        }
        let (tls, splitter, warning) = sni.split();
        (self.tls, self.splitter) = (Some(tls), splitter);
        self.warnings.push(warning);
        Ok(())
    }

    /// Reads, parses and validates `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::ConfigRead { path: path.into(), source })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let offset = e.span().map(|s| s.start);
            let message = e.message().trim_end();
            // A refused value is quoted first: `meet_example.org`: ...
            let value = message.strip_prefix('`').and_then(|m| m.split_once("`:")).map(|(v, _)| v);
            match offset.and_then(|o| locate::key_at(text, o, value)) {
                Some((key, at)) => {
                    Error::ConfigParse { at: locate::at(path, text, Some(at)), message: format!("`{key}`: {message}") }
                }
                None => Error::ConfigParse { at: locate::at(path, text, offset), message: message.to_owned() },
            }
        })?;
        // A key of [tls] or [splitter] may be written under the former [sni].
        let offset = |key: &str| {
            let legacy = ["tls.", "splitter."].iter().find_map(|p| key.strip_prefix(p)).map(|k| format!("sni.{k}"));
            locate::key(text, key).or_else(|| legacy.and_then(|k| locate::key(text, &k)))
        };
        let invalid = |(key, message): (String, String)| Error::ConfigInvalid {
            at: locate::at(path, text, offset(&key)),
            key,
            message,
        };
        config.split_legacy_sni().map_err(invalid)?;
        if config.splitter.is_some() && config.tls.is_none() && config.http.is_none() && config.stack.is_none() {
            config.warnings.push("`[splitter]` has no effect without `[tls]` or `[http]`".into());
        }
        config.validate().map_err(invalid)?;
        // The rules [stack] implies join the file's own; the result is checked again (an implied
        // rule may clash with one the file defines differently).
        let config = implied::add_implied(config);
        config
            .validate()
            .map_err(|(key, message)| invalid((key, format!("{message} (with the rules [stack] implies)"))))?;
        let mut config = config;
        let ports = config.splitter_ports();
        if config.flood().enabled && ports.len() > jitsi_common::MAX_GUARDED_PORTS {
            config.warnings.push(format!(
                "the splitters listen on {} ports: the flood limits count SYNs to the first {} only ({:?})",
                ports.len(),
                jitsi_common::MAX_GUARDED_PORTS,
                &ports[..jitsi_common::MAX_GUARDED_PORTS]
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
