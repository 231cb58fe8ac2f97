//! `jitsi-agent stack init` writes a project Docker Compose itself accepts.

use std::process::Command;

use jitsi_tests::agent::agent_bin;

#[test]
fn docker_compose_accepts_the_generated_project() {
    let compose = if Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success()) {
        vec!["docker", "compose"]
    } else if Command::new("docker-compose").arg("version").output().is_ok_and(|o| o.status.success()) {
        vec!["docker-compose"]
    } else {
        panic!("neither `docker compose` nor `docker-compose` is installed (cargo xtask test installs docker-compose)");
    };
    let dir = tempfile::tempdir().unwrap();
    let project = dir.path().join("jitsi");
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[uplink]\ninterface = \"eth0\"\n[stack]\nmeet_domain = \"meet.example.org\"\nturn_domain = \"turn.example.org\"\n\
             public_addresses = [\"198.51.100.7\"]\ndirectory = \"{}\"\nletsencrypt_email = \"ops@example.org\"\n",
            project.display()
        ),
    )
    .unwrap();
    let out = Command::new(agent_bin()).args(["stack", "init", "--config"]).arg(&config).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains("docker-compose.yml") && said.contains("wrote") && said.contains("secrets drawn"), "{said}");
    let out = Command::new(compose[0])
        .args(&compose[1..])
        .arg("--project-directory")
        .arg(&project)
        .arg("-f")
        .arg(project.join("docker-compose.yml"))
        .arg("config")
        .output()
        .unwrap();
    let resolved = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{:?} config:\n{}", compose, String::from_utf8_lossy(&out.stderr));
    for want in [
        "ipv4_address: 172.18.0.10",
        "ipv4_address: 172.18.0.11",
        "ipv4_address: 172.18.0.12",
        "subnet: 172.18.0.0/24",
        "image: ghcr.io/jitsi/web:stable-11146-2",
        "image: coturn/coturn:4.17.0-r0",
        "JVB_ADVERTISE_IPS: 198.51.100.7",
        "TURNS_PORT: '443'",
    ] {
        assert!(resolved.contains(want), "`{want}` missing from the resolved project:\n{resolved}");
    }
    assert!(!resolved.contains("published"), "no port is published:\n{resolved}");
}
