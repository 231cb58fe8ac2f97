//! A Docker engine of the test's own: `dockerd` in the lab's host namespace, with its data,
//! runtime state and socket under the lab's directory, and no iptables rules, forwarding or
//! masquerading (so the host namespace stays as plain as the other labs assert). Stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use std::os::unix::fs::PermissionsExt as _;

use anyhow::{Context, Result, bail};

use crate::{agent::command_in, netns::NetNs};

/// A running engine.
pub struct DockerEngine {
    child: Child,
    /// `unix://...` for `DOCKER_HOST`.
    pub host: String,
    root: PathBuf,
}

impl DockerEngine {
    /// Starts `dockerd` in `ns` with its state under `dir`, and waits until it answers.
    pub fn start(ns: &NetNs, dir: &Path) -> Result<Self> {
        if Command::new("dockerd").arg("--version").output().is_err() {
            bail!("dockerd is not installed (cargo xtask test installs docker.io)");
        }
        let root = dir.join("docker");
        std::fs::create_dir_all(&root)?;
        let socket = root.join("docker.sock");
        let log = std::fs::File::create(root.join("dockerd.log"))?;
        let child = command_in(ns, Path::new("dockerd"))?
            .arg("--data-root")
            .arg(root.join("data"))
            .arg("--exec-root")
            .arg(root.join("exec"))
            .arg("--pidfile")
            .arg(root.join("dockerd.pid"))
            .arg("--host")
            .arg(format!("unix://{}", socket.display()))
            .args(["--iptables=false", "--ip6tables=false", "--ip-forward=false", "--ip-masq=false", "--bridge=none"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting dockerd")?;
        let engine = DockerEngine { child, host: format!("unix://{}", socket.display()), root };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if engine.docker(&["info", "--format", "{{.ServerVersion}}"]).is_ok() {
                return Ok(engine);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("dockerd did not answer within 30 s:\n{}", engine.log())
    }

    /// Runs `docker <args>` against this engine; returns stdout.
    pub fn docker(&self, args: &[&str]) -> Result<String> {
        crate::netns::run(Command::new("docker").env("DOCKER_HOST", &self.host).args(args))
    }

    /// The engine's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.root.join("dockerd.log")).unwrap_or_default()
    }

    /// Builds `FROM scratch` images `<repo>/<role>:<tag>` running `standin <role>`, from the
    /// stand-in binary and the shared libraries it loads, with the real images' user, volumes
    /// and healthcheck script (see `jitsi-standin`'s doc for the upstream files each mirrors).
    /// The stand-in is made setuid root in the image, as s6-overlay's `s6-overlay-suexec` is.
    pub fn build_standins(&self, standin: &Path, repo: &str, tag: &str, roles: &[&str]) -> Result<()> {
        for role in roles {
            let ctx = self.root.join(format!("standin-{role}"));
            let rootfs = ctx.join("rootfs");
            let _ = std::fs::remove_dir_all(&ctx);
            copy_with_libs(standin, &rootfs, Path::new("/standin"))?;
            // base/Dockerfile: `adduser ... s6` (uid/gid 1000), `USER s6`; prosody/Dockerfile:
            // `usermod -a -G prosody,sasl s6`.
            write(&rootfs.join("etc/passwd"), "root:x:0:0::/root:/bin/false\ns6:x:1000:1000::/home/s6:/bin/false\n")?;
            write(&rootfs.join("etc/group"), "root:x:0:\ns6:x:1000:\nprosody:x:101:s6\nsasl:x:45:s6\n")?;
            let mut extra = String::new();
            match *role {
                // web/Dockerfile: `mkdir -p /storage && chown s6:s6 /storage`.
                "web" => {
                    std::fs::create_dir_all(ctx.join("owned/storage"))?;
                    extra.push_str("VOLUME [\"/config\", \"/usr/share/jitsi-meet/transcripts\"]\n");
                }
                // prosody/Dockerfile: `chown s6:s6 /var/lib/prosody`.
                "prosody" => {
                    std::fs::create_dir_all(ctx.join("owned/var/lib/prosody"))?;
                    extra.push_str("VOLUME [\"/config\", \"/prosody-plugins-custom\"]\n");
                }
                _ => extra.push_str("VOLUME /config\n"),
            }
            std::fs::create_dir_all(ctx.join("owned"))?;
            if matches!(*role, "prosody" | "jicofo" | "jvb") {
                // */rootfs/usr/local/bin/healthcheck.sh
                let hc = rootfs.join("usr/local/bin/healthcheck.sh");
                std::fs::create_dir_all(hc.parent().expect("a parent"))?;
                std::fs::copy(standin, &hc)?;
                std::fs::set_permissions(&hc, std::fs::Permissions::from_mode(0o755))?;
            }
            let dockerfile = format!(
                "FROM scratch\nCOPY rootfs/ /\nCOPY --chown=1000:1000 owned/ /\n\
                 RUN [\"/standin\", \"image-setup\"]\nENV STANDIN_ROLE={role} S6_READ_ONLY_ROOT=1\n{extra}\
                 USER s6\nENTRYPOINT [\"/standin\", \"{role}\"]\n"
            );
            self.build_image(&ctx, &dockerfile, &format!("{repo}/{role}:{tag}"))?;
        }
        Ok(())
    }

    /// Builds `<name>` from Debian's `coturn` package (its `turnserver` and the libraries it
    /// loads), laid out as coturn's own image is (`docker/coturn/debian/Dockerfile` at
    /// `docker/4.17.0-r0`): `USER nobody:nogroup`, `/var/lib/coturn` owned by it, and
    /// `turnserver` taking the command's options.
    pub fn build_coturn(&self, name: &str) -> Result<()> {
        let turnserver = Path::new("/usr/bin/turnserver");
        if !turnserver.exists() {
            bail!("Debian's coturn is not installed (cargo xtask test installs it)");
        }
        let ctx = self.root.join("coturn-image");
        let rootfs = ctx.join("rootfs");
        let _ = std::fs::remove_dir_all(&ctx);
        copy_with_libs(turnserver, &rootfs, turnserver)?;
        write(
            &rootfs.join("etc/passwd"),
            "root:x:0:0::/root:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n",
        )?;
        write(&rootfs.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
        std::fs::create_dir_all(rootfs.join("var/lib/coturn"))?;
        std::fs::create_dir_all(rootfs.join("tmp"))?;
        let dockerfile = "FROM scratch\nCOPY rootfs/ /\nCOPY --chown=65534:65534 rootfs/var/lib/coturn /var/lib/coturn\n\
                          USER nobody:nogroup\nVOLUME [\"/var/lib/coturn\"]\nENTRYPOINT [\"/usr/bin/turnserver\"]\n\
                          CMD [\"--log-file=stdout\"]\n";
        self.build_image(&ctx, dockerfile, name)
    }

    fn build_image(&self, ctx: &Path, dockerfile: &str, name: &str) -> Result<()> {
        let path = ctx.join("Dockerfile");
        std::fs::write(&path, dockerfile)?;
        self.docker(&["build", "-q", "-t", name, "-f", &path.display().to_string(), &ctx.display().to_string()])
            .with_context(|| format!("building {name}"))?;
        Ok(())
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::create_dir_all(path.parent().expect("a file path"))?;
    Ok(std::fs::write(path, text)?)
}

/// Copies `binary` to `rootfs/<at>` and every shared library `ldd` lists to the same path
/// under `rootfs`.
fn copy_with_libs(binary: &Path, rootfs: &Path, at: &Path) -> Result<()> {
    let dest = rootfs.join(at.strip_prefix("/").unwrap_or(at));
    std::fs::create_dir_all(dest.parent().expect("a file path"))?;
    std::fs::copy(binary, &dest).with_context(|| format!("copying {}", binary.display()))?;
    let ldd = crate::netns::run(Command::new("ldd").arg(binary))?;
    for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let dest = rootfs.join(lib.trim_start_matches('/'));
        std::fs::create_dir_all(dest.parent().expect("a file path"))?;
        std::fs::copy(lib, &dest).with_context(|| format!("copying {lib}"))?;
    }
    Ok(())
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // Remove whatever a failed test left running, then stop the engine cleanly (it
        // unmounts its overlays on the way out).
        if let Ok(ids) = self.docker(&["ps", "-aq"]) {
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self.docker(&[&["rm", "-f"][..], &ids].concat());
            }
        }
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        crate::netns::reap(&mut self.child, Duration::from_secs(20));
    }
}
