//! `kobo-coord demo`, the README's first command: with `--exit` it runs its
//! batch and exits 0; without, it keeps serving the dashboard after the
//! batch, its printed login link works over HTTPS, and Ctrl-C (SIGINT)
//! drains the agents and exits 0.

use std::process::Stdio;

use kobo_protocol::ClusterStatus;
use kobo_tests::cluster::{PATIENCE, binary};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use reqwest::StatusCode;
use reqwest::header::{COOKIE, LOCATION, SET_COOKIE};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{ChildStdout, Command};

/// A quick batch on the simulated LLM (a local Ollama must not change it).
const DEMO_ARGS: [&str; 6] = ["demo", "--sim", "--jobs", "6", "--sim-latency-ms", "20"];

fn demo() -> Command {
    let mut command = Command::new(binary("kobo-coord"));
    command
        .args(DEMO_ARGS)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Reads lines into `seen` until one contains `needle`; panics after PATIENCE.
async fn read_until(
    lines: &mut Lines<BufReader<ChildStdout>>,
    seen: &mut Vec<String>,
    needle: &str,
) {
    let found = tokio::time::timeout(PATIENCE, async {
        while let Some(line) = lines.next_line().await.expect("read stdout") {
            let hit = line.contains(needle);
            seen.push(line);
            if hit {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        found == Ok(true),
        "no {needle:?} line from the demo:\n{}",
        seen.join("\n")
    );
}

/// The rest of the first line containing `marker`, from the marker on.
fn field_after(seen: &[String], marker: &str) -> String {
    seen.iter()
        .find_map(|l| l.find(marker).map(|at| l[at + marker.len()..].to_string()))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{}", seen.join("\n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_with_exit_runs_its_batch_and_exits() {
    let output = demo().arg("--exit").output().await.expect("run the demo");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("6/6 jobs succeeded"), "{stdout}");
    for node in ["tokyo-01", "osaka-01", "london-01"] {
        assert!(
            stdout.contains(&format!("→ {node}")),
            "no job ran on {node}:\n{stdout}"
        );
    }
    assert!(!stdout.contains("until Ctrl-C"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_serves_the_dashboard_until_ctrl_c_then_exits_cleanly() {
    let mut child = demo().spawn().expect("start the demo");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    read_until(&mut lines, &mut seen, "until Ctrl-C").await;
    assert!(
        seen.iter().any(|l| l.contains("6/6 jobs succeeded")),
        "{}",
        seen.join("\n")
    );

    // The printed login link, over HTTPS with the demo's own CA.
    let link = field_after(&seen, "  https://");
    let link = format!("https://{link}");
    let base = link.split("/login?").next().expect("base").to_string();
    let data_dir = field_after(&seen, "data: ");
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(std::path::Path::new(data_dir.trim()).join("ca.pem")).expect("ca.pem");
    let http = reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).expect("ca"))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let login = http.get(&link).send().await.expect("login link");
    assert_eq!(login.status(), StatusCode::SEE_OTHER, "{link}");
    assert_eq!(
        login.headers().get(LOCATION).and_then(|v| v.to_str().ok()),
        Some("/")
    );
    let cookie = login
        .headers()
        .get(SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("a session cookie")
        .to_string();
    let page = http
        .get(format!("{base}/"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("dashboard");
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await.expect("html").contains("/assets/app.js"));
    let status = http
        .get(format!("{base}/v1/status"))
        .header(COOKIE, &cookie)
        .send()
        .await
        .expect("status");
    assert_eq!(status.status(), StatusCode::OK);
    let status: ClusterStatus = status.json().await.expect("status json");
    assert_eq!(status.nodes.len(), 3, "the three demo nodes");

    // Ctrl-C: the agents drain, the server stops, exit 0.
    let pid = Pid::from_raw(child.id().expect("pid") as i32);
    kill(pid, Signal::SIGINT).expect("SIGINT");
    read_until(&mut lines, &mut seen, "agents drained").await;
    let status = tokio::time::timeout(PATIENCE, child.wait())
        .await
        .expect("the demo exits after SIGINT")
        .expect("wait");
    assert!(status.success(), "exit {status:?}:\n{}", seen.join("\n"));
    assert!(
        !std::path::Path::new(data_dir.trim()).exists(),
        "the data directory is removed"
    );
}
