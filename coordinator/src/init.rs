//! `kobo-coord init`: prepares a data directory — the certificate authority
//! (created, or brought with `--ca-cert/--ca-key`), the server certificate,
//! the secret keys, the database, and the first admin API key, written to
//! `<data-dir>/admin.key` for the local CLI. Idempotent; `serve` runs it too.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use kobo_protocol::AccessRole;
use rusqlite::TransactionBehavior;

use crate::access::Caller;
use crate::admin::record;
use crate::security::{self, Secrets, new_api_key};
use crate::server::DB_FILE;
use crate::store;
use crate::tls::{self, CertPaths};

/// The local admin key's file in the data directory.
pub const ADMIN_KEY_FILE: &str = "admin.key";

#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub sans: Vec<String>,
    /// A CA certificate and key to use instead of creating one.
    pub ca_import: Option<(PathBuf, PathBuf)>,
}

#[derive(Debug, Clone)]
pub struct Initialized {
    /// The admin key created now (shown once), if one was.
    pub admin_key: Option<String>,
    pub ca_sha256: String,
}

fn import_ca(paths: &CertPaths, cert: &Path, key: &Path) -> anyhow::Result<()> {
    let cert_pem =
        fs::read_to_string(cert).with_context(|| format!("reading {}", cert.display()))?;
    let key_pem = fs::read_to_string(key).with_context(|| format!("reading {}", key.display()))?;
    rcgen::KeyPair::from_pem(&key_pem)
        .with_context(|| format!("{} is not a PEM private key", key.display()))?;
    rcgen::Issuer::from_ca_cert_pem(&cert_pem, rcgen::KeyPair::from_pem(&key_pem)?).with_context(
        || {
            format!(
                "{} is not a usable CA certificate for that key",
                cert.display()
            )
        },
    )?;
    if paths.ca_cert.exists() {
        let existing = fs::read_to_string(&paths.ca_cert)?;
        if existing.trim() == cert_pem.trim() {
            return Ok(());
        }
        bail!(
            "{} already holds a different CA; agents trust it: move the data directory aside to change CAs",
            paths.ca_cert.display()
        );
    }
    security::write_private(&paths.ca_key, key_pem.as_bytes())?;
    fs::write(&paths.ca_cert, cert_pem)
        .with_context(|| format!("writing {}", paths.ca_cert.display()))?;
    Ok(())
}

pub fn init(options: &InitOptions) -> anyhow::Result<Initialized> {
    let dir = &options.data_dir;
    fs::create_dir_all(dir)
        .with_context(|| format!("creating data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    }
    let paths = CertPaths::in_dir(dir);
    if let Some((cert, key)) = &options.ca_import {
        import_ca(&paths, cert, key)?;
    }
    tls::ensure_ca(&paths).context("creating the certificate authority")?;
    tls::ensure_server_cert(&paths, &tls::server_names(&options.sans))
        .context("issuing the server certificate")?;
    let secrets = Secrets::load_or_create(dir).context("creating the secret keys")?;
    let db = dir.join(DB_FILE);
    let mut conn =
        store::open_connection(&db).with_context(|| format!("opening {}", db.display()))?;
    store::migrate(&mut conn).context("migrating the database")?;
    let ca = tls::Ca::load(&paths, tls::NODE_CERT_LIFETIME)?;

    let key_file = dir.join(ADMIN_KEY_FILE);
    let has_admin = store::list_api_keys(&conn)?
        .iter()
        .any(|k| k.view.role == AccessRole::Admin && k.view.revoked_at.is_none());
    let admin_key = if has_admin && key_file.exists() {
        None
    } else {
        let (id, secret, key) = new_api_key();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = store::unix_now_ms();
        store::insert_api_key(
            &tx,
            now,
            &id,
            "local-admin",
            AccessRole::Admin,
            &secrets.hasher.hash(&secret),
            "local",
        )?;
        store::append_audit(
            &tx,
            now,
            &record(
                &Caller::local(),
                "apikey.create",
                Some(format!("apikey:{id}")),
                "ok",
                Some("first admin key, by init".into()),
            ),
        )?;
        security::write_private(&key_file, key.as_bytes())?;
        tx.commit()?;
        Some(key)
    };
    Ok(Initialized {
        admin_key,
        ca_sha256: ca.cert_sha256,
    })
}

/// Reads the local admin key, if the data directory has one.
pub fn local_admin_key(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(ADMIN_KEY_FILE))
        .ok()
        .map(|k| k.trim().to_string())
        .filter(|k| !k.is_empty())
}
