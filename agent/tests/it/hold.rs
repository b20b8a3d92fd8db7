//! A call the fake holds (`FakeBehavior::hold`) waits, without giving up,
//! until the fake lets it go, and then gets what the fake then says: the
//! test decides when the call ends instead of guessing with a latency.

use kobo_fake_llm::{DEFAULT_RESPONSE_TOKENS, FakeBehavior, FakeFailure};

use crate::support::{
    HTTP_BACKENDS, assert_reply, client, fake, generation_path, prompt, wait_for_requests,
};

#[tokio::test]
async fn a_held_call_ends_when_released() {
    for kind in HTTP_BACKENDS {
        let fake = fake(FakeBehavior {
            hold: true,
            ..FakeBehavior::default()
        })
        .await;
        let client = client(kind, &fake);
        let call = tokio::spawn(async move { client.run(&prompt("held")).await });
        wait_for_requests(&fake, generation_path(kind), 1).await;
        assert!(!call.is_finished(), "{kind}: the fake holds the call");
        assert_eq!(fake.in_flight(), 1, "{kind}");
        fake.update_behavior(|b| b.hold = false);

        let output = call.await.expect("task").expect("run succeeds");
        assert_reply(&output, "held", DEFAULT_RESPONSE_TOKENS);
    }
}

#[tokio::test]
async fn a_released_call_follows_the_behavior_at_release() {
    for kind in HTTP_BACKENDS {
        let fake = fake(FakeBehavior {
            hold: true,
            ..FakeBehavior::default()
        })
        .await;
        let client = client(kind, &fake);
        let call = tokio::spawn(async move { client.run(&prompt("held")).await });
        wait_for_requests(&fake, generation_path(kind), 1).await;
        fake.set_behavior(FakeBehavior {
            fail: Some(FakeFailure::status(503)),
            ..FakeBehavior::default()
        });

        let err = call
            .await
            .expect("task")
            .expect_err("released into a failure");
        assert!(err.retryable, "{kind}: {err}");
        assert!(
            err.message
                .starts_with(&format!("{kind}: 503 Service Unavailable")),
            "{err}"
        );
    }
}
