//! The coordinator's data directory: the one place that knows what each file
//! in it is called. The server, the engine, the CLI, the client and the demo
//! all name files through [`DataDir`].
//!
//! It lives in the protocol crate because the directory is an interface
//! between processes: `kobo-coord serve` writes `client.json` and
//! `admin.key`, and local clients (CLI, MCP adapter) read them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::files::Access;

/// A data directory, by its root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDir {
    root: PathBuf,
}

impl DataDir {
    pub fn new(root: impl Into<PathBuf>) -> DataDir {
        DataDir { root: root.into() }
    }

    /// `$KOBO_DATA_DIR`-less default: `$XDG_DATA_HOME/kobo`, else
    /// `~/.local/share/kobo`, else `./kobo-data`.
    pub fn default_root() -> PathBuf {
        if let Some(dir) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir).join("kobo");
        }
        match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
            Some(home) => PathBuf::from(home).join(".local/share/kobo"),
            None => PathBuf::from("kobo-data"),
        }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The SQLite database.
    pub fn database(&self) -> PathBuf {
        self.root.join("kobo.db")
    }
    /// The CA certificate (public; clients and agents pin it).
    pub fn ca_cert(&self) -> PathBuf {
        self.root.join("ca.pem")
    }
    /// The CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.root.join("ca.key")
    }
    /// The server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.root.join("server.pem")
    }
    /// The server private key.
    pub fn server_key(&self) -> PathBuf {
        self.root.join("server.key")
    }
    /// The names the server certificate was issued for, one per line.
    pub fn server_names(&self) -> PathBuf {
        self.root.join("server.names")
    }
    /// Keys the hashes of API keys and join tokens.
    pub fn hmac_key(&self) -> PathBuf {
        self.root.join("hmac.key")
    }
    /// The key of confidential data at rest.
    pub fn data_key(&self) -> PathBuf {
        self.root.join("data.key")
    }
    /// The local admin API key created by `init`.
    pub fn admin_key(&self) -> PathBuf {
        self.root.join("admin.key")
    }
    /// Where a running server says it can be reached ([`ClientFile`]).
    pub fn client_file(&self) -> PathBuf {
        self.root.join("client.json")
    }
    /// SSH host keys trusted by provisioning.
    pub fn known_hosts(&self) -> PathBuf {
        self.root.join("known_hosts")
    }
    /// The OpenSSH client configuration provisioning runs with.
    pub fn ssh_config(&self) -> PathBuf {
        self.root.join("ssh_config")
    }
    /// The SSH key provisioning logs in with.
    pub fn deploy_key(&self) -> PathBuf {
        self.root.join("deploy_key")
    }
    /// The public half of [`DataDir::deploy_key`].
    pub fn deploy_key_public(&self) -> PathBuf {
        self.root.join("deploy_key.pub")
    }
    /// Held locked by the `kobo-coord serve` (or `restore`) using this
    /// directory; holds that process's id.
    pub fn lock_file(&self) -> PathBuf {
        self.root.join("kobo.lock")
    }
    /// The state directory of the demo's local agent `node_id`.
    pub fn demo_agent(&self, node_id: &str) -> PathBuf {
        self.root.join("agents").join(node_id)
    }

    /// The files besides the database that a copy of this directory needs
    /// to be usable: the CA (agents pin it and hold certificates it signed),
    /// the server certificate, the secret keys (without `hmac.key` no API
    /// key or join token checks; without `data.key` no confidential job
    /// reads), the local admin key, and provisioning's SSH state when there
    /// is one. `client.json` is not among them: `serve` writes it anew.
    pub fn kept_files(&self) -> Vec<KeptFile> {
        let file = |path: PathBuf, access: Access, required: bool| KeptFile {
            path,
            access,
            required,
        };
        vec![
            file(self.ca_cert(), Access::Public, true),
            file(self.ca_key(), Access::Private, true),
            file(self.server_cert(), Access::Public, true),
            file(self.server_key(), Access::Private, true),
            file(self.server_names(), Access::Public, true),
            file(self.hmac_key(), Access::Private, true),
            file(self.data_key(), Access::Private, true),
            file(self.admin_key(), Access::Private, false),
            file(self.known_hosts(), Access::Private, false),
            file(self.ssh_config(), Access::Private, false),
            file(self.deploy_key(), Access::Private, false),
            file(self.deploy_key_public(), Access::Public, false),
        ]
    }

    /// The local admin key, if `init` wrote one here and it is readable.
    pub fn local_admin_key(&self) -> Option<String> {
        std::fs::read_to_string(self.admin_key())
            .ok()
            .map(|text| text.trim().to_owned())
            .filter(|key| !key.is_empty())
    }
}

/// A file of the data directory that backups carry ([`DataDir::kept_files`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeptFile {
    pub path: PathBuf,
    /// Its mode in a data directory (a backup holds every file 0600).
    pub access: Access,
    /// Whether `init` always makes it (a backup without it is incomplete).
    pub required: bool,
}

/// `client.json`: written by `kobo-coord serve` once it listens, so local
/// clients find the server without being told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFile {
    /// The URL clients on this machine should use.
    pub url: String,
}
