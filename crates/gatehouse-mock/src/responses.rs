//! The mock's OpenAI Responses API (`POST /v1/responses`): a Response object, or its event
//! stream, scripted by the same directives as chat completions (`chunks`, `fail`, `status`,
//! `tool`, `shell`, the stream faults). A request that asks for
//! `include: ["reasoning.encrypted_content"]` gets a `reasoning` item with encrypted content
//! first, as OpenAI's reasoning models answer, so a test sees whether it comes back untouched.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{
    CACHED_TOKENS, PROMPT_TOKENS, Shared, json_response, piece, script, scripted_error,
    scripted_stream, shell_call, start, tool_said,
};

pub(crate) async fn create(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, "mock: body is not JSON");
    };
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let s = script(&model);
    let attempt = start(&shared, &headers, &req, &s).await;
    if let Some(code) = s.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return scripted_error(&s, error(status, &format!("mock: scripted status {code}")));
    }
    if attempt <= s.fail {
        let e = error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!("mock: scripted failure {attempt} of {}", s.fail),
        );
        return scripted_error(&s, e);
    }
    let items: Vec<Value> = match &req["input"] {
        Value::String(t) => vec![json!({"type": "message", "role": "user", "content": t})],
        Value::Array(a) => a.clone(),
        _ => Vec::new(),
    };
    // One answer per function call output or user message so far: ids differ per turn.
    let turn = 1 + items
        .iter()
        .filter(|i| i["type"] == "function_call" || i["role"] == "assistant")
        .count();
    let last = items
        .iter()
        .rev()
        .find(|i| i["role"] != "system" && i["role"] != "developer");
    let result = last
        .filter(|i| i["type"] == "function_call_output")
        .map(|i| crate::text_of(&i["output"]));
    let names: Vec<&str> = req["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| t["name"].as_str())
        .collect();
    let call = match &result {
        Some(_) => None,
        None if s.shell => shell_call(names.iter().copied()),
        None if s.tool => Some((
            names.first().copied().unwrap_or("get_weather").to_owned(),
            json!({"city": "Paris"}),
        )),
        None => None,
    };
    let text = match &result {
        Some(r) if s.shell => tool_said(r),
        _ => (0..s.chunks).map(piece).collect(),
    };
    let mut output = Vec::new();
    let wants_reasoning = req["include"]
        .as_array()
        .is_some_and(|i| i.iter().any(|v| v == "reasoning.encrypted_content"));
    if wants_reasoning {
        output.push(
            json!({"type": "reasoning", "id": format!("rs_mock_{turn}"), "summary": [],
            "encrypted_content": format!("gAAAA-mock-encrypted-{turn}")}),
        );
    }
    output.push(match &call {
        Some((name, args)) => json!({"type": "function_call", "id": format!("fc_mock_{turn}"),
            "call_id": format!("call_mock_{turn}"), "name": name, "arguments": args.to_string(),
            "status": "completed"}),
        None => json!({"type": "message", "id": format!("msg_mock_{turn}"), "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": []}]}),
    });
    let completed = response(&model, turn, "completed", &output, s.chunks);
    if !stream {
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        return json_response(StatusCode::OK, &completed);
    }
    let mut events = Vec::new();
    let mut seq = 0u64;
    let mut push = |kind: &str, mut v: Value| {
        v["type"] = json!(kind);
        v["sequence_number"] = json!(seq);
        seq += 1;
        events.push(Bytes::from(format!("event: {kind}\ndata: {v}\n\n")));
    };
    push(
        "response.created",
        json!({"response": response(&model, turn, "in_progress", &[], 0)}),
    );
    for (i, item) in output.iter().enumerate() {
        let id = item["id"].clone();
        let mut open = item.clone();
        match item["type"].as_str() {
            Some("message") => {
                open["content"] = json!([]);
                open["status"] = json!("in_progress");
                push(
                    "response.output_item.added",
                    json!({"output_index": i, "item": open}),
                );
                let part = json!({"type": "output_text", "text": "", "annotations": []});
                push(
                    "response.content_part.added",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
                );
                let pieces: Vec<String> = match &result {
                    Some(_) if s.shell => vec![text.clone()],
                    _ => (0..s.chunks).map(piece).collect(),
                };
                for delta in pieces {
                    push(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": i, "content_index": 0, "delta": delta}),
                    );
                }
                push(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text}),
                );
                push(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0,
                        "part": {"type": "output_text", "text": text, "annotations": []}}),
                );
            }
            Some("function_call") => {
                open["arguments"] = json!("");
                open["status"] = json!("in_progress");
                push(
                    "response.output_item.added",
                    json!({"output_index": i, "item": open}),
                );
                let args = item["arguments"].as_str().unwrap_or("").to_owned();
                push(
                    "response.function_call_arguments.delta",
                    json!({"item_id": id, "output_index": i, "delta": args}),
                );
                push(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": args}),
                );
            }
            _ => push(
                "response.output_item.added",
                json!({"output_index": i, "item": open}),
            ),
        }
        push(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
        );
    }
    push("response.completed", json!({"response": completed}));
    scripted_stream(events, &s, attempt, "text/event-stream")
}

fn response(model: &str, turn: usize, status: &str, output: &[Value], completion: usize) -> Value {
    let usage = (status == "completed").then(|| {
        json!({"input_tokens": PROMPT_TOKENS, "input_tokens_details": {"cached_tokens": CACHED_TOKENS},
            "output_tokens": completion, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": PROMPT_TOKENS + completion as u64})
    });
    json!({
        "id": format!("resp_mock_{turn}"), "object": "response", "created_at": 1_700_000_000,
        "status": status, "model": model, "output": output, "usage": usage,
        "error": null, "incomplete_details": null, "instructions": null, "metadata": {},
        "parallel_tool_calls": true, "tool_choice": "auto", "tools": [], "temperature": 1.0,
        "top_p": 1.0, "text": {"format": {"type": "text"}},
    })
}

fn error(status: StatusCode, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}}),
    )
}
