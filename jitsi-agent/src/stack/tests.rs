//! `stack init` output: valid Compose, the variables and coturn settings the images expect,
//! secrets, modes, and never replacing edits or secrets.

use std::{
    collections::BTreeMap,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::Path,
};

use super::{
    init::{Action, Owners, init_with},
    secrets::{PASSWORDS, TURN_SECRET},
};

/// `init` as far as this process can: owners set when root (as `stack init` requires), left
/// when a developer runs the unit tests without root.
fn init(stack: &crate::config::Stack, force: bool) -> crate::error::Result<super::init::Report> {
    init_with(stack, &[], force, owners())
}

fn owners() -> Owners {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 { Owners::Set } else { Owners::Leave }
}
use crate::config::Config;

fn stack_config(dir: &Path, extra: &str) -> crate::config::Stack {
    let text = format!(
        "[uplink]\ninterface = \"eth0\"\n[stack]\nmeet_domain = \"meet.example.org\"\nturn_domain = \"turn.example.org\"\n\
         public_addresses = [\"198.51.100.7\"]\ndirectory = \"{}\"\n{extra}",
        dir.display()
    );
    Config::parse(&text, Path::new("t.toml")).unwrap().stack.unwrap()
}

fn env_map(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[test]
fn the_compose_file_validates_against_the_compose_schema() {
    let dir = tempfile::tempdir().unwrap();
    init(&stack_config(dir.path(), ""), false).unwrap();
    let yaml: serde_json::Value =
        serde_yaml::from_str(&std::fs::read_to_string(dir.path().join("docker-compose.yml")).unwrap()).unwrap();
    let schema_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/compose-spec.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(schema_path).unwrap()).unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator.iter_errors(&yaml).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{errors:#?}");
    // The schema is not toothless: an unknown key and a wrong type are reported.
    let mut broken = yaml.clone();
    broken["services"]["web"]["bogus_key"] = serde_json::json!(1);
    assert!(!validator.is_valid(&broken));
    let mut broken = yaml.clone();
    broken["services"]["web"]["volumes"] = serde_json::json!(42);
    assert!(!validator.is_valid(&broken));
    let services: Vec<&String> = yaml["services"].as_object().unwrap().keys().collect();
    assert_eq!(services, ["coturn", "jicofo", "jvb", "prosody", "web"]);
    for (name, svc) in yaml["services"].as_object().unwrap() {
        assert!(svc.get("ports").is_none(), "{name} publishes ports: the agent steers them");
    }
    assert_eq!(yaml["services"]["prosody"]["networks"]["meet.jitsi"]["aliases"][0], "xmpp.meet.jitsi");
}

#[test]
fn env_and_coturn_carry_what_the_images_expect() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_config(dir.path(), "letsencrypt_email = \"ops@example.org\"\n");
    let report = init(&stack, false).unwrap();
    assert_eq!(report.secrets_drawn.len(), 7, "{report}");
    let env = env_map(&std::fs::read_to_string(dir.path().join(".env")).unwrap());
    for (k, v) in [
        ("PUBLIC_URL", "https://meet.example.org"),
        ("JVB_ADVERTISE_IPS", "198.51.100.7"),
        ("ENABLE_LETSENCRYPT", "1"),
        ("LETSENCRYPT_DOMAIN", "meet.example.org"),
        ("LETSENCRYPT_EMAIL", "ops@example.org"),
        ("TURN_HOST", "turn.example.org"),
        ("TURN_PORT", "3478"),
        ("TURN_TRANSPORT", "udp"),
        ("TURNS_HOST", "turn.example.org"),
        ("TURNS_PORT", "443"),
        ("XMPP_DOMAIN", "meet.jitsi"),
        ("JITSI_IMAGE_REPO", "ghcr.io/jitsi"),
        ("JITSI_IMAGE_VERSION", "stable-11146-2"),
        ("STACK_SUBNET", "172.18.0.0/24"),
        ("JVB_IP", "172.18.0.10"),
        ("COTURN_IP", "172.18.0.11"),
        ("WEB_IP", "172.18.0.12"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(!env.contains_key("DOCKER_HOST_ADDRESS"), "deprecated upstream");
    // Secrets: all present, all different, hex of 128 bits (256 for TURN) from the CSPRNG.
    let secrets: Vec<&String> = PASSWORDS.iter().chain([&TURN_SECRET]).map(|k| &env[*k]).collect();
    let distinct: std::collections::HashSet<&&String> = secrets.iter().collect();
    assert_eq!(distinct.len(), secrets.len());
    for s in &secrets {
        assert!(s.len() >= 32 && s.chars().all(|c| c.is_ascii_hexdigit()), "{} chars", s.len());
    }
    assert_eq!(env[TURN_SECRET].len(), 64);

    let turn = std::fs::read_to_string(dir.path().join("coturn/turnserver.conf")).unwrap();
    let lines: Vec<&str> = turn.lines().collect();
    for want in [
        "use-auth-secret",
        &format!("static-auth-secret={}", env[TURN_SECRET]),
        "realm=meet.example.org",
        "listening-port=3478",
        "tls-listening-port=5349",
        "external-ip=198.51.100.7",
        "denied-peer-ip=172.18.0.0-172.18.0.255",
        "min-port=61000",
        "max-port=65535",
        "log-file=stdout",
        "cert=/etc/coturn/certs/turn.crt",
        "no-multicast-peers",
        "denied-peer-ip=10.0.0.0-10.255.255.255",
        "denied-peer-ip=172.16.0.0-172.31.255.255",
        "denied-peer-ip=192.168.0.0-192.168.255.255",
        "denied-peer-ip=127.0.0.0-127.255.255.255",
        "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        "allowed-peer-ip=172.18.0.10",
        "allowed-peer-ip=172.18.0.11",
    ] {
        assert!(lines.contains(&want), "turnserver.conf lacks `{want}`");
    }
    assert_eq!(
        lines.iter().filter(|l| l.starts_with("allowed-peer-ip")).count(),
        2,
        "only the bridge and coturn itself"
    );
    assert!(!lines.contains(&"syslog"), "no syslog in coturn's image");
    assert_eq!(mode(&dir.path().join(".env")), 0o600);
    assert_eq!(mode(&dir.path().join("coturn/turnserver.conf")), 0o640);
    assert_eq!(mode(&dir.path().join("docker-compose.yml")), 0o644);
    for d in super::compose::CONFIG_DIRS {
        let p = dir.path().join("config").join(d);
        assert!(p.is_dir(), "{d}");
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(std::fs::metadata(&p).unwrap().uid(), 1000, "{d} owned by uid 1000");
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        let owner = |p: &str| {
            let m = std::fs::metadata(dir.path().join(p)).unwrap();
            (m.uid(), m.gid(), m.permissions().mode() & 0o777)
        };
        // Only the leaves are handed to uid 1000; coturn reads its files by group and can
        // write nowhere in its directory.
        assert_eq!(owner("."), (0, 0, 0o700), "only root enters the project");
        assert_eq!(owner("config"), (0, 0, 0o755));
        assert_eq!(owner("config/storage"), (0, 0, 0o755));
        assert_eq!(owner("coturn"), (0, 65534, 0o750));
        assert_eq!(owner("coturn/certs"), (0, 65534, 0o750));
        assert_eq!(owner("coturn/turnserver.conf"), (0, 65534, 0o640));
        assert_eq!(owner("coturn/certs/turn.key"), (0, 65534, 0o640));
        assert_eq!(owner("coturn/certs/turn.crt"), (0, 65534, 0o644));
        assert_eq!(owner(".env"), (0, 0, 0o600));
    }
    // coturn gets a certificate for its first start: the placeholder, which the ACME client
    // counts as none (so it orders the real one at once).
    let chain = std::fs::read(dir.path().join("coturn/certs/turn.crt")).unwrap();
    assert!(crate::acme::cert::is_placeholder(&chain));
    assert_eq!(crate::acme::cert::leaf(&chain).unwrap().1, ["turn.example.org"]);
    for (k, v) in [
        ("JVB_DISABLE_STUN", "1"),
        ("PROSODY_TRUSTED_PROXIES", "127.0.0.1,::1,172.18.0.12"),
        ("LETSENCRYPT_ACME_SERVER", "letsencrypt"),
    ] {
        assert_eq!(env.get(k).map(String::as_str), Some(v), "{k}");
    }
}

#[test]
fn jvb_advertises_the_lan_addresses_and_ipv6_is_left_out_with_a_note() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_config(dir.path(), "").clone();
    let stack = crate::config::Stack {
        public_addresses: vec!["198.51.100.7".parse().unwrap(), "2001:db8::7".parse().unwrap()],
        ..stack
    };
    let lan = ["192.168.1.20".parse().unwrap(), "198.51.100.7".parse().unwrap(), "fd00::20".parse().unwrap()];
    let report = init_with(&stack, &lan, false, owners()).unwrap();
    let env = env_map(&std::fs::read_to_string(dir.path().join(".env")).unwrap());
    assert_eq!(env["JVB_ADVERTISE_IPS"], "198.51.100.7,192.168.1.20", "public first, LAN next, once each, no v6");
    let turn = std::fs::read_to_string(dir.path().join("coturn/turnserver.conf")).unwrap();
    let external: Vec<&str> = turn.lines().filter(|l| l.starts_with("external-ip")).collect();
    assert_eq!(external, ["external-ip=198.51.100.7"], "no bare v6 external-ip");
    let said = report.to_string();
    assert!(said.contains("note: IPv6 public address(es) 2001:db8::7 not advertised"), "{said}");
}

#[test]
fn init_refuses_without_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        eprintln!("skipping: running as root (the refusal is for other users)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let e = super::init::init(&stack_config(dir.path(), ""), &[], false).unwrap_err().to_string();
    assert!(e.contains("needs root") && e.contains("65534"), "{e}");
    assert!(!dir.path().join("coturn/turnserver.conf").exists(), "nothing written");
}

#[test]
fn init_does_not_follow_symlinks_planted_in_the_project() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_config(dir.path(), "");
    init(&stack, false).unwrap();
    // A container's user replaces a directory it could once write to with a link to /etc.
    let target = tempfile::tempdir().unwrap();
    let storage = dir.path().join("config/storage");
    std::fs::remove_dir_all(&storage).unwrap();
    std::os::unix::fs::symlink(target.path(), &storage).unwrap();
    let e = init(&stack, false).unwrap_err();
    let e = format!("{e}: {}", std::error::Error::source(&e).map(ToString::to_string).unwrap_or_default());
    assert!(e.contains("config/storage") && e.contains("symlink"), "{e}");
    assert_eq!(std::fs::read_dir(target.path()).unwrap().count(), 0, "nothing created through the link");
    // A symlink in place of a generated file is replaced, its target untouched.
    std::fs::remove_file(&storage).unwrap();
    let victim = target.path().join("victim");
    std::fs::write(&victim, "keep").unwrap();
    let conf = dir.path().join("coturn/turnserver.conf");
    std::fs::remove_file(&conf).unwrap();
    std::os::unix::fs::symlink(&victim, &conf).unwrap();
    init(&stack, false).unwrap();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
    assert!(!std::fs::symlink_metadata(&conf).unwrap().file_type().is_symlink());
}

#[test]
fn reruns_keep_secrets_and_edits_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let stack = stack_config(dir.path(), "");
    init(&stack, false).unwrap();
    let env_before = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    // Unchanged config: nothing rewritten, no secret drawn.
    let again = init(&stack, false).unwrap();
    assert!(again.secrets_drawn.is_empty());
    assert!(again.paths.iter().all(|(_, a)| *a == Action::Unchanged), "{again}");
    // A config change regenerates what the operator did not edit, keeping the secrets.
    let changed = stack_config(dir.path(), "image_tag = \"stable-99999\"\n");
    let r = init(&changed, false).unwrap();
    let env_after = std::fs::read_to_string(dir.path().join(".env")).unwrap();
    assert!(env_after.contains("JITSI_IMAGE_VERSION=stable-99999"), "{r}");
    for k in PASSWORDS.iter().chain([&TURN_SECRET]) {
        assert_eq!(env_map(&env_before)[*k], env_map(&env_after)[*k], "{k} kept");
    }
    // An operator's edit is kept, and said so...
    let compose = dir.path().join("docker-compose.yml");
    let edited = std::fs::read_to_string(&compose).unwrap().replace("restart: unless-stopped", "restart: always");
    std::fs::write(&compose, &edited).unwrap();
    let r = init(&stack, false).unwrap();
    assert!(r.paths.contains(&("docker-compose.yml".into(), Action::KeptEdited)), "{r}");
    assert!(r.to_string().contains("kept (edited since generated; --force replaces it)"));
    assert_eq!(std::fs::read_to_string(&compose).unwrap(), edited);
    // ...until --force, which still keeps the secrets.
    let r = init(&stack, true).unwrap();
    assert!(r.paths.contains(&("docker-compose.yml".into(), Action::Wrote)), "{r}");
    assert!(r.secrets_drawn.is_empty());
    assert_ne!(std::fs::read_to_string(&compose).unwrap(), edited);
}

/// Parsed names as the file writes them.
fn strings(names: &[impl ToString]) -> Vec<String> {
    names.iter().map(ToString::to_string).collect()
}

#[test]
fn stack_section_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let base = format!(
        "[uplink]\ninterface = \"eth0\"\n[stack]\nmeet_domain = \"meet.example.org\"\nturn_domain = \"turn.example.org\"\n\
         public_addresses = [\"198.51.100.7\"]\ndirectory = \"{}\"\n",
        dir.path().display()
    );
    for (extra, want) in [
        ("subnet = \"8.8.8.0/24\"\n", "t.toml:8:10: `stack.subnet`: 8.8.8.0 is not a private"),
        ("letsencrypt_email = \"nope\"\n", "`stack.letsencrypt_email`"),
    ] {
        let e = Config::parse(&format!("{base}{extra}"), Path::new("t.toml")).unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let same = base.replace("turn.example.org", "meet.example.org");
    let e = Config::parse(&same, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("`stack.turn_domain`: must differ"), "{e}");
}

#[test]
fn stack_implies_the_rules_that_wire_it_and_the_file_wins() {
    let dir = tempfile::tempdir().unwrap();
    let c = {
        let s = stack_config(dir.path(), "letsencrypt_email = \"ops@example.org\"\n");
        let text = format!(
            "[uplink]\ninterface = \"eth0\"\n[stack]\nmeet_domain = \"{}\"\nturn_domain = \"{}\"\npublic_addresses = [\"198.51.100.7\"]\n\
             letsencrypt_email = \"ops@example.org\"\n",
            s.meet_domain, s.turn_domain
        );
        Config::parse(&text, Path::new("t.toml")).unwrap()
    };
    let steer: Vec<(&str, String, Option<&str>, Option<u16>)> = c
        .steer
        .iter()
        .map(|r| (r.name.as_str(), r.port.to_string(), r.container.as_deref(), r.container_port))
        .collect();
    assert_eq!(
        steer,
        [
            ("jvb", "10000".into(), Some("jvb"), Some(10000)),
            ("turn", "3478".into(), Some("coturn"), Some(3478)),
            ("turn-relay", "61000-65535".into(), Some("coturn"), Some(61000)),
        ],
        "port 80 is not kernel-steered: it goes through the HTTP front; coturn's relay range is"
    );
    let http = c.http.as_ref().unwrap();
    assert_eq!(http.listen, crate::config::Http::default().listen);
    let r = &http.routes[0];
    assert_eq!(
        (r.name.as_str(), strings(&r.host_names), r.container.as_deref(), r.container_port, r.redirect_https),
        ("web-http", vec!["meet.example.org".to_string()], Some("web"), Some(8000), true)
    );
    let acme = c.acme.as_ref().unwrap();
    assert_eq!(acme.email, "ops@example.org");
    assert_eq!(strings(&acme.names), ["turn.example.org"]);
    assert_eq!(acme.directory, crate::config::LETS_ENCRYPT);
    assert_eq!(acme.reload_container.as_deref(), Some("coturn"));
    let sni = c.tls.unwrap();
    assert_eq!(sni.default.as_deref(), Some("web"));
    let routes: Vec<(&str, String, Option<&str>, Option<u16>)> = sni
        .routes
        .iter()
        .map(|r| (r.name.as_str(), r.server_names[0].to_string(), r.container.as_deref(), r.container_port))
        .collect();
    assert_eq!(
        routes,
        [
            ("web", "meet.example.org".to_string(), Some("web"), Some(8443)),
            ("turn", "turn.example.org".to_string(), Some("coturn"), Some(5349))
        ]
    );
    // A rule of the file's own for udp/10000 replaces the implied one.
    let own = "[uplink]\ninterface = \"eth0\"\n[[steer]]\nname = \"media\"\nprotocol = \"udp\"\nport = 10000\nbackend = \"10.0.0.9:10000\"\n\
               [stack]\nmeet_domain = \"meet.example.org\"\nturn_domain = \"turn.example.org\"\npublic_addresses = [\"198.51.100.7\"]\n";
    let c = Config::parse(own, Path::new("t.toml")).unwrap();
    assert_eq!(c.steer.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), ["media", "turn", "turn-relay"]);
    assert!(c.acme.is_none(), "no e-mail, no [acme]: no certificate is ordered");
    // coturn's relay range must not cover the listening ports, and a rule of the file's own that
    // only overlaps it is refused, not a reason to leave part of the range unsteered.
    let e = Config::parse(&format!("{own}relay_ports = \"3000-4000\"\n"), Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("`stack.relay_ports`: 3000-4000: includes port 3478"), "{e}");
    let overlap = own.replace("port = 10000\n", "port = \"65000-65100\"\n");
    let e = Config::parse(&overlap, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("is steered by rule `media` too (with the rules [stack] implies)"), "{e}");
    let relay = own.replace("name = \"media\"", "name = \"turn-relay\"");
    let e = Config::parse(&relay, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("coturn relays on udp/61000-65535 ([stack] relay_ports); set relay_ports instead"), "{e}");
    let tcp = own.replace("protocol = \"udp\"\nport = 10000\n", "protocol = \"tcp\"\nport = \"400-500\"\n");
    let e = Config::parse(&tcp, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("`steer[0].port`: tcp/400-500 is a splitter's listen port"), "{e}");
    // An [acme] of the file's own without names gets the TURN name; a kernel rule for tcp/80
    // keeps port 80 out of the HTTP front.
    let own = format!(
        "{own}[acme]\nemail = \"ops@example.org\"\ndirectory = \"https://ca.example.org/dir\"\n\
         [[steer]]\nname = \"www\"\nprotocol = \"tcp\"\nport = 80\nbackend = \"10.0.0.9:80\"\n"
    );
    let e = Config::parse(&own, Path::new("t.toml")).unwrap_err().to_string();
    assert!(e.contains("`acme`: HTTP-01 challenges are answered on port 80"), "{e}");
    let c = Config::parse(&own.replace("port = 80\n", "port = 8080\n"), Path::new("t.toml")).unwrap();
    let acme = c.acme.unwrap();
    assert_eq!(
        (strings(&acme.names), acme.directory.as_str()),
        (vec!["turn.example.org".to_string()], "https://ca.example.org/dir")
    );
}
