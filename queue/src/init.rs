//! `kobo-coord init`: prepares a data directory — the certificate authority
//! (created, or brought with `--ca-cert/--ca-key`), the server certificate,
//! the secret keys, the database, and the first admin API key, written to
//! `<data-dir>/admin.key` for the local CLI. Idempotent; `serve` runs it too.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use kobo_protocol::{AccessRole, DataDir, KeyPolicy};
use rusqlite::TransactionBehavior;
use tokio_util::sync::CancellationToken;

use crate::Admin;
use crate::access::{AccessCache, Caller};
use crate::admin::record;
use crate::config::ServeConfig;
use crate::dispatch::Hub;
use crate::observe::Observer;
use crate::pki::{self as tls, CertPaths};
use crate::queue::Queue;
use crate::security::{self, Secrets, new_api_key};
use crate::store;
use crate::store::Store;
use crate::store::sql::{Db, PgConn};

/// The local admin key's file in the data directory.

#[derive(Debug, Clone, Default)]
pub struct InitOptions {
    pub data_dir: PathBuf,
    pub sans: Vec<String>,
    /// A CA certificate and key to use instead of creating one.
    pub ca_import: Option<(PathBuf, PathBuf)>,
    /// A PostgreSQL URL holding the jobs instead of the SQLite file.
    pub database: Option<String>,
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
    let ca = tls::Ca::load(&paths, tls::NODE_CERT_LIFETIME)?;
    let key_file = DataDir::new(dir).admin_key();
    let first_admin = |db: &dyn Db| -> anyhow::Result<Option<String>> {
        let has_admin = store::list_api_keys(db)?
            .iter()
            .any(|k| k.view.role == AccessRole::Admin && k.view.revoked_at.is_none());
        if has_admin && key_file.exists() {
            return Ok(None);
        }
        let (id, secret, key) = new_api_key();
        let now = store::unix_now_ms();
        store::insert_api_key(
            db,
            now,
            &id,
            "local-admin",
            AccessRole::Admin,
            &secrets.hasher.hash(&secret),
            "local",
            &KeyPolicy::default(),
        )?;
        store::append_audit(
            db,
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
        Ok(Some(key))
    };
    let admin_key = match &options.database {
        None => {
            let db = DataDir::new(dir).database();
            // The first open of a start: the crash's WAL is looked at and the
            // file checked before anything reads it.
            let mut conn = store::health::open_checked(&db)
                .with_context(|| format!("opening {}", db.display()))?;
            store::migrate(&mut conn).context("migrating the database")?;
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let key = first_admin(&tx)?;
            tx.commit()?;
            key
        }
        Some(url) => {
            let shown = store::Database::Postgres(url.clone()).display();
            let mut conn =
                PgConn::connect(url).with_context(|| format!("connecting to {shown}"))?;
            store::sql::migrate_postgres(&mut conn)
                .with_context(|| format!("migrating {shown}"))?;
            let tx = conn.transaction()?;
            let key = first_admin(&tx)?;
            tx.commit()?;
            key
        }
    };
    Ok(Initialized {
        admin_key,
        ca_sha256: ca.cert_sha256,
    })
}

/// The leader's fence for the writer of a coordinator that shares its
/// database with others (its role comes from a [`crate::leader::Leadership`]).
fn fence(config: &ServeConfig) -> Option<Arc<dyn store::Fence>> {
    let role = config.role.clone()?;
    Some(Arc::new(crate::leader::LeaderFence::new(role)))
}

/// A running engine: what `serve` (or a test) holds.
pub struct Engine {
    pub queue: Queue,
    pub admin: Admin,
    pub access: Arc<AccessCache>,
    pub observer: Arc<Observer>,
    pub paths: CertPaths,
    /// The data directory's lock, held as long as the engine is.
    pub lock: crate::data_lock::DataDirLock,
}

/// Prepares the data directory (see [`init`]), opens the store and starts
/// its writer thread; `shutdown` ends the observer's streams.
pub fn open(config: &ServeConfig, shutdown: CancellationToken) -> anyhow::Result<Engine> {
    // Before anything is written: a second coordinator on this directory
    // stops here.
    let lock = crate::data_lock::lock_data_dir(&config.data_dir, "kobo-coord serve")
        .context("refusing to serve: one coordinator per data directory")?;
    init(&InitOptions {
        data_dir: config.data_dir.clone(),
        sans: config.sans.clone(),
        ca_import: config.ca_import.clone(),
        database: config.database.clone(),
    })?;
    let dir = DataDir::new(&config.data_dir);
    let paths = CertPaths::of(&dir);
    let secrets = Secrets::load_or_create(&config.data_dir).context("reading the secret keys")?;
    let hub = Arc::new(Hub::new(config.queue.clone(), secrets.sealer.clone()));
    let store = match &config.database {
        None => {
            let db = dir.database();
            Store::open_with(&db, hub.clone(), config.checkpoints)
                .with_context(|| format!("opening {}", db.display()))?
        }
        Some(url) => Store::open_postgres(url, hub.clone(), fence(config)).with_context(|| {
            format!(
                "opening {}",
                store::Database::Postgres(url.clone()).display()
            )
        })?,
    };
    let (keys, certificates) = store
        .read_blocking(|db| Ok((store::list_api_keys(db)?, store::valid_certificates(db)?)))?;
    hub.tenants.load(&keys);
    let access = Arc::new(AccessCache::new(secrets.hasher.clone(), keys, certificates));
    let ca = Arc::new(
        tls::Ca::load(&paths, config.node_cert_lifetime)
            .context("loading the certificate authority")?,
    );
    let admin = Admin::new(store.clone(), hub.clone(), ca, access.clone());
    let observer = Arc::new(Observer::new(store.clone(), shutdown));
    Ok(Engine {
        queue: Queue::new(store, hub),
        admin,
        access,
        observer,
        paths,
        lock,
    })
}
