//! The Responses API ingress (`/v1/responses`) in front of chat-completions, Anthropic and Gemini
//! providers: whole answers and the event sequence, tools and their outputs, stored responses
//! continued by `previous_response_id`, read back, listed and deleted, and the rows.

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

const WEATHER: &str = r#"[{"type": "function", "name": "get_weather", "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}]"#;

fn tools() -> Value {
    serde_json::from_str(WEATHER).unwrap()
}

async fn create(app: &TestApp, body: Value) -> reqwest::Response {
    app.http
        .post(app.url("/v1/responses"))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// `(event name, data)` of an SSE body.
fn events(text: &str) -> Vec<(String, Value)> {
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let mut name = String::new();
            let mut data = Value::Null;
            for line in e.lines() {
                if let Some(n) = line.strip_prefix("event: ") {
                    name = n.to_owned();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(d).unwrap();
                }
            }
            (name, data)
        })
        .collect()
}

fn output_text(r: &Value) -> String {
    r["output"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["type"] == "message")
        .flat_map(|i| i["content"].as_array().unwrap().clone())
        .filter_map(|c| c["text"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_string_input_to_a_chat_completions_provider() {
    let app = TestApp::spawn_with(options()).await;
    let r = create(
        &app,
        json!({"model": "mock/echo", "instructions": "Be brief.", "input": "Hello",
               "max_output_tokens": 50, "metadata": {"team": "a"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "response");
    assert!(v["id"].as_str().unwrap().starts_with("resp_"), "{v}");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["model"], "mock/echo");
    assert_eq!(v["instructions"], "Be brief.");
    assert_eq!(v["metadata"], json!({"team": "a"}));
    assert_eq!(output_text(&v), " Hello from the");
    assert_eq!(v["output"][0]["role"], "assistant");
    assert_eq!(v["usage"]["input_tokens"], 11);
    assert_eq!(v["usage"]["input_tokens_details"]["cached_tokens"], 4);
    assert_eq!(v["usage"]["output_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 14);

    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent,
        json!({"model": "echo", "max_tokens": 50, "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello"}]})
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["provider"], "mock");
    assert_eq!(row["prompt_tokens"], 11);
    assert_eq!(row["completion_tokens"], 3);
    assert_eq!(row["finish_reason"], "stop");
    assert!(row["error_type"].is_null(), "{row}");
}

#[tokio::test]
async fn a_streamed_tool_call_is_the_responses_event_sequence() {
    let app = TestApp::spawn_with(options()).await;
    let r = create(
        &app,
        json!({"model": "mock/tool", "stream": true, "tools": tools(),
               "input": [{"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let evs = events(&r.text().await.unwrap());
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    let mut kinds = names.clone();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.function_call_arguments.delta",
            "response.function_call_arguments.done",
            "response.output_item.done",
            "response.completed"
        ],
        "{names:?}"
    );
    for (i, (name, data)) in evs.iter().enumerate() {
        assert_eq!(data["type"], name.as_str());
        assert_eq!(data["sequence_number"], i);
    }
    let args: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        serde_json::from_str::<Value>(&args).unwrap(),
        json!({"city": "Paris"})
    );
    let done = &evs.last().unwrap().1["response"];
    assert_eq!(done["status"], "completed");
    let call = &done["output"][0];
    assert_eq!(call["type"], "function_call");
    assert_eq!(call["call_id"], "call_mock_1");
    assert_eq!(call["name"], "get_weather");
    assert_eq!(call["arguments"], args);
    assert!(
        done["usage"]["input_tokens"].as_u64().unwrap() > 0,
        "{done}"
    );

    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(sent["tools"][0]["function"]["name"], "get_weather");
    assert_eq!(sent["messages"][0]["content"], "Weather in Paris?");
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["finish_reason"], "tool_calls");
    assert!(row["error_type"].is_null(), "{row}");
}

#[tokio::test]
async fn previous_response_id_continues_a_stored_conversation() {
    let app = TestApp::spawn_with(options()).await;
    // Turn 1: the model calls a tool; the response is kept (OpenAI's default `store`).
    let r = create(
        &app,
        json!({"model": "mock/tool", "tools": tools(), "input": "Weather in Paris?",
               "prompt_cache_key": "conv-1"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    assert_eq!(sid, "responses:conv-1");
    let first: Value = r.json().await.unwrap();
    let id = first["id"].as_str().unwrap().to_owned();
    let call = &first["output"][0];
    assert_eq!(call["type"], "function_call");

    // Turn 2 sends only the tool's output; the stored history goes before it, upstream.
    let r = create(
        &app,
        json!({"model": "mock/tool", "tools": tools(), "previous_response_id": id, "stream": true,
               "input": [{"type": "function_call_output", "call_id": call["call_id"], "output": "18°C, sunny"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        session_of(&r),
        sid,
        "a continued response stays in its session"
    );
    let evs = events(&r.text().await.unwrap());
    let second = &evs.last().unwrap().1["response"];
    assert_eq!(second["previous_response_id"], id.as_str());
    assert_eq!(output_text(second), " Hello from the");
    let sent = app.mock.captured().pop().unwrap().body;
    let roles: Vec<&str> = sent["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["user", "assistant", "tool"], "{sent}");
    assert_eq!(sent["messages"][1]["tool_calls"][0]["id"], "call_mock_1");
    assert_eq!(sent["messages"][2]["tool_call_id"], "call_mock_1");
    assert_eq!(sent["messages"][2]["content"], "18°C, sunny");

    // Both are kept: read back, with the whole input of the second listed.
    let second_id = second["id"].as_str().unwrap().to_owned();
    let got = app.get_json(&format!("/v1/responses/{second_id}")).await;
    assert_eq!(got["id"], second_id.as_str());
    assert_eq!(output_text(&got), " Hello from the");
    let items = app
        .get_json(&format!("/v1/responses/{second_id}/input_items?order=asc"))
        .await;
    assert_eq!(items["object"], "list");
    let kinds: Vec<&str> = items["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["message", "function_call", "function_call_output"]);
    assert_eq!(items["has_more"], false);
    let page = app
        .get_json(&format!("/v1/responses/{second_id}/input_items?limit=1"))
        .await;
    assert_eq!(
        page["data"][0]["type"], "function_call_output",
        "newest first"
    );
    assert_eq!(page["has_more"], true);

    // Deleted: gone, and continuing it is a clear 400 with a row.
    let r = app
        .http
        .delete(app.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["deleted"], true);
    let r = app
        .http
        .get(app.url(&format!("/v1/responses/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["type"],
        "invalid_request_error"
    );
    let r = create(
        &app,
        json!({"model": "mock/echo", "previous_response_id": id, "input": "again"}),
    )
    .await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["param"], "previous_response_id");
    assert!(e["error"]["message"].as_str().unwrap().contains(&id), "{e}");
    let health = app.get_json_any("/health").await;
    assert_eq!(
        health["refused"]["by_code"]["invalid_request"], 1,
        "{health}"
    );
}

#[tokio::test]
async fn store_false_keeps_nothing_and_text_format_asks_for_json() {
    let app = TestApp::spawn_with(options()).await;
    let schema = json!({"type": "object", "properties": {"n": {"type": "integer"}}});
    let r = create(
        &app,
        json!({"model": "mock/echo", "input": "A number", "store": false,
               "text": {"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": true}},
               "reasoning": {"effort": "low"}}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["store"], false);
    assert_eq!(v["text"]["format"]["name"], "num");
    let sent = app.mock.captured().pop().unwrap().body;
    assert_eq!(
        sent["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "num", "schema": schema, "strict": true}})
    );
    assert_eq!(sent["reasoning_effort"], "low");
    let r = app
        .http
        .get(app.url(&format!("/v1/responses/{}", v["id"].as_str().unwrap())))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn anthropic_and_gemini_providers_answer_a_responses_client() {
    let app = TestApp::spawn_with(options()).await;
    for model in ["anth/claude", "gem/flash"] {
        let r = create(&app, json!({"model": model, "input": "Hello"})).await;
        assert_eq!(r.status(), 200, "{model}");
        let sid = session_of(&r);
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["status"], "completed", "{model}: {v}");
        assert!(!output_text(&v).is_empty(), "{model}: {v}");
        assert!(
            v["usage"]["output_tokens"].as_u64().unwrap() > 0,
            "{model}: {v}"
        );

        let r = create(
            &app,
            json!({"model": model, "input": "Hello", "stream": true}),
        )
        .await;
        assert_eq!(r.status(), 200, "{model}");
        let evs = events(&r.text().await.unwrap());
        let text: String = evs
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .map(|(_, d)| d["delta"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(text, output_text(&v), "{model}");
        let (last, done) = evs.last().unwrap();
        assert_eq!(last, "response.completed", "{model}");
        assert_eq!(output_text(&done["response"]), text);
        let row = &rows(&app, &sid).await[0];
        assert!(row["error_type"].is_null(), "{model}: {row}");
    }
}

#[tokio::test]
async fn errors_are_openai_shaped_and_untranslatable_items_are_noted() {
    let app = TestApp::spawn_with(options()).await;
    let r = create(&app, json!({"model": "mock/busy", "input": "Hi"})).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["message"], "mock: scripted status 429");

    let r = create(&app, json!({"model": "mock/echo", "input": 42})).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("`input`"),
        "{e}"
    );

    // Built-in tools and reasoning items have no chat-completions equivalent: dropped, and the
    // row says so.
    let r = create(
        &app,
        json!({"model": "mock/echo", "tools": [{"type": "web_search"}], "input": [
            {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "opaque"},
            {"role": "user", "content": "Hi"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let row = &rows(&app, &sid).await[0];
    let routing = row["routing"].as_str().unwrap_or_default();
    assert!(routing.contains("not translated"), "{row}");
    assert!(routing.contains("reasoning items"), "{row}");
    assert!(routing.contains("web_search tool"), "{row}");
}
