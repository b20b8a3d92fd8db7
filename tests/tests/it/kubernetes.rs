//! deploy/kubernetes without a cluster: every overlay renders with `kubectl
//! kustomize` and each document validates (Kubernetes' schemas, strict;
//! KEDA's kinds against a KEDA schema); then the coordinator and the agent
//! are started exactly as the rendered StatefulSet and Deployment say
//! (command, args, env; the downward API's pod name, the Secret's key and
//! the volume paths resolved, only the coordinator's URL and the sidecar's
//! address pointed at the test's), so a wrong flag or variable in a
//! manifest fails here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use kobo_protocol::{JobState, NodeStatus};
use kobo_tests::cluster::{Cluster, binary, free_port};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use tokio::process::Command;

use crate::gateway::python;

const OVERLAYS: [&str; 4] = [
    "base",
    "overlays/ollama-sidecar",
    "overlays/gpu",
    "overlays/keda",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The rendered, validated documents of one overlay.
fn render(overlay: &str) -> Vec<Value> {
    let script = root().join("tests/python/k8s_manifests.py");
    let keda = std::env::var_os("KOBO_KEDA_CRDS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/schemas/keda"));
    let output = std::process::Command::new(python())
        .arg(script)
        .arg(root().join("deploy/kubernetes").join(overlay))
        .arg(keda)
        .output()
        .expect("run k8s_manifests.py");
    assert!(
        output.status.success(),
        "{overlay}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("json");
    let documents = answer["documents"].as_array().expect("documents").clone();
    let checked = answer["checked"].as_array().expect("checked");
    assert_eq!(
        checked.len(),
        documents.len(),
        "{overlay}: every document validated"
    );
    for doc in documents.iter().filter(|d| {
        d["apiVersion"]
            .as_str()
            .is_some_and(|v| v.starts_with("keda.sh/"))
    }) {
        let name = format!(
            "{}/{}",
            doc["kind"].as_str().unwrap_or(""),
            doc["metadata"]["name"].as_str().unwrap_or("")
        );
        assert!(
            checked.iter().any(|c| c
                .as_str()
                .is_some_and(|c| c.starts_with(&name) && c.contains("KEDA 2.16"))),
            "{overlay}: {name} checked against KEDA's own types: {checked:?}"
        );
    }
    eprintln!("{overlay}: {checked:?}");
    documents
}

fn find<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind}"))
}

fn container<'a>(workload: &'a Value, name: &str) -> &'a Value {
    workload["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().expect("a string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// The container's env with the downward API's pod name and the Secrets
/// resolved; a variable from anything else fails the test.
fn resolve_env(
    container: &Value,
    pod: &str,
    secrets: &BTreeMap<(&str, &str), String>,
) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for var in container["env"].as_array().into_iter().flatten() {
        let name = var["name"].as_str().expect("name").to_string();
        let value = if let Some(value) = var["value"].as_str() {
            value.to_string()
        } else if var["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name" {
            pod.to_string()
        } else if let Some(secret) = var["valueFrom"]["secretKeyRef"].as_object() {
            let key = (
                secret["name"].as_str().expect("name"),
                secret["key"].as_str().expect("key"),
            );
            secrets
                .get(&key)
                .unwrap_or_else(|| panic!("{name}: unknown Secret {key:?}"))
                .clone()
        } else {
            panic!("{name}: a source the test does not know: {var}");
        };
        env.push((name, value));
    }
    env
}

/// Replaces every volume mount path at the start of `value` by its temp dir.
fn map_paths(value: &str, mounts: &[(String, PathBuf)]) -> String {
    for (mount, dir) in mounts {
        if let Some(rest) = value.strip_prefix(mount.as_str()) {
            return format!("{}{rest}", dir.display());
        }
    }
    value.to_string()
}

fn mounts(container: &Value, base: &Path) -> Vec<(String, PathBuf)> {
    container["volumeMounts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|m| {
            let path = m["mountPath"].as_str().expect("mountPath").to_string();
            let dir = base.join(m["name"].as_str().expect("volume name"));
            std::fs::create_dir_all(&dir).expect("volume dir");
            (path, dir)
        })
        .collect()
}

#[test]
fn every_overlay_renders_and_validates_and_keeps_its_promises() {
    for overlay in OVERLAYS {
        let docs = render(overlay);
        assert!(
            docs.iter().all(|d| d["kind"] != "Secret"),
            "{overlay}: no Secret in manifests"
        );
        let agents = find(&docs, "Deployment");
        let agent = container(agents, "agent");
        let env = resolve_env(
            agent,
            "pod",
            &BTreeMap::from([(("kobo-enroll", "key"), "k".to_string())]),
        );
        let var = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        // Secrets come from a Secret, never a literal.
        for v in agent["env"].as_array().expect("env") {
            let name = v["name"].as_str().expect("name");
            if name.contains("KEY") || name.contains("TOKEN") {
                assert!(v["value"].is_null(), "{overlay}: {name} is a literal");
            }
        }
        // The pod outlives the agent's drain.
        let grace = agents["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds");
        let drain: u64 = var("KOBO_DRAIN_TIMEOUT_SECS")
            .expect("drain")
            .parse()
            .expect("secs");
        assert!(
            grace > drain + 5,
            "{overlay}: grace {grace}s vs drain {drain}s"
        );
        // The agent dials the Service the coordinator's certificate names.
        let coordinator = find(&docs, "StatefulSet");
        let args = strings(&container(coordinator, "coordinator")["args"]);
        let url = var("KOBO_COORDINATOR").expect("KOBO_COORDINATOR");
        let host = url
            .trim_start_matches("https://")
            .split(':')
            .next()
            .expect("host")
            .to_string();
        assert!(
            args.windows(2).any(|w| w[0] == "--san" && w[1] == host),
            "{overlay}: {host} not in {args:?}"
        );
        assert!(docs.iter().any(|d| d["kind"] == "PodDisruptionBudget"));
        assert!(docs.iter().any(|d| d["kind"] == "NetworkPolicy"));
        if overlay != "base" {
            assert!(
                container(agents, "ollama")["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("ollama/ollama"))
            );
            assert_eq!(
                var("KOBO_LLM_ENDPOINT").as_deref(),
                Some("http://127.0.0.1:11434")
            );
        }
        if overlay == "overlays/gpu" {
            let limits = &container(agents, "ollama")["resources"]["limits"];
            assert_eq!(limits["nvidia.com/gpu"], 1);
            assert!(agents["spec"]["template"]["spec"]["tolerations"].is_array());
            assert_eq!(var("KOBO_GPU").as_deref(), Some("true"));
        }
        if overlay == "overlays/keda" {
            let scaled = find(&docs, "ScaledObject");
            assert_eq!(scaled["spec"]["minReplicaCount"], 0);
            assert_eq!(
                scaled["spec"]["scaleTargetRef"]["name"],
                agents["metadata"]["name"]
            );
            let trigger = &scaled["spec"]["triggers"][0];
            assert_eq!(trigger["type"], "metrics-api");
            assert_eq!(trigger["metadata"]["valueLocation"], "agents_needed");
            assert_eq!(trigger["metadata"]["authMode"], "bearer");
            let scaling = trigger["metadata"]["url"].as_str().expect("url");
            assert!(
                scaling.starts_with(&format!("{url}/v1/scaling?kind=")),
                "{scaling}"
            );
            let auth = find(&docs, "TriggerAuthentication");
            assert_eq!(
                trigger["authenticationRef"]["name"],
                auth["metadata"]["name"]
            );
            let params: Vec<&str> = auth["spec"]["secretTargetRef"]
                .as_array()
                .expect("secretTargetRef")
                .iter()
                .map(|r| r["parameter"].as_str().expect("parameter"))
                .collect();
            assert_eq!(params, ["token", "ca"]);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_coordinator_and_agents_start_as_their_manifests_say() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let docs = render("overlays/gpu");
    let scratch = tempfile::tempdir().expect("temp dir");

    // The coordinator as the StatefulSet runs it: its data volume a temp
    // dir, its port a free one.
    let coordinator = container(find(&docs, "StatefulSet"), "coordinator");
    let volumes = mounts(coordinator, &scratch.path().join("coordinator"));
    let port = free_port();
    let command = strings(&coordinator["command"]);
    assert_eq!(command, ["kobo-coord"]);
    let args: Vec<String> = strings(&coordinator["args"])
        .iter()
        .map(|a| map_paths(a, &volumes))
        .map(|a| {
            if a == "0.0.0.0:7443" {
                format!("127.0.0.1:{port}")
            } else {
                a
            }
        })
        .collect();
    let env = resolve_env(coordinator, "kobo-coord-0", &BTreeMap::new());
    let log = scratch.path().join("coordinator.log");
    let mut coord = Command::new(binary("kobo-coord"))
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start kobo-coord as the StatefulSet says");
    // Ready as the readiness probe asks: GET /healthz over HTTPS.
    let probe = &coordinator["readinessProbe"]["httpGet"];
    assert_eq!(probe["scheme"], "HTTPS");
    let health = format!(
        "https://127.0.0.1:{port}{}",
        probe["path"].as_str().expect("path")
    );
    let insecure = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .build()
        .expect("client");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(answer) = insecure.get(&health).send().await
            && answer.status() == 200
        {
            break;
        }
        if let Ok(Some(status)) = coord.try_wait() {
            panic!(
                "the coordinator exited ({status}) as the StatefulSet runs it:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator never got ready: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Its data directory is on the volume, and it names the Service.
    let data = &volumes[0].1;
    assert!(data.join("kobo.db").exists() && data.join("ca.pem").exists());
    let client: Value =
        serde_json::from_slice(&std::fs::read(data.join("client.json")).expect("client.json"))
            .expect("json");
    assert_eq!(client["url"], "https://kobo-coord.kobo.svc:7443");
    kill(
        Pid::from_raw(coord.id().expect("pid") as i32),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(30), coord.wait())
        .await
        .expect("the coordinator stops within its grace period")
        .expect("wait");
    assert!(status.success(), "{status}");

    // The agent as the Deployment runs it, against a test cluster: its key
    // a real enrollment key, its pod name a made-up one, its sidecar the
    // fake LLM.
    let cluster = Cluster::builder().start().await;
    let key = cluster
        .client()
        .enroll_key_create("k8s-gpu-", Some(Duration::from_secs(600)), Some(5))
        .await
        .expect("enrollment key")
        .key;
    let agents = find(&docs, "Deployment");
    let agent = container(agents, "agent");
    assert_eq!(strings(&agent["command"]), ["kobo-agent"]);
    let volumes = mounts(agent, &scratch.path().join("agent"));
    let pod = "kobo-agent-7c9d5b8f4-x2x4q";
    let secrets = BTreeMap::from([(("kobo-enroll", "key"), key)]);
    let mut env = resolve_env(agent, pod, &secrets);
    for (name, value) in &mut env {
        match name.as_str() {
            "KOBO_COORDINATOR" => *value = cluster.url(),
            "KOBO_LLM_ENDPOINT" => *value = cluster.fake.url(),
            _ => *value = map_paths(value, &volumes),
        }
    }
    let args: Vec<String> = strings(&agent["args"])
        .iter()
        .map(|a| map_paths(a, &volumes))
        .collect();
    let log = cluster.data_dir.join("agent-manifest.log");
    let mut child = Command::new(binary("kobo-agent"))
        .args(&args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("log"))
        .kill_on_drop(true)
        .spawn()
        .expect("start kobo-agent as the Deployment says");
    let node_id = format!("k8s-gpu-{pod}");
    cluster
        .wait_until(&format!("{node_id} enrolled and active"), || {
            // A manifest the agent refuses (a wrong flag or variable) ends
            // it at once: fail with its words, not a timeout.
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the agent exited ({status}) before enrolling:\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            async {
                cluster.client().nodes().await.is_ok_and(|nodes| {
                    nodes
                        .iter()
                        .any(|n| n.node_id == node_id && n.status == NodeStatus::Active && n.gpu)
                })
            }
        })
        .await;
    let id = cluster
        .submit_prompt("general_query", "from the manifest")
        .await;
    let done = cluster.wait_done(id).await;
    assert_eq!(done.state, JobState::Succeeded);
    assert_eq!(done.node_id.as_deref(), Some(node_id.as_str()));
    // Deleting the pod: SIGTERM, exit 0 well within the grace period.
    let grace = agents["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("grace");
    kill(
        Pid::from_raw(child.id().expect("pid") as i32),
        Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let status = tokio::time::timeout(Duration::from_secs(grace), child.wait())
        .await
        .expect("the agent exits within terminationGracePeriodSeconds")
        .expect("wait");
    assert!(status.success(), "{status}");
}
