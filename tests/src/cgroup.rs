//! A control group of its own for each booted machine, as `systemd-machined` gives each
//! registered machine a scope. With `--register=no --keep-unit`, `systemd-nspawn` puts the
//! machine's tree under the cgroup it was started in (`<own>/payload`): two machines started
//! from the same test process would share `payload/system.slice/jitsi-agent.service`, and one
//! machine's systemd would prune, kill and move processes in the other's units (a restart there
//! failed with status 219/CGROUP). Made in the hierarchies a systemd manages (the unified one
//! and, on a hybrid host, the named `name=systemd` one) below the test's own cgroup, entered by
//! `systemd-nspawn` before it runs, and on drop emptied (`cgroup.kill`) and removed, deepest
//! first.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// One cgroup directory per hierarchy, all with the same name.
pub struct OwnCgroup {
    dirs: Vec<PathBuf>,
}

impl OwnCgroup {
    /// Makes `name` below this process's cgroup in each hierarchy a systemd manages.
    pub fn create(name: &str) -> Result<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
        let mut made = OwnCgroup { dirs: Vec::new() };
        for line in own.lines() {
            // "ID:controllers:path"; the unified hierarchy has no controllers listed.
            let mut fields = line.splitn(3, ':');
            let (Some(_), Some(controllers), Some(path)) = (fields.next(), fields.next(), fields.next()) else {
                continue;
            };
            let unified = match controllers {
                "" => true,
                "name=systemd" => false,
                _ => continue,
            };
            let Some((mount_root, mount_point)) = cgroup_mount(&mounts, unified) else { continue };
            let relative = Path::new(path).strip_prefix(&mount_root).unwrap_or(Path::new(path));
            let dir = mount_point.join(relative.strip_prefix("/").unwrap_or(relative)).join(name);
            std::fs::create_dir(&dir).with_context(|| format!("making the cgroup {}", dir.display()))?;
            made.dirs.push(dir);
        }
        if made.dirs.is_empty() {
            bail!("no cgroup hierarchy that systemd manages (cgroup2, or cgroup with name=systemd) is mounted");
        }
        Ok(made)
    }

    /// Makes `cmd` enter these cgroups between fork and exec.
    pub fn enter_on_spawn(&self, cmd: &mut Command) -> Result<()> {
        let procs: Vec<CString> = self
            .dirs
            .iter()
            .map(|d| CString::new(d.join("cgroup.procs").as_os_str().as_bytes()))
            .collect::<Result<_, _>>()?;
        // SAFETY: the closure only calls open(2), write(2) and close(2) (async-signal-safe) on
        // paths made before the fork, and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                for file in &procs {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // "0": the writing process itself.
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    let error = std::io::Error::last_os_error();
                    libc::close(fd);
                    if written != 1 {
                        return Err(error);
                    }
                }
                Ok(())
            });
        }
        Ok(())
    }
}

/// The root and mount point of the unified hierarchy (`unified`) or of the named
/// `name=systemd` one, from `/proc/self/mountinfo`.
fn cgroup_mount(mountinfo: &str, unified: bool) -> Option<(String, PathBuf)> {
    mountinfo.lines().find_map(|line| {
        let (before, after) = line.split_once(" - ")?;
        let fields: Vec<&str> = before.split(' ').collect();
        let mut rest = after.split(' ');
        let (fstype, _source, options) = (rest.next()?, rest.next()?, rest.next().unwrap_or(""));
        let wanted = if unified {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup" && options.split(',').any(|o| o == "name=systemd")
        };
        if !wanted {
            return None;
        }
        Some((fields.get(3)?.to_string(), PathBuf::from(fields.get(4)?)))
    })
}

/// Removes `dir` and the cgroups below it, deepest first; a cgroup whose last process is still
/// exiting refuses rmdir(2) with EBUSY for a moment, so each is tried again until `deadline`.
fn remove_tree(dir: &Path, deadline: Instant) {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_tree(&entry.path(), deadline);
            }
        }
    }
    while std::fs::remove_dir(dir).is_err() && dir.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl OwnCgroup {
    /// Kills whatever is left in these cgroups (`cgroup.kill`, cgroup v2) and waits up to 10 s
    /// for the last process to be gone (`populated 0`). For after the machine's poweroff, or
    /// its nspawn killed, before its root is removed.
    pub fn kill(&self) {
        for dir in &self.dirs {
            if std::fs::write(dir.join("cgroup.kill"), "1").is_err() {
                continue;
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::fs::read_to_string(dir.join("cgroup.events")).is_ok_and(|e| e.contains("populated 1"))
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

impl Drop for OwnCgroup {
    /// Kills what is left (see [`OwnCgroup::kill`]) and removes the cgroups.
    fn drop(&mut self) {
        self.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        for dir in &self.dirs {
            remove_tree(dir, deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid - cgroup cgroup rw,xattr,name=systemd
28 25 0:25 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory
";

    #[test]
    fn finds_the_unified_and_the_named_systemd_hierarchy() {
        assert_eq!(cgroup_mount(HYBRID, true), Some(("/".into(), "/sys/fs/cgroup/unified".into())));
        assert_eq!(cgroup_mount(HYBRID, false), Some(("/".into(), "/sys/fs/cgroup/systemd".into())));
        let v1_only = HYBRID.lines().filter(|l| !l.contains("cgroup2")).collect::<Vec<_>>().join("\n");
        assert_eq!(cgroup_mount(&v1_only, true), None);
    }
}
