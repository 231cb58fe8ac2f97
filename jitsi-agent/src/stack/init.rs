//! `stack init`: writes the project, never replacing a file the operator edited (unless
//! `--force`) nor a secret that exists, and says what it did.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{compose, coturn, env, secrets::Secrets};
use crate::{
    config::Stack,
    error::{Error, Result},
    safe_fs,
};

/// The uid/gid the rootless Jitsi images run as (`base/Dockerfile` at `stable-11146-2`: `USER
/// s6`, the first user `adduser` makes).
pub const JITSI_UID: u32 = 1000;
/// The uid/gid coturn's image runs as (`USER nobody:nogroup`: coturn's
/// `docker/coturn/debian/Dockerfile` at `docker/4.17.0-r0`).
pub const COTURN_UID: u32 = 65534;
/// Where `init` records the hash of each file it wrote (to tell operator edits apart).
pub const MANIFEST: &str = ".jitsi-agent-stack.json";

/// What happened to one path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Written (new, or regenerated because it was not edited, or `--force`).
    Wrote,
    /// Already exactly what would be written.
    Unchanged,
    /// Edited since `init` wrote it (or not written by it): left alone.
    KeptEdited,
    /// A directory created.
    Created,
    /// A self-signed placeholder written (no certificate yet).
    Placeholder,
}

/// The outcome of `init`.
#[derive(Debug, Default)]
pub struct Report {
    /// Path (relative to the project) and what happened.
    pub paths: Vec<(String, Action)>,
    /// Secrets drawn now (names only).
    pub secrets_drawn: Vec<&'static str>,
    /// The project directory.
    pub directory: PathBuf,
    /// What the operator should know (settings left out, and why).
    pub notes: Vec<String>,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "stack project in {}", self.directory.display())?;
        for (p, a) in &self.paths {
            let what = match a {
                Action::Wrote => "wrote",
                Action::Unchanged => "unchanged",
                Action::KeptEdited => "kept (edited since generated; --force replaces it)",
                Action::Created => "created",
                Action::Placeholder => "placeholder (self-signed, until ACME installs the real one)",
            };
            writeln!(f, "  {p:<40} {what}")?;
        }
        if self.secrets_drawn.is_empty() {
            writeln!(f, "secrets: all kept from .env")?;
        } else {
            writeln!(f, "secrets drawn (OS CSPRNG, in .env, mode 0600): {}", self.secrets_drawn.join(", "))?;
        }
        for n in &self.notes {
            writeln!(f, "note: {n}")?;
        }
        Ok(())
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn sha(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A uid and gid to give a path (`None`: leave it).
type Owner = Option<(u32, u32)>;

/// Whether `init` sets owners (as root, always: see `init`) or leaves them (unit tests run by
/// a developer without root).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owners {
    /// chown every directory and file to the uid/gid its container reads it with.
    Set,
    /// Leave owners as created (only for tests: the containers could not read the files).
    #[cfg(test)]
    Leave,
}

impl Owners {
    fn pick(self, uid: u32, gid: u32) -> Owner {
        match self {
            Owners::Set => Some((uid, gid)),
            #[cfg(test)]
            Owners::Leave => None,
        }
    }
}

/// Generates the project for `stack`; `lan` is the uplink's own addresses (advertised by the
/// videobridge beside the public ones).
///
/// Refuses without root: the containers read their files as uids 1000 (Jitsi) and 65534
/// (coturn), and a `turnserver.conf` coturn cannot read makes it start on its defaults,
/// without authentication: an open relay.
pub fn init(stack: &Stack, lan: &[IpAddr], force: bool) -> Result<Report> {
    if !is_root() {
        return Err(Error::io(
            "stack init",
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "needs root: the containers read their files as uid 1000 (Jitsi) and 65534 (coturn), \
                 which only root can give them (run `sudo jitsi-agent stack init ...`)",
            ),
        ));
    }
    init_with(stack, lan, force, Owners::Set)
}

/// `init` with the owners policy.
pub fn init_with(stack: &Stack, lan: &[IpAddr], force: bool, owners: Owners) -> Result<Report> {
    let dir = &stack.directory;
    let layout = stack.subnet;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    if owners == Owners::Set
        && let Some(parent) = dir.parent()
    {
        safe_fs::trusted_dir(parent).map_err(io(format!("the parent of {}", dir.display())))?;
    }
    // Only root (and dockerd, which resolves the mounts as root) enters the project: no host
    // user reads the secrets or web's keys, or writes what the containers load.
    safe_fs::ensure_dir(dir, 0o700, owners.pick(0, 0)).map_err(io(dir.display().to_string()))?;
    let manifest_path = dir.join(MANIFEST);
    let read = |p: &Path| safe_fs::read_capped(p, MAX_FILE).ok().flatten().and_then(|b| String::from_utf8(b).ok());
    let mut manifest: BTreeMap<String, String> =
        read(&manifest_path).and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let existing_env = read(&dir.join(".env"));
    let (secrets, drawn) = Secrets::complete(existing_env.as_deref())
        .map_err(|source| Error::Random { what: "drawing the stack's secrets", source })?;
    let mut report = Report { directory: dir.clone(), secrets_drawn: drawn, ..Report::default() };
    let dropped: Vec<String> = stack.public_addresses.iter().filter(|a| a.is_ipv6()).map(ToString::to_string).collect();
    if !dropped.is_empty() {
        report.notes.push(format!(
            "IPv6 public address(es) {} not advertised by jvb nor coturn: the stack's Docker network is IPv4 only",
            dropped.join(", ")
        ));
    }

    // Directories from the top down, each checked to be a real directory (never a symlink)
    // before it is used: the parents root's, only the leaves handed to the containers' users.
    let mut dirs: Vec<(PathBuf, u32, Owner)> = vec![(dir.join("config"), 0o755, owners.pick(0, 0))];
    for leaf in compose::CONFIG_DIRS {
        let mut p = dir.join("config");
        let parts: Vec<&str> = leaf.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            p = p.join(part);
            let owner = if i + 1 == parts.len() { (JITSI_UID, JITSI_UID) } else { (0, 0) };
            if !dirs.iter().any(|(d, _, _)| *d == p) {
                dirs.push((p.clone(), 0o755, owners.pick(owner.0, owner.1)));
            }
        }
    }
    // coturn reads its directory by group and cannot write to it.
    dirs.push((dir.join("coturn"), 0o750, owners.pick(0, COTURN_UID)));
    dirs.push((dir.join("coturn/certs"), 0o750, owners.pick(0, COTURN_UID)));
    for (d, mode, owner) in &dirs {
        if safe_fs::ensure_dir(d, *mode, *owner).map_err(io(d.display().to_string()))? {
            report.paths.push((rel(dir, d), Action::Created));
        }
    }

    let coturn_group = owners.pick(0, COTURN_UID);
    let files: [(&str, String, u32, Owner); 3] = [
        ("docker-compose.yml", compose::compose_yml(), 0o644, owners.pick(0, 0)),
        (".env", env::env_file(stack, &layout, &secrets, lan), 0o600, owners.pick(0, 0)),
        ("coturn/turnserver.conf", coturn::turnserver_conf(stack, &layout, &secrets), 0o640, coturn_group),
    ];
    for (name, text, mode, owner) in files {
        let path = dir.join(name);
        let action = match read(&path) {
            None => Action::Wrote,
            Some(current) if current == text => Action::Unchanged,
            Some(current) if force || manifest.get(name) == Some(&sha(&current)) => Action::Wrote,
            Some(_) => Action::KeptEdited,
        };
        if action == Action::Wrote {
            write(&path, &text, mode, owner)?;
            manifest.insert(name.to_string(), sha(&text));
        }
        report.paths.push((name.to_string(), action));
    }
    // coturn needs a certificate at its first start or it disables TLS for good: a
    // self-signed placeholder until the agent's ACME client installs the real one.
    let cert = dir.join("coturn/certs/turn.crt");
    if read(&cert).is_none() {
        let (chain, key) = crate::acme::cert::placeholder(stack.turn_domain.as_str()).map_err(|e| {
            Error::Certificate { what: "making coturn's placeholder certificate".into(), source: e.into() }
        })?;
        write(&dir.join("coturn/certs/turn.key"), &key, 0o640, coturn_group)?;
        write(&cert, &chain, 0o644, coturn_group)?;
        report.paths.push(("coturn/certs/turn.crt".into(), Action::Placeholder));
    }
    let text = serde_json::to_string_pretty(&manifest).expect("a map of strings");
    write(&manifest_path, &text, 0o644, owners.pick(0, 0))?;
    Ok(report)
}

/// The largest project file read back.
const MAX_FILE: u64 = 1024 * 1024;

fn write(path: &Path, text: &str, mode: u32, owner: Owner) -> Result<()> {
    let dir = path.parent().expect("a file in the project");
    let name = path.file_name().expect("a file name").to_string_lossy();
    safe_fs::write_replace(dir, &name, text.as_bytes(), mode, owner).map_err(io(format!("writing {}", path.display())))
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}
