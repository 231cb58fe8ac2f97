//! A real systemd for the tests: Debian 12 made with `debootstrap` from Debian's packages
//! (cached under `target/systemd-root/`), booted with `systemd-nspawn -b` inside one of the
//! lab's network namespaces. Where no systemd runs as PID 1 nspawn cannot register with one,
//! hence `--register=no --keep-unit`; its own seccomp filter would refuse `bpf(2)`, hence the
//! `--system-call-filter` additions. Each machine boots from its own copy of the cached root,
//! in a cgroup of its own ([`OwnCgroup`]), and is powered off and removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{
    cgroup::OwnCgroup,
    netns::{NetNs, run, unique_name},
};

/// Where the debootstrapped root is cached.
fn cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/systemd-root")
}

/// The Debian mirror this machine's apt uses (deb.debian.org if none is configured).
fn mirror() -> String {
    std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("URIs:").map(|u| u.trim().to_string())))
        .and_then(|u| u.split_whitespace().next().map(str::to_string))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// What the machine has beside minbase: systemd as PID 1, D-Bus, iproute2, and procps (the
/// package's dependency, so that installing it needs no network).
const ROOT_PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,procps";

/// The cached Debian 12 root (minbase and [`ROOT_PACKAGES`]), made once; a change of the list
/// makes a new one.
pub fn debian_root() -> Result<PathBuf> {
    // FNV-1a of the list: a stable name for this set of packages.
    let key = ROOT_PACKAGES.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100000001b3));
    let root = cache_dir().join(format!("bookworm-{:08x}", key as u32));
    if root.join("usr/lib/systemd/systemd").exists() {
        return Ok(root);
    }
    // One test makes it while the others (running in parallel) wait for it.
    std::fs::create_dir_all(cache_dir())?;
    let lock = std::fs::File::create(cache_dir().join("making.lock"))?;
    // SAFETY: flock on a descriptor we own; released when `lock` is closed.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    if root.join("usr/lib/systemd/systemd").exists() {
        return Ok(root);
    }
    let tmp = cache_dir().join(unique_name("bookworm-making"));
    std::fs::create_dir_all(&tmp)?;
    let out = Command::new("debootstrap")
        .args(["--variant=minbase", &format!("--include={ROOT_PACKAGES}"), "bookworm"])
        .arg(&tmp)
        .arg(mirror())
        .output()
        .context("running debootstrap (Debian package debootstrap)")?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        bail!("debootstrap failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::rename(&tmp, &root)?;
    Ok(root)
}

/// `systemd-nspawn` for the machine `name` in `root`, unregistered, entering `cgroup` when it
/// starts; the caller adds what it runs.
fn nspawn(name: &str, root: &Path, cgroup: &OwnCgroup) -> Result<Command> {
    let mut cmd = Command::new("systemd-nspawn");
    cmd.args(["-q", "--register=no", "--keep-unit", "-M", name, "-D"]).arg(root);
    cgroup.enter_on_spawn(&mut cmd)?;
    Ok(cmd)
}

/// A booted Debian 12 with a real systemd as its PID 1.
pub struct Machine {
    root: PathBuf,
    nspawn: Child,
    pid1: u32,
    // Emptied before the root is removed, and removed last.
    cgroup: OwnCgroup,
}

impl Machine {
    /// Copies the cached root, installs `deb` in it with `apt-get install` (offline: its
    /// dependencies are in the base system), lets `prepare` write files into the root, then
    /// boots it in `ns` (with `/run/netns` bound so the agent finds the backends' namespaces,
    /// and each of `binds`, `HOST:MACHINE`) and waits until systemd reports the system running.
    /// A machine that fails to boot is removed.
    pub fn boot(ns: &NetNs, deb: &Path, binds: &[String], prepare: impl FnOnce(&Path) -> Result<()>) -> Result<Self> {
        let cached = debian_root()?;
        let root = cache_dir().join(unique_name("machine"));
        let copied = run(Command::new("cp").args(["-a", "--reflink=auto"]).arg(&cached).arg(&root));
        // From here on the copy is removed on every way out (Drop, or this guard before boot).
        let guard = RemoveOnFailure(Some(root.clone()));
        copied?;
        let deb_in_root = Path::new("/root").join(deb.file_name().context("a .deb file name")?);
        std::fs::copy(deb, root.join(deb_in_root.strip_prefix("/")?))?;
        let machine_name = unique_name("jl-machine");
        let cgroup = OwnCgroup::create(&machine_name)?;
        let install = nspawn(&machine_name, &root, &cgroup)?
            .args(["apt-get", "install", "-y", "-q"])
            .arg(&deb_in_root)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()?;
        if !install.status.success() {
            bail!(
                "apt-get install {} failed:\n{}{}",
                deb.display(),
                String::from_utf8_lossy(&install.stdout),
                String::from_utf8_lossy(&install.stderr)
            );
        }
        prepare(&root)?;
        let nspawn = nspawn(&machine_name, &root, &cgroup)?
            .arg(format!("--network-namespace-path=/run/netns/{}", ns.name()))
            .args(["--capability=all", "--system-call-filter=bpf perf_event_open setns mount", "--bind=/run/netns"])
            .args(binds.iter().map(|b| format!("--bind={b}")))
            .arg("-b")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("running systemd-nspawn (Debian package systemd-container)")?;
        drop(guard.disarm());
        let mut m = Machine { root, nspawn, pid1: 0, cgroup };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if m.pid1 == 0 {
                let child: u32 =
                    std::fs::read_to_string(format!("/proc/{}/task/{}/children", m.nspawn.id(), m.nspawn.id()))
                        .ok()
                        .and_then(|c| c.split_whitespace().next().and_then(|p| p.parse().ok()))
                        .unwrap_or(0);
                // The machine's init: PID 1 in its own PID namespace (NSpid: host's, machine's).
                let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap_or_default();
                let nspid = status.lines().find_map(|l| l.strip_prefix("NSpid:")).unwrap_or("");
                if child != 0 && nspid.split_whitespace().last() == Some("1") {
                    m.pid1 = child;
                    // Its units live below its own cgroup, apart from any other machine's.
                    let cgroups = std::fs::read_to_string(format!("/proc/{child}/cgroup")).unwrap_or_default();
                    if !cgroups.lines().any(|l| l.contains(&format!("/{machine_name}/"))) {
                        bail!("the machine's systemd is not in its own cgroup {machine_name}:\n{cgroups}");
                    }
                }
            }
            if m.pid1 != 0 {
                let state = m.exec("systemctl", &["is-system-running"])?;
                let state = String::from_utf8_lossy(&state.stdout).trim().to_string();
                if state == "running" || state == "degraded" {
                    return Ok(m);
                }
            }
            if Instant::now() > deadline {
                bail!("the machine did not boot within 60 s");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Installs (or upgrades to) `deb` with `apt-get install` inside the running machine, so
    /// that its maintainer scripts talk to the machine's systemd.
    pub fn install(&self, deb: &Path) -> Result<String> {
        let name = deb.file_name().context("a .deb file name")?.to_string_lossy().into_owned();
        std::fs::copy(deb, self.path(&format!("/root/{name}")))?;
        self.apt(&["install", "-y", "-q", &format!("/root/{name}")])
    }

    /// `apt-get args` inside the machine (non-interactive); fails with its output.
    pub fn apt(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", "apt-get"])
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .context("nsenter apt-get")?;
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        if !out.status.success() {
            bail!("apt-get {} failed:\n{text}", args.join(" "));
        }
        Ok(text)
    }

    /// Runs `cmd args` inside the machine (all its namespaces), whatever its exit status.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<Output> {
        Command::new("nsenter")
            .args(["-t", &self.pid1.to_string(), "-a", cmd])
            .args(args)
            .output()
            .with_context(|| format!("nsenter {cmd}"))
    }

    /// `systemctl args` inside the machine; fails with its output when it fails.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let out = self.exec("systemctl", args)?;
        if !out.status.success() {
            bail!(
                "systemctl {} failed: {}{}\n{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.boot_journal()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// The last 80 lines of the machine's whole journal since boot (the service manager's own
    /// messages too: a unit's failing child logs why under the manager, not always under the
    /// unit), with monotonic times.
    pub fn boot_journal(&self) -> String {
        self.exec("journalctl", &["-b", "-n", "80", "--no-pager", "-o", "short-monotonic"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// `journalctl -u unit` inside the machine, as plain text.
    pub fn journal(&self, unit: &str) -> String {
        self.exec("journalctl", &["-u", unit, "--no-pager", "-o", "cat"])
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Waits until `journalctl -u unit` has `needle` at least `times` times.
    pub fn wait_journal(&self, unit: &str, needle: &str, times: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let journal = self.journal(unit);
            if journal.matches(needle).count() >= times {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{needle:?} not {times} time(s) in the journal of {unit} within {timeout:?}:\n{journal}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A path inside the machine's root, from outside.
    pub fn path(&self, inside: &str) -> PathBuf {
        self.root.join(inside.trim_start_matches('/'))
    }

    /// The process id (in the host's view) of the unit's main process.
    pub fn main_pid(&self, unit: &str) -> Result<u32> {
        let inner: u32 = self.systemctl(&["show", "-p", "MainPID", "--value", unit])?.parse()?;
        if inner == 0 {
            bail!("{unit} has no main process");
        }
        // The machine has its own PID namespace: read the process's status from inside.
        Ok(inner)
    }

    /// `/proc/<pid>/status` of a process of the machine (pid as the machine sees it).
    pub fn proc_status(&self, pid: u32) -> Result<String> {
        let out = self.exec("cat", &[&format!("/proc/{pid}/status")])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Removes a machine's root unless disarmed (a boot that failed before the machine existed).
struct RemoveOnFailure(Option<PathBuf>);

impl RemoveOnFailure {
    fn disarm(mut self) -> Self {
        self.0 = None;
        self
    }
}

impl Drop for RemoveOnFailure {
    fn drop(&mut self) {
        if let Some(root) = self.0.take() {
            let _ = std::fs::remove_dir_all(root);
        }
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        if self.pid1 != 0 {
            let _ = self.exec("systemctl", &["poweroff", "--no-block"]);
        }
        crate::netns::reap(&mut self.nspawn, Duration::from_secs(20));
        // Nothing of the machine left running to write into its root while it goes.
        self.cgroup.kill();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
