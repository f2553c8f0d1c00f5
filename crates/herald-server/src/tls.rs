//! TLS on the listener: rustls with the ring provider, HTTP/1.1 only (the server speaks
//! nothing else), optionally requiring client certificates signed by a given CA.
//!
//! The files are read again by [`Tls::reload`] (`herald serve` calls it on SIGHUP):
//! connections accepted afterwards use the new settings, open ones keep theirs, and a
//! reload that fails changes nothing, so a half-written certificate never takes the
//! listener down.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

/// Where the listener's certificate, key and (optionally) client CA are read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// The leaf's private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates (PEM); when set, clients must present a certificate signed by one.
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS settings could not be loaded. Each names the file concerned, and its
/// message includes the cause (so a log line's `%error` is complete).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("cannot read the {what} {}: {error}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        error: io::Error,
    },
    #[error("the {what} {} is not usable PEM: {reason}", path.display())]
    Pem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("the TLS certificate {} and key {} do not work together: {error}", cert.display(), key.display())]
    Config {
        cert: PathBuf,
        key: PathBuf,
        error: rustls::Error,
    },
}

/// The listener's TLS settings, replaceable while it runs.
#[derive(Debug)]
pub struct Tls {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
}

impl Tls {
    /// Reads and checks the files.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = server_config(&files)?;
        Ok(Tls {
            files,
            current: RwLock::new(Arc::new(config)),
        })
    }

    /// Reads the files again; on success new connections use them, on failure nothing
    /// changes. Blocking (file reads): call it off the async workers.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config = Arc::new(server_config(&self.files)?);
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
        Ok(())
    }

    /// Whether clients must present a certificate.
    pub fn requires_client_certificates(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// An acceptor with the settings in force now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn server_config(files: &TlsFiles) -> Result<ServerConfig, TlsError> {
    let certs = read_certificates("TLS certificate", &files.cert)?;
    let key = read_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config_error = |error| TlsError::Config {
        cert: files.cert.clone(),
        key: files.key.clone(),
        error,
    };
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(config_error)?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pem_error = |reason: String| TlsError::Pem {
                what: "TLS client CA",
                path: path.clone(),
                reason,
            };
            let mut roots = RootCertStore::empty();
            for cert in read_certificates("TLS client CA", path)? {
                roots
                    .add(cert)
                    .map_err(|error| pem_error(format!("a certificate is not usable: {error}")))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|error| pem_error(error.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    // Also checks that the key is the certificate's.
    let mut config = builder.with_single_cert(certs, key).map_err(config_error)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        path: path.to_owned(),
        error,
    })
}

fn read_certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem_error = |reason: String| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&read(what, path)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| pem_error(error.to_string()))?;
    if certs.is_empty() {
        return Err(pem_error("it holds no CERTIFICATE block".into()));
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let what = "TLS key";
    PrivateKeyDer::from_pem_slice(&read(what, path)?).map_err(|error| TlsError::Pem {
        what,
        path: path.to_owned(),
        reason: match error {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "it holds no PRIVATE KEY block (PKCS#8, RSA or EC)".into()
            }
            other => other.to_string(),
        },
    })
}
