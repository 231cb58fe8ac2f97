//! `docker-compose.yml`: docker-jitsi-meet's services plus coturn on one fixed network, with
//! no port publishing for what the agent steers (the comments in the file say why).
//!
//! Every value that mirrors upstream comes from docker-jitsi-meet at the pinned tag: the
//! environment names are read from `data/docker-jitsi-meet.json` (extracted from upstream's
//! `docker-compose.yml` by `cargo xtask upstream-facts`), the rest is written here with the
//! upstream file it comes from, and the conformance test compares the result with that file.

use std::{collections::BTreeMap, fmt::Write as _, sync::OnceLock};

use serde::Deserialize;

use super::coturn;

/// The config directories upstream mounts (below `CONFIG`), all owned by uid 1000.
pub const CONFIG_DIRS: [&str; 9] = [
    "web",
    "storage/web",
    "storage/transcripts",
    "tmp/web-load-test",
    "prosody/config",
    "prosody/prosody-plugins-custom",
    "storage/prosody",
    "jicofo",
    "jvb",
];

/// Facts about upstream's services at one tag (`data/docker-jitsi-meet.json`).
#[derive(Debug, Deserialize)]
pub struct Upstream {
    /// The docker-jitsi-meet tag the facts are from.
    pub tag: String,
    /// Its commit.
    pub commit: String,
    /// Per service.
    pub services: BTreeMap<String, UpstreamService>,
}

/// One upstream service.
#[derive(Debug, Deserialize)]
pub struct UpstreamService {
    /// The image's name (`web`, `prosody`...).
    pub image: String,
    /// `read_only:`.
    pub read_only: bool,
    /// `tmpfs:` entries.
    pub tmpfs: Vec<String>,
    /// Volume targets and their flags.
    pub volumes: Vec<UpstreamVolume>,
    /// Every name in `environment:`.
    pub environment: Vec<String>,
    /// `labels:`.
    pub labels: BTreeMap<String, String>,
    /// `user:` in the Compose file (upstream sets none).
    pub compose_user: Option<String>,
    /// The image's `USER`.
    pub image_user: String,
    /// The image's healthcheck script, if it has one.
    pub healthcheck: Option<String>,
}

/// One volume.
#[derive(Debug, Deserialize, PartialEq, Eq)]
pub struct UpstreamVolume {
    /// Path in the container.
    pub target: String,
    /// `Z`, `ro,z`...
    pub flags: String,
}

/// The facts the generator was built with.
pub fn upstream() -> &'static Upstream {
    static FACTS: OnceLock<Upstream> = OnceLock::new();
    FACTS.get_or_init(|| {
        serde_json::from_str(include_str!("../../data/docker-jitsi-meet.json")).expect("the embedded upstream facts")
    })
}

/// Upstream's tmpfs mounts for the images' read-only root (`docker-compose.yml` at
/// `stable-11146-2`, every Jitsi service): s6-overlay and each service's init write to `/run`
/// (`base/Dockerfile`: `S6_READ_ONLY_ROOT=1`).
const TMPFS: [&str; 2] = ["/run:size=16M,mode=1750,exec", "/tmp:size=16M,mode=1777,noexec"];

/// One service of the file.
struct Service {
    name: &'static str,
    /// A comment above the service.
    comment: &'static str,
    image: String,
    /// docker-jitsi-meet's read-only images (with `TMPFS`).
    jitsi: bool,
    command: Vec<String>,
    expose: &'static [&'static str],
    volumes: Vec<String>,
    depends_on: &'static [&'static str],
    aliases: &'static [&'static str],
}

impl Service {
    fn jitsi(name: &'static str, volumes: &[&str]) -> Self {
        Service {
            name,
            comment: "",
            image: format!("${{JITSI_IMAGE_REPO}}/{name}:${{JITSI_IMAGE_VERSION}}"),
            jitsi: true,
            command: vec![],
            expose: &[],
            volumes: volumes.iter().map(|v| format!("${{CONFIG}}/{v}")).collect(),
            depends_on: &[],
            aliases: &[],
        }
    }

    fn render(&self, out: &mut String) {
        let mut l = |indent: usize, text: &str| {
            let _ = writeln!(out, "{:indent$}{text}", "");
        };
        if !self.comment.is_empty() {
            for c in self.comment.lines() {
                l(2, &format!("# {c}"));
            }
        }
        l(2, &format!("{}:", self.name));
        l(4, &format!("image: {}", self.image));
        l(4, "restart: unless-stopped");
        let up = self.jitsi.then(|| &upstream().services[self.name]);
        if up.is_some() {
            // No `user:`: the images run as uid 1000 (`USER s6`) with supplementary groups
            // that an explicit `user: 1000:1000` would drop.
            l(4, "read_only: true");
            l(4, "tmpfs:");
            for t in TMPFS {
                l(6, &format!("- {t}"));
            }
        }
        if !self.command.is_empty() {
            let args: Vec<String> = self.command.iter().map(|a| format!("\"{a}\"")).collect();
            l(4, &format!("command: [{}]", args.join(", ")));
        }
        if !self.expose.is_empty() {
            l(4, "expose:");
            for e in self.expose {
                l(6, &format!("- \"{e}\""));
            }
        }
        l(4, "volumes:");
        for v in &self.volumes {
            l(6, &format!("- {v}"));
        }
        if let Some(up) = up {
            l(4, "labels:");
            for (k, v) in &up.labels {
                l(6, &format!("{k}: \"{v}\""));
            }
            if let Some(script) = &up.healthcheck {
                // The image's own script (`<service>/rootfs/usr/local/bin/healthcheck.sh`);
                // upstream's Compose file does not wire it, so `stack show` and `check` could
                // not tell a started service from a working one.
                l(4, "healthcheck:");
                l(6, &format!("test: [\"CMD\", \"{script}\"]"));
                l(6, "interval: 10s");
                l(6, "timeout: 5s");
                l(6, "retries: 3");
                l(6, "start_period: 60s");
            }
            l(4, "environment:");
            for e in &up.environment {
                // Upstream has entries such as `SENTRY_DSN="${JVB_SENTRY_DSN:-0}"`.
                if e.contains(['"', '$', ':']) {
                    l(6, &format!("- '{e}'"));
                } else {
                    l(6, &format!("- {e}"));
                }
            }
        }
        if !self.depends_on.is_empty() {
            l(4, "depends_on:");
            for d in self.depends_on {
                l(6, &format!("- {d}"));
            }
        }
        l(4, "networks:");
        l(6, "meet.jitsi:");
        l(8, &format!("ipv4_address: ${{{}_IP}}", self.name.to_uppercase()));
        if !self.aliases.is_empty() {
            l(8, "aliases:");
            for a in self.aliases {
                l(10, &format!("- {a}"));
            }
        }
    }
}

/// The services, with the volumes, `expose:` ports, prosody's alias and `depends_on` of
/// upstream's `docker-compose.yml` at `stable-11146-2` (jvb's 10000/udp and 8080 are its
/// published ports there, exposed here on the stack's network only).
fn services() -> Vec<Service> {
    let web = Service {
        depends_on: &["jvb"],
        ..Service::jitsi(
            "web",
            &[
                "web:/config:Z",
                "storage/web:/storage:Z",
                "storage/transcripts:/usr/share/jitsi-meet/transcripts:ro,z",
                "tmp/web-load-test:/usr/share/jitsi-meet/load-test:Z",
            ],
        )
    };
    let prosody = Service {
        expose: &["5222", "5269", "5347", "5280"],
        aliases: &["xmpp.meet.jitsi"],
        ..Service::jitsi(
            "prosody",
            &[
                "prosody/config:/config:Z",
                "prosody/prosody-plugins-custom:/prosody-plugins-custom:Z",
                "storage/prosody:/var/lib/prosody:Z",
            ],
        )
    };
    let jicofo = Service { depends_on: &["prosody"], ..Service::jitsi("jicofo", &["jicofo:/config:Z"]) };
    let jvb = Service {
        comment: "10000/udp: steered by jitsi-agent (see the top of this file). 8080 (REST, health):\n\
                  reachable on this network only.",
        expose: &["10000/udp", "8080"],
        depends_on: &["prosody"],
        ..Service::jitsi("jvb", &["jvb:/config:Z"])
    };
    let coturn = Service {
        name: "coturn",
        comment: "Not part of docker-jitsi-meet. 3478/udp, the relay ports (min-port..max-port in\n\
                  coturn/turnserver.conf) and 5349/tcp: steered / SNI-routed by jitsi-agent (see the\n\
                  top of this file). The directory is mounted, not single files:\n\
                  a renewed certificate (renamed into place) is seen by the running container.",
        image: "${COTURN_IMAGE}".into(),
        jitsi: false,
        // `--use-auth-secret` on the command line too: a config coturn cannot read then leaves
        // it refusing every client instead of relaying for anyone (coturn falls back to no
        // authentication without one: `src/apps/relay/mainrelay.c` at 4.17.0).
        command: vec!["-c".into(), coturn::CONF.into(), "--use-auth-secret".into()],
        expose: &["3478/udp", "5349"],
        volumes: vec![format!("./coturn:{}:ro", coturn::MOUNT)],
        depends_on: &[],
        aliases: &[],
    };
    vec![web, prosody, jicofo, jvb, coturn]
}

/// The Compose file. Everything variable comes from `.env`, so the file itself holds no
/// secret and an operator of docker-jitsi-meet recognises it.
pub fn compose_yml() -> String {
    let up = upstream();
    let mut s = format!(
        "# Generated by `jitsi-agent stack init`: docker-jitsi-meet's services ({} {}) plus coturn.\n",
        up.tag,
        &up.commit[..12.min(up.commit.len())]
    );
    s.push_str(
        "#\n\
         # No `ports:` for 80/tcp, 443/tcp, 10000/udp, 3478/udp or coturn's relay ports: jitsi-agent\n\
         # receives those on the uplink and hands them to the fixed addresses below itself (XDP for UDP, its Host and SNI\n\
         # splitters for 80 and 443), so every container sees the client's real address. Publishing\n\
         # them here would add docker-proxy and DNAT rules that the steered traffic never passes\n\
         # through, and on 80/443 would take connections away from the agent. The fixed subnet and\n\
         # addresses (STACK_SUBNET and *_IP in .env) are what the agent's rules point at: change them\n\
         # only by changing [stack] subnet and running `jitsi-agent stack init` again.\n\
         \n\
         services:\n",
    );
    for svc in services() {
        svc.render(&mut s);
        s.push('\n');
    }
    s.push_str(
        "networks:\n  meet.jitsi:\n    driver: bridge\n    ipam:\n      config:\n        - subnet: ${STACK_SUBNET}\n",
    );
    s
}
