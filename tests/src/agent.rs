//! Running the real `jitsi-agent` binary inside the lab's host namespace.

use std::{
    fs::File,
    io::Read,
    os::{
        fd::{AsRawFd, RawFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::netns::NetNs;

/// The stand-in container binary: next to the agent binary (both are built by `cargo xtask
/// build`).
pub fn standin_bin() -> PathBuf {
    agent_bin().with_file_name("jitsi-standin")
}

/// The agent binary: `$JITSI_AGENT_BIN` (set by `cargo xtask test`), else the release build.
pub fn agent_bin() -> PathBuf {
    std::env::var_os("JITSI_AGENT_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/jitsi-agent"))
}

/// A command that runs in `ns` (setns before exec; the mount namespace is left alone, so the
/// pins stay visible to the caller).
pub fn command_in(ns: &NetNs, program: &Path) -> Result<Command> {
    let file = ns.file()?;
    let mut cmd = Command::new(program);
    let fd = file.as_raw_fd();
    // SAFETY: setns is async-signal-safe; `file` outlives the spawn because the closure owns it.
    unsafe {
        cmd.pre_exec(move || {
            let _keep = &file;
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Ok(cmd)
}

/// A running `jitsi-agent run`; killed on drop if still running.
pub struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    /// Starts `jitsi-agent run --config <config>` in `ns` and waits until it logs "ready".
    pub fn start(ns: &NetNs, config: &Path) -> Result<Self> {
        Self::start_with_env(ns, config, &[])
    }

    /// [`AgentProcess::start`] with extra environment variables (e.g. `DOCKER_HOST`).
    pub fn start_with_env(ns: &NetNs, config: &Path, env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = command_in(ns, &agent_bin())?;
        cmd.args(["run", "--config"]).arg(config).envs(env.iter().copied());
        Self::launch(cmd, config)
    }

    /// [`AgentProcess::start`] with the open-file limit set to `soft` and `hard` (as a shell or
    /// another service manager may leave it).
    pub fn start_with_nofile(ns: &NetNs, config: &Path, soft: u64, hard: u64) -> Result<Self> {
        let mut cmd = command_in(ns, &agent_bin())?;
        cmd.args(["run", "--config"]).arg(config);
        // SAFETY: setrlimit is async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit { rlim_cur: soft, rlim_max: hard };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Self::launch(cmd, config)
    }

    /// Spawns `cmd` with the agent's log next to `config`, and waits for "ready".
    fn launch(mut cmd: Command, config: &Path) -> Result<Self> {
        let log = config.with_file_name(format!("{}.log", crate::netns::unique_name("agent")));
        let err = File::create(&log)?;
        let child = cmd
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {}", agent_bin().display()))?;
        let mut agent = AgentProcess { child, log };
        agent.wait_for_log("jitsi_agent::run: ready", Duration::from_secs(30))?;
        Ok(agent)
    }

    /// Starts the agent as systemd socket activation would: `fds` become descriptors 3.. of the
    /// agent, announced by `LISTEN_FDS` and `LISTEN_PID` (set by a shell that then execs the
    /// agent, so the pid matches). The caller keeps its own copies, as systemd does.
    pub fn start_with_sockets(ns: &NetNs, config: &Path, fds: &[RawFd]) -> Result<Self> {
        Self::start_with_sockets_env(ns, config, fds, &[])
    }

    /// [`AgentProcess::start_with_sockets`] with `env` added to the agent's environment.
    pub fn start_with_sockets_env(ns: &NetNs, config: &Path, fds: &[RawFd], env: &[(&str, &str)]) -> Result<Self> {
        let fds = fds.to_vec();
        let mut cmd = command_in(ns, Path::new("/bin/sh"))?;
        cmd.arg("-c")
            .arg(format!("LISTEN_PID=$$ LISTEN_FDS={} exec \"$0\" run --config \"$1\"", fds.len()))
            .arg(agent_bin())
            .arg(config)
            .envs(env.iter().copied());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move the sources out of the way first, then into place from 3 on.
                let mut high = Vec::new();
                for &fd in &fds {
                    let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, h) in high.into_iter().enumerate() {
                    if libc::dup2(h, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        Self::launch(cmd, config)
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`).
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// Waits for the agent to exit by itself and returns its log; fails on a non-zero exit.
    pub fn wait(mut self) -> Result<String> {
        let status = self.child.wait()?;
        let log = self.log();
        if !status.success() {
            bail!("jitsi-agent exited with {status}:\n{log}");
        }
        Ok(log)
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (user + system) the agent has used so far, from /proc/<pid>/stat.
    pub fn cpu_seconds(&self) -> Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name: utime and stime are the 12th and 13th.
        let after = stat.rsplit_once(')').map(|(_, rest)| rest).context("parsing /proc/<pid>/stat")?;
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        Ok(ticks as f64 / hz)
    }

    /// The agent's log so far.
    pub fn log(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// Waits until the log contains `needle` (fails if the agent exits first).
    pub fn wait_for_log(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        self.wait_for_log_count(needle, 1, timeout)
    }

    /// Waits until the log holds `needle` at least `times` times.
    pub fn wait_for_log_count(&mut self, needle: &str, times: usize, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.log().matches(needle).count() >= times {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                bail!("jitsi-agent exited ({status}) before `{needle}`:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        bail!("jitsi-agent did not log `{needle}` {times} times within {timeout:?}:\n{}", self.log())
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn stop(mut self) -> Result<String> {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait()?;
        let log = self.log();
        if !status.success() {
            bail!("jitsi-agent exited with {status}:\n{log}");
        }
        Ok(log)
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `jitsi-agent check --config <config>` in `ns`: whether it passed, and what it printed
/// (stdout, then stderr).
pub fn check(ns: &NetNs, config: &Path) -> (bool, String) {
    let out = command_in(ns, &agent_bin()).unwrap().args(["check", "--config"]).arg(config).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

/// Runs `jitsi-agent run --config <config>` in `ns` to its end (for starts that must fail):
/// whether it exited with success, and its log (stderr, `info` level, no colours).
pub fn run_once(ns: &NetNs, config: &Path) -> (bool, String) {
    let out = command_in(ns, &agent_bin())
        .unwrap()
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Runs `jitsi-agent <args>` (in the caller's namespace) and returns stdout.
pub fn agent_cli(args: &[&str]) -> Result<String> {
    crate::netns::run(Command::new(agent_bin()).args(args))
}
