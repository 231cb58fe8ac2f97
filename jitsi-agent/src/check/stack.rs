//! The generated stack: its files readable by the containers that need them (and by nobody
//! else where they hold secrets), coturn's authentication really configured, and each
//! container's healthcheck.

use std::os::unix::fs::MetadataExt;

use super::Check;
use crate::{
    config::Stack,
    stack::{
        compose::CONFIG_DIRS,
        compose_cli,
        init::{COTURN_UID, JITSI_UID},
    },
};

/// Whether a process of `uid`/`gid` (and no other group) may open `meta`'s file for `bits`
/// (4 read, 2 write).
fn may(meta: &std::fs::Metadata, uid: u32, gid: u32, bits: u32) -> bool {
    let mode = meta.mode();
    let shift = if meta.uid() == uid {
        6
    } else if meta.gid() == gid {
        3
    } else {
        0
    };
    (mode >> shift) & bits == bits
}

const FIX: &str = "run `sudo jitsi-agent stack init` again: it sets these owners and modes";

/// The file checks for `[stack]`.
pub(super) fn files(stack: &Stack) -> Vec<Check> {
    let dir = &stack.directory;
    let mut out = Vec::new();
    let conf = dir.join("coturn/turnserver.conf");
    out.push(match std::fs::metadata(&conf) {
        Err(e) => Check::fail("stack: coturn config", format!("{}: {e}", conf.display()), FIX),
        Ok(m) if !may(&m, COTURN_UID, COTURN_UID, 4) => Check::fail(
            "stack: coturn config",
            format!(
                "{} is not readable by coturn (uid {COTURN_UID}): it would start on its defaults, without \
                 authentication (an open relay)",
                conf.display()
            ),
            FIX,
        ),
        Ok(m) if m.mode() & 0o004 != 0 => Check::fail(
            "stack: coturn config",
            format!("{} is readable by every user: it holds the TURN secret", conf.display()),
            FIX,
        ),
        Ok(_) => match std::fs::read_to_string(&conf) {
            Ok(t)
                if t.lines().any(|l| l.trim() == "use-auth-secret")
                    && t.lines().any(|l| l.trim().starts_with("static-auth-secret=") && l.trim().len() > 19) =>
            {
                Check::ok("stack: coturn config", "readable by coturn only, shared-secret authentication on")
            }
            Ok(_) => Check::fail(
                "stack: coturn config",
                "no `use-auth-secret` with a `static-auth-secret`: coturn would relay for anyone",
                "run `jitsi-agent stack init --force` (the secret in .env is kept)",
            ),
            Err(e) => Check::fail("stack: coturn config", format!("{}: {e}", conf.display()), FIX),
        },
    });
    for d in ["coturn", "coturn/certs"] {
        let p = dir.join(d);
        if !std::fs::metadata(&p).is_ok_and(|m| may(&m, COTURN_UID, COTURN_UID, 5)) {
            out.push(Check::fail(format!("stack: {d}/"), "coturn (uid 65534) cannot enter it", FIX));
        }
    }
    let env = dir.join(".env");
    if !std::fs::metadata(&env).is_ok_and(|m| m.uid() == 0 && m.mode() & 0o077 == 0) {
        out.push(Check::fail("stack: .env", "not root's alone (mode 0600): it holds the secrets", FIX));
    }
    for f in ["coturn/certs/turn.crt", "coturn/certs/turn.key"] {
        let p = dir.join(f);
        out.push(match std::fs::metadata(&p) {
            Ok(m) if may(&m, COTURN_UID, COTURN_UID, 4) => Check::ok(format!("stack: {f}"), "readable by coturn"),
            Ok(_) => Check::fail(format!("stack: {f}"), "not readable by coturn: TURN over TLS stays off", FIX),
            Err(e) => Check::fail(format!("stack: {f}"), format!("{e}: coturn would start without TLS"), FIX),
        });
    }
    let unwritable: Vec<&str> = CONFIG_DIRS
        .iter()
        .copied()
        .filter(|d| {
            let p = dir.join("config").join(d);
            !std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir() && may(&m, JITSI_UID, JITSI_UID, 2))
        })
        .collect();
    out.push(if unwritable.is_empty() {
        Check::ok("stack: config directories", format!("{} writable by uid {JITSI_UID}", CONFIG_DIRS.len()))
    } else {
        Check::fail(
            "stack: config directories",
            format!("not (real directories) writable by uid {JITSI_UID}: {}", unwritable.join(", ")),
            FIX,
        )
    });
    out
}

/// Each container's Docker healthcheck (the images' own `healthcheck.sh`).
pub(super) async fn health() -> Vec<Check> {
    let Ok(rows) = compose_cli::show().await else { return Vec::new() };
    rows.into_iter()
        .filter_map(|r| {
            let what = format!("health {}", r.service);
            Some(match r.health.as_deref()? {
                "healthy" => Check::ok(what, r.status),
                "unhealthy" => Check::fail(
                    what,
                    r.status,
                    format!(
                        "see `docker logs {}` and `docker inspect --format '{{{{json .State.Health}}}}' {}`",
                        r.name, r.name
                    ),
                ),
                _ => Check::warn(what, r.status, "still starting: check again in a minute"),
            })
        })
        .collect()
}
