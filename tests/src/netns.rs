//! Network namespaces that remove themselves, and running code or commands inside them.

use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::atomic::{AtomicU32, Ordering},
};

use anyhow::{Context, Result, bail};

/// A named network namespace (`/run/netns/<name>`), deleted on drop.
pub struct NetNs {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name that is unique on this machine for this process's lifetime: `<prefix>-<pid>-<n>`.
pub fn unique_name(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed))
}

impl NetNs {
    /// Creates a fresh namespace with `lo` up.
    pub fn new(prefix: &str) -> Result<Self> {
        let name = unique_name(prefix);
        run(Command::new("ip").args(["netns", "add", &name]))?;
        let ns = NetNs { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        run(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// Runs `cmd args` inside the namespace (`ip netns exec`).
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        run(Command::new("ip").args(["netns", "exec", &self.name, cmd]).args(args))
    }

    /// Runs `cmd args` inside the namespace and returns its raw output, whatever its status.
    pub fn exec_output(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .with_context(|| format!("running {cmd} in {}", self.name))
    }

    /// Sets a sysctl inside the namespace (never in the root namespace).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        self.exec("sysctl", &["-q", "-w", &format!("{key}={value}")]).map(drop)
    }

    /// Reads a sysctl inside the namespace.
    pub fn sysctl_get(&self, key: &str) -> Result<String> {
        Ok(self.exec("sysctl", &["-n", key])?.trim().to_string())
    }

    /// Runs `f` on a thread that has entered this namespace; sockets created there stay in it.
    pub fn enter<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let file = self.file()?;
        std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error()).context("setns");
            }
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace panicked"))?
    }

    /// Runs `f` on a new thread inside the namespace and returns at once; joining gives its
    /// result (a panic if the thread could not enter the namespace).
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<T>> {
        let file = self.file()?;
        Ok(std::thread::spawn(move || {
            // SAFETY: setns on a valid namespace fd affects only this thread.
            let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } == 0;
            assert!(entered, "setns: {}", std::io::Error::last_os_error());
            f()
        }))
    }

    /// The namespace file, for `setns`.
    pub fn file(&self) -> Result<File> {
        File::open(format!("/run/netns/{}", self.name)).with_context(|| format!("opening netns {}", self.name))
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}

/// Runs a command, failing with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A child process killed on drop.
pub struct Running(std::process::Child);

impl Running {
    /// The process id.
    pub fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Running {
    /// SIGTERM, then SIGKILL if it has not exited within 3 s: a graceful stop lets a master
    /// process (nginx) stop its workers, which a SIGKILL would leave running.
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        reap(&mut self.0, std::time::Duration::from_secs(3));
    }
}

/// Waits up to `grace` for `child`, asked to stop already, to exit; kills it after that.
pub fn reap(child: &mut std::process::Child, grace: std::time::Duration) {
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Starts `program args` in `ns` with its output in `log`; killed when dropped.
pub fn spawn_in(
    ns: &NetNs,
    program: &str,
    args: &[&str],
    env: &[(&str, &str)],
    log: &std::path::Path,
) -> Result<Running> {
    let mut cmd = crate::agent::command_in(ns, std::path::Path::new(program))?;
    let out = std::fs::File::create(log)?;
    cmd.args(args).envs(env.iter().copied()).stdout(out.try_clone()?).stderr(out).stdin(std::process::Stdio::null());
    Ok(Running(cmd.spawn().with_context(|| format!("starting {program}"))?))
}
