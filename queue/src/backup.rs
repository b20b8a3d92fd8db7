//! `kobo-coord backup` and `restore`: a data directory copied whole while
//! the coordinator serves (the database by SQLite's backup API, the keys and
//! certificates it needs beside it, a manifest with every file's SHA-256),
//! and put back into a data directory no coordinator is using, checked
//! before anything there is touched and swapped in by renames.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kobo_protocol::backup::{BackupFile, BackupManifest, MANIFEST};
use kobo_protocol::digest::sha256_hex_of;
use kobo_protocol::files::{Access, write_atomic};
use kobo_protocol::{DataDir, KeptFile};

use crate::data_lock::{LockError, lock_data_dir};
use crate::store::{self, backup::check_copy};

/// What a backup made.
#[derive(Debug, Clone)]
pub struct BackupReport {
    pub dest: PathBuf,
    pub manifest: BackupManifest,
    pub bytes: u64,
    pub elapsed: Duration,
}

/// What a restore put back.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub manifest: BackupManifest,
    /// Files put in place, and their bytes.
    pub files: usize,
    pub bytes: u64,
    /// Where the database it replaced (with `force`) was moved.
    pub replaced: Option<PathBuf>,
}

/// The name of a file in a data directory (and in a backup).
fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Flushes a directory's entries (renames and new files) to disk.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn hash_file(path: &Path) -> anyhow::Result<(u64, String)> {
    let file = File::open(path).with_context(|| format!("reading {}", path.display()))?;
    let bytes = file.metadata()?.len();
    let sha256 = sha256_hex_of(io::BufReader::new(file))
        .with_context(|| format!("reading {}", path.display()))?;
    Ok((bytes, sha256))
}

/// Makes `dest` a new, empty directory of mode 0700 (an empty existing one
/// is used); says whether it was created.
fn new_backup_dir(dest: &Path) -> anyhow::Result<bool> {
    let created = match fs::read_dir(dest) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} already exists and is not empty: a backup goes into a new directory",
                    dest.display()
                );
            }
            false
        }
        Err(err) if err.kind() == io::ErrorKind::NotFound => {
            fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
            true
        }
        Err(err) => {
            return Err(err).with_context(|| format!("reading {}", dest.display()));
        }
    };
    set_mode(dest, 0o700).with_context(|| format!("setting the mode of {}", dest.display()))?;
    Ok(created)
}

/// Backs the data directory `data_dir` up into the new directory `dest`
/// while a coordinator may be serving from it. Every file is 0600, the
/// directory 0700; the copied database passes `PRAGMA integrity_check`
/// before the manifest, written last, makes the backup whole.
pub fn backup(data_dir: &Path, dest: &Path) -> anyhow::Result<BackupReport> {
    let started = Instant::now();
    let dir = DataDir::new(data_dir);
    if !dir.database().exists() {
        bail!(
            "{} holds no database: is {} a kobo data directory?",
            dir.database().display(),
            data_dir.display()
        );
    }
    let created = new_backup_dir(dest)?;
    let made = write_backup(&dir, dest, started);
    if made.is_err() {
        // A half-made backup must not pass for one: it has no manifest, and
        // the directory this call made goes.
        if created {
            let _ = fs::remove_dir_all(dest);
        } else if let Ok(entries) = fs::read_dir(dest) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
    made
}

fn write_backup(dir: &DataDir, dest: &Path, started: Instant) -> anyhow::Result<BackupReport> {
    let created_at_ms = store::unix_now_ms();
    let db_name = name_of(&dir.database());
    let db_copy = dest.join(&db_name);
    store::backup::copy_online(&dir.database(), &db_copy)
        .with_context(|| format!("copying {}", dir.database().display()))?;
    set_mode(&db_copy, 0o600)
        .and_then(|()| File::open(&db_copy)?.sync_all())
        .with_context(|| format!("flushing {}", db_copy.display()))?;
    let facts = check_copy(&db_copy).context("checking the copied database")?;
    let (bytes, sha256) = hash_file(&db_copy)?;
    let mut files = vec![BackupFile {
        name: db_name,
        bytes,
        sha256,
    }];
    for kept in dir.kept_files() {
        let contents = match fs::read(&kept.path) {
            Ok(contents) => contents,
            Err(err) if err.kind() == io::ErrorKind::NotFound && !kept.required => continue,
            Err(err) => {
                return Err(err).with_context(|| {
                    format!(
                        "reading {} (a backup without it is not usable)",
                        kept.path.display()
                    )
                });
            }
        };
        let name = name_of(&kept.path);
        write_atomic(&dest.join(&name), &contents, Access::Private)
            .with_context(|| format!("writing {}", dest.join(&name).display()))?;
        files.push(BackupFile {
            name,
            bytes: contents.len() as u64,
            sha256: kobo_protocol::sha256_hex(&contents),
        });
    }
    let manifest = BackupManifest {
        kobo_version: env!("CARGO_PKG_VERSION").to_string(),
        schema_version: facts.schema_version,
        created_at: rfc3339(created_at_ms),
        created_at_ms,
        source: dir.root().display().to_string(),
        jobs: facts.jobs,
        files,
    };
    let json = serde_json::to_vec_pretty(&manifest)?;
    write_atomic(&dest.join(MANIFEST), &json, Access::Private)
        .with_context(|| format!("writing {}", dest.join(MANIFEST).display()))?;
    sync_dir(dest).with_context(|| format!("flushing {}", dest.display()))?;
    Ok(BackupReport {
        dest: dest.to_path_buf(),
        bytes: manifest.files.iter().map(|f| f.bytes).sum::<u64>() + json.len() as u64,
        manifest,
        elapsed: started.elapsed(),
    })
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Reads and checks the backup `src`: its manifest names only files of a
/// data directory, every required one, each with the size and SHA-256 it
/// was written with; its database passes `PRAGMA integrity_check` and is
/// not from a newer kobo.
pub fn verify(src: &Path) -> anyhow::Result<BackupManifest> {
    let manifest_path = src.join(MANIFEST);
    let text = fs::read(&manifest_path).with_context(|| {
        format!(
            "{} is not a kobo backup: reading {}",
            src.display(),
            manifest_path.display()
        )
    })?;
    let manifest: BackupManifest = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a kobo backup manifest", manifest_path.display()))?;
    let layout = DataDir::new(src);
    let db_name = name_of(&layout.database());
    let kept = layout.kept_files();
    for file in &manifest.files {
        let known = file.name == db_name || kept.iter().any(|k| name_of(&k.path) == file.name);
        if !known {
            bail!(
                "the backup's manifest names {:?}, which is no file of a data directory",
                file.name
            );
        }
    }
    let required = std::iter::once(db_name.clone())
        .chain(kept.iter().filter(|k| k.required).map(|k| name_of(&k.path)));
    for name in required {
        if !manifest.files.iter().any(|f| f.name == name) {
            bail!(
                "the backup in {} lacks {name}: it is not usable",
                src.display()
            );
        }
    }
    for file in &manifest.files {
        let (bytes, sha256) = hash_file(&src.join(&file.name))?;
        if bytes != file.bytes || sha256 != file.sha256 {
            bail!(
                "the backup in {} is damaged: {} has {bytes} bytes with sha256 {sha256}, the manifest says {} bytes with sha256 {}",
                src.display(),
                file.name,
                file.bytes,
                file.sha256
            );
        }
    }
    let facts = check_copy(&src.join(&db_name)).context("checking the backup's database")?;
    if facts.schema_version > store::MIGRATIONS_APPLIED {
        bail!(
            "the backup's database has schema version {}, newer than this kobo-coord knows ({}): restore it with the kobo-coord that made it ({})",
            facts.schema_version,
            store::MIGRATIONS_APPLIED,
            manifest.kobo_version
        );
    }
    Ok(manifest)
}

/// How [`restore`] treats the data directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// Replace a database (moved aside) and keys that differ.
    pub force: bool,
    /// Only the keys and certificates: the database comes from elsewhere
    /// (`litestream restore`), and one already there is left alone.
    pub keys_only: bool,
}

/// Restores the backup `src` into the data directory `data_dir`: checks
/// the backup first ([`verify`]), then takes the directory's lock (refused
/// while a coordinator serves from it), refuses to replace a database or a
/// differing key unless `force`, copies every file to a temporary name,
/// checks the copies against the manifest, flushes them, and renames them
/// into place, the database last.
pub fn restore(
    src: &Path,
    data_dir: &Path,
    options: RestoreOptions,
) -> anyhow::Result<RestoreReport> {
    let manifest = verify(src)?;
    let _lock = match lock_data_dir(data_dir, "kobo-coord restore") {
        Ok(lock) => lock,
        Err(err @ LockError::Held { .. }) => {
            return Err(anyhow::Error::new(err).context(
                "refusing to restore into a data directory a coordinator is using: stop it first",
            ));
        }
        Err(err) => return Err(err.into()),
    };
    set_mode(data_dir, 0o700)
        .with_context(|| format!("setting the mode of {}", data_dir.display()))?;
    let dir = DataDir::new(data_dir);
    let db_name = name_of(&dir.database());
    let kept = dir.kept_files();
    let files: Vec<&BackupFile> = manifest
        .files
        .iter()
        .filter(|f| !(options.keys_only && f.name == db_name))
        .collect();
    if !options.force {
        let mut in_the_way = Vec::new();
        for file in &files {
            let path = data_dir.join(&file.name);
            let differs = match hash_file(&path) {
                Ok((_, sha256)) => sha256 != file.sha256,
                Err(_) => path.exists(),
            };
            if path.exists() && (file.name == db_name || differs) {
                in_the_way.push(file.name.clone());
            }
        }
        if !in_the_way.is_empty() {
            bail!(
                "{} already holds {}: pass --force to replace (a database is moved aside, not deleted)",
                data_dir.display(),
                in_the_way.join(", ")
            );
        }
    }
    let mut staged = Vec::new();
    if let Err(err) = stage(src, data_dir, &files, &kept, &db_name, &mut staged) {
        for (tmp, _) in &staged {
            let _ = fs::remove_file(tmp);
        }
        return Err(err);
    }
    sync_dir(data_dir).with_context(|| format!("flushing {}", data_dir.display()))?;
    let replaced = if options.keys_only {
        None
    } else {
        move_old_database_aside(&dir)?
    };
    // The database last: until its rename, the directory holds no database
    // (or the old one, moved aside), never a new database with old keys.
    staged.sort_by_key(|(_, name)| *name == db_name);
    for (tmp, name) in &staged {
        fs::rename(tmp, data_dir.join(name))
            .with_context(|| format!("renaming {}", tmp.display()))?;
    }
    sync_dir(data_dir).with_context(|| format!("flushing {}", data_dir.display()))?;
    Ok(RestoreReport {
        files: files.len(),
        bytes: files.iter().map(|f| f.bytes).sum(),
        manifest,
        replaced,
    })
}

/// Copies each file of the backup to `<name>.restoring` in `data_dir` with
/// its data-directory mode, flushed, and checks the copy's SHA-256.
fn stage<'a>(
    src: &Path,
    data_dir: &Path,
    files: &[&'a BackupFile],
    kept: &[KeptFile],
    db_name: &str,
    staged: &mut Vec<(PathBuf, &'a str)>,
) -> anyhow::Result<()> {
    for file in files {
        let tmp = data_dir.join(format!("{}.restoring", file.name));
        let mode = match kept.iter().find(|k| name_of(&k.path) == file.name) {
            Some(KeptFile {
                access: Access::Public,
                ..
            }) => 0o644,
            _ => 0o600,
        };
        let _ = fs::remove_file(&tmp);
        let mut options = fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(mode);
        }
        let mut out = options
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        staged.push((tmp.clone(), file.name.as_str()));
        let mut input = File::open(src.join(&file.name))
            .with_context(|| format!("reading {}", src.join(&file.name).display()))?;
        io::copy(&mut input, &mut out).with_context(|| format!("writing {}", tmp.display()))?;
        out.sync_all()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        drop(out);
        let (_, sha256) = hash_file(&tmp)?;
        if sha256 != file.sha256 {
            bail!(
                "{} changed while it was restored (sha256 {sha256}, the manifest says {})",
                src.join(&file.name).display(),
                file.sha256
            );
        }
        if file.name == db_name {
            check_copy(&tmp).context("checking the restored database")?;
        }
    }
    Ok(())
}

/// Moves the directory's database and its write-ahead log to
/// `kobo.db.replaced-<ms>` (and `-wal`), and drops its shared-memory file:
/// an old log left beside the restored database would be replayed into it.
fn move_old_database_aside(dir: &DataDir) -> anyhow::Result<Option<PathBuf>> {
    let db = dir.database();
    let with_suffix = |path: &Path, suffix: &str| {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        PathBuf::from(name)
    };
    let aside = with_suffix(&db, &format!(".replaced-{}", store::unix_now_ms()));
    let (wal, shm) = (with_suffix(&db, "-wal"), with_suffix(&db, "-shm"));
    let mut moved = None;
    if wal.exists() {
        fs::rename(&wal, with_suffix(&aside, "-wal"))
            .with_context(|| format!("moving {} aside", wal.display()))?;
    }
    if shm.exists() {
        fs::remove_file(&shm).with_context(|| format!("removing {}", shm.display()))?;
    }
    if db.exists() {
        fs::rename(&db, &aside).with_context(|| format!("moving {} aside", db.display()))?;
        moved = Some(aside);
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::{InitOptions, init};

    fn init_dir(dir: &Path) {
        init(&InitOptions {
            data_dir: dir.to_path_buf(),
            ..InitOptions::default()
        })
        .expect("init");
    }

    #[test]
    fn a_forced_restore_moves_the_old_database_and_its_log_aside() {
        let dir = tempfile::tempdir().expect("dir");
        let (source, copy, target) = (
            dir.path().join("source"),
            dir.path().join("backup"),
            dir.path().join("target"),
        );
        init_dir(&source);
        let made = backup(&source, &copy).expect("backup");
        assert_eq!(made.manifest.schema_version, store::MIGRATIONS_APPLIED);
        init_dir(&target);
        // A log that is not the restored database's: replayed into it, it
        // would corrupt it.
        fs::write(target.join("kobo.db-wal"), b"an old log").expect("old log");

        let refused = restore(&copy, &target, RestoreOptions::default()).expect_err("refused");
        let text = format!("{refused:#}");
        assert!(
            text.contains("already holds kobo.db") && text.contains("ca.pem"),
            "{text}"
        );

        let forced = RestoreOptions {
            force: true,
            ..RestoreOptions::default()
        };
        let done = restore(&copy, &target, forced).expect("forced restore");
        let aside = done.replaced.expect("the old database moved aside");
        assert!(aside.exists());
        let aside_log = PathBuf::from(format!("{}-wal", aside.display()));
        assert_eq!(fs::read(aside_log).expect("old log kept"), b"an old log");
        assert!(!target.join("kobo.db-wal").exists());
        store::health::open_checked(&target.join("kobo.db")).expect("opens clean");
        for name in ["ca.pem", "ca.key", "hmac.key", "data.key"] {
            assert_eq!(
                fs::read(target.join(name)).expect("restored"),
                fs::read(source.join(name)).expect("source"),
                "{name}"
            );
        }
    }

    #[test]
    fn keys_only_leaves_the_database_out_and_a_foreign_name_is_refused() {
        let dir = tempfile::tempdir().expect("dir");
        let (source, copy) = (dir.path().join("source"), dir.path().join("backup"));
        init_dir(&source);
        backup(&source, &copy).expect("backup");
        let keys = dir.path().join("keys");
        let options = RestoreOptions {
            keys_only: true,
            ..RestoreOptions::default()
        };
        let done = restore(&copy, &keys, options).expect("keys only");
        assert!(!keys.join("kobo.db").exists());
        assert_eq!(done.files, done.manifest.files.len() - 1);
        assert_eq!(
            fs::read(keys.join("data.key")).expect("data.key"),
            fs::read(source.join("data.key")).expect("source")
        );

        let path = copy.join(MANIFEST);
        let mut manifest: BackupManifest =
            serde_json::from_slice(&fs::read(&path).expect("manifest")).expect("json");
        manifest.files[1].name = "../ca.key".into();
        fs::write(&path, serde_json::to_vec(&manifest).expect("json")).expect("write");
        let refused = verify(&copy).expect_err("a foreign name");
        assert!(
            refused.to_string().contains("no file of a data directory"),
            "{refused:#}"
        );
    }
}
