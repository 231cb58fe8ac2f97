//! A Docker engine of the test's own: `dockerd` in the lab's host namespace, with its data,
//! runtime state and socket under the lab's directory, and no iptables rules, forwarding or
//! masquerading (so the host namespace stays as plain as the other labs assert). Stopped on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

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
    /// stand-in binary and the shared libraries it loads.
    pub fn build_standins(&self, standin: &Path, repo: &str, tag: &str, roles: &[&str]) -> Result<()> {
        let ctx = self.root.join("standin-context");
        let _ = std::fs::remove_dir_all(&ctx);
        let rootfs = ctx.join("rootfs");
        std::fs::create_dir_all(&rootfs)?;
        std::fs::copy(standin, rootfs.join("standin"))?;
        let ldd = crate::netns::run(Command::new("ldd").arg(standin))?;
        for lib in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
            let dest = rootfs.join(lib.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().expect("a file path"))?;
            std::fs::copy(lib, &dest).with_context(|| format!("copying {lib}"))?;
        }
        for role in roles {
            let dockerfile = ctx.join(format!("Dockerfile.{role}"));
            std::fs::write(
                &dockerfile,
                format!("FROM scratch\nCOPY rootfs/ /\nENTRYPOINT [\"/standin\", \"{role}\"]\n"),
            )?;
            let tag = format!("{repo}/{role}:{tag}");
            let df = dockerfile.display().to_string();
            self.docker(&["build", "-q", "-t", &tag, "-f", &df, &ctx.display().to_string()])
                .with_context(|| format!("building {tag}"))?;
        }
        Ok(())
    }
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
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
