//! TLS to PostgreSQL with rustls (ring provider; no system OpenSSL): how the URL's
//! `sslmode` and `sslrootcert` become one connector. See "TLS" in the docs of [`super`]
//! for what each mode does.
//!
//! tokio-postgres 0.7 parses `sslmode` as `disable`, `prefer` or `require` only and
//! rejects any parameter it does not know, so [`prepare`] takes `sslmode=verify-ca` /
//! `verify-full` and `sslrootcert` out of the URL before handing it over (asking
//! tokio-postgres for `require`, which makes it insist on TLS), and the verification they
//! ask for is done here, by the connector's certificate verifier.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// The connector every connection of the store uses (whatever the mode: with
/// `sslmode=disable` tokio-postgres never calls it).
pub(crate) type Tls = tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as far as Herald supports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// Where the trusted roots come from (`sslrootcert`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Roots {
    /// A PEM file of one or more CA certificates.
    File(PathBuf),
    /// The operating system's trust store (`sslrootcert=system`, or verify-* without
    /// `sslrootcert`).
    System,
}

/// What the URL asks of TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsSettings {
    pub mode: SslMode,
    /// `sslrootcert`, when given.
    pub root_cert: Option<Roots>,
}

/// Why the TLS settings of a URL cannot work (the operator must fix the URL or files).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    #[error(transparent)]
    Url(#[from] tokio_postgres::Error),
    #[error(
        "sslrootcert=system needs sslmode=verify-full (a weaker mode would trust any \
         public certificate for any host)"
    )]
    SystemRootsNeedVerifyFull,
    #[error(
        "sslmode=allow is not supported; use prefer (TLS when the server offers it) or disable"
    )]
    AllowUnsupported,
    #[error("invalid percent-encoding in `{0}`")]
    PercentEncoding(String),
    #[error("`{0}` does not decode to UTF-8")]
    NotUtf8(String),
    #[error("cannot read sslrootcert {}: {source}", path.display())]
    ReadRoots {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("sslrootcert {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("sslrootcert {}: a certificate is unusable: {source}", path.display())]
    UnusableCertificate {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error(
        "no trusted root certificates in the system's store ({0}); install them \
         (e.g. the ca-certificates package) or name a CA file with sslrootcert=/path/ca.pem"
    )]
    NoSystemRoots(String),
    #[error("cannot set up certificate verification: {0}")]
    Verifier(#[source] rustls::client::VerifierBuilderError),
    #[error("cannot set up TLS: {0}")]
    Protocols(#[source] rustls::Error),
}

/// Parses a connection string (a `postgres://` URL, or libpq's `key=value` form) into
/// tokio-postgres's config and the TLS settings. Only the URL form may use
/// `sslmode=verify-ca`/`verify-full` and `sslrootcert`.
pub(crate) fn prepare(url: &str) -> Result<(tokio_postgres::Config, TlsSettings), TlsError> {
    let (cleaned, mode, root_cert) = split_url(url)?;
    let config: tokio_postgres::Config = cleaned.parse()?;
    let root_cert = match root_cert.as_deref() {
        None | Some("") => None,
        Some("system") => Some(Roots::System),
        Some(path) => Some(Roots::File(path.into())),
    };
    let mode = match mode.as_deref() {
        Some("verify-ca") => SslMode::VerifyCa,
        Some("verify-full") => SslMode::VerifyFull,
        // libpq: `sslrootcert=system` makes `verify-full` the default.
        None if root_cert == Some(Roots::System) => SslMode::VerifyFull,
        _ => match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Disable => SslMode::Disable,
            tokio_postgres::config::SslMode::Prefer => SslMode::Prefer,
            _ => SslMode::Require,
        },
    };
    if root_cert == Some(Roots::System) && mode != SslMode::VerifyFull {
        return Err(TlsError::SystemRootsNeedVerifyFull);
    }
    let mut config = config;
    if mode != SslMode::Disable && mode != SslMode::Prefer {
        config.ssl_mode(tokio_postgres::config::SslMode::Require);
    }
    Ok((config, TlsSettings { mode, root_cert }))
}

/// Takes `sslmode=verify-*` and `sslrootcert` out of a URL's query: the URL left for
/// tokio-postgres (asking it for `sslmode=require` instead), the `sslmode` given (if
/// any) and the `sslrootcert` given (if any), both percent-decoded.
fn split_url(url: &str) -> Result<(String, Option<String>, Option<String>), TlsError> {
    let is_url = url.starts_with("postgres://") || url.starts_with("postgresql://");
    let Some((base, query)) = url.split_once('?').filter(|_| is_url) else {
        return Ok((url.to_owned(), None, None));
    };
    let mut kept = Vec::new();
    let (mut mode, mut root_cert) = (None, None);
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "sslmode" => {
                let value = percent_decode(value)?;
                match value.as_str() {
                    "verify-ca" | "verify-full" => kept.push("sslmode=require".to_owned()),
                    "allow" => return Err(TlsError::AllowUnsupported),
                    _ => kept.push(pair.to_owned()),
                }
                mode = Some(value);
            }
            "sslrootcert" => root_cert = Some(percent_decode(value)?),
            _ => kept.push(pair.to_owned()),
        }
    }
    let cleaned = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((cleaned, mode, root_cert))
}

/// `%XX` escapes to bytes (as tokio-postgres decodes URL parameters; `+` stays `+`).
fn percent_decode(text: &str) -> Result<String, TlsError> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| TlsError::PercentEncoding(text.to_owned()))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| TlsError::NotUtf8(text.to_owned()))
}

/// The connector for these settings. Trusted roots are loaded here, once (a missing or
/// unreadable `sslrootcert` fails now, not at the first connection).
pub(crate) fn connector(settings: &TlsSettings) -> Result<Tls, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (settings.mode, &settings.root_cert) {
        (SslMode::Disable, _) | (SslMode::Prefer | SslMode::Require, None) => {
            Arc::new(CertVerifier {
                roots: None,
                provider: provider.clone(),
            })
        }
        (SslMode::Prefer | SslMode::Require | SslMode::VerifyCa, Some(roots)) => {
            Arc::new(CertVerifier {
                roots: Some(Arc::new(load_roots(roots)?)),
                provider: provider.clone(),
            })
        }
        (SslMode::VerifyCa, None) => Arc::new(CertVerifier {
            roots: Some(Arc::new(load_roots(&Roots::System)?)),
            provider: provider.clone(),
        }),
        (SslMode::VerifyFull, roots) => {
            let roots = load_roots(roots.as_ref().unwrap_or(&Roots::System))?;
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(TlsError::Verifier)?
        }
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocols)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}

fn load_roots(roots: &Roots) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match roots {
        Roots::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|source| TlsError::ReadRoots {
                    path: path.clone(),
                    source,
                })?;
            if certs.is_empty() {
                return Err(TlsError::NoCertificate { path: path.clone() });
            }
            for cert in certs {
                store
                    .add(cert)
                    .map_err(|source| TlsError::UnusableCertificate {
                        path: path.clone(),
                        source,
                    })?;
            }
        }
        Roots::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
                return Err(TlsError::NoSystemRoots(if errors.is_empty() {
                    "none found".to_owned()
                } else {
                    errors.join("; ")
                }));
            }
        }
    }
    Ok(store)
}

/// The certificate problem behind a failed connection, when TLS refused the server's
/// certificate (untrusted, expired, wrong host name…).
pub(crate) fn refused_certificate(error: &tokio_postgres::Error) -> Option<String> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(current) = source {
        let inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|inner| inner as &(dyn std::error::Error + 'static));
        for candidate in [Some(current), inner].into_iter().flatten() {
            if let Some(tls) = candidate.downcast_ref::<rustls::Error>() {
                if matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ) {
                    return Some(tls.to_string());
                }
            }
        }
        source = current.source();
    }
    None
}

/// The verifier of every mode but `verify-full`. With `roots` (libpq's `verify-ca`, or
/// `prefer`/`require` given `sslrootcert`) the certificate must chain to a trusted root
/// and be valid now, whatever host name it is for. Without (`prefer`/`require` alone) any
/// certificate is accepted: encrypted, not authenticated. Either way the handshake
/// signatures are checked against the certificate.
#[derive(Debug)]
struct CertVerifier {
    roots: Option<Arc<RootCertStore>>,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for CertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(roots) = &self.roots {
            let cert = ParsedCertificate::try_from(end_entity)?;
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &cert,
                roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )?;
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Result<TlsSettings, TlsError> {
        prepare(url).map(|(_, settings)| settings)
    }

    #[test]
    fn takes_verify_modes_and_root_certs_out_of_urls() {
        let (cleaned, mode, root) = split_url(
            "postgres://u:p@h:5/db?application_name=x&sslmode=verify-full&sslrootcert=%2Ftmp%2Fca%20x.pem&connect_timeout=3",
        )
        .unwrap();
        assert_eq!(
            cleaned,
            "postgres://u:p@h:5/db?application_name=x&sslmode=require&connect_timeout=3"
        );
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca x.pem"));

        let (cleaned, mode, root) = split_url("postgres://h/db?sslrootcert=/ca.pem").unwrap();
        assert_eq!(cleaned, "postgres://h/db");
        assert_eq!((mode, root.as_deref()), (None, Some("/ca.pem")));

        let plain = "postgres://h/db?sslmode=disable";
        assert_eq!(split_url(plain).unwrap().0, plain);
        assert_eq!(
            split_url("host=h sslmode=require").unwrap().0,
            "host=h sslmode=require"
        );
        assert!(split_url("postgres://h/db?sslrootcert=%zz").is_err());
        assert!(split_url("postgres://h/db?sslmode=allow").is_err());
    }

    #[test]
    fn resolves_modes_as_libpq_does() {
        let s = |url: &str| settings(url).unwrap();
        assert_eq!(
            s("postgres://h/db").mode,
            SslMode::Prefer,
            "libpq's default"
        );
        assert_eq!(s("postgres://h/db?sslmode=disable").mode, SslMode::Disable);
        assert_eq!(s("postgres://h/db?sslmode=require").mode, SslMode::Require);
        assert_eq!(
            s("postgres://h/db?sslmode=verify-ca").mode,
            SslMode::VerifyCa
        );
        let full = s("postgres://h/db?sslmode=verify-full&sslrootcert=/x/ca.pem");
        assert_eq!(full.mode, SslMode::VerifyFull);
        assert_eq!(full.root_cert, Some(Roots::File("/x/ca.pem".into())));
        assert_eq!(
            s("postgres://h/db?sslrootcert=system"),
            TlsSettings {
                mode: SslMode::VerifyFull,
                root_cert: Some(Roots::System)
            }
        );
        assert!(settings("postgres://h/db?sslmode=require&sslrootcert=system").is_err());
        assert_eq!(s("host=h sslmode=require").mode, SslMode::Require);
        assert!(settings("postgres://h/db?sslmode=bogus").is_err());

        let (config, _) = prepare("postgres://h/db?sslmode=verify-ca").unwrap();
        assert_eq!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require,
            "a verify mode insists on TLS"
        );
    }

    #[test]
    fn a_missing_root_certificate_fails_before_connecting() {
        let settings = TlsSettings {
            mode: SslMode::VerifyFull,
            root_cert: Some(Roots::File("/nonexistent/ca.pem".into())),
        };
        let error = connector(&settings).err().unwrap();
        assert!(
            matches!(&error, TlsError::ReadRoots { path, .. } if path.ends_with("ca.pem")),
            "{error}"
        );
        assert!(error.to_string().contains("/nonexistent/ca.pem"), "{error}");
        let disabled = TlsSettings {
            mode: SslMode::Disable,
            ..settings
        };
        assert!(connector(&disabled).is_ok(), "sslmode=disable ignores it");
    }
}
