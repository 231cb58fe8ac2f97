//! The project's `.env`, with docker-jitsi-meet's variable names (mode 0600: it holds the
//! secrets).

use std::{fmt::Write as _, net::IpAddr};

use super::secrets::{PASSWORDS, Secrets, TURN_SECRET};
use crate::{
    config::Stack,
    layout::{Layout, PROJECT, Service},
};

/// The addresses the videobridge advertises: the public IPv4 addresses, then the uplink's own
/// (`lan`), as upstream's example lists a LAN address beside the public one (`env.example` at
/// `stable-11146-2`: `JVB_ADVERTISE_IPS=192.168.1.1,1.2.3.4,...`), so that participants on the
/// host's own network need no NAT loopback on the router. IPv6 is left out: the stack's network
/// is IPv4 only and jvb maps its (IPv4) local address to each entry.
pub fn advertised(stack: &Stack, lan: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in stack.public_addresses.iter().chain(lan).filter(|a| a.is_ipv4()) {
        if !out.contains(a) {
            out.push(*a);
        }
    }
    out
}

/// The `.env` text; `lan` is the uplink's own addresses.
pub fn env_file(stack: &Stack, layout: &Layout, secrets: &Secrets, lan: &[IpAddr]) -> String {
    let advertised: Vec<String> = advertised(stack, lan).iter().map(ToString::to_string).collect();
    let le = stack.letsencrypt_email.as_deref();
    let mut s = String::new();
    let mut var = |k: &str, v: &str| {
        let _ = writeln!(s, "{k}={v}");
    };
    var("COMPOSE_PROJECT_NAME", PROJECT);
    var("CONFIG", &stack.directory.join("config").display().to_string());
    var("TZ", &stack.timezone);
    var("JITSI_IMAGE_REPO", &stack.image_repo);
    var("JITSI_IMAGE_VERSION", &stack.image_tag);
    var("COTURN_IMAGE", &stack.coturn_image);
    var("PUBLIC_URL", &format!("https://{}", stack.meet_domain));
    // Behind NAT the bridge must announce the router's public address, not its Docker one.
    var("JVB_ADVERTISE_IPS", &advertised.join(","));
    // The addresses are known: no STUN lookup at start (jvb/rootfs/defaults/jvb.conf at
    // stable-11146-2 otherwise asks meet-jit-si-turnrelay.jitsi.net:443).
    var("JVB_DISABLE_STUN", "1");
    // TURN relays reach the bridge only on its private address (coturn allows that one peer):
    // keep it advertised (jvb/rootfs/defaults/jvb.conf at stable-11146-2, default true).
    var("JVB_ADVERTISE_PRIVATE_CANDIDATES", "1");
    // Prosody's BOSH and websocket arrive through web's nginx: trust it for X-Forwarded-For
    // so prosody logs the client's address (prosody/rootfs/defaults/prosody.cfg.lua at
    // stable-11146-2: default "127.0.0.1,::1").
    var("PROSODY_TRUSTED_PROXIES", &format!("127.0.0.1,::1,{}", layout.addr(Service::Web)));
    var("ENABLE_LETSENCRYPT", if le.is_some() { "1" } else { "0" });
    var("LETSENCRYPT_DOMAIN", stack.meet_domain.as_str());
    var("LETSENCRYPT_EMAIL", le.unwrap_or(""));
    // acme.sh 3.0.7 (web/Dockerfile) defaults to ZeroSSL; the web container's init passes
    // `--server $LETSENCRYPT_ACME_SERVER` (web/rootfs/etc/s6-overlay/scripts/config).
    var("LETSENCRYPT_ACME_SERVER", "letsencrypt");
    // `--staging` only when 1 (same script).
    var("LETSENCRYPT_USE_STAGING", "0");
    // The agent's HTTP front answers port 80 with 308 to https:// itself, except for the
    // ACME challenge path, which it relays to this container's acme.sh: the container must not
    // redirect that path, so it does not redirect at all (web/rootfs/defaults/default at
    // stable-11146-2: the redirect block only `if .Env.ENABLE_HTTP_REDIRECT`).
    var("ENABLE_HTTP_REDIRECT", "0");
    // Upstream's defaults, written out so the file says what runs (stable-11146-2):
    // web/rootfs/defaults/meet.conf (ENABLE_XMPP_WEBSOCKET "1", XMPP_BOSH_URL_BASE
    // "http://xmpp.meet.jitsi:5280"), prosody/rootfs/defaults/prosody.cfg.lua (XMPP_DOMAIN
    // "meet.jitsi", XMPP_MUC_DOMAIN "muc.meet.jitsi"), prosody/rootfs/defaults/conf.d/
    // jitsi-meet.cfg.lua (XMPP_AUTH_DOMAIN "auth.meet.jitsi", XMPP_INTERNAL_MUC_DOMAIN
    // "internal-muc.meet.jitsi"), docker-compose.yml (prosody's alias
    // `${XMPP_SERVER:-xmpp.meet.jitsi}`). ENABLE_IPV6=0: the stack's network is IPv4 only.
    var("ENABLE_XMPP_WEBSOCKET", "1");
    var("ENABLE_IPV6", "0");
    var("XMPP_DOMAIN", "meet.jitsi");
    var("XMPP_AUTH_DOMAIN", "auth.meet.jitsi");
    var("XMPP_MUC_DOMAIN", "muc.meet.jitsi");
    var("XMPP_INTERNAL_MUC_DOMAIN", "internal-muc.meet.jitsi");
    var("XMPP_SERVER", "xmpp.meet.jitsi");
    var("XMPP_BOSH_URL_BASE", "http://xmpp.meet.jitsi:5280");
    // TURN: UDP on 3478 (steered by the agent's XDP program), TLS on 443 under its own name
    // (split off by the agent's SNI router to coturn's 5349). Prosody hands out both with
    // short-lived credentials derived from TURN_CREDENTIALS. Names and meaning:
    // prosody/rootfs/defaults/prosody.cfg.lua at stable-11146-2 (TURN_PORT and TURNS_PORT
    // default to 443, TURN_TRANSPORT to tcp: set here; external_service_secret =
    // TURN_CREDENTIALS).
    var("TURN_HOST", stack.turn_domain.as_str());
    var("TURN_PORT", "3478");
    var("TURN_TRANSPORT", "udp");
    var("TURNS_HOST", stack.turn_domain.as_str());
    var("TURNS_PORT", "443");
    var("STUN_HOST", stack.turn_domain.as_str());
    var("STUN_PORT", "3478");
    var("STACK_SUBNET", &format!("{}/{}", layout.network, layout.prefix));
    for service in Service::ALL {
        var(&format!("{}_IP", service.name().to_uppercase()), &layout.addr(service).to_string());
    }
    for name in PASSWORDS.iter().copied().chain([TURN_SECRET]) {
        var(name, secrets.get(name));
    }
    format!(
        "# Generated by `jitsi-agent stack init`; variable names are docker-jitsi-meet's.\n# Holds secrets: keep it mode 0600.\n{s}"
    )
}
