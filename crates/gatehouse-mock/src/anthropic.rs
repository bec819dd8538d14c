//! The mock's Anthropic Messages endpoint (`POST /v1/messages`), scripted by the same
//! directives as the OpenAI one.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{
    CACHED_TOKENS, PROMPT_TOKENS, Shared, json_response, piece, script, scripted_error,
    scripted_stream, start,
};

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn usage(output: usize) -> Value {
    json!({
        "input_tokens": PROMPT_TOKENS - CACHED_TOKENS,
        "output_tokens": output,
        "cache_read_input_tokens": CACHED_TOKENS,
        "cache_creation_input_tokens": 0,
    })
}

fn event(name: &str, v: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {v}\n\n"))
}

pub(crate) async fn messages(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "mock: body is not JSON",
        );
    };
    if headers.get("x-api-key").is_none() && headers.get("authorization").is_none() {
        return error(
            StatusCode::UNAUTHORIZED,
            "authentication_error",
            "mock: x-api-key missing",
        );
    }
    if req.get("max_tokens").and_then(Value::as_u64).is_none() {
        return error(
            StatusCode::BAD_REQUEST,
            "invalid_request_error",
            "max_tokens: Field required",
        );
    }
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let s = script(&model);
    let attempt = start(&shared, &headers, &req, &s).await;
    if let Some(code) = s.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match code {
            429 => "rate_limit_error",
            400 => "invalid_request_error",
            529 => "overloaded_error",
            _ => "api_error",
        };
        return scripted_error(
            &s,
            error(status, kind, &format!("mock: scripted status {code}")),
        );
    }
    if attempt <= s.fail {
        let e = error(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded_error",
            &format!("mock: scripted failure {attempt} of {}", s.fail),
        );
        return scripted_error(&s, e);
    }
    // `tool`: call the request's first tool, unless the conversation already holds a result;
    // `shell`: call its shell tool, then say what the tool said.
    // A client may append a system message after the turn (Claude Code does on a model
    // switch): the turn is the last message of the conversation itself.
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] != "system"));
    let call_id = format!("toolu_mock_{}", crate::turn_of(&req));
    let result = last
        .and_then(|m| m["content"].as_array())
        .and_then(|c| c.iter().find(|b| b["type"] == "tool_result"));
    let names = req["tools"].as_array().into_iter().flatten();
    let (tool, text) = match result {
        Some(r) if s.shell => (None, crate::tool_said(&crate::text_of(&r["content"]))),
        Some(_) => (None, (0..s.chunks).map(piece).collect()),
        None if s.shell => match crate::shell_call(names.filter_map(|t| t["name"].as_str())) {
            Some(call) => (Some(call), String::new()),
            None => (None, (0..s.chunks).map(piece).collect()),
        },
        None if s.tool => {
            let name = req["tools"][0]["name"].as_str().unwrap_or("get_weather");
            (
                Some((name.to_owned(), json!({"city": "Paris"}))),
                String::new(),
            )
        }
        None => (None, (0..s.chunks).map(piece).collect()),
    };
    if !stream {
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        let (content, stop) = match &tool {
            Some((name, input)) => (
                json!([{"type": "tool_use", "id": call_id, "name": name, "input": input}]),
                "tool_use",
            ),
            None => (json!([{"type": "text", "text": text}]), "end_turn"),
        };
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "msg_mock", "type": "message", "role": "assistant", "model": model,
                "content": content, "stop_reason": stop, "stop_sequence": null,
                "usage": usage(s.chunks),
            }),
        );
    }
    let n = s.chunks;
    let mut events: Vec<Bytes> = vec![
        event(
            "message_start",
            &json!({"type": "message_start", "message": {"id": "msg_mock", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "stop_sequence": null, "usage": {"input_tokens": PROMPT_TOKENS - CACHED_TOKENS, "output_tokens": 1, "cache_read_input_tokens": CACHED_TOKENS, "cache_creation_input_tokens": 0}}}),
        ),
        event("ping", &json!({"type": "ping"})),
    ];
    let stop = match &tool {
        Some((name, input)) => {
            events.push(event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "tool_use", "id": call_id, "name": name, "input": {}}})));
            // The `tool` directive's text, as a provider would space it.
            let text = if s.shell {
                input.to_string()
            } else {
                "{\"city\": \"Paris\"}".to_owned()
            };
            let args: Vec<char> = text.chars().collect();
            for part in args.chunks(args.len().div_ceil(3).max(1)) {
                let part: String = part.iter().collect();
                events.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": part}})));
            }
            "tool_use"
        }
        None => {
            events.push(event("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})));
            if s.shell {
                events.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}})));
            } else {
                for i in 0..n {
                    events.push(event("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece(i)}})));
                }
            }
            "end_turn"
        }
    };
    events.push(event(
        "content_block_stop",
        &json!({"type": "content_block_stop", "index": 0}),
    ));
    events.push(event("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": n}})));
    events.push(event("message_stop", &json!({"type": "message_stop"})));
    scripted_stream(events, &s, attempt, "text/event-stream")
}
