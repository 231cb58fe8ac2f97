//! The generated project against docker-jitsi-meet's own files at the pinned tag: the facts in
//! `data/docker-jitsi-meet.json` (`cargo xtask upstream-facts`, with the upstream commit), per
//! service: image, `read_only`, `tmpfs`, every volume target and its flags, every environment
//! name, labels, no `user:` over the image's, and the image's healthcheck script wired.

use std::collections::BTreeMap;

use serde_yaml::Value;

use super::compose::{Upstream, compose_yml, upstream};

fn strings(v: &Value) -> Vec<String> {
    v.as_sequence().map(|s| s.iter().filter_map(|x| x.as_str().map(str::to_string)).collect()).unwrap_or_default()
}

/// Every way `yaml` departs from `facts`, one line each.
fn departures(yaml: &Value, facts: &Upstream) -> Vec<String> {
    let mut out = Vec::new();
    for (name, up) in &facts.services {
        let svc = &yaml["services"][name.as_str()];
        let mut bad = |what: String| out.push(format!("{name}: {what}"));
        if svc.is_null() {
            bad("missing".into());
            continue;
        }
        let image = svc["image"].as_str().unwrap_or("");
        if !image.ends_with(&format!("/{}:${{JITSI_IMAGE_VERSION}}", up.image)) {
            bad(format!("image `{image}`, upstream's is `{}`", up.image));
        }
        if svc["read_only"].as_bool().unwrap_or(false) != up.read_only {
            bad(format!("read_only must be {}", up.read_only));
        }
        if strings(&svc["tmpfs"]) != up.tmpfs {
            bad(format!("tmpfs {:?}, upstream's {:?}", strings(&svc["tmpfs"]), up.tmpfs));
        }
        let ours: BTreeMap<String, String> = strings(&svc["volumes"])
            .iter()
            .map(|v| {
                let p: Vec<&str> = v.split(':').collect();
                (p.get(1).unwrap_or(&"").to_string(), p.get(2).unwrap_or(&"").to_string())
            })
            .collect();
        let theirs: BTreeMap<String, String> = up.volumes.iter().map(|v| (v.target.clone(), v.flags.clone())).collect();
        if ours != theirs {
            bad(format!("volumes {ours:?}, upstream's {theirs:?}"));
        }
        let env = strings(&svc["environment"]);
        let missing: Vec<&String> = up.environment.iter().filter(|e| !env.contains(e)).collect();
        if !missing.is_empty() {
            bad(format!("environment lacks {missing:?}"));
        }
        for (k, v) in &up.labels {
            if svc["labels"][k.as_str()].as_str() != Some(v) {
                bad(format!("label {k}={v} missing"));
            }
        }
        if svc.get("user").is_some() && up.compose_user.is_none() {
            bad(format!("sets `user:` over the image's `USER {}` (drops its supplementary groups)", up.image_user));
        }
        let test = strings(&svc["healthcheck"]["test"]);
        match &up.healthcheck {
            Some(script) if test != ["CMD", script.as_str()] => bad(format!("healthcheck {test:?}, not {script}")),
            None if !test.is_empty() => bad("a healthcheck the image has no script for".into()),
            _ => {}
        }
    }
    out
}

fn generated() -> Value {
    serde_yaml::from_str(&compose_yml()).unwrap()
}

#[test]
fn the_generated_services_match_upstream_at_the_pinned_tag() {
    let facts = upstream();
    assert_eq!(facts.commit.len(), 40, "the facts name the upstream commit");
    let d = departures(&generated(), facts);
    assert!(d.is_empty(), "departures from docker-jitsi-meet {}:\n{}", facts.tag, d.join("\n"));
    // The default image tag is the one the facts are from.
    let text = "[uplink]\ninterface = \"eth0\"\n[stack]\nmeet_domain = \"meet.example.org\"\n\
                turn_domain = \"turn.example.org\"\npublic_addresses = [\"198.51.100.7\"]\n";
    let stack = crate::config::Config::parse(text, "t.toml".as_ref()).unwrap().stack.unwrap();
    assert_eq!(stack.image_tag, facts.tag, "refresh data/docker-jitsi-meet.json for a new tag");
}

/// What a departure is reported as, and how to make it.
type Mutation = (&'static str, fn(&mut Value));

#[test]
fn the_comparison_catches_each_kind_of_departure() {
    let facts = upstream();
    let base = generated();
    let mutations: [Mutation; 7] = [
        ("tmpfs", |y| {
            y["services"]["web"].as_mapping_mut().unwrap().remove("tmpfs");
        }),
        ("read_only", |y| y["services"]["jvb"]["read_only"] = Value::Bool(false)),
        ("volumes", |y| y["services"]["web"]["volumes"][1] = "${CONFIG}/storage/web:/var/lib/jitsi-web:Z".into()),
        ("volumes", |y| {
            y["services"]["web"]["volumes"][2] =
                "${CONFIG}/storage/transcripts:/usr/share/jitsi-meet/transcripts:Z".into()
        }),
        ("environment lacks", |y| {
            y["services"]["prosody"]["environment"]
                .as_sequence_mut()
                .unwrap()
                .retain(|e| e.as_str() != Some("ENABLE_AUTH"))
        }),
        ("user:", |y| {
            y["services"]["jicofo"].as_mapping_mut().unwrap().insert("user".into(), "1000:1000".into());
        }),
        ("healthcheck", |y| {
            y["services"]["jvb"].as_mapping_mut().unwrap().remove("healthcheck");
        }),
    ];
    for (want, mutate) in mutations {
        let mut y = base.clone();
        mutate(&mut y);
        let d = departures(&y, facts);
        assert!(d.iter().any(|l| l.contains(want)), "`{want}` not reported: {d:?}");
    }
}
