//! `cargo xtask upstream-facts`: extracts from docker-jitsi-meet at a tag the facts the
//! generated stack must match (per service: image, `read_only`, `tmpfs`, every volume's target
//! and flags, every environment name, labels, the user the image runs as and its healthcheck
//! script) into `jitsi-agent/data/docker-jitsi-meet.json`, which `stack init` reads its
//! environment lists from and the conformance test compares the generated project with.
//!
//! Refreshing for a new tag: bring a snapshot of github:jitsi/docker-jitsi-meet (a `git clone
//! --bare`, or the search tool's `fetch`), run `cargo xtask upstream-facts --git-dir <dir>
//! --tag <tag>`, review the diff of the JSON (new volumes, tmpfs or variables), then set the
//! default `image_tag` to the same tag: the conformance test fails while the two differ.

use std::{collections::BTreeMap, path::Path, process::Command};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

/// The services the stack runs from docker-jitsi-meet.
const SERVICES: [&str; 4] = ["web", "prosody", "jicofo", "jvb"];

fn git_show(git_dir: &Path, spec: &str) -> Result<Option<String>> {
    let out = Command::new("git").arg("--git-dir").arg(git_dir).args(["show", spec]).output()?;
    Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// A volume `src:target[:flags]` as `{target, flags}` (the source is the operator's path).
fn volume(v: &str) -> Value {
    let parts: Vec<&str> = v.split(':').collect();
    json!({ "target": parts.get(1).copied().unwrap_or(""), "flags": parts.get(2).copied().unwrap_or("") })
}

fn strings(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// The `USER` the service's image ends with (its own Dockerfile, else its base's).
fn image_user(git_dir: &Path, tag: &str, service: &str) -> Result<String> {
    for dir in [service, "base-java", "base"] {
        if let Some(df) = git_show(git_dir, &format!("{tag}:{dir}/Dockerfile"))?
            && let Some(user) = df.lines().rev().find_map(|l| l.trim().strip_prefix("USER "))
        {
            return Ok(user.trim().to_string());
        }
    }
    bail!("no USER in {service}'s Dockerfiles")
}

pub fn facts(git_dir: &Path, tag: &str) -> Result<()> {
    let commit =
        Command::new("git").arg("--git-dir").arg(git_dir).args(["rev-parse", &format!("{tag}^{{commit}}")]).output()?;
    if !commit.status.success() {
        bail!("{tag} is not a tag of {}", git_dir.display());
    }
    let commit = String::from_utf8(commit.stdout)?.trim().to_string();
    let compose = git_show(git_dir, &format!("{tag}:docker-compose.yml"))?.context("no docker-compose.yml")?;
    let compose: serde_yaml::Value = serde_yaml::from_str(&compose)?;
    let mut services = BTreeMap::new();
    for name in SERVICES {
        let s = &compose["services"][name];
        let image = s["image"].as_str().context("image")?;
        let labels: BTreeMap<String, String> = s["labels"]
            .as_mapping()
            .map(|m| m.iter().filter_map(|(k, v)| Some((k.as_str()?.to_string(), v.as_str()?.to_string()))).collect())
            .unwrap_or_default();
        let healthcheck = format!("{tag}:{name}/rootfs/usr/local/bin/healthcheck.sh");
        let healthcheck = git_show(git_dir, &healthcheck)?.map(|_| "/usr/local/bin/healthcheck.sh");
        services.insert(
            name,
            json!({
                // `${JITSI_IMAGE_REPO:-ghcr.io/jitsi}/web:${...}` -> `web`
                "image": image.rsplit('/').next().and_then(|i| i.split(':').next()).unwrap_or(""),
                "read_only": s["read_only"].as_bool().unwrap_or(false),
                "tmpfs": strings(&s["tmpfs"]),
                "volumes": strings(&s["volumes"]).iter().map(|v| volume(v)).collect::<Vec<_>>(),
                "environment": strings(&s["environment"]),
                "labels": labels,
                "compose_user": s["user"].as_str(),
                "image_user": image_user(git_dir, tag, name)?,
                "healthcheck": healthcheck,
            }),
        );
    }
    let out = json!({
        "source": "github.com/jitsi/docker-jitsi-meet: docker-compose.yml, */Dockerfile, */rootfs/usr/local/bin/healthcheck.sh",
        "tag": tag,
        "commit": commit,
        "extracted_by": "cargo xtask upstream-facts",
        "services": services,
    });
    let path = crate::build::workspace_root().join("jitsi-agent/data/docker-jitsi-meet.json");
    std::fs::create_dir_all(path.parent().expect("a parent"))?;
    std::fs::write(&path, serde_json::to_string_pretty(&out)? + "\n")?;
    eprintln!("xtask: wrote {} ({tag}, {commit})", path.display());
    Ok(())
}
