//! Pebble, Let's Encrypt's test ACME server (Debian's `pebble` package), on the lab's
//! "internet": its HTTPS under a certificate from a CA of the test's own (the agent is told to
//! trust it with `[acme] ca_root`), and `pebble-challtestsrv` as its DNS, resolving every name
//! to the lab host's public address, so HTTP-01 validation connects to the host's port 80
//! through the uplink.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::netns::{NetNs, Running, spawn_in};

/// Where Pebble listens (the lab's "internet" address).
pub const PEBBLE_ADDR: &str = "203.0.113.2";

/// A running Pebble and its DNS.
pub struct Pebble {
    _dns: Running,
    _pebble: Running,
    dir: PathBuf,
    ns_name: String,
    /// The PEM file of the CA Pebble's own HTTPS certificate is from (for `ca_root`).
    pub ca_root: PathBuf,
    /// The ACME directory URL.
    pub directory: String,
}

impl Pebble {
    /// Starts Pebble in `inet`, with every name resolving to `host`; files go in `dir`.
    pub fn start(inet: &NetNs, dir: &Path, host: Ipv4Addr) -> Result<Self> {
        write_tls(dir)?;
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("{PEBBLE_ADDR}:14000"),
            "managementListenAddress": format!("{PEBBLE_ADDR}:15000"),
            "certificate": dir.join("pebble.pem"),
            "privateKey": dir.join("pebble.key"),
            "httpPort": 80,
            "tlsPort": 443,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false
        }});
        let config_path = dir.join("pebble.json");
        std::fs::write(&config_path, config.to_string())?;
        let dns_addr = format!("{PEBBLE_ADDR}:8053");
        let host = host.to_string();
        let dns = spawn_in(
            inet,
            "/usr/bin/pebble-challtestsrv",
            &[
                "-defaultIPv4",
                &host,
                "-defaultIPv6",
                "",
                "-dns01",
                &dns_addr,
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                &format!("{PEBBLE_ADDR}:8055"),
            ],
            &[],
            &dir.join("challtestsrv.log"),
        )?;
        let pebble = spawn_in(
            inet,
            "/usr/bin/pebble",
            &["-config", &config_path.to_string_lossy(), "-dnsserver", &dns_addr],
            // No random validation delay, no nonce rejected on purpose: the test is about the
            // agent's side of the protocol, not about retrying.
            &[("PEBBLE_VA_NOSLEEP", "1"), ("PEBBLE_WFE_NONCEREJECT", "0")],
            &dir.join("pebble.log"),
        )?;
        let me = Pebble {
            _dns: dns,
            _pebble: pebble,
            dir: dir.to_owned(),
            ns_name: inet.name().to_owned(),
            ca_root: dir.join("lab-ca.pem"),
            directory: format!("https://{PEBBLE_ADDR}:14000/dir"),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !me.log().contains("Listening on") {
            if Instant::now() > deadline {
                bail!("pebble did not start:\n{}", me.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(me)
    }

    /// Pebble's output.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("pebble.log")).unwrap_or_default()
    }

    /// An `[acme]` section using this Pebble, state in `state_dir`.
    pub fn acme_section(&self, names: &[&str], state_dir: &Path) -> String {
        let names = names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let names = if names.is_empty() { String::new() } else { format!("names = [{names}]\n") };
        format!(
            "[acme]\nemail = \"ops@example.test\"\ndirectory = \"{}\"\n{names}state_dir = \"{}\"\nca_root = \"{}\"\n",
            self.directory,
            state_dir.display(),
            self.ca_root.display()
        )
    }

    /// Writes Pebble's root (a new one each run, from its management interface) to a file
    /// and returns its path: the root the certificates it issues chain to.
    pub fn root(&self) -> Result<PathBuf> {
        let out = crate::netns::run(std::process::Command::new("ip").args([
            "netns",
            "exec",
            &self.ns_name,
            "curl",
            "-sS",
            "--cacert",
            &self.ca_root.to_string_lossy(),
            &format!("https://{PEBBLE_ADDR}:15000/roots/0"),
        ]))?;
        let path = self.dir.join("pebble-root.pem");
        std::fs::write(&path, out)?;
        Ok(path)
    }
}

/// A CA of the test's own and a certificate from it for Pebble's HTTPS at [`PEBBLE_ADDR`].
fn write_tls(dir: &Path) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "jitsi-agent lab CA");
    let ca_cert = ca.self_signed(&ca_key)?;
    let key = KeyPair::generate()?;
    let mut leaf = CertificateParams::new(vec!["pebble".to_string()])?;
    leaf.subject_alt_names.push(SanType::IpAddress(PEBBLE_ADDR.parse()?));
    let cert = leaf.signed_by(&key, &Issuer::new(ca, ca_key))?;
    std::fs::write(dir.join("lab-ca.pem"), ca_cert.pem())?;
    std::fs::write(dir.join("pebble.pem"), cert.pem())?;
    std::fs::write(dir.join("pebble.key"), key.serialize_pem())?;
    Ok(())
}
