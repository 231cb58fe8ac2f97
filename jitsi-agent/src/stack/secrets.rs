//! The stack's secrets: every password upstream's `gen-passwords.sh` makes, plus coturn's
//! shared secret, drawn from the OS CSPRNG. Existing ones (in the project's `.env`) are kept.

use std::collections::BTreeMap;

/// Upstream's passwords (`openssl rand -hex 16`: 128 bits each): the six `gen-passwords.sh`
/// makes at docker-jitsi-meet `stable-11146-2`.
pub const PASSWORDS: [&str; 6] = [
    "JICOFO_AUTH_PASSWORD",
    "JVB_AUTH_PASSWORD",
    "JIGASI_XMPP_PASSWORD",
    "JIGASI_TRANSCRIBER_PASSWORD",
    "JIBRI_RECORDER_PASSWORD",
    "JIBRI_XMPP_PASSWORD",
];
/// coturn's `static-auth-secret`, which prosody hands out as time-limited TURN credentials
/// (256 bits).
pub const TURN_SECRET: &str = "TURN_CREDENTIALS";

/// Secret name -> value. `Debug` never shows the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(BTreeMap<String, String>);

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.keys().map(|k| format!("{k}=<redacted>"))).finish()
    }
}

fn random_hex(bytes: usize) -> Result<String, getrandom::Error> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

impl Secrets {
    /// Keeps every secret already in `existing_env` (a `.env` text) and draws the missing ones.
    /// Returns the secrets and the names that were drawn now.
    pub fn complete(existing_env: Option<&str>) -> Result<(Self, Vec<&'static str>), getrandom::Error> {
        let existing: BTreeMap<&str, &str> = existing_env
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim()))
            .filter(|(_, v)| !v.is_empty())
            .collect();
        let mut out = BTreeMap::new();
        let mut drawn = Vec::new();
        for (name, bytes) in PASSWORDS.iter().map(|n| (*n, 16)).chain([(TURN_SECRET, 32)]) {
            let value = match existing.get(name) {
                Some(v) => (*v).to_string(),
                None => {
                    drawn.push(name);
                    random_hex(bytes)?
                }
            };
            out.insert(name.to_string(), value);
        }
        Ok((Secrets(out), drawn))
    }

    /// The value of `name`.
    pub fn get(&self, name: &str) -> &str {
        self.0.get(name).map(String::as_str).expect("every secret is present")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_missing_keeps_existing_and_never_shows_values() {
        let (s, drawn) = Secrets::complete(Some("JVB_AUTH_PASSWORD=keepme\nOTHER=x\n")).unwrap();
        assert_eq!(s.get("JVB_AUTH_PASSWORD"), "keepme");
        assert_eq!(drawn.len(), 6);
        assert_eq!(s.get("JICOFO_AUTH_PASSWORD").len(), 32);
        assert_eq!(s.get(TURN_SECRET).len(), 64);
        let shown = format!("{s:?}");
        assert!(!shown.contains("keepme") && !shown.contains(s.get(TURN_SECRET)), "{shown}");
        let (again, _) = Secrets::complete(None).unwrap();
        assert_ne!(again.get(TURN_SECRET), s.get(TURN_SECRET));
    }
}
