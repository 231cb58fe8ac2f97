//! The HTTP-01 challenges being validated: token -> (name, key authorization). The ACME task
//! adds a challenge before telling the server it is ready and removes it when the
//! authorization is settled; the HTTP front answers from here.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use crate::names::ServerName;

/// Shared between the ACME task and the HTTP front.
#[derive(Debug, Clone, Default)]
pub struct Challenges {
    inner: Arc<RwLock<State>>,
}

#[derive(Debug, Default)]
struct State {
    /// Names whose challenges the agent answers (all requests for
    /// `/.well-known/acme-challenge/` on them, known token or not).
    names: Vec<ServerName>,
    tokens: HashMap<String, (ServerName, String)>,
}

impl Challenges {
    /// Sets the names the agent obtains certificates for.
    pub fn set_names(&self, names: Vec<ServerName>) {
        self.inner.write().expect("challenges lock").names = names;
    }

    /// Whether challenges for `name` are answered by the agent.
    pub fn manages(&self, name: &ServerName) -> bool {
        self.inner.read().expect("challenges lock").names.contains(name)
    }

    /// Publishes a token's key authorization for `name`.
    pub fn add(&self, token: &str, name: ServerName, key_authorization: String) {
        self.inner.write().expect("challenges lock").tokens.insert(token.to_owned(), (name, key_authorization));
    }

    /// Withdraws a token.
    pub fn remove(&self, token: &str) {
        self.inner.write().expect("challenges lock").tokens.remove(token);
    }

    /// The key authorization for `token` requested on `name`, if one is published.
    pub fn answer(&self, name: &ServerName, token: &str) -> Option<String> {
        let state = self.inner.read().expect("challenges lock");
        state.tokens.get(token).filter(|(n, _)| n == name).map(|(_, k)| k.clone())
    }
}
