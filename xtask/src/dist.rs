//! `cargo xtask dist`: the Debian package. Built with `dpkg-deb` from a staged tree (no
//! debhelper: the package is one binary, two units, a conffile, a man page and three small
//! maintainer scripts), then checked with `lintian`, which must report no error.

use std::{
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};

use crate::{
    build::{self, workspace_root},
    prereq,
};

/// The Debian revision of the package (the upstream version comes from Cargo.toml).
const REVISION: &str = "1";
/// Where the package's systemd units go on Debian 12.
const UNIT_DIR: &str = "lib/systemd/system";

/// Tools the package is made and checked with.
const DIST_PACKAGES: &[&str] = &["dpkg-dev", "help2man", "lintian", "binutils", "init-system-helpers"];

const CONTROL: &str = "\
Package: jitsi-agent
Version: {version}
Architecture: {arch}
Maintainer: jitsi-agent developers <jitsi-agent@example.org>
Depends: {depends}
Section: net
Priority: optional
Homepage: https://example.org/jitsi-agent
Description: XDP/TC steering and TLS/HTTP splitter for a self-hosted Jitsi Meet
 jitsi-agent lets one Linux host behind a NAT router with a single public
 address run a self-hosted Jitsi Meet: XDP steers the videobridge's and
 coturn's UDP ports straight to their containers, TC sends the replies back
 out, and a splitter on 443 and 80 routes TLS by server name and HTTP by Host
 to the web, coturn and other sites, connecting from the client's own
 address. It also generates and runs the Docker Compose stack and obtains the
 TURN name's certificate over ACME.
";

/// `configure`: the units known to deb-systemd-helper (so that purge can undo an enable) and
/// to systemd; on an upgrade the running agent is restarted (the socket unit keeps 443 and 80
/// queued, the pinned datapath keeps forwarding). A fresh install enables and starts nothing:
/// the configuration has to be written first. (What debhelper's `dh_installsystemd
/// --no-enable --restart-after-upgrade` generates, for two units.)
const POSTINST: &str = r#"#!/bin/sh
set -e
UNITS="jitsi-agent.service jitsi-agent.socket"
case "$1" in
    configure|abort-upgrade|abort-deconfigure|abort-remove)
        for unit in $UNITS; do
            if deb-systemd-helper debian-installed "$unit"; then
                deb-systemd-helper unmask "$unit" >/dev/null || true
                if deb-systemd-helper --quiet was-enabled "$unit"; then
                    # Enabled before (a reinstall after remove): its links again.
                    deb-systemd-helper enable "$unit" >/dev/null || true
                fi
            fi
            deb-systemd-helper update-state "$unit" >/dev/null || true
        done
        if [ -d /run/systemd/system ]; then
            systemctl --system daemon-reload >/dev/null || true
            if [ -n "$2" ]; then
                # An upgrade: the new binary takes over from the running one, losing nothing.
                deb-systemd-invoke try-restart jitsi-agent.service >/dev/null || true
            fi
        fi
        ;;
esac
exit 0
"#;

/// Removal stops the service and the socket (the agent drains and removes its policy routing),
/// then detaches the datapath: without the package nothing would manage it. Not in a
/// `DPKG_ROOT` (a chroot being built must not touch the running host), and not while the agent
/// still runs (a stop refused by policy-rc.d). The configuration stays until purge. An upgrade
/// stops nothing (the new postinst restarts).
const PRERM: &str = r#"#!/bin/sh
set -e
if [ "$1" = "remove" ] && [ -z "${DPKG_ROOT:-}" ]; then
    if [ -d /run/systemd/system ]; then
        deb-systemd-invoke stop jitsi-agent.service jitsi-agent.socket >/dev/null || true
    fi
    if [ -d /run/systemd/system ] && systemctl --quiet is-active jitsi-agent.service; then
        echo "jitsi-agent is still running; its datapath stays attached (jitsi-agent teardown removes it)" >&2
    else
        jitsi-agent teardown --config /etc/jitsi-agent/agent.toml \
            || rm -rf /sys/fs/bpf/jitsi-agent || true
    fi
fi
exit 0
"#;

/// Remove masks the units (a removed package's units must not start); purge forgets them and
/// removes the pins (if any are left) and the state.
const POSTRM: &str = r#"#!/bin/sh
set -e
UNITS="jitsi-agent.service jitsi-agent.socket"
if [ -d /run/systemd/system ]; then
    systemctl --system daemon-reload >/dev/null || true
fi
case "$1" in
    remove)
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper mask $UNITS >/dev/null || true
        fi
        ;;
    purge)
        if command -v deb-systemd-helper >/dev/null; then
            deb-systemd-helper purge $UNITS >/dev/null || true
            deb-systemd-helper unmask $UNITS >/dev/null || true
        fi
        rm -rf /sys/fs/bpf/jitsi-agent /var/lib/jitsi-agent || true
        ;;
esac
exit 0
"#;

fn copyright() -> String {
    "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
     Upstream-Name: jitsi-agent\n\
     \n\
     Files: *\n\
     Copyright: 2026 jitsi-agent developers\n\
     License: MIT or Apache-2.0\n\
     \x20On Debian systems the full text of the Apache License 2.0 is in\n\
     \x20/usr/share/common-licenses/Apache-2.0. The MIT license:\n\
     \x20.\n\
     \x20Permission is hereby granted, free of charge, to any person obtaining a copy\n\
     \x20of this software and associated documentation files (the \"Software\"), to deal\n\
     \x20in the Software without restriction, including without limitation the rights\n\
     \x20to use, copy, modify, merge, publish, distribute, sublicense, and/or sell\n\
     \x20copies of the Software, and to permit persons to whom the Software is\n\
     \x20furnished to do so, subject to the following conditions:\n\
     \x20.\n\
     \x20The above copyright notice and this permission notice shall be included in\n\
     \x20all copies or substantial portions of the Software.\n\
     \x20.\n\
     \x20THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY KIND, EXPRESS OR\n\
     \x20IMPLIED, INCLUDING BUT NOT LIMITED TO THE WARRANTIES OF MERCHANTABILITY,\n\
     \x20FITNESS FOR A PARTICULAR PURPOSE AND NONINFRINGEMENT. IN NO EVENT SHALL THE\n\
     \x20AUTHORS OR COPYRIGHT HOLDERS BE LIABLE FOR ANY CLAIM, DAMAGES OR OTHER\n\
     \x20LIABILITY, WHETHER IN AN ACTION OF CONTRACT, TORT OR OTHERWISE, ARISING FROM,\n\
     \x20OUT OF OR IN CONNECTION WITH THE SOFTWARE OR THE USE OR OTHER DEALINGS IN\n\
     \x20THE SOFTWARE.\n"
        .to_string()
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn write(path: &Path, text: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn gzip(text: &[u8], path: &Path) -> Result<()> {
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(std::process::Stdio::piped())
        .stdout(fs::File::create(path)?)
        .spawn()
        .context("running gzip")?;
    child.stdin.take().expect("piped").write_all(text)?;
    if !child.wait()?.success() {
        bail!("gzip failed");
    }
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))?;
    Ok(())
}

/// The package's file name for `version`.
pub fn deb_name(version: &str, arch: &str) -> String {
    format!("jitsi-agent_{version}-{REVISION}_{arch}.deb")
}

/// Builds the package into `target/dist/` and returns its path.
pub fn deb() -> Result<PathBuf> {
    prereq::apt(DIST_PACKAGES)?;
    let bin = build::agent()?;
    let root = workspace_root();
    let version = env!("CARGO_PKG_VERSION");
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let dist = root.join("target/dist");
    let stage = dist.join(format!("jitsi-agent_{version}-{REVISION}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage)?;
    }
    // The binary, stripped of debug information.
    let usr_bin = stage.join("usr/bin/jitsi-agent");
    fs::create_dir_all(usr_bin.parent().expect("has a parent"))?;
    fs::copy(&bin, &usr_bin)?;
    build::run(
        Command::new("strip")
            .args(["--strip-unneeded", "--remove-section=.comment", "--remove-section=.note"])
            .arg(&usr_bin),
    )?;
    fs::set_permissions(&usr_bin, fs::Permissions::from_mode(0o755))?;
    // The units and the example configuration (a conffile).
    for unit in ["jitsi-agent.service", "jitsi-agent.socket"] {
        let text = fs::read(root.join("dist/systemd").join(unit))?;
        write(&stage.join(UNIT_DIR).join(unit), &text, 0o644)?;
    }
    let example = fs::read(root.join("jitsi-agent/examples/agent.toml"))?;
    write(&stage.join("etc/jitsi-agent/agent.toml"), &example, 0o644)?;
    // Documentation: copyright, changelog, the man page rendered from --help.
    let doc = stage.join("usr/share/doc/jitsi-agent");
    write(&doc.join("copyright"), copyright().as_bytes(), 0o644)?;
    let date = output(Command::new("date").args(["-R", "-u", "-d", "2026-11-28 00:00"]))?;
    let changelog = format!(
        "jitsi-agent ({version}-{REVISION}) unstable; urgency=medium\n\n  * Package built by cargo xtask dist.\n\n -- jitsi-agent developers <jitsi-agent@example.org>  {date}\n"
    );
    gzip(changelog.as_bytes(), &doc.join("changelog.Debian.gz"))?;
    let man = output(
        Command::new("help2man")
            .args([
                "--no-info",
                "--section=8",
                "--name=XDP/TC steering and TLS/HTTP splitter for a self-hosted Jitsi Meet",
            ])
            .arg(&bin),
    )?;
    let man_dir = stage.join("usr/share/man/man8");
    fs::create_dir_all(&man_dir)?;
    gzip(man.as_bytes(), &man_dir.join("jitsi-agent.8.gz"))?;
    // Control files.
    // procps: the unit's ExecReload= is /bin/kill (a minimal Debian has no kill(1) otherwise);
    // init-system-helpers: deb-systemd-helper and deb-systemd-invoke in the maintainer scripts.
    let depends = format!("{}, procps, init-system-helpers (>= 1.54~)", shlib_depends(&stage, &usr_bin)?);
    let control = CONTROL
        .replace("{version}", &format!("{version}-{REVISION}"))
        .replace("{arch}", &arch)
        .replace("{depends}", &depends);
    let debian = stage.join("DEBIAN");
    write(&debian.join("control"), control.as_bytes(), 0o644)?;
    write(&debian.join("conffiles"), b"/etc/jitsi-agent/agent.toml\n", 0o644)?;
    write(&debian.join("postinst"), POSTINST.as_bytes(), 0o755)?;
    write(&debian.join("prerm"), PRERM.as_bytes(), 0o755)?;
    write(&debian.join("postrm"), POSTRM.as_bytes(), 0o755)?;
    let md5sums = output(
        Command::new("sh")
            .current_dir(&stage)
            .args(["-c", "find . -type f ! -path './DEBIAN/*' -printf '%P\\0' | sort -z | xargs -0 md5sum"]),
    )?;
    write(&debian.join("md5sums"), format!("{md5sums}\n").as_bytes(), 0o644)?;
    for d in walk_dirs(&stage)? {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755))?;
    }
    let deb = dist.join(deb_name(version, &arch));
    build::run(Command::new("dpkg-deb").args(["--root-owner-group", "-Zxz", "--build"]).arg(&stage).arg(&deb))?;
    lintian(&deb)?;
    eprintln!("xtask: package at {}", deb.display());
    Ok(deb)
}

/// `Depends:` from the libraries the binary links (dpkg-shlibdeps).
fn shlib_depends(stage: &Path, bin: &Path) -> Result<String> {
    // dpkg-shlibdeps wants a debian/control next to where it runs.
    let work = stage.parent().expect("has a parent").join("shlibdeps");
    fs::create_dir_all(work.join("debian"))?;
    fs::write(work.join("debian/control"), "Source: jitsi-agent\n\nPackage: jitsi-agent\nArchitecture: any\n")?;
    let out = output(Command::new("dpkg-shlibdeps").current_dir(&work).args(["-O", "-e"]).arg(bin))?;
    let depends =
        out.lines().find_map(|l| l.strip_prefix("shlibs:Depends=")).context("dpkg-shlibdeps printed no Depends")?;
    Ok(depends.to_string())
}

fn walk_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = vec![dir.to_path_buf()];
    for e in fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            out.extend(walk_dirs(&e.path())?);
        }
    }
    Ok(out)
}

/// Runs lintian; its errors fail the build, its warnings are printed.
fn lintian(deb: &Path) -> Result<()> {
    let out = Command::new("lintian").args(["--no-tag-display-limit"]).arg(deb).output().context("running lintian")?;
    let text = String::from_utf8_lossy(&out.stdout);
    for line in text.lines() {
        eprintln!("lintian: {line}");
    }
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E:")).collect();
    if !errors.is_empty() {
        bail!("lintian found {} error(s) in {}:\n{}", errors.len(), deb.display(), errors.join("\n"));
    }
    Ok(())
}
