//! `jitsi-agent check`: a preflight that changes nothing and prints one line per check, with
//! a fix for each failure.

mod docker;
mod network;
mod ports;
mod stack;
mod system;

use std::{fmt, path::Path};

use crate::config::Config;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Fine.
    Ok,
    /// Works, but not as well as it could, or something to know.
    Warn,
    /// The agent will not work until this is fixed.
    Fail,
}

/// One line of the report.
#[derive(Debug, Clone)]
pub struct Check {
    /// Outcome.
    pub outcome: Outcome,
    /// What was checked (`kernel`, `uplink eth0`, `port tcp/443`, ...).
    pub what: String,
    /// What was found.
    pub detail: String,
    /// What to do (failures and warnings).
    pub fix: Option<String>,
}

impl Check {
    fn ok(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Check { outcome: Outcome::Ok, what: what.into(), detail: detail.into(), fix: None }
    }
    fn warn(what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { outcome: Outcome::Warn, what: what.into(), detail: detail.into(), fix: Some(fix.into()) }
    }
    fn fail(what: impl Into<String>, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        Check { outcome: Outcome::Fail, what: what.into(), detail: detail.into(), fix: Some(fix.into()) }
    }
}

/// All the checks.
#[derive(Debug, Default)]
pub struct Report {
    /// In the order they ran.
    pub checks: Vec<Check>,
}

impl Report {
    /// How many failed.
    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| c.outcome == Outcome::Fail).count()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in &self.checks {
            let tag = match c.outcome {
                Outcome::Ok => "ok  ",
                Outcome::Warn => "warn",
                Outcome::Fail => "FAIL",
            };
            write!(f, "{tag} {}: {}", c.what, c.detail)?;
            if let Some(fix) = &c.fix {
                write!(f, " -> fix: {fix}")?;
            }
            writeln!(f)?;
        }
        let warned = self.checks.iter().filter(|c| c.outcome == Outcome::Warn).count();
        writeln!(f, "{} checks: {} failed, {warned} warning(s)", self.checks.len(), self.failed())
    }
}

/// Runs every check for the configuration at `path`.
pub async fn check(path: &Path) -> Report {
    let mut r = Report::default();
    r.checks.extend(system::kernel());
    r.checks.push(system::privileges());
    let config = match Config::load(path) {
        Ok(c) => {
            r.checks.push(Check::ok("config", format!("{} is valid", path.display())));
            for d in &c.warnings {
                r.checks.push(Check::warn("config", d.clone(), "change the file as the warning says"));
            }
            c
        }
        Err(e) => {
            r.checks.push(Check::fail(
                "config",
                e.report(),
                "correct the file (see the README's configuration reference)",
            ));
            return r;
        }
    };
    r.checks.push(system::bpffs(&config.pin_dir));
    r.checks.extend(network::uplink(&config).await);
    r.checks.extend(ports::ports(&config));
    r.checks.extend(docker::docker(&config).await);
    if let Some(s) = &config.stack {
        r.checks.extend(stack::files(s));
        r.checks.extend(stack::health().await);
    }
    r
}
