//! Starting and stopping the agent on a host: a systemd service where systemd
//! runs and commands run as root, otherwise `kobo-agent supervise --detach`
//! with a pid file (the supervisor restarts the agent when it exits).

use crate::error::ProvisionError;
use crate::render::{Layout, UNIT_NAME, UNIT_PATH};
use crate::ssh::Remote;

/// How long a supervised agent gets to drain before it is killed (seconds);
/// the agent's own drain deadline is 60 s.
const STOP_TIMEOUT_SECS: &str = "90";

/// `$1` pid file, `$2` seconds: SIGTERM the supervisor (it passes it on and
/// waits for the agent to drain), SIGKILL its whole session after `$2`.
const STOP_SCRIPT: &str = r#"pf="$1"
[ -f "$pf" ] || exit 0
p=$(cat "$pf")
case "$p" in ''|*[!0-9]*) rm -f "$pf"; exit 0 ;; esac
alive() { [ -d "/proc/$1" ] && ! sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | grep -q '^Z'; }
if ! alive "$p" || ! grep -q supervise "/proc/$p/cmdline" 2>/dev/null; then rm -f "$pf"; exit 0; fi
kill -TERM "$p" 2>/dev/null
i=0
while alive "$p"; do
  i=$((i + 1))
  if [ "$i" -gt $(($2 * 10)) ]; then kill -KILL -- "-$p" 2>/dev/null; kill -KILL "$p" 2>/dev/null; break; fi
  sleep 0.1
done
rm -f "$pf"
"#;

/// Stops the agent, however it runs.
pub async fn stop(remote: &Remote, layout: &Layout, systemd: bool) -> Result<(), ProvisionError> {
    if systemd {
        let output = remote.run(&["systemctl", "stop", UNIT_NAME]).await?;
        // Not loaded yet (first install): nothing to stop.
        if output.code != 0 && !output.stderr.contains("not loaded") {
            remote
                .run_ok("systemctl stop", &["systemctl", "stop", UNIT_NAME])
                .await?;
        }
    }
    remote
        .script_ok(
            "stopping the agent",
            STOP_SCRIPT,
            &[&layout.pid_file, STOP_TIMEOUT_SECS],
        )
        .await?;
    Ok(())
}

/// Starts the agent; under systemd, `unit_changed` reloads units first.
pub async fn start(
    remote: &Remote,
    layout: &Layout,
    systemd: bool,
    unit_changed: bool,
) -> Result<(), ProvisionError> {
    if systemd {
        if unit_changed {
            remote
                .run_ok("systemctl daemon-reload", &["systemctl", "daemon-reload"])
                .await?;
        }
        remote
            .run_ok(
                "systemctl enable",
                &["systemctl", "enable", "--quiet", UNIT_NAME],
            )
            .await?;
        remote
            .run_ok("systemctl restart", &["systemctl", "restart", UNIT_NAME])
            .await?;
        return Ok(());
    }
    remote
        .run_ok(
            "starting the agent",
            &[
                &layout.binary,
                "supervise",
                "--detach",
                "--env-file",
                &layout.env_file,
                "--pid-file",
                &layout.pid_file,
                "--log-file",
                &layout.log_file,
            ],
        )
        .await?;
    Ok(())
}

/// Stops the agent for good: the unit is disabled and removed.
pub async fn uninstall(
    remote: &Remote,
    layout: &Layout,
    systemd: bool,
) -> Result<(), ProvisionError> {
    if systemd {
        let _ = remote
            .run(&["systemctl", "disable", "--now", "--quiet", UNIT_NAME])
            .await?;
        remote
            .run_ok("removing the unit", &["rm", "-f", "--", UNIT_PATH])
            .await?;
        let _ = remote.run(&["systemctl", "daemon-reload"]).await?;
    }
    stop(remote, layout, false).await
}
