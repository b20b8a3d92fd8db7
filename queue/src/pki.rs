//! The coordinator's own certificate authority and server certificate, kept
//! in the data directory: `ca.pem`/`ca.key` (created once) and
//! `server.pem`/`server.key` (re-issued when missing, near expiry, or when the
//! wanted names change).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kobo_protocol::DataDir;
use kobo_protocol::files::{Access, write_atomic};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls_pki_types::{CertificateDer, pem::PemObject};

/// CA certificate lifetime.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Server certificate lifetime.
const SERVER_LIFETIME: Duration = Duration::from_secs(90 * 24 * 3600);
/// Re-issue the server certificate when less than this is left.
const SERVER_RENEW_BEFORE: Duration = Duration::from_secs(30 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("failed to read or write {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificate generation failed")]
    Rcgen(#[from] rcgen::Error),
    #[error("invalid certificate or key in {path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("tls configuration failed: {0}")]
    Config(String),
}

/// Paths of the certificate files in a data directory.
#[derive(Debug, Clone)]
pub struct CertPaths {
    pub ca_cert: PathBuf,
    pub ca_key: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub server_names: PathBuf,
}

impl CertPaths {
    pub fn in_dir(dir: &Path) -> CertPaths {
        CertPaths::of(&DataDir::new(dir))
    }

    pub fn of(dir: &DataDir) -> CertPaths {
        CertPaths {
            ca_cert: dir.ca_cert(),
            ca_key: dir.ca_key(),
            server_cert: dir.server_cert(),
            server_key: dir.server_key(),
            server_names: dir.server_names(),
        }
    }
}

fn read(path: &Path) -> Result<String, TlsError> {
    fs::read_to_string(path).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes a file atomically; `secret` files are created 0600.
fn write(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let access = if secret {
        Access::Private
    } else {
        Access::Public
    };
    write_atomic(path, contents.as_bytes(), access).map_err(|source| TlsError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = rcgen::date_time_ymd(1970, 1, 1)
        + crate::clock::system_time()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
    params.not_before = now - Duration::from_secs(3600);
    params.not_after = now + lifetime;
}

/// Creates the CA in `paths` unless it exists.
pub fn ensure_ca(paths: &CertPaths) -> Result<(), TlsError> {
    if paths.ca_cert.exists() && paths.ca_key.exists() {
        return Ok(());
    }
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kobo coordinator CA");
    dn.push(DnType::OrganizationName, "kobo");
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut params, CA_LIFETIME);
    let cert = params.self_signed(&key)?;
    write(&paths.ca_key, &key.serialize_pem(), true)?;
    write(&paths.ca_cert, &cert.pem(), false)?;
    tracing::info!(path = %paths.ca_cert.display(), "created certificate authority");
    Ok(())
}

/// The names the server certificate must carry: loopback, the host name, and
/// what the operator asked for.
pub fn server_names(extra: &[String]) -> Vec<String> {
    let mut names = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ];
    if let Ok(host) = fs::read_to_string("/etc/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_string());
        }
    }
    names.extend(extra.iter().cloned());
    names.sort();
    names.dedup();
    names
}

pub fn server_cert_is_fresh(paths: &CertPaths, names: &str) -> bool {
    let Ok(recorded) = fs::read_to_string(&paths.server_names) else {
        return false;
    };
    if recorded != names || !paths.server_key.exists() {
        return false;
    }
    let Ok(pem) = fs::read(&paths.server_cert) else {
        return false;
    };
    let Ok(der) = CertificateDer::from_pem_slice(&pem) else {
        return false;
    };
    match x509_parser::parse_x509_certificate(&der) {
        Ok((_, cert)) => {
            let left = cert.validity().time_to_expiration();
            left.is_some_and(|left| left.whole_seconds() > SERVER_RENEW_BEFORE.as_secs() as i64)
        }
        Err(_) => false,
    }
}

/// Issues the server certificate from the CA unless a fresh one with the same
/// names exists.
pub fn ensure_server_cert(paths: &CertPaths, names: &[String]) -> Result<(), TlsError> {
    let joined = names.join("\n");
    if server_cert_is_fresh(paths, &joined) {
        return Ok(());
    }
    let ca_key_pem = read(&paths.ca_key)?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| TlsError::Invalid {
        path: paths.ca_key.clone(),
        message: e.to_string(),
    })?;
    let ca_pem = read(&paths.ca_cert)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| TlsError::Invalid {
        path: paths.ca_cert.clone(),
        message: e.to_string(),
    })?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|name| match name.parse::<std::net::IpAddr>() {
            Ok(ip) => Ok(SanType::IpAddress(ip)),
            Err(_) => name.clone().try_into().map(SanType::DnsName),
        })
        .collect::<Result<_, _>>()?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "kobo-coord");
    params.distinguished_name = dn;
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    validity(&mut params, SERVER_LIFETIME);
    let cert = params.signed_by(&key, &issuer)?;
    write(&paths.server_key, &key.serialize_pem(), true)?;
    write(&paths.server_cert, &cert.pem(), false)?;
    write(&paths.server_names, &joined, false)?;
    tracing::info!(names = ?names, "issued server certificate");
    Ok(())
}

/// Default lifetime of node (client) certificates; agents renew at 2/3 of it.
pub const NODE_CERT_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// A certificate issued to a node.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub pem: String,
    /// Hex of the serial number, as the `certificates` table keys it.
    pub serial: String,
    pub not_after_ms: i64,
}

/// The CA in memory, for signing node certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// Lifetime of the node certificates it signs.
    pub node_lifetime: Duration,
    pub cert_pem: String,
    /// Hex SHA-256 of the CA certificate (DER): what join tokens pin.
    pub cert_sha256: String,
}

impl Ca {
    pub fn load(paths: &CertPaths, node_lifetime: Duration) -> Result<Ca, TlsError> {
        let key_pem = read(&paths.ca_key)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| TlsError::Invalid {
            path: paths.ca_key.clone(),
            message: e.to_string(),
        })?;
        let cert_pem = read(&paths.ca_cert)?;
        let der =
            CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(|e| TlsError::Invalid {
                path: paths.ca_cert.clone(),
                message: e.to_string(),
            })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key).map_err(|e| TlsError::Invalid {
            path: paths.ca_cert.clone(),
            message: e.to_string(),
        })?;
        Ok(Ca {
            issuer,
            node_lifetime,
            cert_sha256: crate::security::sha256_hex(&der),
            cert_pem,
        })
    }

    /// Signs a node certificate for the public key of `csr_pem`: CN = node
    /// id, clientAuth only, `node_lifetime`. The CSR's own subject
    /// and extensions are ignored: the coordinator decides what it certifies.
    pub fn sign_node_csr(
        &self,
        csr_pem: &str,
        node_id: &str,
        now_ms: i64,
    ) -> Result<IssuedCert, TlsError> {
        let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            TlsError::Invalid {
                path: PathBuf::from("csr"),
                message: e.to_string(),
            }
        })?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, node_id);
        dn.push(DnType::OrganizationName, "kobo nodes");
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let serial: [u8; 16] = rand::random();
        // Positive, non-zero serial (RFC 5280).
        let mut serial = serial.to_vec();
        serial[0] = (serial[0] & 0x7f) | 0x01;
        params.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
        let now = rcgen::date_time_ymd(1970, 1, 1) + Duration::from_millis(now_ms.max(0) as u64);
        // Backdated a little for clock skew, but never by much of the
        // lifetime: agents renew at 2/3 of not_before..not_after.
        params.not_before = now - (self.node_lifetime / 10).min(Duration::from_secs(300));
        params.not_after = now + self.node_lifetime;
        let cert = params.signed_by(&csr.public_key, &self.issuer)?;
        Ok(IssuedCert {
            pem: cert.pem(),
            serial: crate::security::hex_encode(&serial),
            not_after_ms: now_ms + self.node_lifetime.as_millis() as i64,
        })
    }
}

/// What a verified client certificate says: the node and the serial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeCert {
    pub node_id: String,
    pub serial: String,
}

/// Reads the node id (CN) and serial of a client certificate.
pub fn node_cert(der: &CertificateDer<'_>) -> Option<NodeCert> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let node_id = cert
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let serial = crate::security::hex_encode(cert.raw_serial());
    Some(NodeCert { node_id, serial })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_certificates_name_the_node_and_are_client_only() {
        let dir = tempfile::tempdir().expect("dir");
        let paths = CertPaths::in_dir(dir.path());
        ensure_ca(&paths).expect("ca");
        let ca = Ca::load(&paths, NODE_CERT_LIFETIME).expect("ca");
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params
            .distinguished_name
            .push(DnType::CommonName, "asked-for-admin");
        let csr = params
            .serialize_request(&key)
            .expect("csr")
            .pem()
            .expect("pem");
        let issued = ca
            .sign_node_csr(&csr, "tokyo-01", 1_800_000_000_000)
            .expect("sign");
        let der = CertificateDer::from_pem_slice(issued.pem.as_bytes()).expect("der");
        let node = node_cert(&der).expect("node cert");
        assert_eq!(
            node.node_id, "tokyo-01",
            "the coordinator decides the name, not the CSR"
        );
        assert_eq!(node.serial, issued.serial);
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).expect("parse");
        let eku = parsed
            .extended_key_usage()
            .expect("eku")
            .expect("present")
            .value;
        assert!(eku.client_auth && !eku.server_auth);
        let life =
            parsed.validity().not_after.timestamp() - parsed.validity().not_before.timestamp();
        assert!((30 * 86_400..=30 * 86_400 + 300).contains(&life), "{life}");
    }
}
