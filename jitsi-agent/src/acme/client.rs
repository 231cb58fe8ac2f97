//! The ACME account (kept in `<state_dir>/account.json`, mode 0600, per directory URL) and one
//! order: a certificate for one name over HTTP-01.

use std::{path::Path, time::Duration};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{challenges::Challenges, error::AcmeError};
use crate::{config::Acme, names::ServerName};

/// How long the CA gets to validate, and to issue.
const POLL: RetryPolicy =
    RetryPolicy::new().initial_delay(Duration::from_millis(500)).timeout(Duration::from_secs(120));

#[derive(Serialize, Deserialize)]
struct Stored {
    directory: String,
    credentials: AccountCredentials,
}

/// The account builder: it reads the system's roots or `ca_root`, off the async workers.
async fn builder(acme: &Acme) -> Result<instant_acme::AccountBuilder, AcmeError> {
    let root = acme.ca_root.clone();
    tokio::task::spawn_blocking(move || {
        Ok(match &root {
            Some(root) => Account::builder_with_root(root)?,
            None => Account::builder()?,
        })
    })
    .await
    .map_err(|source| AcmeError::Worker { what: "reading the trusted roots", source })?
}

/// The account for `acme.directory`: loaded from the state directory, else registered (and
/// stored).
pub async fn account(acme: &Acme) -> Result<Account, AcmeError> {
    let path = acme.state_dir.join("account.json");
    if let Ok(text) = tokio::fs::read_to_string(&path).await
        && let Ok(stored) = serde_json::from_str::<Stored>(&text)
        && stored.directory == acme.directory
    {
        return Ok(builder(acme).await?.from_credentials(stored.credentials).await?);
    }
    let contact = format!("mailto:{}", acme.email);
    let new = NewAccount { contact: &[&contact], terms_of_service_agreed: true, only_return_existing: false };
    let (account, credentials) = builder(acme).await?.create(&new, acme.directory.clone(), None).await?;
    let text = serde_json::to_string(&Stored { directory: acme.directory.clone(), credentials })
        .expect("credentials serialize");
    tokio::task::spawn_blocking(move || write_private(&path, &text))
        .await
        .map_err(|source| AcmeError::Worker { what: "writing the account", source })??;
    info!(directory = %acme.directory, id = account.id(), "acme: account registered");
    Ok(account)
}

fn write_private(path: &Path, text: &str) -> Result<(), AcmeError> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().expect("an absolute path");
    std::fs::create_dir_all(dir).map_err(|e| AcmeError::io(format!("creating {}", dir.display()), e))?;
    let tmp = path.with_extension("tmp");
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()))
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| AcmeError::io(format!("writing {}", path.display()), e))
}

/// Orders a certificate for `name`, publishing its HTTP-01 key authorizations in
/// `challenges` while the CA validates. Returns (full chain, private key), both PEM.
pub async fn obtain(account: &Account, name: &str, challenges: &Challenges) -> Result<(String, String), AcmeError> {
    let server_name = ServerName::parse(name.as_bytes())
        .map_err(|e| AcmeError::NotValidated { name: name.into(), detail: e.to_string() })?;
    let identifiers = [Identifier::Dns(server_name.to_string())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await?;
    let mut published = Vec::new();
    let outcome = async {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => {
                    return Err(AcmeError::NotValidated {
                        name: name.into(),
                        detail: format!("authorization {other:?}"),
                    });
                }
            }
            let mut challenge = authz.challenge(ChallengeType::Http01).ok_or_else(|| AcmeError::NotValidated {
                name: name.into(),
                detail: "the CA offers no http-01 challenge".into(),
            })?;
            challenges.add(&challenge.token, server_name.clone(), challenge.key_authorization().as_str().to_owned());
            published.push(challenge.token.clone());
            challenge.set_ready().await?;
        }
        let status = order.poll_ready(&POLL).await?;
        if status != OrderStatus::Ready {
            let detail = match order.state().error.as_ref() {
                Some(p) => format!("order {status:?}: {p}"),
                None => format!("order {status:?}"),
            };
            return Err(AcmeError::NotValidated { name: name.into(), detail });
        }
        let key = order.finalize().await?;
        let chain = order.poll_certificate(&POLL).await?;
        Ok((chain, key))
    }
    .await;
    for token in published {
        challenges.remove(&token);
    }
    outcome
}
