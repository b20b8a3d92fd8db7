//! The server's side of TLS: the rustls configuration and the server
//! certificate, swapped in place when it is renewed.

use std::sync::Arc;

use kobo_queue::pki::{CertPaths, TlsError, ensure_server_cert, server_cert_is_fresh};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

/// The rustls server configuration: TLS 1.2+, the (renewable) server
/// certificate, and client certificates from our CA verified when offered
/// (optional at the handshake: people and programs use API keys instead; the
/// agent routes then insist on one).
pub fn server_config(
    paths: &CertPaths,
    cert: Arc<ReloadingCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let ca = CertificateDer::from_pem_file(&paths.ca_cert).map_err(|e| TlsError::Invalid {
        path: paths.ca_cert.clone(),
        message: e.to_string(),
    })?;
    roots.add(ca).map_err(|e| TlsError::Config(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .allow_unauthenticated()
    .build()
    .map_err(|e| TlsError::Invalid {
        path: paths.ca_cert.clone(),
        message: e.to_string(),
    })?;
    // Client certificates are checked against the coordinator's clock, the
    // one every other deadline uses: a step of the system clock does not
    // make agents' certificates look expired or not yet valid.
    let mut config = ServerConfig::builder_with_details(provider, Arc::new(CoordinatorClock))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// rustls's time: [`kobo_queue::clock`].
#[derive(Debug)]
struct CoordinatorClock;

impl rustls::time_provider::TimeProvider for CoordinatorClock {
    fn current_time(&self) -> Option<rustls::pki_types::UnixTime> {
        Some(rustls::pki_types::UnixTime::since_unix_epoch(
            std::time::Duration::from_millis(kobo_queue::clock::unix_now_ms().max(0) as u64),
        ))
    }
}

/// The server certificate, swappable while serving (renewal without restart).
#[derive(Debug)]
pub struct ReloadingCert {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl ReloadingCert {
    fn load(paths: &CertPaths) -> Result<Arc<rustls::sign::CertifiedKey>, TlsError> {
        let chain = CertificateDer::pem_file_iter(&paths.server_cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Invalid {
                path: paths.server_cert.clone(),
                message: e.to_string(),
            })?;
        let key =
            PrivateKeyDer::from_pem_file(&paths.server_key).map_err(|e| TlsError::Invalid {
                path: paths.server_key.clone(),
                message: e.to_string(),
            })?;
        let provider = rustls::crypto::ring::default_provider();
        let key = rustls::sign::CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(key))
    }

    pub fn new(paths: &CertPaths) -> Result<Arc<ReloadingCert>, TlsError> {
        Ok(Arc::new(ReloadingCert {
            current: std::sync::RwLock::new(ReloadingCert::load(paths)?),
        }))
    }

    /// Re-issues the server certificate if it is near expiry and swaps it in.
    pub fn renew_if_due(&self, paths: &CertPaths, names: &[String]) -> Result<bool, TlsError> {
        if server_cert_is_fresh(paths, &names.join("\n")) {
            return Ok(false);
        }
        ensure_server_cert(paths, names)?;
        let fresh = ReloadingCert::load(paths)?;
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = fresh;
        Ok(true)
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kobo_queue::pki::ensure_ca;

    #[test]
    fn the_server_certificate_is_reissued_and_swapped_when_its_names_change() {
        let dir = tempfile::tempdir().expect("dir");
        let paths = CertPaths::in_dir(dir.path());
        ensure_ca(&paths).expect("ca");
        let names = vec!["localhost".to_string()];
        ensure_server_cert(&paths, &names).expect("cert");
        let cert = ReloadingCert::new(&paths).expect("load");
        let first = cert.current.read().expect("lock").cert[0].clone();
        assert!(
            !cert.renew_if_due(&paths, &names).expect("check"),
            "fresh: nothing to do"
        );
        let more = vec!["localhost".to_string(), "coord.example".to_string()];
        assert!(cert.renew_if_due(&paths, &more).expect("renew"));
        let second = cert.current.read().expect("lock").cert[0].clone();
        assert_ne!(
            first, second,
            "the new certificate is served without a restart"
        );
        let (_, parsed) = x509_parser::parse_x509_certificate(&second).expect("parse");
        let sans = format!("{:?}", parsed.subject_alternative_name());
        assert!(sans.contains("coord.example"), "{sans}");
    }
}
