//! A coordinator's role changing under it: `kobo_server::serve` in-process
//! with a role channel the test drives (as `queue::leader::Leadership` will):
//! it serves while leading, answers `503 standby` once deposed — with or
//! without a known leader — and leads again when told; a lease request
//! parked when it is deposed is answered at once, so the agent re-parks at
//! the leader.

use std::time::{Duration, Instant};

use kobo_agent::coordinator::{CallError, CoordinatorClient};
use kobo_agent::identity::{self, IdentityFiles};
use kobo_client::{ApiClient, Endpoint};
use kobo_protocol::{
    DataDir, LEADER_HEADER, LeaseRequest, ROLE_HEADER, Readiness, RegisterRequest,
};
use kobo_queue::config::{QueueConfig, ServeConfig};
use kobo_queue::leader::Role;
use kobo_tests::cluster::PATIENCE;
use reqwest::StatusCode;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The long poll the parked lease asks for: far longer than the test, so
/// an answer means it was unparked.
const LONG_POLL: Duration = Duration::from_secs(60);

struct Served {
    _dir: tempfile::TempDir,
    url: String,
    ca: Vec<u8>,
    admin_key: String,
    client: ApiClient,
    role: watch::Sender<Role>,
    shutdown: CancellationToken,
}

async fn serve_with_role(initial: Role) -> Served {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_path_buf();
    kobo_queue::init::init(&kobo_queue::init::InitOptions {
        data_dir: data_dir.clone(),
        ..kobo_queue::init::InitOptions::default()
    })
    .expect("init");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("https://{}", listener.local_addr().expect("addr"));
    let (role, receiver) = watch::channel(initial);
    let config = ServeConfig {
        data_dir: data_dir.clone(),
        queue: QueueConfig {
            long_poll_ms: LONG_POLL.as_millis() as u64,
            ..QueueConfig::default()
        },
        sans: Vec::new(),
        advertise_url: Some(url.clone()),
        ca_import: None,
        node_cert_lifetime: kobo_queue::pki::NODE_CERT_LIFETIME,
        gateway: kobo_queue::config::GatewayConfig::default(),
        limits: kobo_queue::config::ConnectionLimits::default(),
        checkpoints: kobo_queue::config::Checkpoints::Internal,
        database: None,
        role: Some(receiver),
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(kobo_server::serve(listener, config, shutdown.clone()));
    let dir_files = DataDir::new(&data_dir);
    let ca = std::fs::read(dir_files.ca_cert()).expect("ca.pem");
    let admin_key = dir_files.local_admin_key().expect("admin key");
    let client = ApiClient::new(&Endpoint {
        url: url.clone(),
        ca_pem: Some(ca.clone()),
        api_key: Some(admin_key.clone()),
    })
    .expect("client");
    let deadline = Instant::now() + PATIENCE;
    while client.readiness().await.is_err() {
        assert!(Instant::now() < deadline, "the coordinator did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Served {
        _dir: dir,
        url,
        ca,
        admin_key,
        client,
        role,
        shutdown,
    }
}

/// The status of `GET /v1/status` and the headers a standby adds.
async fn status_call(served: &Served) -> (StatusCode, Option<String>, Option<String>) {
    let http = kobo_client::http_client(Some(&served.ca)).expect("https client");
    let response = http
        .get(format!("{}/v1/status", served.url))
        .bearer_auth(&served.admin_key)
        .send()
        .await
        .expect("an answer");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    (
        response.status(),
        header(ROLE_HEADER),
        header(LEADER_HEADER),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_follows_its_role_and_unparks_agents_when_deposed() {
    let served = serve_with_role(Role::Leader { epoch: 7 }).await;
    assert_eq!(
        served.client.readiness().await.expect("readiness"),
        Readiness {
            role: "leader".into(),
            epoch: Some(7),
            leader: None,
        }
    );
    served.client.status().await.expect("the leader serves");

    // An agent enrolled and registered while this coordinator leads.
    let token = served
        .client
        .token_create("role-01", Duration::from_secs(300))
        .await
        .expect("token")
        .token;
    let agent_dir = tempfile::tempdir().expect("agent dir");
    identity::join(&served.url, &token, "role-01", agent_dir.path())
        .await
        .expect("join");
    let identity = IdentityFiles::in_dir(agent_dir.path())
        .load()
        .expect("identity");
    let agent = CoordinatorClient::new(&served.url, Some(&served.ca), Some(&identity))
        .expect("agent client");
    let registration = RegisterRequest {
        node_id: "role-01".into(),
        instance_id: "i1".into(),
        region: "eu-west-2".into(),
        capabilities: vec!["general_query".into()],
        max_workers: 1,
        gpu: false,
        backend: "sim".into(),
        models: vec![],
        agent_version: "test".into(),
        specialization: None,
        latitude: None,
        longitude: None,
    };
    agent.register(&registration).await.expect("register");
    let lease = LeaseRequest {
        node_id: "role-01".into(),
        instance_id: "i1".into(),
        max_jobs: 1,
        wait_ms: LONG_POLL.as_millis() as u64,
    };

    // A lease parks (there is no work), then the coordinator is deposed.
    // Whether the request reached its park before the deposition is not
    // observable from outside: one that arrived after it is refused at the
    // door (503) and the round is run again, until a parked one was seen
    // answered.
    let mut unparked_after = None;
    for _round in 0..10 {
        served.role.send_replace(Role::Leader { epoch: 7 });
        let parked = tokio::spawn({
            let (agent, lease) = (agent.clone(), lease.clone());
            async move { agent.lease(&lease).await }
        });
        // A round trip after the lease was sent: it has usually parked by now.
        served.client.status().await.expect("status");
        let deposed_at = Instant::now();
        served.role.send_replace(Role::Standby {
            leader_address: Some("https://leader.example:7443".into()),
        });
        let answer = tokio::time::timeout(PATIENCE, parked)
            .await
            .expect("the lease is answered once deposed")
            .expect("lease task");
        match answer {
            Ok(response) => {
                assert!(response.leases.is_empty(), "no work was handed out");
                unparked_after = Some(deposed_at.elapsed());
                break;
            }
            Err(CallError::Unavailable(message)) if message.contains("503") => continue,
            Err(other) => panic!("the parked lease ended with {other}"),
        }
    }
    let unparked_after = unparked_after.expect("a parked lease was answered when deposed");
    assert!(
        unparked_after < LONG_POLL / 2,
        "answered {unparked_after:?} after the deposition, not at the long poll's end"
    );

    // Deposed: 503 naming the leader; readiness says standby.
    assert_eq!(
        status_call(&served).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("standby".into()),
            Some("https://leader.example:7443".into())
        )
    );
    assert_eq!(
        served.client.readiness().await.expect("readiness").role,
        "standby"
    );

    // A takeover under way: no leader known, 503 without a pointer.
    served.role.send_replace(Role::Standby {
        leader_address: None,
    });
    assert_eq!(
        status_call(&served).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Some("standby".into()),
            None
        )
    );

    // Leading again (a later epoch): it serves.
    served.role.send_replace(Role::Leader { epoch: 9 });
    assert_eq!(status_call(&served).await, (StatusCode::OK, None, None));
    assert_eq!(
        served.client.readiness().await.expect("readiness").epoch,
        Some(9)
    );
    agent
        .register(&registration)
        .await
        .expect("agents are served again");

    served.shutdown.cancel();
}
