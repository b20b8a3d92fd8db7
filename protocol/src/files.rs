//! The one atomic file writer: every key, certificate, token and state file
//! kobo keeps on disk is written through [`write_atomic`].

use std::fs;
use std::io::{self, Write};
use std::path::Path;

/// Who may read a file kobo writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Owner only (0600): private keys, secrets, tokens, known hosts.
    Private,
    /// World-readable (0644): certificates and other public material.
    Public,
}

/// Writes `contents` to `path` so that a reader sees either the old file or
/// the whole new one, never a part: a temporary file beside it (created with
/// the final permissions, so a secret is never readable by others even for a
/// moment), flushed to disk, then renamed over `path`. Creates missing
/// parent directories.
pub fn write_atomic(path: &Path, contents: &[u8], access: Access) -> io::Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        fs::create_dir_all(dir)?;
    }
    let mut tmp_name = path.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut options = fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(match access {
            Access::Private => 0o600,
            Access::Public => 0o644,
        });
    }
    let mut file = options.open(&tmp)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only_and_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("kobo-files-{}", std::process::id()));
        let path = dir.join("nested").join("secret.key");
        write_atomic(&path, b"first", Access::Private).expect("write");
        write_atomic(&path, b"second", Access::Private).expect("rewrite");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("secret.key")]);
        write_atomic(&dir.join("cert.pem"), b"pem", Access::Public).expect("public");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join("cert.pem"))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o644);
        }
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
