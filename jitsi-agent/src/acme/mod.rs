//! Certificates the agent obtains and renews over ACME (RFC 8555) with HTTP-01 challenges,
//! answered by the HTTP front on port 80.
//!
//! A background task checks each name's certificate file: missing, unreadable or expiring
//! within `renew_before_days`, it orders a new one, installs it atomically and sends the
//! reload container SIGUSR2 (coturn re-reads its certificate on it). A failure keeps the old
//! files and is retried with a growing back-off. Each attempt's outcome is written to
//! `<state_dir>/status.json` for `status`.

pub mod cert;
pub mod challenges;
pub mod client;
pub mod error;

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use self::{cert::CertFiles, challenges::Challenges, error::AcmeError};
use crate::config::{Acme, Stack};

/// How often certificates are looked at when nothing is due.
const CHECK: Duration = Duration::from_secs(12 * 3600);
/// The first retry after a failure; doubled each time, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(5 * 60);
/// The longest wait between attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(12 * 3600);

/// One name, as `status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertState {
    /// The name.
    pub name: String,
    /// The full chain's path.
    pub chain: String,
    /// When the installed certificate expires (Unix seconds), if there is one.
    pub expires: Option<i64>,
    /// When the agent last installed one (Unix seconds).
    pub renewed: Option<i64>,
    /// The last attempt's error (cleared by a success).
    pub last_error: Option<String>,
    /// When the agent will next look at it (Unix seconds).
    pub next_check: Option<i64>,
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// The states of `acme`'s names for `status`: the expiry from the files themselves, the rest
/// from what the agent last recorded.
pub fn read_states(acme: &Acme, stack: Option<&Stack>) -> Vec<CertState> {
    let recorded: Vec<CertState> = std::fs::read_to_string(acme.state_dir.join("status.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    cert::files(acme, stack)
        .into_iter()
        .map(|f| {
            let mut s = recorded.iter().find(|r| r.name == f.name).cloned().unwrap_or_default();
            s.name = f.name.clone();
            s.chain = f.chain.display().to_string();
            s.expires = match cert::expiry(&f) {
                Ok(e) => e,
                Err(e) => {
                    s.last_error.get_or_insert_with(|| e.to_string());
                    None
                }
            };
            s
        })
        .collect()
}

/// The running certificate manager.
pub struct AcmeRunning {
    settings: Settings,
    task: JoinHandle<()>,
}

/// What a certificate manager runs with: `[acme]`, and the stack's TURN name and directory
/// (where coturn's certificate goes).
type Settings = (Acme, Option<(crate::names::ServerName, std::path::PathBuf)>);

impl AcmeRunning {
    /// Starts managing `acme`'s names (the HTTP front must answer `challenges` on 80);
    /// `published` gets the names' states after every round (for the metrics).
    pub fn start(acme: Acme, stack: Option<Stack>, challenges: Challenges, published: Published) -> Self {
        let settings = Self::key(&acme, stack.as_ref());
        let names = acme.names.iter().map(|n| n.0.clone()).collect();
        challenges.set_names(names);
        let files = cert::files(&acme, stack.as_ref());
        info!(names = ?acme.names, directory = %acme.directory, "acme: managing certificates");
        let scope = stack.as_ref().map(|s| s.subnet);
        let task = tokio::spawn(manage(acme, files, challenges, published, scope));
        AcmeRunning { settings, task }
    }

    fn key(acme: &Acme, stack: Option<&Stack>) -> Settings {
        (acme.clone(), stack.map(|s| (s.turn_domain.clone(), s.directory.clone())))
    }

    /// Whether this manager runs with these settings.
    pub fn runs(&self, acme: &Acme, stack: Option<&Stack>) -> bool {
        self.settings == Self::key(acme, stack)
    }
}

impl Drop for AcmeRunning {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Per name: when to look next, and failures in a row.
struct Schedule {
    due: i64,
    failures: u32,
}

/// Where the certificate manager publishes the names' states.
pub type Published = std::sync::Arc<std::sync::Mutex<Vec<CertState>>>;

async fn manage(
    acme: Acme,
    files: Vec<CertFiles>,
    challenges: Challenges,
    published: Published,
    scope: Option<crate::layout::Layout>,
) {
    let mut account = None;
    let mut states: BTreeMap<String, CertState> = files
        .iter()
        .map(|f| {
            (
                f.name.clone(),
                CertState { name: f.name.clone(), chain: f.chain.display().to_string(), ..Default::default() },
            )
        })
        .collect();
    let mut schedule: BTreeMap<String, Schedule> =
        files.iter().map(|f| (f.name.clone(), Schedule { due: 0, failures: 0 })).collect();
    let renew_before = i64::from(acme.renew_before_days) * 86_400;
    loop {
        for f in &files {
            let plan = schedule.get_mut(&f.name).expect("every name is scheduled");
            let state = states.get_mut(&f.name).expect("every name has a state");
            if now() < plan.due {
                continue;
            }
            // File reads and writes stay off the async workers.
            let file = f.clone();
            let read = tokio::task::spawn_blocking(move || cert::expiry(&file)).await;
            let expires = read.expect("the expiry reader does not panic").unwrap_or_else(|e| {
                warn!(name = %f.name, error = %e, "acme: the installed certificate cannot be read; replacing it");
                None
            });
            state.expires = expires;
            if let Some(exp) = expires
                && exp - now() > renew_before
            {
                plan.due = (exp - renew_before).min(now() + CHECK.as_secs() as i64);
                state.next_check = Some(plan.due);
                continue;
            }
            info!(name = %f.name, expires = ?expires, "acme: obtaining a certificate");
            match renew(&acme, &mut account, f, &challenges).await {
                Ok(exp) => {
                    info!(name = %f.name, chain = %f.chain.display(), expires = exp, "acme: certificate installed");
                    plan.failures = 0;
                    state.expires = Some(exp);
                    state.renewed = Some(now());
                    state.last_error = reload(&acme, scope).await.err().map(|e| e.to_string());
                    plan.due = (exp - renew_before).min(now() + CHECK.as_secs() as i64);
                }
                Err(e) => {
                    plan.failures += 1;
                    let wait = FIRST_BACKOFF.saturating_mul(1 << (plan.failures - 1).min(16)).min(MAX_BACKOFF);
                    warn!(name = %f.name, error = %e, retry_in_secs = wait.as_secs(), "acme: could not obtain a certificate; the old one stays");
                    state.last_error = Some(e.to_string());
                    plan.due = now() + wait.as_secs() as i64;
                    if matches!(e, AcmeError::Protocol(_)) {
                        // A new account lookup next time (the server may have been replaced).
                        account = None;
                    }
                }
            }
            state.next_check = Some(plan.due);
        }
        record(&acme, &states).await;
        *published.lock().expect("certificates lock") = states.values().cloned().collect();
        let next = schedule.values().map(|s| s.due).min().unwrap_or(now() + CHECK.as_secs() as i64);
        let wait = (next - now()).clamp(1, 3600) as u64;
        tokio::time::sleep(Duration::from_secs(wait)).await;
    }
}

async fn renew(
    acme: &Acme,
    account: &mut Option<instant_acme::Account>,
    files: &CertFiles,
    challenges: &Challenges,
) -> Result<i64, AcmeError> {
    if account.is_none() {
        *account = Some(client::account(acme).await?);
    }
    let account = account.as_ref().expect("set above");
    let (chain, key) = client::obtain(account, &files.name, challenges).await?;
    let files = files.clone();
    tokio::task::spawn_blocking(move || cert::install(&files, &chain, &key))
        .await
        .expect("the certificate writer does not panic")
}

/// Sends SIGUSR2 to the reload container, if one is configured (with `[stack]`, only to the
/// stack's own: see `docker::resolve`).
async fn reload(acme: &Acme, scope: Option<crate::layout::Layout>) -> Result<(), AcmeError> {
    let Some(container) = &acme.reload_container else { return Ok(()) };
    match crate::docker::signal(container, "SIGUSR2", scope).await {
        Ok(Some(id)) => {
            info!(%container, %id, "acme: sent SIGUSR2 to reload the certificate");
            Ok(())
        }
        Ok(None) => {
            info!(%container, "acme: container not running; it reads the new certificate when it starts");
            Ok(())
        }
        Err(e) => {
            warn!(%container, error = %e.report(), "acme: could not signal the container");
            Err(AcmeError::Reload { container: container.clone(), cause: Box::new(e) })
        }
    }
}

/// Writes the states for `status` (off the async workers).
async fn record(acme: &Acme, states: &BTreeMap<String, CertState>) {
    let list: Vec<&CertState> = states.values().collect();
    let text = serde_json::to_string_pretty(&list).expect("states serialize");
    let (dir, path) = (acme.state_dir.clone(), acme.state_dir.join("status.json"));
    let at = path.clone();
    let written = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&dir).and_then(|()| {
            let tmp = at.with_extension("tmp");
            std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &at))
        })
    })
    .await;
    match written {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(path = %path.display(), error = %e, "acme: cannot record the certificates' state"),
        Err(e) => {
            warn!(path = %path.display(), error = %e, "acme: cannot record the certificates' state: the worker thread failed")
        }
    }
}
