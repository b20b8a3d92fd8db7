//! The abort counter: a client that goes away before the reply ended
//! counts, whether mid-stream or while its request is held; replies that
//! end, or that the fake cuts itself, do not.

use std::time::Duration;

use serde_json::json;
use tokio::io::AsyncReadExt;

use super::{MODEL, fake, post, send};
use crate::FakeBehavior;

const WAIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_client_leaving_mid_stream_counts_as_aborted() {
    let fake = fake(FakeBehavior {
        tokens_per_second: 20.0,
        response_tokens: 100,
        ..FakeBehavior::default()
    })
    .await;
    for (path, body) in [
        ("/api/generate", json!({"model": MODEL, "prompt": "long"})),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "stream": true,
            "messages": [{"role": "user", "content": "long"}]}),
        ),
    ] {
        let before = fake.aborted();
        let mut socket = send(&fake, "POST", path, Some(&body)).await;
        let mut first = [0u8; 64];
        let read = socket.read(&mut first).await.expect("first bytes");
        assert!(read > 0, "{path}: the stream started");
        drop(socket);
        assert!(
            fake.wait_aborted(before + 1, WAIT).await,
            "{path}: abort seen"
        );
        assert!(fake.wait_idle(WAIT).await, "{path}: nothing left in flight");
    }
    assert_eq!(fake.aborted(), 2);
}

#[tokio::test]
async fn a_client_leaving_a_held_request_counts_as_aborted() {
    let fake = fake(FakeBehavior {
        hold: true,
        ..FakeBehavior::default()
    })
    .await;
    let body = json!({"model": MODEL, "input": "x"});
    let socket = send(&fake, "POST", "/v1/embeddings", Some(&body)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while fake.in_flight() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the request arrives"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(fake.aborted(), 0);
    drop(socket);
    assert!(fake.wait_aborted(1, WAIT).await, "abort seen while held");
    assert!(fake.wait_idle(WAIT).await);
    fake.update_behavior(|b| b.hold = false);
    assert_eq!(fake.aborted(), 1);
}

#[tokio::test]
async fn finished_and_fake_cut_replies_do_not_count() {
    let fake = fake(FakeBehavior::default()).await;
    let chat = json!({"model": MODEL, "stream": true,
        "messages": [{"role": "user", "content": "hi"}]});
    assert_eq!(
        post(&fake, "/v1/chat/completions", chat.clone())
            .await
            .status,
        200
    );
    assert_eq!(
        post(
            &fake,
            "/api/generate",
            json!({"model": MODEL, "prompt": "x", "stream": false})
        )
        .await
        .status,
        200
    );
    assert_eq!(super::get(&fake, "/api/tags").await.status, 200);
    assert_eq!(
        post(&fake, "/api/generate", json!({"model": "nope"}))
            .await
            .status,
        404
    );

    // A stream the fake aborts (an unclean cut) is the server's doing.
    fake.update_behavior(|b| b.cut_after_chunks = Some(2));
    let mut socket = send(&fake, "POST", "/v1/chat/completions", Some(&chat)).await;
    let mut sink = Vec::new();
    // The cut may reset the connection: the error is the point.
    let _ = socket.read_to_end(&mut sink).await;
    assert!(fake.wait_idle(WAIT).await);
    assert_eq!(fake.aborted(), 0);
    let stats = super::get(&fake, "/_fake/stats").await.json();
    assert_eq!(stats["aborted"], 0);
}
