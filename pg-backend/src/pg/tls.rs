//! TLS for connections, with libpq's `sslmode` and `sslrootcert` meanings,
//! on rustls (ring provider).
//!
//! | `sslmode` | encrypted | certificate checked |
//! |---|---|---|
//! | `disable`, `prefer` (default) | no | - |
//! | `require` | yes | no (chain only, when a root certificate is given — as libpq does) |
//! | `verify-ca` | yes | chain to a given root |
//! | `verify-full` | yes | chain to a given root, and the host name |
//!
//! `prefer` connects without TLS: the driver does not try TLS first and fall
//! back. `verify-ca` and `verify-full` need a root certificate
//! (`sslrootcert=<PEM file>` in the connection string, or
//! [`PgProviderBuilder::ssl_root_cert_pem`](crate::PgProviderBuilder::ssl_root_cert_pem));
//! there is no implicit system store. Client certificates are not supported.

use super::conn::{plain_connector, spawn_connection, Connected, Connector};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, Error, RootCertStore, SignatureScheme};
use std::sync::Arc;
use tokio_postgres::Config;
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as duropg implements it (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// No TLS (the default; see the module docs).
    Prefer,
    /// TLS; the certificate is not checked unless a root is given.
    Require,
    /// TLS; the certificate must chain to a given root.
    VerifyCa,
    /// TLS; the certificate must chain to a given root and name the host.
    VerifyFull,
}

impl SslMode {
    /// Parse a libpq `sslmode` value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "disable" => Some(Self::Disable),
            "prefer" | "allow" => Some(Self::Prefer),
            "require" => Some(Self::Require),
            "verify-ca" => Some(Self::VerifyCa),
            "verify-full" => Some(Self::VerifyFull),
            _ => None,
        }
    }

    /// The driver's mode: whether TLS is demanded at all.
    pub fn driver_mode(self) -> tokio_postgres::config::SslMode {
        match self {
            Self::Disable => tokio_postgres::config::SslMode::Disable,
            Self::Prefer => tokio_postgres::config::SslMode::Prefer,
            Self::Require | Self::VerifyCa | Self::VerifyFull => tokio_postgres::config::SslMode::Require,
        }
    }
}

/// The parameters of a connection string that duropg reads itself (the
/// driver knows neither the verify-* TLS modes, nor `sslrootcert`, nor
/// `pgbouncer`, and would refuse them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UrlParams {
    /// `sslmode`, if given.
    pub mode: Option<String>,
    /// `sslrootcert`, if given.
    pub root_cert: Option<String>,
    /// `pgbouncer`, if given (`true` selects PgBouncer transaction-pooling mode).
    pub pgbouncer: Option<String>,
}

/// Take duropg's own parameters (`sslmode`, `sslrootcert`, `pgbouncer`) out
/// of a connection string (URL or `key=value` form) and return the rest,
/// which the driver parses.
pub fn split_url_params(conn: &str) -> (String, UrlParams) {
    let mut params = UrlParams::default();
    let mut take = |key: &str, value: String| match key {
        "sslmode" => params.mode = Some(value),
        "sslrootcert" => params.root_cert = Some(value),
        "pgbouncer" => params.pgbouncer = Some(value),
        _ => {}
    };
    let is_ours = |key: &str| matches!(key, "sslmode" | "sslrootcert" | "pgbouncer");
    let rest = if conn.starts_with("postgres://") || conn.starts_with("postgresql://") {
        let (base, query) = conn.split_once('?').unwrap_or((conn, ""));
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.is_empty())
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let ours = is_ours(key);
                if ours {
                    take(key, percent_decode(value));
                }
                !ours
            })
            .collect();
        if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else {
        let kept: Vec<&str> = conn
            .split_whitespace()
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let ours = is_ours(key);
                if ours {
                    take(key, value.trim_matches('\'').to_string());
                }
                !ours
            })
            .collect();
        kept.join(" ")
    };
    (rest, params)
}

fn percent_decode(value: &str) -> String {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parse PEM root certificates.
///
/// # Errors
/// When the text holds no certificate.
pub fn parse_roots(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem).filter_map(Result::ok).collect();
    if certs.is_empty() {
        return Err("no PEM certificate found".into());
    }
    Ok(certs)
}

/// The connector for `mode` with these trusted roots.
///
/// # Errors
/// When `verify-ca`/`verify-full` is asked for without a root certificate,
/// or a root is not a usable CA certificate.
pub fn connector_for(mode: SslMode, roots: Vec<CertificateDer<'static>>) -> Result<Connector, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(plain_connector()),
        // As libpq: TLS when the server offers it (the driver falls back
        // to plaintext when it answers "no"), its certificate not checked.
        SslMode::Prefer => Arc::new(AnyCertificate(provider.clone())),
        SslMode::Require if roots.is_empty() => Arc::new(AnyCertificate(provider.clone())),
        SslMode::Require | SslMode::VerifyCa => Arc::new(ChainOnly(webpki(roots, &provider, mode)?)),
        SslMode::VerifyFull => webpki(roots, &provider, mode)?,
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS set-up failed: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(rustls_connector(config))
}

/// The platform's trusted CA certificates (`sslrootcert=system`).
///
/// # Errors
/// When none can be loaded.
pub fn system_roots() -> Result<Vec<CertificateDer<'static>>, String> {
    let loaded = rustls_native_certs::load_native_certs();
    if loaded.certs.is_empty() {
        let why: Vec<String> = loaded.errors.iter().map(ToString::to_string).collect();
        return Err(format!(
            "sslrootcert=system: no trusted CA certificates found in the system store ({})",
            if why.is_empty() {
                "it is empty".to_string()
            } else {
                why.join("; ")
            }
        ));
    }
    Ok(loaded.certs)
}

fn webpki(
    roots: Vec<CertificateDer<'static>>,
    provider: &Arc<CryptoProvider>,
    mode: SslMode,
) -> Result<Arc<WebPkiServerVerifier>, String> {
    if roots.is_empty() {
        return Err(format!(
            "sslmode {mode:?} needs a root certificate: add sslrootcert=<PEM file> to the connection string or call ssl_root_cert_pem"
        ));
    }
    let mut store = RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err("none of the root certificates is usable".into());
    }
    WebPkiServerVerifier::builder_with_provider(Arc::new(store), provider.clone())
        .build()
        .map_err(|e| format!("cannot use the root certificates: {e}"))
}

/// A connector that opens TLS connections with `config`.
pub fn rustls_connector(config: ClientConfig) -> Connector {
    let tls = MakeRustlsConnect::new(config);
    Arc::new(move |pg: Config| {
        let tls = tls.clone();
        Box::pin(async move {
            let (client, connection) = pg.connect(tls).await?;
            Ok(Connected {
                client,
                notifications: spawn_connection(connection),
            })
        })
    })
}

/// `sslmode=require` without a root: encrypt, accept any certificate (libpq's meaning).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        // webpki checks the name only after the chain verified, so a name
        // error means the chain is good.
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_tls_params_are_taken_out_and_the_rest_kept() {
        let (rest, p) = split_url_params(
            "postgres://u:p@db:5432/app?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem",
        );
        assert_eq!(rest, "postgres://u:p@db:5432/app?application_name=x");
        assert_eq!(p.mode.as_deref(), Some("verify-full"));
        assert_eq!(p.root_cert.as_deref(), Some("/etc/ca.pem"));
        let (rest, p) = split_url_params("postgres://db/app?sslmode=require");
        assert_eq!(
            (rest.as_str(), p.mode.as_deref()),
            ("postgres://db/app", Some("require"))
        );
        let (rest, p) = split_url_params("postgres://db/app");
        assert_eq!((rest.as_str(), p), ("postgres://db/app", UrlParams::default()));
    }

    #[test]
    fn the_pgbouncer_flag_is_taken_out_in_both_forms() {
        let (rest, p) = split_url_params("postgres://db:6432/app?pgbouncer=true&application_name=x");
        assert_eq!(rest, "postgres://db:6432/app?application_name=x");
        assert_eq!(p.pgbouncer.as_deref(), Some("true"));
        let (rest, p) = split_url_params("host=db port=6432 pgbouncer=true dbname=app");
        assert_eq!(rest, "host=db port=6432 dbname=app");
        assert_eq!(p.pgbouncer.as_deref(), Some("true"));
    }

    #[test]
    fn key_value_tls_params_are_taken_out() {
        let (rest, p) = split_url_params("host=db user=app sslmode=verify-ca sslrootcert='/ca.pem' dbname=app");
        assert_eq!(rest, "host=db user=app dbname=app");
        assert_eq!(p.mode.as_deref(), Some("verify-ca"));
        assert_eq!(p.root_cert.as_deref(), Some("/ca.pem"));
    }

    #[test]
    fn modes_parse_and_map_to_the_driver() {
        assert_eq!(SslMode::parse("verify-full"), Some(SslMode::VerifyFull));
        assert_eq!(SslMode::parse("bogus"), None);
        assert_eq!(
            SslMode::VerifyCa.driver_mode(),
            tokio_postgres::config::SslMode::Require
        );
    }

    #[test]
    fn verification_without_a_root_is_refused() {
        for mode in [SslMode::VerifyCa, SslMode::VerifyFull] {
            let err = connector_for(mode, vec![]).err().expect("needs a root");
            assert!(err.contains("sslrootcert"), "{err}");
        }
        assert!(connector_for(SslMode::Require, vec![]).is_ok());
        assert!(parse_roots(b"not pem").is_err());
    }
}
