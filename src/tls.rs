//! TLS with rustls (ring provider, TLS 1.2 and 1.3 only), configured from
//! PEM files.
//!
//! - [`server_config`]: the listener's certificate chain and key, ALPN `h2`
//!   then `http/1.1`.
//! - [`client_config`]: connections the ingress opens (Redis). The server is
//!   verified against the CA file when one is given, else against the
//!   system's roots, and its name against the URL's host; a client
//!   certificate and key are presented when given (mutual TLS).
//!
//! A leaf: it imports nothing of the crate, so the configuration can check
//! the files at start and on reload, and the server and the Redis module can
//! use them.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The listener's TLS configuration, swapped whole when SIGHUP brings a new
/// certificate: each new connection takes the one in place when it starts.
pub(crate) type ListenerTls = Arc<arc_swap::ArcSwap<ServerConfig>>;

/// Why a TLS configuration could not be built. Messages name files, never
/// their contents.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or holds no PEM item of the kind needed.
    #[error("{what} {path}: {reason}")]
    File {
        /// Which file it is (CA, certificate, key).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The system's roots could not be loaded, or none is there.
    #[error("no CA file given and the system's CA roots cannot be used: {0}")]
    SystemRoots(String),
    /// rustls refused the pieces.
    #[error("{0}")]
    Rustls(String),
}

/// Why rustls refused certificate file `cert` with key file `key`, in the
/// operator's words for the usual cause.
fn pair_error(cert: &Path, key: &Path, e: rustls::Error) -> TlsError {
    TlsError::Rustls(match e {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => format!(
            "key file {} does not belong to the certificate in {}",
            key.display(),
            cert.display()
        ),
        e => format!(
            "certificate file {} and key file {}: {e}",
            cert.display(),
            key.display()
        ),
    })
}

/// The files of a TLS client configuration.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientFiles<'a> {
    /// PEM CA certificates the server's chain must lead to; `None`: the
    /// system's roots.
    pub ca: Option<&'a Path>,
    /// PEM certificate chain and private key presented to the server.
    pub identity: Option<(&'a Path, &'a Path)>,
}

/// The rustls client configuration `files` describe.
pub fn client_config(files: ClientFiles<'_>) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    match files.ca {
        Some(path) => {
            for cert in certificates("CA file", path)? {
                roots.add(cert).map_err(|e| TlsError::File {
                    what: "CA file",
                    path: path.to_owned(),
                    reason: e.to_string(),
                })?;
            }
        }
        None => {
            let system = rustls_native_certs::load_native_certs();
            for cert in system.certs {
                // One unusable system certificate does not spoil the rest.
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                let why = system
                    .errors
                    .first()
                    .map_or("none found".to_owned(), ToString::to_string);
                return Err(TlsError::SystemRoots(why));
            }
        }
    }
    let builder =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_root_certificates(roots);
    let config = match files.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(certificates("certificate file", cert)?, private_key(key)?)
            .map_err(|e| pair_error(cert, key, e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The listener's configuration: `cert` (PEM chain, leaf first) and `key`
/// (PEM private key), ALPN `h2` and `http/1.1`.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Rustls(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certificates("certificate file", cert)?, private_key(key)?)
            .map_err(|e| pair_error(cert, key, e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// When the first certificate of PEM file `path` (the leaf, in a chain)
/// expires: its `notAfter`, in seconds since the Unix epoch.
pub(crate) fn expires_at(path: &Path) -> Result<i64, TlsError> {
    let certs = certificates("certificate file", path)?;
    let leaf = certs.first().ok_or_else(|| TlsError::File {
        what: "certificate file",
        path: path.to_owned(),
        reason: "holds no PEM certificate".into(),
    })?;
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| TlsError::File {
            what: "certificate file",
            path: path.to_owned(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
    Ok(parsed.validity().not_after.timestamp())
}

/// Every certificate of a PEM file (at least one).
fn certificates(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let fail = |reason: String| TlsError::File {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| fail(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| fail(e.to_string()))?;
    if certs.is_empty() {
        return Err(fail("holds no PEM certificate".into()));
    }
    Ok(certs)
}

/// The private key of a PEM file.
fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "key file",
        path: path.to_owned(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key".into(),
            other => other.to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreadable_or_empty_files_are_named_in_the_error() {
        let dir = std::env::temp_dir().join(format!("tether-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let missing = dir.join("missing.pem");
        let err = client_config(ClientFiles {
            ca: Some(&missing),
            identity: None,
        })
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("CA file") && err.contains("missing.pem"),
            "{err}"
        );
        let err = client_config(ClientFiles {
            ca: Some(&empty),
            identity: None,
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("no PEM certificate"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
