//! The shipped systemd units pass `systemd-analyze verify` without a warning, with the
//! agent binary this build made in place of /usr/bin/jitsi-agent.

use std::{path::Path, process::Command};

use jitsi_tests::agent::agent_bin;

#[test]
fn units_verify_cleanly() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../dist/systemd");
    let dir = tempfile::tempdir().unwrap();
    for unit in ["jitsi-agent.service", "jitsi-agent.socket"] {
        let text = std::fs::read_to_string(src.join(unit)).unwrap();
        let text = text.replace("/usr/bin/jitsi-agent", &agent_bin().display().to_string());
        std::fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        // The man page the Documentation= line names is the package's, not installed here.
        .args(["verify", "--man=no"])
        .arg(dir.path().join("jitsi-agent.service"))
        .arg(dir.path().join("jitsi-agent.socket"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.trim().is_empty(), "systemd-analyze verify:\n{stderr}");
    let service = std::fs::read_to_string(src.join("jitsi-agent.service")).unwrap();
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "ProtectSystem=strict",
        "LimitNOFILE=",
        "CapabilityBoundingSet=",
        "WatchdogSec=",
        "SystemCallFilter=@system-service",
        "ReadOnlyPaths=/sys /proc/sys",
        "RestrictNamespaces=net",
        "UMask=0077",
        "MemoryMax=",
        "TasksMax=",
        "RestartPreventExitStatus=78",
        "Documentation=man:jitsi-agent(8)",
    ] {
        assert!(service.lines().any(|l| l.starts_with(line)), "{line} in jitsi-agent.service");
    }
}
