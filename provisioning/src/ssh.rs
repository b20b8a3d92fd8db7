//! SSH through the system `ssh` (the `openssh` crate: one ControlMaster
//! connection per host, commands multiplexed over it). Host keys are checked
//! strictly against kobo's own `known_hosts`; every setting comes from a
//! config file kobo writes (`-F`), so the user's and the system's ssh
//! configuration cannot loosen it, and ProxyJump hops obey it too.
//!
//! Remote commands are argument vectors: every argument is quoted by
//! `openssh` for the remote shell. The only shell code run on hosts is the
//! fixed scripts of this crate (`&'static str`), which take inventory values
//! as positional parameters (`sh -c SCRIPT sh "$1" "$2"`), never spliced in.

use kobo_protocol::files::{Access, write_atomic};
use std::path::{Path, PathBuf};
use std::time::Duration;

use kobo_inventory::Host;
use openssh::{KnownHosts, Session, SessionBuilder, Stdio};
use tokio::io::AsyncWriteExt;

use crate::error::ProvisionError;

/// Longest a remote command (other than an upload) may run: stopping an
/// agent waits up to 90 s for it to drain, and a broken binary must not
/// hang the run.
const REMOTE_COMMAND_TIMEOUT: Duration = Duration::from_secs(120);

/// How kobo connects to hosts.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// kobo's known_hosts (`<data-dir>/known_hosts`).
    pub known_hosts: PathBuf,
    /// The ssh config kobo writes (`<data-dir>/ssh_config`), see [`write_ssh_config`].
    pub config_file: PathBuf,
    /// The deploy key used for hosts whose inventory names none.
    pub default_key: Option<PathBuf>,
    /// Trust a host's key on first contact (`--accept-new`).
    pub accept_new: bool,
    pub connect_timeout: Duration,
    /// Where ControlMaster sockets live (short path: sockets have a length limit).
    pub control_dir: PathBuf,
}

/// Writes the ssh config every kobo connection uses: strict host keys
/// against `known_hosts` only, no password prompts, keep-alives.
pub fn write_ssh_config(
    path: &Path,
    known_hosts: &Path,
    deploy_key: Option<&Path>,
) -> Result<(), ProvisionError> {
    let quoted = |p: &Path| -> Result<String, ProvisionError> {
        let text = p.to_string_lossy();
        if text.contains(['"', '\n', '\r']) {
            return Err(ProvisionError::Other(format!(
                "the path {text:?} cannot be used in an ssh config"
            )));
        }
        Ok(format!("\"{text}\""))
    };
    let mut text = String::from(
        "# Written by kobo-coord for its SSH connections (provisioning); rewritten on every run.\nHost *\n",
    );
    text.push_str(&format!("  UserKnownHostsFile {}\n", quoted(known_hosts)?));
    text.push_str("  GlobalKnownHostsFile /dev/null\n");
    text.push_str("  StrictHostKeyChecking yes\n");
    text.push_str("  HashKnownHosts no\n");
    text.push_str("  UpdateHostKeys no\n");
    text.push_str("  BatchMode yes\n");
    text.push_str("  PasswordAuthentication no\n");
    text.push_str("  KbdInteractiveAuthentication no\n");
    text.push_str("  ServerAliveInterval 15\n");
    text.push_str("  ServerAliveCountMax 3\n");
    if let Some(key) = deploy_key {
        text.push_str(&format!("  IdentityFile {}\n", quoted(key)?));
    }
    if !known_hosts.exists() {
        write_private(known_hosts, b"")?;
    }
    write_private(path, text.as_bytes())
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ProvisionError> {
    write_atomic(path, bytes, Access::Private).map_err(|source| ProvisionError::Local {
        path: path.to_path_buf(),
        source,
    })
}

/// `~/x` → `$HOME/x`.
pub fn expand_home(path: &Path) -> PathBuf {
    match (path.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => path.to_path_buf(),
    }
}

/// The `host` or `[host]:port` a known_hosts line names.
pub fn known_hosts_pattern(host: &str, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// A connection to one host, and whether commands run through `sudo -n`.
pub struct Remote {
    session: Session,
    become_root: bool,
    /// `user@host:port`, for messages.
    pub label: String,
}

/// The result of a remote command.
#[derive(Debug)]
pub struct RemoteOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Opens the ControlMaster connection to `host`.
pub async fn connect(host: &Host, options: &SshOptions) -> Result<Remote, ProvisionError> {
    let target = &host.ssh;
    let label = format!(
        "{}{}:{}",
        target
            .user
            .as_deref()
            .map(|u| format!("{u}@"))
            .unwrap_or_default(),
        target.host,
        target.port
    );
    let mut builder = SessionBuilder::default();
    builder
        .known_hosts_check(if options.accept_new {
            KnownHosts::Add
        } else {
            KnownHosts::Strict
        })
        .user_known_hosts_file(&options.known_hosts)
        .config_file(&options.config_file)
        .connect_timeout(options.connect_timeout)
        .server_alive_interval(Duration::from_secs(15))
        .control_directory(&options.control_dir)
        .port(target.port);
    if let Some(user) = &target.user {
        builder.user(user.clone());
    }
    if let Some(key) = target.key.as_deref().or(options.default_key.as_deref()) {
        builder.keyfile(expand_home(key));
    }
    if let Some(jump) = &target.jump {
        builder.jump_hosts([jump.to_string()]);
    }
    let session = builder.connect(&target.host).await.map_err(|source| {
        let jump = target.jump.as_ref().map(|j| j.to_string());
        classify_connect(&host.name, jump.as_deref(), &options.known_hosts, source)
    })?;
    Ok(Remote {
        session,
        become_root: target.become_root,
        label,
    })
}

fn classify_connect(
    host: &str,
    jump: Option<&str>,
    known_hosts: &Path,
    source: openssh::Error,
) -> ProvisionError {
    let message = match &source {
        openssh::Error::Connect(io) => io.to_string(),
        other => other.to_string(),
    };
    if message.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
        return ProvisionError::HostKeyMismatch {
            host: host.to_string(),
            known_hosts: known_hosts.to_path_buf(),
        };
    }
    if message.contains("Host key verification failed") {
        return ProvisionError::HostKeyUnknown {
            host: host.to_string(),
            known_hosts: known_hosts.to_path_buf(),
        };
    }
    let mut reason = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("ssh failed")
        .trim()
        .to_string();
    if let Some(jump) = jump {
        // The hop to the bastion checks its key against kobo's known_hosts too.
        reason.push_str(&format!(
            " (through the bastion {jump}: is it up, and is its key trusted? `kobo-coord hosts trust` pins it)"
        ));
    }
    ProvisionError::Connect {
        host: host.to_string(),
        reason,
        source,
    }
}

/// Looks for the words sudo uses when it would need a password.
fn sudo_wants_password(stderr: &str) -> bool {
    stderr.contains("sudo: a password is required")
        || stderr.contains("sudo: a terminal is required")
        || stderr.contains("sudo: no tty present")
}

impl Remote {
    /// A command for `program`, through `sudo -n --` when the host says `become`.
    fn command(&self, program: &str) -> openssh::OwningCommand<&Session> {
        if self.become_root {
            let mut command = self.session.command("sudo");
            command.arg("-n").arg("--").arg(program);
            command
        } else {
            self.session.command(program)
        }
    }

    fn ssh_error(&self, what: &str, source: openssh::Error) -> ProvisionError {
        ProvisionError::Ssh {
            host: self.label.clone(),
            what: what.to_string(),
            source,
        }
    }

    fn check(&self, what: &str, output: RemoteOutput) -> Result<RemoteOutput, ProvisionError> {
        if output.code == 0 {
            return Ok(output);
        }
        if self.become_root && sudo_wants_password(&output.stderr) {
            return Err(ProvisionError::SudoNeedsPassword {
                host: self.label.clone(),
            });
        }
        Err(ProvisionError::Remote {
            host: self.label.clone(),
            what: what.to_string(),
            code: output.code,
            stderr: output.stderr.trim().chars().take(2000).collect(),
        })
    }

    /// Runs `argv` (each argument quoted for the remote shell); any exit status.
    pub async fn run(&self, argv: &[&str]) -> Result<RemoteOutput, ProvisionError> {
        let Some((program, args)) = argv.split_first() else {
            return Err(ProvisionError::Other("empty remote command".into()));
        };
        let mut command = self.command(program);
        command.args(args).stdin(Stdio::null());
        let output = tokio::time::timeout(REMOTE_COMMAND_TIMEOUT, command.output())
            .await
            .map_err(|_| ProvisionError::Remote {
                host: self.label.clone(),
                what: (*program).to_string(),
                code: -1,
                stderr: format!("no answer within {}s", REMOTE_COMMAND_TIMEOUT.as_secs()),
            })?
            .map_err(|e| self.ssh_error(program, e))?;
        Ok(RemoteOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }

    /// Runs `argv` and fails unless it exits 0; returns its standard output.
    pub async fn run_ok(&self, what: &str, argv: &[&str]) -> Result<String, ProvisionError> {
        let output = self.run(argv).await?;
        Ok(self.check(what, output)?.stdout)
    }

    /// Runs one of this crate's fixed scripts with `args` as `$1`, `$2`, ….
    pub async fn script(
        &self,
        script: &'static str,
        args: &[&str],
    ) -> Result<RemoteOutput, ProvisionError> {
        let mut argv = vec!["sh", "-c", script, "kobo"];
        argv.extend_from_slice(args);
        self.run(&argv).await
    }

    /// [`Remote::script`] that must exit 0.
    pub async fn script_ok(
        &self,
        what: &str,
        script: &'static str,
        args: &[&str],
    ) -> Result<String, ProvisionError> {
        let output = self.script(script, args).await?;
        Ok(self.check(what, output)?.stdout)
    }

    /// Streams `bytes` (or the file `local`) into `path` through standard
    /// input, then checks that the remote sha256 is `sha256`.
    pub async fn upload(
        &self,
        source: Upload<'_>,
        path: &str,
        mode: &str,
        sha256: &str,
    ) -> Result<(), ProvisionError> {
        let mut child = self
            .command("sh")
            .arg("-c")
            .arg(UPLOAD_SCRIPT)
            .arg("kobo")
            .arg(path)
            .arg(mode)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .await
            .map_err(|e| self.ssh_error("uploading", e))?;
        let upload_error = |source| ProvisionError::Upload {
            host: self.label.clone(),
            source,
        };
        let Some(mut stdin) = child.stdin().take() else {
            return Err(ProvisionError::Other("no stdin to upload through".into()));
        };
        let streamed = match source {
            Upload::File(local) => {
                let mut file =
                    tokio::fs::File::open(local)
                        .await
                        .map_err(|source| ProvisionError::Local {
                            path: local.to_path_buf(),
                            source,
                        })?;
                tokio::io::copy(&mut file, &mut stdin).await.map(|_| ())
            }
            Upload::Bytes(bytes) => stdin.write_all(bytes).await,
        };
        let closed = stdin.shutdown().await;
        drop(stdin);
        let output = child
            .wait_with_output()
            .await
            .map_err(|e| self.ssh_error("uploading", e))?;
        let output = RemoteOutput {
            code: output.status.code().unwrap_or(-1),
            stdout: String::new(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        };
        self.check("uploading", output)?;
        streamed.and(closed).map_err(upload_error)?;
        let found = self.sha256(path).await?;
        if found.as_deref() != Some(sha256) {
            let _ = self.run(&["rm", "-f", "--", path]).await;
            return Err(ProvisionError::Checksum {
                host: self.label.clone(),
                expected: sha256.to_string(),
                found: found.unwrap_or_else(|| "(missing)".into()),
            });
        }
        Ok(())
    }

    /// The sha256 of a remote file, if it exists.
    pub async fn sha256(&self, path: &str) -> Result<Option<String>, ProvisionError> {
        let output = self.script(SHA256_SCRIPT, &[path]).await?;
        let output = self.check("sha256sum", output)?;
        let sum = output.stdout.split_whitespace().next().unwrap_or_default();
        Ok((sum.len() == 64).then(|| sum.to_string()))
    }

    /// Closes the master connection.
    pub async fn close(self) {
        let _ = self.session.close().await;
    }
}

/// What [`Remote::upload`] sends.
pub enum Upload<'a> {
    File(&'a Path),
    Bytes(&'a [u8]),
}

/// `$1` path, `$2` mode: standard input into `$1.upload`, then renamed.
const UPLOAD_SCRIPT: &str = r#"umask 077
tmp="$1.upload"
cat > "$tmp" && chmod "$2" "$tmp" && mv -f "$tmp" "$1"
"#;

/// `$1` path: its sha256, nothing if missing.
const SHA256_SCRIPT: &str = r#"if [ -f "$1" ]; then sha256sum < "$1"; fi"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sudo_asking_for_a_password_is_recognised() {
        assert!(sudo_wants_password("sudo: a password is required\n"));
        assert!(sudo_wants_password(
            "sudo: a terminal is required to read the password"
        ));
        assert!(!sudo_wants_password("mkdir: cannot create directory"));
        assert_eq!(known_hosts_pattern("10.0.0.1", 22), "10.0.0.1");
        assert_eq!(known_hosts_pattern("10.0.0.1", 2222), "[10.0.0.1]:2222");
    }

    #[test]
    fn the_ssh_config_is_strict_and_names_kobos_files() {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("ssh_config");
        let known = dir.path().join("known_hosts");
        write_ssh_config(&config, &known, Some(&dir.path().join("deploy_key"))).unwrap();
        let text = std::fs::read_to_string(&config).unwrap();
        assert!(text.contains("StrictHostKeyChecking yes"));
        assert!(text.contains("GlobalKnownHostsFile /dev/null"));
        assert!(text.contains(&format!("UserKnownHostsFile \"{}\"", known.display())));
        assert!(text.contains("BatchMode yes"));
        assert!(known.exists());
    }
}
