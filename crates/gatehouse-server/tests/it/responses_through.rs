//! A Responses client in front of a provider that serves the Responses API itself
//! (`responses_api = true`, OpenAI's case): the client's bytes go through, model name aside,
//! and the provider's answer comes back as it was sent; when a feature rewrote the conversation
//! the request is translated to the same provider's chat completions instead.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, UPSTREAM_KEY, rows, session_of};

fn options() -> Options {
    Options {
        extra_toml: r#"
[providers.oai]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"
responses_api = true

[models."oai/text"]
provider = "oai"
model = "chunks:4"
max_context_size = 100000

[models."oai/down"]
provider = "oai"
model = "status:503"
max_context_size = 100000
fallbacks = ["oai/text"]
"#
        .to_owned(),
        retries: Some(0),
        ..Options::default()
    }
}

async fn create(app: &TestApp, body: &Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/responses"))
        .json(body)
        .send()
        .await
        .unwrap()
}

/// What a Codex-like client sends on its second turn: OpenAI's reasoning item with its
/// encrypted content, fields the gateway has no use for, `store: false`.
fn codex_like(model: &str, stream: bool) -> Value {
    json!({
        "model": model,
        "instructions": "You are a coding agent.",
        "input": [
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the bug"}]},
            {"type": "reasoning", "id": "rs_abc", "summary": [], "encrypted_content": "gAAAA-client-opaque"},
            {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "looking"}]},
            {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "go on"}]}
        ],
        "include": ["reasoning.encrypted_content"],
        "reasoning": {"effort": "high", "summary": "auto"},
        "store": false,
        "stream": stream,
        "truncation": "auto",
        "prompt_cache_key": "conv-42",
        "service_tier": "auto"
    })
}

#[tokio::test]
async fn a_responses_request_goes_through_as_the_client_sent_it() {
    let app = TestApp::spawn_with(options()).await;
    let sent = codex_like("oai/text", false);
    let r = create(&app, &sent).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let body: Value = r.json().await.unwrap();

    let got = app.mock.captured().pop().unwrap();
    let mut expected = sent.clone();
    expected["model"] = json!("chunks:4");
    assert_eq!(
        got.body, expected,
        "the client's body, the model name aside"
    );
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {UPSTREAM_KEY}").as_str()
    );

    // The provider's Response as it sent it: its id, its reasoning item and encrypted content.
    assert_eq!(body["id"], "resp_mock_2");
    assert_eq!(body["output"][0]["type"], "reasoning");
    assert_eq!(
        body["output"][0]["encrypted_content"],
        "gAAAA-mock-encrypted-2"
    );
    assert_eq!(
        body["output"][1]["content"][0]["text"],
        " Hello from the mock"
    );

    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["status"], 200);
    assert_eq!(row["provider"], "oai");
    assert_eq!(row["prompt_tokens"], 11, "the provider's usage: {row}");
    assert_eq!(row["completion_tokens"], 4);
    assert_eq!(row["cached_tokens"], 4);
}

#[tokio::test]
async fn a_responses_stream_goes_through_byte_for_byte() {
    let app = TestApp::spawn_with(options()).await;
    let r = create(&app, &codex_like("oai/text", true)).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let through = r.text().await.unwrap();

    // The same request straight to the mock.
    let mut direct = codex_like("chunks:4", true);
    direct["model"] = json!("chunks:4");
    let straight = reqwest::Client::new()
        .post(format!("{}/responses", app.mock.base_url()))
        .json(&direct)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(through, straight);
    assert!(through.contains("event: response.completed"));

    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["status"], 200, "{row}");
    assert_eq!(row["prompt_tokens"], 11, "{row}");
    assert_eq!(row["completion_tokens"], 4, "{row}");
}

#[tokio::test]
async fn the_providers_own_previous_response_id_goes_to_it_and_nowhere_else() {
    let app = TestApp::spawn_with(options()).await;
    let next = |model: &str| {
        json!({"model": model, "previous_response_id": "resp_from_openai_7",
            "input": "and then?", "store": true})
    };
    let r = create(&app, &next("oai/text")).await;
    assert_eq!(r.status(), 200);
    let got = app.mock.captured().pop().unwrap();
    assert_eq!(got.body["previous_response_id"], "resp_from_openai_7");

    // A chat-completions provider cannot continue it: refused in OpenAI's words, with a row.
    let r = create(&app, &next("mock/echo")).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("resp_from_openai_7")
    );
    let active = app.get_json("/api/sessions/active").await;
    let sid = active["session"]["id"].as_str().unwrap().to_owned();
    let row = &rows(&app, &sid).await[0];
    assert_eq!(
        (row["status"].as_u64(), row["model_key"].as_str()),
        (Some(400), Some("mock/echo"))
    );
}

#[tokio::test]
async fn a_rewritten_conversation_is_translated_to_the_same_providers_chat_completions() {
    let app = TestApp::spawn_with(options()).await;
    // A tool output large enough for the sanitizer to mask.
    let log: String = (0..400)
        .map(|i| format!("line {i}: compiling crate-{i} v0.{i}.0\n"))
        .collect();
    let body = json!({"model": "oai/text", "input": [
        {"type": "message", "role": "user", "content": "build it"},
        {"type": "function_call", "call_id": "c1", "name": "shell", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": log},
        {"type": "message", "role": "user", "content": "and now?"}
    ]});
    let r = create(&app, &body).await;
    assert_eq!(r.status(), 200);
    let answer: Value = r.json().await.unwrap();
    assert_eq!(answer["object"], "response");
    assert!(
        answer["id"].as_str().unwrap().starts_with("resp_") && answer["id"] != "resp_mock_2",
        "the gateway's own Response: {answer}"
    );
    let got = app.mock.captured().pop().unwrap();
    assert!(
        got.body.get("messages").is_some(),
        "chat completions: {}",
        got.body
    );
    assert!(got.body.get("input").is_none());
}

#[tokio::test]
async fn a_fallback_to_a_responses_provider_goes_through_too() {
    let app = TestApp::spawn_with(options()).await;
    let r = create(&app, &codex_like("oai/down", false)).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let got = app.mock.captured().pop().unwrap();
    assert_eq!(got.body["model"], "chunks:4");
    assert_eq!(
        got.body["input"][1]["encrypted_content"],
        "gAAAA-client-opaque"
    );
    let row = &rows(&app, &sid).await[0];
    assert!(
        row["routing"]
            .as_str()
            .unwrap()
            .contains("fell back to `oai/text`"),
        "{row}"
    );
}
