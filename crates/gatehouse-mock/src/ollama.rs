//! The mock's Ollama native endpoint (`POST /api/chat`, also under `/v1`): one JSON answer, or
//! newline-delimited JSON chunks, scripted by the same directives as the OpenAI one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{
    PROMPT_TOKENS, Shared, json_response, piece, script, scripted_error, scripted_stream, start,
};

pub(crate) async fn chat(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": "mock: body is not JSON"}),
        );
    };
    let model = req["model"].as_str().unwrap_or("").to_owned();
    // Ollama streams unless told not to.
    let stream = req["stream"].as_bool().unwrap_or(true);
    let s = script(&model);
    let attempt = start(&shared, &headers, &req, &s).await;
    if let Some(code) = s.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = json!({"error": format!("mock: scripted status {code}")});
        return scripted_error(&s, json_response(status, &body));
    }
    if attempt <= s.fail {
        let body = json!({"error": "mock: scripted failure"});
        return scripted_error(&s, json_response(StatusCode::SERVICE_UNAVAILABLE, &body));
    }
    let last_is_result = req["messages"]
        .as_array()
        .and_then(|m| m.last())
        .is_some_and(|m| m["role"] == "tool");
    let tool = (s.tool && !last_is_result).then(|| {
        req["tools"][0]["function"]["name"]
            .as_str()
            .unwrap_or("get_weather")
            .to_owned()
    });
    let n = s.chunks;
    let end = |reason: &str, eval: usize| {
        json!({"model": model, "created_at": "2023-11-14T22:13:20Z", "message": {"role": "assistant", "content": ""},
               "done": true, "done_reason": reason, "prompt_eval_count": PROMPT_TOKENS, "eval_count": eval})
    };
    let calls = |name: &str| json!([{"function": {"name": name, "arguments": {"city": "Paris"}}}]);
    if !stream {
        let mut v = end("stop", n);
        match &tool {
            Some(name) => {
                v["message"]["tool_calls"] = calls(name);
                v["eval_count"] = json!(7);
            }
            None => v["message"]["content"] = json!((0..n).map(piece).collect::<String>()),
        }
        return json_response(StatusCode::OK, &v);
    }
    let mut lines: Vec<Value> = Vec::new();
    match &tool {
        Some(name) => {
            lines.push(json!({"model": model, "created_at": "2023-11-14T22:13:20Z", "message": {"role": "assistant", "content": "", "tool_calls": calls(name)}, "done": false}));
            lines.push(end("stop", 7));
        }
        None => {
            for i in 0..n {
                lines.push(json!({"model": model, "created_at": "2023-11-14T22:13:20Z", "message": {"role": "assistant", "content": piece(i)}, "done": false}));
            }
            lines.push(end("stop", n));
        }
    }
    let lines = lines
        .into_iter()
        .map(|v| Bytes::from(format!("{v}\n")))
        .collect();
    scripted_stream(lines, &s, attempt, "application/x-ndjson")
}
