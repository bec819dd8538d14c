//! The Gemini API ingress (`/v1beta/models/{model}:…`) in front of chat-completions, Anthropic
//! and Gemini providers: whole answers, SSE streams, function calls matched to their results by
//! name, `countTokens`, errors in Gemini's shape, and the rows.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, rows, session_of};

fn options() -> Options {
    Options {
        extra_toml: r#"
[models."mock/tool"]
provider = "mock"
model = "tool"
max_context_size = 4096

[models."mock/busy"]
provider = "mock"
model = "status:429"
max_context_size = 4096

[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."anth/claude"]
provider = "anth"
model = "claude-x"
max_context_size = 200000

[providers.gem]
type = "gemini"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."gem/flash"]
provider = "gem"
model = "gem-x"
max_context_size = 1000000
"#
        .to_owned(),
        retries: Some(0),
        ..Options::default()
    }
}

async fn call(app: &TestApp, model: &str, method: &str, body: Value) -> reqwest::Response {
    app.http
        .post(app.url(&format!("/v1beta/models/{model}:{method}")))
        .header("x-goog-api-key", "client-key")
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn text_of(v: &Value) -> String {
    v["candidates"][0]["content"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["text"].as_str())
        .collect()
}

fn hello() -> Value {
    json!({"systemInstruction": {"role": "user", "parts": [{"text": "Be brief."}]},
           "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
           "generationConfig": {"temperature": 0.5, "maxOutputTokens": 40, "thinkingConfig": {"includeThoughts": true}}})
}

#[tokio::test]
async fn generate_content_on_a_chat_completions_provider() {
    let app = TestApp::spawn_with(options()).await;
    let r = call(&app, "mock/echo", "generateContent", hello()).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(text_of(&v), " Hello from the");
    assert_eq!(v["candidates"][0]["finishReason"], "STOP");
    assert_eq!(v["usageMetadata"]["promptTokenCount"], 11);
    assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 3);
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent,
        json!({"model": "echo", "max_tokens": 40, "temperature": 0.5, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"}]})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["prompt_tokens"], 11);
    assert_eq!(row["finish_reason"], "stop");
    assert!(row["error_type"].is_null(), "{row}");

    // Streamed: `data:` chunks, the last one with the finish reason and usage.
    let r = call(&app, "mock/echo", "streamGenerateContent?alt=sse", hello()).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let text = r.text().await.unwrap();
    let chunks: Vec<Value> = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    let streamed: String = chunks.iter().map(text_of).collect();
    assert_eq!(streamed, " Hello from the");
    let last = chunks.last().unwrap();
    assert_eq!(last["candidates"][0]["finishReason"], "STOP");
    assert_eq!(last["usageMetadata"]["promptTokenCount"], 11);
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["completion_tokens"], 3);
    assert!(row["error_type"].is_null(), "{row}");
}

#[tokio::test]
async fn a_function_call_and_its_response_by_name() {
    let app = TestApp::spawn_with(options()).await;
    let tools = json!([{"functionDeclarations": [{"name": "get_weather", "description": "Weather",
        "parametersJsonSchema": {"type": "object", "properties": {"city": {"type": "string"}}}}]}]);
    for method in ["generateContent", "streamGenerateContent?alt=sse"] {
        let r = call(
            &app,
            "mock/tool",
            method,
            json!({"contents": [{"role": "user", "parts": [{"text": "Weather?"}]}], "tools": tools}),
        )
        .await;
        assert_eq!(r.status(), 200);
        let text = r.text().await.unwrap();
        let call_part = text
            .split("\n\n")
            .map(|e| e.strip_prefix("data: ").unwrap_or(e))
            .filter_map(|d| serde_json::from_str::<Value>(d).ok())
            .flat_map(|v| {
                v["candidates"][0]["content"]["parts"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
            })
            .find(|p| p.get("functionCall").is_some())
            .unwrap_or_else(|| panic!("{method}: no call in {text}"));
        assert_eq!(call_part["functionCall"]["name"], "get_weather");
        assert_eq!(call_part["functionCall"]["args"], json!({"city": "Paris"}));
    }
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");

    // Gemini CLI sends the call back without an id and the result by name.
    let r = call(
        &app,
        "mock/tool",
        "generateContent",
        json!({"tools": tools, "contents": [
            {"role": "user", "parts": [{"text": "Weather?"}]},
            {"role": "model", "parts": [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}}]},
            {"role": "user", "parts": [{"functionResponse": {"name": "get_weather", "response": {"output": "18°C"}}}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(text_of(&r.json().await.unwrap()), " Hello from the");
    let sent = app.mock.captured().pop().unwrap().body;
    let call_id = sent["messages"][1]["tool_calls"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "tool_call_id": call_id, "content": "18°C"})
    );
}

#[tokio::test]
async fn other_providers_count_tokens_and_errors() {
    let app = TestApp::spawn_with(options()).await;
    for model in ["anth/claude", "gem/flash"] {
        let r = call(&app, model, "generateContent", hello()).await;
        assert_eq!(r.status(), 200, "{model}");
        let v: Value = r.json().await.unwrap();
        assert!(!text_of(&v).is_empty(), "{model}: {v}");
        let r = call(&app, model, "streamGenerateContent?alt=sse", hello()).await;
        assert_eq!(r.status(), 200, "{model}");
        let sid = session_of(&r);
        let _ = r.text().await.unwrap();
        let row = &rows(&app, &sid).await[0];
        assert!(row["error_type"].is_null(), "{model}: {row}");
        assert!(
            row["completion_tokens"].as_u64().unwrap() > 0,
            "{model}: {row}"
        );
    }

    let r = call(
        &app,
        "mock/echo",
        "countTokens",
        json!({"contents": [{"parts": [{"text": "Hello there"}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(
        r.json::<Value>().await.unwrap()["totalTokens"]
            .as_u64()
            .unwrap()
            > 0
    );

    let r = call(&app, "mock/busy", "generateContent", hello()).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "RESOURCE_EXHAUSTED", "{e}");
    assert_eq!(e["error"]["code"], 429);

    let r = call(&app, "no/such-model", "generateContent", hello()).await;
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["status"],
        "NOT_FOUND"
    );

    let r = call(&app, "mock/echo", "embedContent", hello()).await;
    assert_eq!(r.status(), 404);
    let r = call(
        &app,
        "mock/echo",
        "generateContent",
        json!({"contents": "nope"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["status"], "INVALID_ARGUMENT");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("`contents`"),
        "{e}"
    );
}
