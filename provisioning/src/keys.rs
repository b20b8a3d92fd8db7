//! The deploy key: an ed25519 key pair kobo uses to log in to hosts
//! (`kobo-coord keygen`), in OpenSSH format, made with the `ssh-key` crate.

use std::path::{Path, PathBuf};

use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::error::ProvisionError;

/// The deploy key written: where, and its public half for `authorized_keys`.
#[derive(Debug, Clone)]
pub struct DeployKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// `ssh-ed25519 AAAA… comment`.
    pub public_line: String,
    pub fingerprint: String,
    /// False when the key already existed and was kept.
    pub created: bool,
}

/// Makes `path` (0600) and `path.pub` unless they exist (or `force`).
pub fn ensure_deploy_key(
    path: &Path,
    comment: &str,
    force: bool,
) -> Result<DeployKey, ProvisionError> {
    let public_path = path.with_extension("pub");
    let other =
        |e: ssh_key::Error| ProvisionError::Other(format!("deploy key {}: {e}", path.display()));
    if path.exists() && !force {
        let key = PrivateKey::read_openssh_file(path).map_err(other)?;
        return Ok(DeployKey {
            private_path: path.to_path_buf(),
            public_path,
            public_line: key.public_key().to_openssh().map_err(other)?,
            fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
            created: false,
        });
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ProvisionError::Local {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let mut key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(other)?;
    key.set_comment(comment);
    // write_openssh_file creates the file 0600.
    let _ = std::fs::remove_file(path);
    key.write_openssh_file(path, LineEnding::LF)
        .map_err(other)?;
    let public_line = key.public_key().to_openssh().map_err(other)?;
    std::fs::write(&public_path, format!("{public_line}\n")).map_err(|source| {
        ProvisionError::Local {
            path: public_path.clone(),
            source,
        }
    })?;
    Ok(DeployKey {
        private_path: path.to_path_buf(),
        public_path,
        public_line,
        fingerprint: key.fingerprint(ssh_key::HashAlg::Sha256).to_string(),
        created: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deploy_key_is_ed25519_private_0600_and_kept_on_a_second_call() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("deploy_key");
        let made = ensure_deploy_key(&path, "kobo-deploy@test", false).unwrap();
        assert!(made.created);
        assert!(made.public_line.starts_with("ssh-ed25519 AAAA"));
        assert!(made.public_line.ends_with(" kobo-deploy@test"));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ensure_deploy_key(&path, "other", false).unwrap();
        assert!(!again.created);
        assert_eq!(again.fingerprint, made.fingerprint);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN OPENSSH PRIVATE KEY-----"));
    }
}
