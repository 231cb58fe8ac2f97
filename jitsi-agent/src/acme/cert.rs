//! The certificate files of each managed name: where they are, when they expire, and
//! installing a new pair atomically (key 0600, chain 0644, owned like their directory, so the
//! container that reads them can).

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use super::error::AcmeError;
use crate::config::{Acme, Stack};

/// Where one name's certificate lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CertFiles {
    /// The name (the certificate's only subject alternative name).
    pub name: String,
    /// The full chain, PEM.
    pub chain: PathBuf,
    /// The private key, PEM (mode 0600).
    pub key: PathBuf,
}

/// The files of every name in `acme`: the stack's TURN name goes to coturn's certificate paths
/// (`<directory>/coturn/certs/turn.crt`, `turn.key`, mounted at `/etc/coturn/certs`), every
/// other name to `<state_dir>/certs/<name>/fullchain.pem` and `privkey.pem`.
pub fn files(acme: &Acme, stack: Option<&Stack>) -> Vec<CertFiles> {
    acme.names
        .iter()
        .map(|name| match stack {
            Some(s) if s.turn_domain == name.0 => {
                let dir = s.directory.join("coturn/certs");
                CertFiles { name: name.to_string(), chain: dir.join("turn.crt"), key: dir.join("turn.key") }
            }
            _ => {
                let dir = acme.state_dir.join("certs").join(name.0.as_str());
                CertFiles { name: name.to_string(), chain: dir.join("fullchain.pem"), key: dir.join("privkey.pem") }
            }
        })
        .collect()
}

/// The organisation `stack init` puts in the subject of the self-signed certificate it leaves
/// for coturn until the real one is obtained (coturn needs one at its first start).
pub const PLACEHOLDER_ORG: &str = "jitsi-agent placeholder until ACME replaces it";

/// The largest certificate chain read back (a chain of a few certificates is a few KB).
const MAX_CHAIN: u64 = 256 * 1024;

/// A self-signed certificate and key for `name` marked as the placeholder (valid for a year):
/// what coturn serves until the agent installs the real one.
pub fn placeholder(name: &str) -> Result<(String, String), AcmeError> {
    let bad =
        |e: rcgen::Error| AcmeError::BadCertificate { what: format!("placeholder for {name}"), detail: e.to_string() };
    let key = rcgen::KeyPair::generate().map_err(bad)?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(bad)?;
    params.distinguished_name.push(rcgen::DnType::OrganizationName, PLACEHOLDER_ORG);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(365);
    let cert = params.self_signed(&key).map_err(bad)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Whether the first certificate of `pem_text` is `stack init`'s placeholder.
pub fn is_placeholder(pem_text: &[u8]) -> bool {
    x509_parser::pem::parse_x509_pem(pem_text).ok().and_then(|(_, pem)| {
        let cert = pem.parse_x509().ok()?;
        let org = cert.subject().iter_organization().next()?.as_str().ok()?.to_string();
        Some(org == PLACEHOLDER_ORG)
    }) == Some(true)
}

/// The first certificate of a PEM chain: its expiry (Unix seconds) and DNS names.
pub fn leaf(pem_text: &[u8]) -> Result<(i64, Vec<String>), String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem_text).map_err(|e| format!("no PEM certificate: {e}"))?;
    let cert = pem.parse_x509().map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Ok((cert.validity().not_after.timestamp(), names))
}

/// When the installed certificate of `files` expires (Unix seconds); `None` if there is no
/// file or only `stack init`'s placeholder; an error if it cannot be read (a symlink, not a
/// regular file, too large) or is not a certificate for `files.name`.
pub fn expiry(files: &CertFiles) -> Result<Option<i64>, AcmeError> {
    let path = &files.chain;
    let text = match crate::safe_fs::read_capped(path, MAX_CHAIN) {
        Ok(Some(t)) => t,
        Ok(None) => return Ok(None),
        Err(e) => return Err(AcmeError::io(format!("reading {}", path.display()), e)),
    };
    if is_placeholder(&text) {
        return Ok(None);
    }
    let bad = |detail| AcmeError::BadCertificate { what: path.display().to_string(), detail };
    let (not_after, names) = leaf(&text).map_err(bad)?;
    if !names.contains(&files.name.to_ascii_lowercase()) {
        return Err(bad(format!("issued for {names:?}, not {}", files.name)));
    }
    Ok(Some(not_after))
}

/// Writes `text` as `path` with `mode` and `owner` (see `safe_fs::write_replace`: no symlink
/// followed, created with its final mode and owner, renamed into place).
fn write_atomic(path: &Path, text: &str, mode: u32, owner: (u32, u32)) -> Result<(), AcmeError> {
    let dir = path.parent().expect("an absolute file path");
    let name = path.file_name().expect("a file name").to_string_lossy();
    crate::safe_fs::write_replace(dir, &name, text.as_bytes(), mode, Some(owner)).map_err(|e| {
        // The unit makes the directory writable only if it existed when the service started.
        let hint = if e.raw_os_error() == Some(libc::EROFS) {
            " (read-only to the service: the directory was made after it started, or is not in the \
             unit's ReadWritePaths=; restart it, or add a drop-in)"
        } else {
            ""
        };
        AcmeError::io(format!("writing {}{hint}", path.display()), e)
    })
}

/// Checks that `chain` is a certificate for `files.name`, then installs it and `key`: the key
/// first (0600, or 0640 when the directory belongs to a group other than root's: coturn's
/// `certs/` is root:65534 so that coturn reads the key by group and cannot write there), then
/// the chain (0644). Both are owned like the directory. Returns the new expiry.
pub fn install(files: &CertFiles, chain: &str, key: &str) -> Result<i64, AcmeError> {
    let (not_after, names) = leaf(chain.as_bytes())
        .map_err(|detail| AcmeError::BadCertificate { what: format!("certificate for {}", files.name), detail })?;
    if !names.contains(&files.name.to_ascii_lowercase()) {
        return Err(AcmeError::BadCertificate {
            what: format!("certificate for {}", files.name),
            detail: format!("issued for {names:?}"),
        });
    }
    if !key.contains("PRIVATE KEY-----") {
        return Err(AcmeError::BadCertificate { what: format!("key for {}", files.name), detail: "not PEM".into() });
    }
    let dir = files.chain.parent().expect("an absolute file path");
    std::fs::create_dir_all(dir).map_err(|e| AcmeError::io(format!("creating {}", dir.display()), e))?;
    // Both files are owned like their directory (`files` puts them in the same one).
    let d = crate::safe_fs::open_dir(dir)
        .and_then(|d| d.metadata())
        .map_err(|e| AcmeError::io(format!("opening {}", dir.display()), e))?;
    let owner = (d.uid(), d.gid());
    write_atomic(&files.key, key, if owner.1 == 0 { 0o600 } else { 0o640 }, owner)?;
    write_atomic(&files.chain, chain, 0o644, owner)?;
    Ok(not_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The files of `turn.example.org` under `dir`, named `<stem>.crt` and `<stem>.key`.
    fn turn_files(dir: &Path, stem: &str) -> CertFiles {
        CertFiles {
            name: "turn.example.org".into(),
            chain: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
        }
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap().self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn install_writes_both_with_their_modes_and_reads_back_the_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let files = turn_files(&dir.path().join("c"), "turn");
        assert_eq!(expiry(&files).unwrap(), None, "no file yet");
        let (chain, key) = self_signed("turn.example.org");
        let not_after = install(&files, &chain, &key).unwrap();
        assert_eq!(expiry(&files).unwrap(), Some(not_after));
        // A certificate for another name in its place (put there by hand) is not taken for it.
        let (other, _) = self_signed("other.example.org");
        std::fs::write(&files.chain, other).unwrap();
        assert!(expiry(&files).unwrap_err().to_string().contains("not turn.example.org"));
        assert_eq!(std::fs::read_to_string(&files.key).unwrap(), key);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let group = std::fs::metadata(dir.path().join("c")).unwrap().gid();
        assert_eq!((mode(&files.key), mode(&files.chain)), (if group == 0 { 0o600 } else { 0o640 }, 0o644));
        use std::os::unix::fs::PermissionsExt as _;
        let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("c")).unwrap().collect();
        assert_eq!(leftovers.len(), 2, "no temporary file left");
    }

    #[test]
    fn the_placeholder_counts_as_no_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let files = turn_files(dir.path(), "turn");
        let (chain, key) = placeholder("turn.example.org").unwrap();
        assert!(is_placeholder(chain.as_bytes()));
        std::fs::write(&files.chain, &chain).unwrap();
        std::fs::write(&files.key, &key).unwrap();
        assert_eq!(expiry(&files).unwrap(), None, "due for replacement at once");
        let (real, _) = self_signed("turn.example.org");
        assert!(!is_placeholder(real.as_bytes()));
        std::fs::write(&files.chain, &real).unwrap();
        assert!(expiry(&files).unwrap().is_some());
    }

    #[test]
    fn a_certificate_for_another_name_or_garbage_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let files = turn_files(dir.path(), "a");
        let (chain, key) = self_signed("other.example.org");
        let e = install(&files, &chain, &key).unwrap_err().to_string();
        assert!(e.contains("issued for [\"other.example.org\"]"), "{e}");
        assert!(install(&files, "junk", &key).is_err());
        assert!(!files.key.exists() && !files.chain.exists(), "nothing written");
    }

    #[test]
    fn stack_turn_name_goes_to_coturns_paths() {
        let text = "[uplink]\ninterface=\"eth0\"\n[stack]\nmeet_domain=\"meet.example.org\"\n\
            turn_domain=\"turn.example.org\"\npublic_addresses=[\"198.51.100.7\"]\ndirectory=\"/srv/j\"\n\
            [acme]\nemail=\"ops@example.org\"\nnames=[\"turn.example.org\",\"www.example.org\"]\n";
        let config = crate::config::Config::parse(text, "t.toml".as_ref()).unwrap();
        let f = files(config.acme.as_ref().unwrap(), config.stack.as_ref());
        assert_eq!(f[0].chain, Path::new("/srv/j/coturn/certs/turn.crt"));
        assert_eq!(f[0].key, Path::new("/srv/j/coturn/certs/turn.key"));
        assert_eq!(f[1].chain, Path::new("/var/lib/jitsi-agent/acme/certs/www.example.org/fullchain.pem"));
    }
}
