//! One process per data directory: `kobo-coord serve` holds an exclusive
//! advisory lock (`flock`) on `kobo.lock` for its lifetime, and so does
//! `kobo-coord restore` while it replaces files. A second `serve` on the
//! same directory would open the same database with a second writer, CA and
//! timer: two coordinators leasing the same jobs. The kernel drops the lock
//! when the process dies, however it dies, so a crash leaves no stale lock.

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use kobo_protocol::DataDir;

/// Held while the process uses the data directory; dropping it unlocks.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory.
    #[error("data directory {dir} is in use by {holder}")]
    Held { dir: PathBuf, holder: String },
    #[error("cannot lock {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Locks the data directory `dir` for `purpose` (`kobo-coord serve`, …),
/// or says who holds it. The lock file then holds this process's id and
/// purpose, which is what another process's refusal quotes.
pub fn lock_data_dir(dir: &Path, purpose: &str) -> Result<DataDirLock, LockError> {
    let path = DataDir::new(dir).lock_file();
    let io_error = |source| LockError::Io {
        path: path.clone(),
        source,
    };
    fs::create_dir_all(dir).map_err(io_error)?;
    let mut options = OpenOptions::new();
    // Not truncated on open: the holder's id must stay readable.
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&path).map_err(io_error)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            let holder = holder.trim();
            return Err(LockError::Held {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "another process".to_string()
                } else {
                    holder.to_string()
                },
            });
        }
        Err(TryLockError::Error(source)) => return Err(io_error(source)),
    }
    file.set_len(0).map_err(io_error)?;
    writeln!(file, "{purpose} (pid {})", std::process::id()).map_err(io_error)?;
    file.sync_all().map_err(io_error)?;
    Ok(DataDirLock { _file: file, path })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_naming_the_holder_and_works_after_release() {
        let dir = tempfile::tempdir().expect("dir");
        let held = lock_data_dir(dir.path(), "kobo-coord serve").expect("first lock");
        let refused = lock_data_dir(dir.path(), "kobo-coord restore").expect_err("refused");
        let text = refused.to_string();
        assert!(
            text.contains(&format!("kobo-coord serve (pid {})", std::process::id())),
            "{text}"
        );
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(held);
        lock_data_dir(dir.path(), "kobo-coord restore").expect("free again");
    }
}
