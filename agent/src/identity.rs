//! The node's identity: a private key made on the node (never sent
//! anywhere), the certificate the coordinator's CA signed for it, and that
//! CA. Enrollment with a join token (`kobo-agent join`) or a reusable
//! enrollment key (`kobo-agent enroll`, `KOBO_ENROLL_KEY`), certificate signing
//! requests (`kobo-agent keygen`), and renewal at 2/3 of the certificate's
//! life with a fresh key.
//!
//! Files in the state directory: `node.key` (0600), `node.pem`, `ca.pem`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use kobo_client::follow::{self, Answer, Coordinators};
use kobo_protocol::files::{Access, write_atomic};
use kobo_protocol::{EnrollRequest, ErrorBody, JoinRequest, JoinResponse, sha256_hex};
use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

/// Prefix of join tokens: `kobo-join.<ca sha256>.<id>.<secret>`.
const JOIN_TOKEN_PREFIX: &str = "kobo-join";
/// Prefix of enrollment keys, shaped like join tokens.
const ENROLL_KEY_PREFIX: &str = "kobo-enroll";
/// Limit for each enrollment call.
const JOIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The certificate and key an agent presents, and where they live.
#[derive(Debug, Clone)]
pub struct TlsIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    /// Where renewed certificate and key are written (none: not persisted).
    pub files: Option<IdentityFiles>,
}

#[derive(Debug, Clone)]
pub struct IdentityFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IdentityFiles {
    pub fn in_dir(dir: &Path) -> IdentityFiles {
        IdentityFiles {
            cert: dir.join("node.pem"),
            key: dir.join("node.key"),
        }
    }

    pub fn load(&self) -> anyhow::Result<TlsIdentity> {
        Ok(TlsIdentity {
            cert_pem: fs::read(&self.cert)
                .with_context(|| format!("reading {}", self.cert.display()))?,
            key_pem: fs::read(&self.key)
                .with_context(|| format!("reading {}", self.key.display()))?,
            files: Some(self.clone()),
        })
    }

    /// Writes a renewed identity atomically (key first, 0600).
    pub fn store(&self, cert_pem: &str, key_pem: &str) -> anyhow::Result<()> {
        write_file(&self.key, key_pem.as_bytes(), true)?;
        write_file(&self.cert, cert_pem.as_bytes(), false)
    }
}

/// Writes `path` atomically; `private` files are created 0600.
pub fn write_file(path: &Path, contents: &[u8], private: bool) -> anyhow::Result<()> {
    let access = if private {
        Access::Private
    } else {
        Access::Public
    };
    write_atomic(path, contents, access).with_context(|| format!("writing {}", path.display()))
}

/// A fresh ECDSA P-256 key (PEM).
pub fn new_key() -> anyhow::Result<KeyPair> {
    KeyPair::generate().context("generating a key")
}

/// A certificate signing request for `node_id` with `key` (PEM).
pub fn csr(node_id: &str, key: &KeyPair) -> anyhow::Result<String> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, node_id);
    params.distinguished_name = dn;
    Ok(params.serialize_request(key)?.pem()?)
}

/// The node key in `dir`, created (0600) if missing.
pub fn load_or_create_key(dir: &Path) -> anyhow::Result<KeyPair> {
    let path = dir.join("node.key");
    match fs::read_to_string(&path) {
        Ok(pem) => KeyPair::from_pem(&pem)
            .with_context(|| format!("{} is not a PEM private key", path.display())),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            let key = new_key()?;
            write_file(&path, key.serialize_pem().as_bytes(), true)?;
            Ok(key)
        }
        Err(err) => Err(err).with_context(|| format!("reading {}", path.display())),
    }
}

/// The CA pin a join token carries.
pub fn token_ca_pin(token: &str) -> anyhow::Result<String> {
    ca_pin_of(JOIN_TOKEN_PREFIX, "join token", token)
}

/// The CA pin a join token or an enrollment key (`kind`) carries.
fn ca_pin_of(kind: &str, what: &str, token: &str) -> anyhow::Result<String> {
    let mut parts = token.trim().split('.');
    match (parts.next(), parts.next()) {
        (Some(prefix), Some(pin)) if prefix == kind && pin.len() == 64 => {
            Ok(pin.to_ascii_lowercase())
        }
        _ => bail!("not a kobo {what} (expected {kind}.<ca sha256>.<id>.<secret>)"),
    }
}

/// Checks that `ca_pem` is the CA the token pins.
pub fn check_ca_pin(ca_pem: &[u8], pin: &str) -> anyhow::Result<()> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(ca_pem)
        .context("the coordinator's CA answer is not a PEM certificate")?;
    let found = sha256_hex(&der);
    if found != pin {
        bail!(
            "CA pin mismatch: the token pins {pin}, the coordinator presents {found}; refusing to send the certificate request"
        );
    }
    Ok(())
}

/// Enrolls this node: fetches the coordinator's CA (before trusting it),
/// checks it against the token's pin, sends a CSR for a key made here, and
/// stores `ca.pem`, `node.key` and `node.pem` in `dir`. Returns the node id
/// the certificate names.
pub async fn join(
    coordinator: &str,
    token: &str,
    node_id: &str,
    dir: &Path,
) -> anyhow::Result<String> {
    let pin = token_ca_pin(token)?;
    let token = token.trim().to_string();
    enroll_with(coordinator, &pin, "/v1/join", node_id, dir, |csr_pem| {
        serde_json::to_value(JoinRequest { token, csr_pem })
    })
    .await
}

/// What an enrollment key enrolls as: the key's prefix and a suffix (a pod
/// name), or a full node id.
#[derive(Debug, Clone)]
pub enum EnrollName {
    Suffix(String),
    NodeId(String),
}

/// Enrolls this node with a reusable enrollment key, like [`join`]; the
/// coordinator names it (the key's prefix + the suffix) and returns the name.
pub async fn enroll(
    coordinator: &str,
    key: &str,
    name: &EnrollName,
    dir: &Path,
) -> anyhow::Result<String> {
    let pin = ca_pin_of(ENROLL_KEY_PREFIX, "enrollment key", key)?;
    let common_name = match name {
        EnrollName::Suffix(name) | EnrollName::NodeId(name) => name.clone(),
    };
    let (name_suffix, node_id) = match name {
        EnrollName::Suffix(suffix) => (Some(suffix.clone()), None),
        EnrollName::NodeId(node_id) => (None, Some(node_id.clone())),
    };
    let key = key.trim().to_string();
    enroll_with(
        coordinator,
        &pin,
        "/v1/enroll",
        &common_name,
        dir,
        |csr_pem| {
            serde_json::to_value(EnrollRequest {
                key,
                name_suffix,
                node_id,
                csr_pem,
            })
        },
    )
    .await
}

/// The enrollment both ways share: the pinned CA, a CSR for a key made
/// here (the coordinator sets the certificate's name itself), the files
/// written on success.
async fn enroll_with(
    coordinator: &str,
    pin: &str,
    path: &str,
    common_name: &str,
    dir: &Path,
    body: impl FnOnce(String) -> serde_json::Result<serde_json::Value>,
) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let coordinators = Coordinators::parse(coordinator).map_err(anyhow::Error::msg)?;
    // The CA is not trusted yet: fetch it without verification, then verify
    // it by its pin before anything secret is sent.
    let untrusted = reqwest::Client::builder()
        .timeout(JOIN_TIMEOUT)
        .danger_accept_invalid_certs(true)
        .build()?;
    let (base, ca_pem) = fetch_ca(&coordinators, &untrusted).await?;
    let base = base.as_str();
    check_ca_pin(&ca_pem, pin)?;
    let certs = reqwest::Certificate::from_pem_bundle(&ca_pem)?;
    let trusted = reqwest::Client::builder()
        .timeout(JOIN_TIMEOUT)
        .tls_certs_only(certs)
        .build()?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let key = load_or_create_key(dir)?;
    let request = body(csr(common_name, &key)?)?;
    let response = trusted
        .post(format!("{base}{path}"))
        .json(&request)
        .send()
        .await
        .with_context(|| format!("enrolling with {base}"))?;
    let status = response.status();
    let bytes = response.bytes().await?;
    if !status.is_success() {
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.error.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(&bytes).into_owned());
        bail!("enrollment refused ({status}): {message}");
    }
    let joined: JoinResponse =
        serde_json::from_slice(&bytes).context("decoding the enrollment answer")?;
    write_file(&dir.join("ca.pem"), &ca_pem, false)?;
    write_file(
        &dir.join("node.pem"),
        joined.certificate_pem.as_bytes(),
        false,
    )?;
    Ok(joined.node_id)
}

/// The CA from the first coordinator that answers as the leader (one that
/// does not answer moves on to the next URL, a standby to the leader it
/// names), and that coordinator's URL, where the enrollment goes.
async fn fetch_ca(
    coordinators: &Coordinators,
    untrusted: &reqwest::Client,
) -> anyhow::Result<(String, bytes::Bytes)> {
    // Every URL once, plus a leader named by a standby for each.
    let attempts = coordinators.urls().len() * 2;
    let mut failures = Vec::new();
    for _ in 0..attempts {
        let base = coordinators.current();
        let response = match untrusted.get(format!("{base}/v1/join/ca")).send().await {
            Ok(response) => response,
            Err(err) if err.is_connect() => {
                failures.push(format!("{base}: {err:#}"));
                coordinators.advance(&base);
                continue;
            }
            Err(err) => {
                return Err(err).with_context(|| format!("fetching the CA from {base}"));
            }
        };
        match follow::answer(response.status(), response.headers()) {
            Answer::Served => {}
            Answer::Leader(leader) => {
                failures.push(format!("{base}: a standby of {leader}"));
                coordinators.follow(&leader);
                continue;
            }
            Answer::NoLeader => {
                failures.push(format!("{base}: a standby that knows no leader yet"));
                coordinators.advance(&base);
                continue;
            }
        }
        let ca_pem = response
            .error_for_status()
            .with_context(|| format!("fetching the CA from {base}"))?
            .bytes()
            .await?;
        return Ok((base, ca_pem));
    }
    bail!(
        "no coordinator answered as the leader: {}",
        failures.join("; ")
    )
}

/// The node id a certificate names (its common name).
pub fn cert_node_id(cert_pem: &[u8]) -> anyhow::Result<String> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem)
        .context("reading the node certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).context("parsing the node certificate")?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .context("the node certificate names no node (no common name)")?;
    Ok(name.to_string())
}

/// When a certificate should be renewed: at 2/3 of its life.
pub fn renewal_due(cert_pem: &[u8]) -> anyhow::Result<SystemTime> {
    use rustls_pki_types::pem::PemObject;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(cert_pem)
        .context("reading the node certificate")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).context("parsing the node certificate")?;
    let validity = cert.validity();
    let start = validity.not_before.timestamp();
    let end = validity.not_after.timestamp();
    let due = start + (end - start) * 2 / 3;
    Ok(UNIX_EPOCH + Duration::from_secs(due.max(0) as u64))
}
