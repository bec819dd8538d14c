//! The proxy path: bytes through unchanged, usage recorded, retries only before the first byte.

use gatehouse_mock::{CACHED_TOKENS, PROMPT_TOKENS};
use serde_json::json;

use crate::support::{TestApp, UPSTREAM_KEY, rows, session_of, streaming, user};

/// What the mock sends when called directly with the same upstream model.
async fn direct(app: &TestApp, body: serde_json::Value) -> bytes::Bytes {
    app.http
        .post(format!("{}/chat/completions", app.mock.base_url()))
        .header("x-request-id", format!("direct-{}", rand_id()))
        .json(&body)
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap()
}

fn rand_id() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[tokio::test]
async fn non_streaming_round_trip_is_byte_identical_and_recorded() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(&[("authorization", "Bearer client-key-must-not-leak"), ("x-request-id", "req-abc-1")], json!({"model": "mock/echo", "messages": [{"role": "user", "content": "Hello there"}], "x_vendor_field": {"keep": true}}))
        .await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-request-id"], "req-abc-1");
    assert!(r.headers().contains_key("x-gatehouse-overhead-us"));
    let session = session_of(&r);
    let got = r.bytes().await.unwrap();
    let want = direct(&app, user("echo", "Hello there")).await;
    assert_eq!(got, want, "the client must see upstream's bytes unchanged");

    let seen = &app.mock.captured()[0];
    assert_eq!(
        seen.body["model"], "echo",
        "model key rewritten to the upstream name"
    );
    assert_eq!(
        seen.body["x_vendor_field"]["keep"], true,
        "unknown fields pass through"
    );
    assert_eq!(
        seen.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}")
    );
    assert_eq!(seen.headers["x-request-id"], "req-abc-1");
    assert!(seen.headers.contains_key("x-gatehouse-hop"));
    assert!(seen.body.get("stream_options").is_none());

    let rows = rows(&app, &session).await;
    assert_eq!(rows.len(), 1);
    let row = &rows[0];
    assert_eq!(row["id"], "req-abc-1");
    assert_eq!(row["status"], 200);
    assert_eq!(row["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(row["completion_tokens"], 3);
    assert_eq!(row["cached_tokens"], CACHED_TOKENS);
    assert_eq!(row["usage_source"], "upstream");
    assert_eq!(row["finish_reason"], "stop");
    assert_eq!(row["preview"], "Hello there");
    assert_eq!(row["upstream_model"], "echo");
    assert_eq!(row["attempts"], 1);
    // 3 (message) + 1 ("user") + 2 ("Hello there") + 3 (reply primer)
    assert_eq!(row["prompt_tokens_est"], 9);
    assert!(row["overhead_us"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn streaming_round_trip_hides_the_usage_chunk_the_gateway_asked_for() {
    let app = TestApp::spawn().await;
    let r = app.chat(streaming("mock/chunks:5", "stream please")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    assert_eq!(r.headers()["x-accel-buffering"], "no");
    let session = session_of(&r);
    let got = r.bytes().await.unwrap();
    let want = direct(&app, streaming("chunks:5", "stream please")).await;
    assert_eq!(
        got, want,
        "without include_usage the client sees exactly upstream's stream"
    );
    assert!(!String::from_utf8_lossy(&got).contains("usage"));

    let seen = &app.mock.captured()[0];
    assert_eq!(seen.body["stream_options"]["include_usage"], true);

    let rows = rows(&app, &session).await;
    assert_eq!(rows[0]["usage_source"], "upstream");
    assert_eq!(rows[0]["completion_tokens"], 5);
    assert_eq!(rows[0]["prompt_tokens"], PROMPT_TOKENS);
    assert_eq!(rows[0]["stream"], true);
    assert!(rows[0]["error_type"].is_null(), "{:?}", rows[0]);
}

#[tokio::test]
async fn streaming_client_that_asks_for_usage_gets_it() {
    let app = TestApp::spawn().await;
    let mut body = streaming("mock/chunks:2", "hi");
    body["stream_options"] = json!({"include_usage": true});
    let got = app.chat(body.clone()).await.bytes().await.unwrap();
    body["model"] = json!("chunks:2");
    assert_eq!(got, direct(&app, body).await);
    assert!(String::from_utf8_lossy(&got).contains("\"usage\""));
}

#[tokio::test]
async fn stream_without_usage_is_counted_from_text() {
    let app = TestApp::spawn().await;
    let r = app
        .chat(streaming("mock/chunks:4+nousage", "count me"))
        .await;
    let session = session_of(&r);
    r.bytes().await.unwrap();
    let rows = rows(&app, &session).await;
    assert_eq!(rows[0]["usage_source"], "estimated");
    assert_eq!(rows[0]["completion_tokens"], 4);
    assert!(rows[0]["prompt_tokens"].is_null());
}

#[tokio::test]
async fn retries_what_the_provider_cannot_have_processed_before_the_first_byte() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[("x-request-id", "flaky-1")],
            user("mock/fail:2", "try again"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    assert_eq!(app.mock.attempts("flaky-1"), 3);
    assert_eq!(rows(&app, &session).await[0]["attempts"], 3);

    // Every attempt is on the row.
    let routing = rows(&app, &session).await[0]["routing"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        routing.contains("`mock/fail:2` attempt 1 retried: provider `mock` answered 503")
            && routing.contains("attempt 2 retried"),
        "{routing}"
    );

    // Past the retry budget the upstream status and body come through.
    let r = app
        .chat_with(
            &[("x-request-id", "flaky-2")],
            user("mock/fail:9", "give up"),
        )
        .await;
    assert_eq!(r.status(), 503);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("scripted failure 3")
    );
    assert_eq!(app.mock.attempts("flaky-2"), 3);

    // A 500 may come after the provider did the work: not sent again.
    let r = app
        .chat_with(
            &[("x-request-id", "five-hundred")],
            user("mock/status:500", "once"),
        )
        .await;
    assert_eq!(r.status(), 500);
    assert_eq!(app.mock.attempts("five-hundred"), 1);

    // 4xx is the client's problem: no retry, status passed through.
    let r = app
        .chat_with(
            &[("x-request-id", "bad-1")],
            user("mock/status:422", "nope"),
        )
        .await;
    assert_eq!(r.status(), 422);
    assert_eq!(app.mock.attempts("bad-1"), 1);
    let row = &rows(&app, &session_of(&r)).await[0];
    assert_eq!(row["status"], 422);
    assert_eq!(row["error_type"], "upstream_error");
}

fn with_fallbacks() -> crate::support::Options {
    crate::support::Options {
        first_byte_secs: Some(1.0),
        extra_toml: r#"
[models."mock/silent"]
provider = "mock"
model = "silent:9"
max_context_size = 4096
fallbacks = ["mock/echo"]

[models."mock/empty"]
provider = "mock"
model = "empty:9"
max_context_size = 4096
fallbacks = ["mock/echo"]

[models."mock/slow"]
provider = "mock"
model = "first:3000"
max_context_size = 4096
fallbacks = ["mock/echo"]

[models."mock/slow-may-fall-back"]
provider = "mock"
model = "first:3000"
max_context_size = 4096
fallbacks = ["mock/echo"]
fallback_on_timeout = true
"#
        .to_owned(),
        ..Default::default()
    }
}

#[tokio::test]
async fn silent_and_empty_streams_are_not_resent_but_fall_back() {
    let app = TestApp::spawn_with(with_fallbacks()).await;
    for (model, id) in [("mock/silent", "silent-1"), ("mock/empty", "empty-1")] {
        let r = app
            .chat_with(&[("x-request-id", id)], streaming(model, "hello"))
            .await;
        assert_eq!(r.status(), 200, "{model}");
        let session = session_of(&r);
        let text = r.text().await.unwrap();
        assert!(text.ends_with("data: [DONE]\n\n"), "{model}: {text}");
        assert!(text.contains("Hello"));
        let models: Vec<_> = app
            .mock
            .captured()
            .iter()
            .filter(|c| c.headers["x-request-id"] == id)
            .map(|c| c.body["model"].as_str().unwrap().to_owned())
            .collect();
        assert!(models[0].ends_with(":9"), "{models:?}");
        assert_eq!(
            models.len(),
            2,
            "{model}: once to the silent provider, then the fallback"
        );
        let row = &rows(&app, &session).await[0];
        assert_eq!(row["model_key"], "mock/echo");
        assert_eq!(row["requested_model"], model, "{row}");
    }
    // Without a fallback: one attempt, then the error.
    let r = app
        .chat_with(
            &[("x-request-id", "silent-2")],
            streaming("mock/silent:9", "x"),
        )
        .await;
    assert_eq!(r.status(), 504);
    assert_eq!(app.mock.attempts("silent-2"), 1);
}

#[tokio::test]
async fn a_whole_answer_that_times_out_is_not_resent_nor_falls_back_unless_configured() {
    let app = TestApp::spawn_with(with_fallbacks()).await;
    // Not sent again (it may be generating, and billed), not sent elsewhere either.
    let r = app
        .chat_with(&[("x-request-id", "slow-1")], user("mock/slow", "slow"))
        .await;
    assert_eq!(r.status(), 504);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_timeout");
    assert_eq!(app.mock.attempts("slow-1"), 1);
    assert_eq!(
        app.mock
            .captured()
            .iter()
            .filter(|c| c.headers["x-request-id"] == "slow-1")
            .count(),
        1
    );
    // A model that says so goes to its fallback.
    let r = app
        .chat_with(
            &[("x-request-id", "slow-2")],
            user("mock/slow-may-fall-back", "slow"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let row = &rows(&app, &session_of(&r)).await[0];
    assert_eq!(row["model_key"], "mock/echo");
    assert_eq!(row["attempts"], 2);
}

#[tokio::test]
async fn no_retry_after_the_first_byte_and_a_clean_error_event() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[("x-request-id", "cut-1")],
            streaming("mock/chunks:5+gap:50+cut:2", "break"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    let text = r.text().await.unwrap();
    assert_eq!(
        app.mock.attempts("cut-1"),
        1,
        "a stream that started is never retried"
    );
    assert!(text.contains(" Hello"), "{text}");
    assert!(text.contains("\"code\":\"stream_interrupted\""), "{text}");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let row = &rows(&app, &session).await[0];
    assert_eq!(row["error_type"], "stream_interrupted");
    assert_eq!(row["status"], 200);
    assert_eq!(
        row["completion_tokens"], 2,
        "partial usage counted from what was streamed"
    );
}

#[tokio::test]
async fn late_first_chunk_is_a_timeout_and_idle_gaps_cut_the_stream() {
    let app = TestApp::spawn().await;
    // Every attempt's first chunk comes after 1.5 s, past the 1 s first-byte timeout.
    let r = app
        .chat(streaming("mock/chunks:3+delay:1500", "late"))
        .await;
    assert_eq!(r.status(), 504);

    // The first chunk is on time, the next one 1.5 s later, past the 1 s idle timeout.
    let r = app.chat(streaming("mock/chunks:3+gap:1500", "gappy")).await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    let text = r.text().await.unwrap();
    assert!(text.contains("no data for 1.0 s"), "{text}");
    let row = &rows(&app, &session).await[0];
    assert_eq!(row["error_type"], "stream_interrupted");
}

#[tokio::test]
async fn missing_provider_key_names_the_variable() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("nokey/m", "hi")).await;
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "provider_key_missing");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("NOKEY_API_KEY")
    );
}

#[tokio::test]
async fn unlisted_models_route_by_provider_prefix() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/some-new-model", "hi")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(app.mock.captured()[0].body["model"], "some-new-model");
}

#[tokio::test]
async fn request_id_is_generated_when_absent_or_unsafe() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/echo", "hi")).await;
    let id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(id.len(), 36, "a UUID");
    assert_eq!(app.mock.captured()[0].headers["x-request-id"], id.as_str());
}

#[tokio::test]
async fn providers_configured_without_stream_usage_are_not_asked() {
    let app = crate::support::TestApp::spawn_with(crate::support::Options {
        extra_toml: "[providers.strict]\ntype = \"openai\"\nbase_url = \"MOCK_BASE_URL\"\nstream_usage = false\n".into(),
        ..Default::default()
    })
    .await;
    // Like Mistral: stream_options is refused, usage comes in the finish chunk anyway.
    let r = app
        .chat(streaming("strict/nostreamopts+usagelast+chunks:3", "hi"))
        .await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    let text = r.text().await.unwrap();
    assert!(
        text.contains("\"usage\""),
        "the client sees what upstream sent: {text}"
    );
    assert!(app.mock.captured()[0].body.get("stream_options").is_none());
    let row = &rows(&app, &session).await[0];
    assert_eq!(row["usage_source"], "upstream");
    assert_eq!(row["completion_tokens"], 3);
}

#[tokio::test]
async fn a_provider_refusing_stream_options_is_retried_without_and_remembered() {
    let app = TestApp::spawn().await;
    let r = app
        .chat(streaming("mock/nostreamopts+usagelast+chunks:2", "first"))
        .await;
    assert_eq!(r.status(), 200);
    let session = session_of(&r);
    let text = r.text().await.unwrap();
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let seen = app.mock.captured();
    assert_eq!(seen.len(), 2, "one refusal, one plain retry");
    assert!(seen[0].body.get("stream_options").is_some());
    assert!(seen[1].body.get("stream_options").is_none());
    assert_eq!(rows(&app, &session).await[0]["usage_source"], "upstream");

    // The provider is remembered: the next stream is sent plain at once.
    let r = app
        .chat(streaming("mock/nostreamopts+usagelast+chunks:2", "second"))
        .await;
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap();
    let seen = app.mock.captured();
    assert_eq!(seen.len(), 3);
    assert!(seen[2].body.get("stream_options").is_none());
}
