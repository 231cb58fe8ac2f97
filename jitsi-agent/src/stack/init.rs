//! `stack init`: writes the project, never replacing a file the operator edited (unless
//! `--force`) nor a secret that exists, and says what it did.

use std::{
    collections::BTreeMap,
    fmt,
    os::unix::fs::{PermissionsExt, chown},
    path::{Path, PathBuf},
};

use sha2::{Digest, Sha256};

use super::{compose, coturn, env, layout::Layout, secrets::Secrets};
use crate::{
    config::Stack,
    error::{Error, Result},
};

/// The uid/gid the rootless Jitsi images run as.
pub const JITSI_UID: u32 = 1000;
/// The uid/gid coturn's image runs as (`nobody`).
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
            };
            writeln!(f, "  {p:<40} {what}")?;
        }
        if self.secrets_drawn.is_empty() {
            writeln!(f, "secrets: all kept from .env")
        } else {
            writeln!(f, "secrets drawn (OS CSPRNG, in .env, mode 0600): {}", self.secrets_drawn.join(", "))
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> Error {
    move |e| Error::io(what, e)
}

fn sha(text: &str) -> String {
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Writes `text` to `path` atomically (a temporary file renamed over it), with `mode` and,
/// when running as root, `owner`.
fn write_file(path: &Path, text: &str, mode: u32, owner: Option<u32>) -> Result<()> {
    let tmp = path.with_extension("jitsi-agent-tmp");
    std::fs::write(&tmp, text).map_err(io(format!("writing {}", tmp.display())))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("setting the mode of {}", tmp.display())))?;
    if let Some(uid) = owner.filter(|_| is_root()) {
        chown(&tmp, Some(uid), Some(uid)).map_err(io(format!("chown {uid} {}", tmp.display())))?;
    }
    std::fs::rename(&tmp, path).map_err(io(format!("renaming onto {}", path.display())))
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Generates the project for `stack`.
pub fn init(stack: &Stack, force: bool) -> Result<Report> {
    let dir = &stack.directory;
    let layout = Layout::of(stack);
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    let manifest_path = dir.join(MANIFEST);
    let mut manifest: BTreeMap<String, String> =
        std::fs::read_to_string(&manifest_path).ok().and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
    let existing_env = std::fs::read_to_string(dir.join(".env")).ok();
    let (secrets, drawn) = Secrets::complete(existing_env.as_deref())
        .map_err(|e| Error::io("drawing secrets from the OS", std::io::Error::other(e.to_string())))?;
    let mut report = Report { directory: dir.clone(), secrets_drawn: drawn, ..Report::default() };

    let config_root = dir.join("config");
    let dirs = compose::CONFIG_DIRS
        .iter()
        .map(|d| (config_root.join(d), JITSI_UID))
        .chain([(dir.join("coturn"), 0), (dir.join("coturn/certs"), COTURN_UID)]);
    for (d, owner) in dirs {
        if !d.exists() {
            std::fs::create_dir_all(&d).map_err(io(format!("creating {}", d.display())))?;
            report.paths.push((rel(dir, &d), Action::Created));
        }
        if is_root() {
            // The directory and its parents up to the project (config/, config/storage/...).
            for a in d.ancestors().take_while(|a| *a != dir.as_path() && a.starts_with(dir)) {
                if a == dir.join("coturn") && owner == COTURN_UID {
                    break;
                }
                chown(a, Some(owner), Some(owner)).map_err(io(format!("chown {owner} {}", a.display())))?;
            }
        }
    }

    let files: [(&str, String, u32, Option<u32>); 3] = [
        ("docker-compose.yml", compose::compose_yml(), 0o644, None),
        (".env", env::env_file(stack, &layout, &secrets), 0o600, None),
        ("coturn/turnserver.conf", coturn::turnserver_conf(stack, &layout, &secrets), 0o600, Some(COTURN_UID)),
    ];
    for (name, text, mode, owner) in files {
        let path = dir.join(name);
        let action = match std::fs::read_to_string(&path) {
            Err(_) => Action::Wrote,
            Ok(current) if current == text => Action::Unchanged,
            Ok(current) if force || manifest.get(name) == Some(&sha(&current)) => Action::Wrote,
            Ok(_) => Action::KeptEdited,
        };
        if action == Action::Wrote {
            write_file(&path, &text, mode, owner)?;
            manifest.insert(name.to_string(), sha(&text));
        }
        report.paths.push((name.to_string(), action));
    }
    let text = serde_json::to_string_pretty(&manifest).expect("a map of strings");
    write_file(&manifest_path, &text, 0o644, None)?;
    Ok(report)
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}
