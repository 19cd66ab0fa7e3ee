//! The node's certificates: chains and keys from PEM files, chosen per connection by the name the
//! client asks for (SNI), and reloaded without dropping anyone. A reload reads every file again
//! and swaps the whole set in only when every pair is good; otherwise the set in use stays and
//! the reload reports why.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::sync::Locked;

/// Why a certificate set was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot read {}: {reason}", path.display())]
    Read { path: PathBuf, reason: String },
    #[error("{} holds no certificate (PEM `BEGIN CERTIFICATE`)", .0.display())]
    NoCertificate(PathBuf),
    #[error("{}: unusable private key: {reason}", path.display())]
    Key { path: PathBuf, reason: String },
    #[error("{} does not belong to the certificate in {}: {reason}", key.display(), cert.display())]
    Mismatch {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("{}: the certificate cannot be read: {reason}", .path.display())]
    Certificate { path: PathBuf, reason: String },
    #[error("give as many --tls-key files as --tls-cert files (got {certs} and {keys})")]
    Pairs { certs: usize, keys: usize },
}

/// One certificate chain and its key, as loaded.
struct Entry {
    key: Arc<CertifiedKey>,
    /// When the two files were last changed, as seen at load.
    stamps: [Option<SystemTime>; 2],
}

/// The certificate set of a node, and where it comes from.
pub struct Certs {
    /// (chain, key) file pairs, in the order given; the first is the default.
    files: Vec<(PathBuf, PathBuf)>,
    loaded: Mutex<Arc<Vec<Entry>>>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs").field("files", &self.files).finish()
    }
}

impl Certs {
    /// Loads every (chain, key) pair; every pair must be good.
    pub fn load(certs: &[PathBuf], keys: &[PathBuf]) -> Result<Arc<Certs>, CertError> {
        if certs.len() != keys.len() || certs.is_empty() {
            return Err(CertError::Pairs {
                certs: certs.len(),
                keys: keys.len(),
            });
        }
        let files: Vec<(PathBuf, PathBuf)> =
            certs.iter().cloned().zip(keys.iter().cloned()).collect();
        let loaded = load_all(&files)?;
        Ok(Arc::new(Certs {
            files,
            loaded: Mutex::new(Arc::new(loaded)),
        }))
    }

    /// Reads every file again and swaps the new set in if every pair is good. Connections
    /// already up keep the certificate they started with; new ones get the new set.
    pub fn reload(&self) -> Result<usize, CertError> {
        let fresh = load_all(&self.files)?;
        let n = fresh.len();
        self.loaded.with(|l| *l = Arc::new(fresh));
        Ok(n)
    }

    /// Whether any file changed on disk since it was loaded (a new modification time, or a file
    /// that appeared or went away).
    pub fn changed_on_disk(&self) -> bool {
        let loaded = self.loaded.with(|l| l.clone());
        self.files
            .iter()
            .zip(loaded.iter())
            .any(|((c, k), e)| [modified(c), modified(k)] != e.stamps)
    }
}

impl ResolvesServerCert for Certs {
    /// The first certificate valid for the name the client asked for, else the first one.
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.with(|l| l.clone());
        let wanted = hello
            .server_name()
            .and_then(|n| ServerName::try_from(n.to_owned()).ok());
        let chosen = wanted.and_then(|name| {
            loaded.iter().find(|e| {
                e.key.end_entity_cert().is_ok_and(|der| {
                    webpki::EndEntityCert::try_from(der)
                        .is_ok_and(|c| c.verify_is_valid_for_subject_name(&name).is_ok())
                })
            })
        });
        chosen.or_else(|| loaded.first()).map(|e| e.key.clone())
    }
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn load_all(files: &[(PathBuf, PathBuf)]) -> Result<Vec<Entry>, CertError> {
    files
        .iter()
        .map(|(cert, key)| {
            let stamps = [modified(cert), modified(key)];
            Ok(Entry {
                key: Arc::new(load_pair(cert, key)?),
                stamps,
            })
        })
        .collect()
}

/// A chain and its key from two PEM files (they may be the same file), checked to belong
/// together.
fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|e| CertError::Read {
            path: path.to_owned(),
            reason: e.to_string(),
        })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| CertError::Certificate {
            path: cert.to_owned(),
            reason: e.to_string(),
        })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate(cert.to_owned()));
    };
    webpki::EndEntityCert::try_from(leaf).map_err(|e| CertError::Certificate {
        path: cert.to_owned(),
        reason: e.to_string(),
    })?;
    let key_pem = read(key)?;
    let der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| CertError::Key {
        path: key.to_owned(),
        reason: e.to_string(),
    })?;
    let signing =
        rustls::crypto::ring::sign::any_supported_type(&der).map_err(|e| CertError::Key {
            path: key.to_owned(),
            reason: e.to_string(),
        })?;
    let certified = CertifiedKey::new(chain, signing);
    certified.keys_match().map_err(|e| CertError::Mismatch {
        cert: cert.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    })?;
    Ok(certified)
}
