//! Across formats: OpenAI clients on an Anthropic provider, Anthropic clients (`/v1/messages`)
//! on an OpenAI-compatible provider and on an Anthropic one (bytes through), streaming or not,
//! tool calls, errors in the client's shape, and the accounting of each.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, UPSTREAM_KEY, rows, session_of};

fn options() -> Options {
    Options {
        extra_toml: r#"
[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."anth/claude"]
provider = "anth"
model = "claude-x"
max_context_size = 200000

[models."anth/tool"]
provider = "anth"
model = "tool"
max_context_size = 200000

[models."anth/busy"]
provider = "anth"
model = "status:429"
max_context_size = 200000

[models."mock/tool"]
provider = "mock"
model = "tool"
max_context_size = 4096

[providers.gem]
type = "gemini"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."gem/flash"]
provider = "gem"
model = "gem-x"
max_context_size = 1000000

[models."gem/tool"]
provider = "gem"
model = "tool"
max_context_size = 1000000

[models."gem/blocked"]
provider = "gem"
model = "safety"
max_context_size = 1000000

[models."gem/busy"]
provider = "gem"
model = "status:429"
max_context_size = 1000000

[providers.ol]
type = "ollama"
base_url = "MOCK_BASE_URL"

[models."ol/llama"]
provider = "ol"
model = "llama-x"
max_context_size = 131072

[models."ol/tool"]
provider = "ol"
model = "tool"
max_context_size = 131072

[models."ol/missing"]
provider = "ol"
model = "status:404"
max_context_size = 131072
"#
        .to_owned(),
        retries: Some(0),
        ..Options::default()
    }
}

async fn messages(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/messages"))
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `data:` payloads of an SSE body, with their `event:` names.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = String::new();
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = d.to_owned();
                }
            }
            (
                name,
                serde_json::from_str(&data).unwrap_or(Value::String(data)),
            )
        })
        .collect()
}

#[tokio::test]
async fn openai_client_on_an_anthropic_provider() {
    let app = TestApp::spawn_with(options()).await;
    let r = app
        .chat(
            json!({"model": "anth/claude", "temperature": 1.5, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 11, "input + cache read");
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 3);

    let sent = app.mock.captured().pop().unwrap();
    assert_eq!(sent.headers["x-api-key"], UPSTREAM_KEY);
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");
    assert_eq!(
        sent.body,
        json!({"model": "claude-x", "system": "Be brief.", "max_tokens": 8192, "temperature": 1.0,
               "messages": [{"role": "user", "content": [{"type": "text", "text": "Hello"}]}]})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["provider"], "anth");
    assert_eq!(row["prompt_tokens"], 11);
    assert_eq!(row["cached_tokens"], 4);
    assert_eq!(row["finish_reason"], "stop");

    // Streamed: OpenAI chunks, usage only when asked, the same accounting.
    for ask in [false, true] {
        let mut body = json!({"model": "anth/claude", "stream": true, "messages": [{"role": "user", "content": "Hi"}]});
        if ask {
            body["stream_options"] = json!({"include_usage": true});
        }
        let r = app.chat(body).await;
        assert_eq!(r.status(), 200);
        let sid = session_of(&r);
        let text = r.text().await.unwrap();
        let evs = events(&text);
        let content: String = evs
            .iter()
            .filter_map(|(_, v)| v["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(content, " Hello from the");
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        assert_eq!(text.contains("\"usage\""), ask, "{text}");
        let row = &rows(&app, &sid).await[0];
        assert_eq!(row["prompt_tokens"], 11, "{row}");
        assert_eq!(row["completion_tokens"], 3);
        assert_eq!(row["finish_reason"], "stop");
        assert!(row["error_type"].is_null(), "{row}");
    }
}

#[tokio::test]
async fn tool_round_trip_through_anthropic() {
    let app = TestApp::spawn_with(options()).await;
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "description": "Weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
    let r = app
        .chat(json!({"model": "anth/tool", "tools": tools, "messages": [{"role": "user", "content": "Weather in Paris?"}]}))
        .await;
    let v: Value = r.json().await.unwrap();
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(call["id"], "toolu_mock_1");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent["tools"][0]["input_schema"]["properties"]["city"]["type"],
        "string"
    );

    // The result goes back as a tool_result block; the answer is text.
    let r = app
        .chat(json!({"model": "anth/tool", "tools": tools, "messages": [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "toolu_mock_1", "content": "18 °C, sunny"}]}))
        .await;
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(
        sent["messages"][1]["content"][0]["input"],
        json!({"city": "Paris"})
    );
    assert_eq!(
        sent["messages"][2]["content"][0],
        json!({"type": "tool_result", "tool_use_id": "toolu_mock_1", "content": [{"type": "text", "text": "18 °C, sunny"}]})
    );

    // Streamed tool call: incremental arguments arrive as OpenAI tool-call deltas.
    let r = app
        .chat(json!({"model": "anth/tool", "stream": true, "tools": tools, "messages": [{"role": "user", "content": "Weather?"}]}))
        .await;
    let text = r.text().await.unwrap();
    let args: String = events(&text)
        .iter()
        .filter_map(|(_, v)| {
            v["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
        })
        .collect();
    assert_eq!(args, "{\"city\": \"Paris\"}");
    assert!(text.contains("\"finish_reason\":\"tool_calls\""), "{text}");
}

#[tokio::test]
async fn anthropic_client_on_an_openai_provider() {
    let app = TestApp::spawn_with(options()).await;
    let r = messages(
        &app,
        json!({"model": "mock/echo", "max_tokens": 100, "system": "Be brief.",
               "messages": [{"role": "user", "content": "Hello"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "message");
    assert_eq!(v["role"], "assistant");
    assert_eq!(
        v["content"],
        json!([{"type": "text", "text": " Hello from the"}])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    assert_eq!(
        v["usage"]["input_tokens"], 7,
        "11 prompt tokens, 4 of them cached"
    );
    assert_eq!(v["usage"]["cache_read_input_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 3);
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent,
        json!({"model": "echo", "max_tokens": 100, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["prompt_tokens"], 11);
    assert_eq!(row["completion_tokens"], 3);

    // Streamed: Anthropic's event sequence, then the row.
    let r = messages(
        &app,
        json!({"model": "mock/echo", "max_tokens": 100, "stream": true, "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let evs = events(&r.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    let text: String = evs
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, " Hello from the");
    assert_eq!(evs[6].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(evs[6].1["usage"]["output_tokens"], 3);
    assert_eq!(evs[6].1["usage"]["input_tokens"], 7);
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["prompt_tokens"], 11, "{row}");
    assert_eq!(row["finish_reason"], "end_turn");
    assert!(row["error_type"].is_null(), "{row}");

    // A tool call, streamed: a tool_use block with its input in pieces.
    let r = messages(
        &app,
        json!({"model": "mock/tool", "max_tokens": 100, "stream": true,
               "tools": [{"name": "get_weather", "input_schema": {"type": "object"}}],
               "messages": [{"role": "user", "content": "Weather?"}]}),
    )
    .await;
    let evs = events(&r.text().await.unwrap());
    let start = evs
        .iter()
        .find(|(n, _)| n == "content_block_start")
        .unwrap();
    assert_eq!(start.1["content_block"]["type"], "tool_use");
    assert_eq!(start.1["content_block"]["name"], "get_weather");
    let json: String = evs
        .iter()
        .filter_map(|(_, v)| v["delta"]["partial_json"].as_str())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&json).unwrap(),
        json!({"city": "Paris"})
    );
    assert_eq!(
        evs.iter().find(|(n, _)| n == "message_delta").unwrap().1["delta"]["stop_reason"],
        "tool_use"
    );
}

#[tokio::test]
async fn anthropic_to_anthropic_passes_the_bytes_through() {
    let app = TestApp::spawn_with(options()).await;
    let body = json!({"model": "anth/claude", "max_tokens": 64,
        "system": [{"type": "text", "text": "Long stable prefix", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": [{"type": "text", "text": "Hi", "cache_control": {"type": "ephemeral"}}]}],
        "metadata": {"user_id": "u1"}, "some_future_field": {"kept": true}});
    let r = messages(&app, body.clone()).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["id"], "msg_mock", "the provider's own answer");
    let sent = app.mock.captured().pop().unwrap();
    let mut expected = body;
    expected["model"] = json!("claude-x");
    assert_eq!(sent.body, expected, "cache_control and unknown fields kept");
    assert_eq!(sent.headers["anthropic-version"], "2023-06-01");

    // Masking happens in place: the stand-in replaces the tool output, the cache markers and
    // unknown fields stay.
    let log: String = (0..170)
        .map(|i| format!("tests/test_orders.py::test_case_{i} PASSED\n"))
        .collect();
    let body = json!({"model": "anth/claude", "max_tokens": 64, "x_custom": 1,
        "system": [{"type": "text", "text": "Stable prefix", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": "Run the tests"},
            {"role": "assistant", "content": [{"type": "tool_use", "id": "toolu_1", "name": "run_tests", "input": {}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1",
                "content": [{"type": "text", "text": log, "cache_control": {"type": "ephemeral"}}]}]}]});
    let r = messages(&app, body.clone()).await;
    assert_eq!(r.status(), 200);
    let sent = app.mock.captured().pop().unwrap().body;
    let result = &sent["messages"][2]["content"][0];
    assert_eq!(result["tool_use_id"], "toolu_1");
    let text = result["content"][0]["text"].as_str().unwrap();
    assert!(
        text.starts_with("[masked by Gatehouse: tool output"),
        "{text}"
    );
    assert_eq!(
        result["content"][0]["cache_control"],
        json!({"type": "ephemeral"})
    );
    assert_eq!(sent["system"], body["system"]);
    assert_eq!(sent["x_custom"], 1);
    assert_eq!(sent["messages"][1], body["messages"][1]);

    // The provider's own error body comes back as it is.
    let r = messages(&app, json!({"model": "anth/busy", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e,
        json!({"type": "error", "error": {"type": "rate_limit_error", "message": "mock: scripted status 429"}})
    );
}

#[tokio::test]
async fn errors_take_the_clients_shape() {
    let app = TestApp::spawn_with(options()).await;
    // Anthropic upstream error, OpenAI client.
    let r = app
        .chat(json!({"model": "anth/busy", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "rate_limit_error", "{e}");
    assert_eq!(e["error"]["message"], "mock: scripted status 429");
    // Unknown model and malformed body on /v1/messages: Anthropic's shape.
    let r = messages(&app, json!({"model": "nope/nope", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["type"], "error");
    assert_eq!(e["error"]["type"], "not_found_error");
    let r = messages(&app, json!({"model": "mock/echo", "messages": "nope"})).await;
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    // OpenAI upstream error, Anthropic client.
    let r = messages(&app, json!({"model": "mock/status:400", "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]})).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(
        e,
        json!({"type": "error", "error": {"type": "invalid_request_error", "message": "mock: scripted status 400"}})
    );

    // count_tokens: the gateway's count for the routed model.
    let r = app
        .http
        .post(app.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "mock/echo", "messages": [{"role": "user", "content": "Hello there"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let n = r.json::<Value>().await.unwrap()["input_tokens"]
        .as_u64()
        .unwrap();
    assert!((5..20).contains(&n), "{n}");
}

#[tokio::test]
async fn gemini_behind_both_ingresses() {
    let app = TestApp::spawn_with(options()).await;
    let r = app
        .chat(json!({"model": "gem/flash", "max_tokens": 50, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 4);
    let sent = app.mock.captured().pop().unwrap();
    assert_eq!(
        sent.headers["x-goog-api-key"], UPSTREAM_KEY,
        "the key goes in a header"
    );
    assert!(sent.headers.get("authorization").is_none());
    assert_eq!(sent.body["model"], "gem-x", "from the URL path");
    assert_eq!(
        sent.body["systemInstruction"],
        json!({"parts": [{"text": "Be brief."}]})
    );
    assert_eq!(
        sent.body["contents"],
        json!([{"role": "user", "parts": [{"text": "Hello"}]}])
    );
    assert_eq!(
        sent.body["generationConfig"],
        json!({"maxOutputTokens": 50})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(
        (
            row["prompt_tokens"].clone(),
            row["completion_tokens"].clone()
        ),
        (json!(11), json!(3))
    );

    // Streamed, usage asked: same accounting.
    let r = app
        .chat(
            json!({"model": "gem/flash", "stream": true, "stream_options": {"include_usage": true},
                     "messages": [{"role": "user", "content": "Hi"}]}),
        )
        .await;
    let sid = session_of(&r);
    let text = r.text().await.unwrap();
    let evs = events(&text);
    let content: String = evs
        .iter()
        .filter_map(|(_, v)| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, " Hello from the");
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["completion_tokens"], 3, "{row}");
    assert_eq!(row["finish_reason"], "stop");
    assert!(row["error_type"].is_null(), "{row}");

    // Tool round trip: Gemini's call gets an id; the result goes back under the call's name.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "additionalProperties": false, "properties": {"city": {"type": "string"}}}}}]);
    let v: Value = app
        .chat(json!({"model": "gem/tool", "tools": tools, "messages": [{"role": "user", "content": "Weather?"}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(call["function"]["name"], "get_weather");
    let sent = app.mock.captured().pop().unwrap().body;
    assert!(
        sent["tools"][0]["functionDeclarations"][0]["parameters"]
            .get("additionalProperties")
            .is_none(),
        "cleaned for Gemini"
    );
    let v: Value = app
        .chat(json!({"model": "gem/tool", "tools": tools, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "{\"temp\": 18}"}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent["contents"][1]["parts"][0]["functionCall"]["name"],
        "get_weather"
    );
    assert_eq!(
        sent["contents"][2]["parts"][0],
        json!({"functionResponse": {"name": "get_weather", "response": {"temp": 18}}})
    );

    // A blocked prompt is a 400 that says so; Gemini's own errors keep their status.
    let r = app
        .chat(json!({"model": "gem/blocked", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("blocked the prompt (SAFETY)"),
        "{e}"
    );
    let r = app
        .chat(json!({"model": "gem/busy", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["type"], "resource_exhausted");

    // Anthropic's client on Gemini, streamed.
    let r = messages(
        &app,
        json!({"model": "gem/flash", "max_tokens": 64, "stream": true,
                                  "messages": [{"role": "user", "content": "Hi"}]}),
    )
    .await;
    let evs = events(&r.text().await.unwrap());
    let text: String = evs
        .iter()
        .filter_map(|(_, v)| v["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, " Hello from the");
    assert_eq!(evs.last().unwrap().0, "message_stop");
}

#[tokio::test]
async fn ollama_native_chat_and_ndjson_streams() {
    let app = TestApp::spawn_with(options()).await;
    let r = app
        .chat(
            json!({"model": "ol/llama", "max_tokens": 20, "temperature": 0.1, "messages": [
            {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]}),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    assert_eq!(v["usage"]["prompt_tokens"], 11);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let sent = app.mock.captured().pop().unwrap();
    assert!(sent.headers.get("authorization").is_none(), "keyless");
    assert_eq!(
        sent.body,
        json!({"model": "llama-x", "stream": false, "options": {"num_predict": 20, "temperature": 0.1},
               "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["prompt_tokens"], 11);

    // NDJSON stream → OpenAI SSE, and Anthropic's events for the other ingress.
    let r = app
        .chat(json!({"model": "ol/llama", "stream": true, "messages": [{"role": "user", "content": "Hi"}]}))
        .await;
    let sid = session_of(&r);
    let text = r.text().await.unwrap();
    let content: String = events(&text)
        .iter()
        .filter_map(|(_, v)| v["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(content, " Hello from the");
    assert!(!text.contains("usage"), "not asked for");
    assert!(text.ends_with("data: [DONE]\n\n"));
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["completion_tokens"], 3, "{row}");
    assert!(row["error_type"].is_null(), "{row}");
    let r = messages(&app, json!({"model": "ol/llama", "max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "Hi"}]})).await;
    let evs = events(&r.text().await.unwrap());
    assert_eq!(evs.last().unwrap().0, "message_stop");
    assert_eq!(
        evs.iter().find(|(n, _)| n == "message_delta").unwrap().1["usage"]["output_tokens"],
        3
    );

    // Tools: Ollama's call (arguments as an object) becomes an OpenAI call; the result goes back
    // as a `tool` message naming the function.
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let v: Value = app
        .chat(json!({"model": "ol/tool", "tools": tools, "messages": [{"role": "user", "content": "Weather?"}]}))
        .await
        .json()
        .await
        .unwrap();
    let call = v["choices"][0]["message"]["tool_calls"][0].clone();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    assert_eq!(
        serde_json::from_str::<Value>(call["function"]["arguments"].as_str().unwrap()).unwrap(),
        json!({"city": "Paris"})
    );
    let v: Value = app
        .chat(json!({"model": "ol/tool", "tools": tools, "messages": [
            {"role": "user", "content": "Weather?"},
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": call["id"], "content": "18 °C"}]}))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent["messages"][1]["tool_calls"][0]["function"]["arguments"],
        json!({"city": "Paris"})
    );
    assert_eq!(
        sent["messages"][2],
        json!({"role": "tool", "content": "18 °C", "tool_name": "get_weather"})
    );

    // Ollama's error body (`{"error": "text"}`), in the client's shape.
    let r = app
        .chat(json!({"model": "ol/missing", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["message"], "mock: scripted status 404");
}

/// What Claude Code 2.1 sends (`../shared/clients`): three `system` blocks, a `system` message
/// inside `messages`, adaptive thinking and fields Gatehouse has no use for.
fn claude_code_body(model: &str) -> Value {
    json!({
        "model": model,
        "max_tokens": 32000,
        "stream": false,
        "metadata": {"user_id": "user_abc"},
        "thinking": {"type": "adaptive", "display": "omitted"},
        "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
        "output_config": {"effort": "high"},
        "system": [
            {"type": "text", "text": "You are Claude Code."},
            {"type": "text", "text": "Be careful.", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "Environment: linux.", "cache_control": {"type": "ephemeral"}}
        ],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "Say hello"}]},
            {"role": "system", "content": [{"type": "text", "text": "Reminder: be brief.", "cache_control": {"type": "ephemeral"}}]}
        ],
        "tools": [{"name": "Read", "description": "Read a file", "defer_loading": true,
                   "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]
    })
}

#[tokio::test]
async fn claude_code_requests_go_through_to_anthropic_untouched() {
    let app = TestApp::spawn_with(options()).await;
    let body = claude_code_body("anth/claude");
    let r = app
        .http
        .post(app.url("/v1/messages?beta=true"))
        .header("anthropic-version", "2023-06-01")
        .header(
            "anthropic-beta",
            "claude-code-20250219,context-management-2025-06-27",
        )
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let sent = app.mock.captured().pop().unwrap();
    let mut want = body.clone();
    want["model"] = json!("claude-x");
    assert_eq!(
        sent.body, want,
        "every field and role as the client sent it"
    );
    assert_eq!(
        sent.headers["anthropic-beta"],
        "claude-code-20250219,context-management-2025-06-27"
    );
}

#[tokio::test]
async fn claude_code_requests_translate_to_one_system_message() {
    let app = TestApp::spawn_with(options()).await;
    let r = messages(&app, claude_code_body("mock/echo")).await;
    let status = r.status();
    let sid = session_of(&r);
    let text = r.text().await.unwrap();
    assert_eq!(status, 200, "{text}");
    let sent = app.mock.captured().pop().unwrap().body;
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user"], "{sent}");
    assert_eq!(
        sent["messages"][0]["content"],
        "You are Claude Code.\n\nBe careful.\n\nEnvironment: linux.\n\nReminder: be brief."
    );
    let row = &rows(&app, &sid).await[0];
    let notes = row["routing"].to_string();
    assert!(notes.contains("context_management"), "{row}");
}

/// Claude Code names its conversation (`X-Claude-Code-Session-Id`): every request of it, the
/// side requests to its small model included, lands in one session, which becomes active.
#[tokio::test]
async fn a_claude_code_conversation_is_one_session_whatever_the_model() {
    let app = TestApp::spawn_with(options()).await;
    let send = |model: &'static str, conversation: &'static str| {
        let app = &app;
        async move {
            let r = app
                .http
                .post(app.url("/v1/messages?beta=true"))
                .header("anthropic-version", "2023-06-01")
                .header("x-claude-code-session-id", conversation)
                .json(&claude_code_body(model))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            session_of(&r)
        }
    };
    let first = "5f0c2b1e-8a47-4c1d-9a3e-2b7d1c0e9f11";
    let a = send("anth/claude", first).await;
    assert_eq!(a, format!("claude-code:{first}"));
    assert_eq!(
        send("mock/echo", first).await,
        a,
        "a side request to another model"
    );
    assert_eq!(send("anth/claude", first).await, a);
    let active = app.get_json("/api/sessions").await;
    assert_eq!(active["active_id"], a, "{active}");
    assert_eq!(rows(&app, &a).await.len(), 3);

    // Another conversation (a second terminal) opens its own session and is active while used.
    let second = "0d9e8f7a-6b5c-4d3e-8f2a-1b0c9d8e7f60";
    let b = send("anth/claude", second).await;
    assert_ne!(a, b);
    assert_eq!(app.get_json("/api/sessions").await["active_id"], b);
    assert_eq!(send("anth/claude", first).await, a);
    assert_eq!(app.get_json("/api/sessions").await["active_id"], a);
}
