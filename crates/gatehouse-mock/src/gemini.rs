//! The mock's Gemini endpoints (`POST /v1/models/{model}:generateContent` and
//! `:streamGenerateContent?alt=sse`), scripted by the same directives as the OpenAI one, plus
//! `safety` (the prompt is blocked: no candidates, a block reason).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::{
    CACHED_TOKENS, PROMPT_TOKENS, Script, Shared, json_response, piece, script, scripted_error,
    scripted_stream, start,
};

fn error(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        &json!({"error": {"code": status.as_u16(), "message": message, "status": kind}}),
    )
}

fn usage(n: usize) -> Value {
    json!({"promptTokenCount": PROMPT_TOKENS, "candidatesTokenCount": n,
           "totalTokenCount": PROMPT_TOKENS + n as u64, "cachedContentTokenCount": CACHED_TOKENS})
}

pub(crate) async fn generate(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some((model, method)) = rest.rsplit_once(':') else {
        return error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "mock: expected models/{model}:{method}",
        );
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        _ => return error(StatusCode::NOT_FOUND, "NOT_FOUND", "mock: unknown method"),
    };
    let Ok(mut req) = serde_json::from_slice::<Value>(&body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            "mock: body is not JSON",
        );
    };
    if headers.get("x-goog-api-key").is_none() {
        return error(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "mock: x-goog-api-key missing",
        );
    }
    // The captured request names its model, as the others' do.
    req["model"] = json!(model);
    let s = script(model);
    let attempt = start(&shared, &headers, &req, &s).await;
    if let Some(code) = s.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = match code {
            429 => "RESOURCE_EXHAUSTED",
            400 => "INVALID_ARGUMENT",
            _ => "INTERNAL",
        };
        return scripted_error(
            &s,
            error(status, kind, &format!("mock: scripted status {code}")),
        );
    }
    if attempt <= s.fail {
        return scripted_error(
            &s,
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "mock: scripted failure",
            ),
        );
    }
    let blocked = model.split('+').any(|d| d == "safety");
    let last_is_result = req["contents"]
        .as_array()
        .and_then(|c| c.last())
        .and_then(|c| c["parts"].as_array())
        .is_some_and(|p| p.iter().any(|p| p.get("functionResponse").is_some()));
    let tool = (s.tool && !last_is_result).then(|| {
        req["tools"][0]["functionDeclarations"][0]["name"]
            .as_str()
            .unwrap_or("get_weather")
            .to_owned()
    });
    let n = s.chunks;
    let chunk = |parts: Value, finish: Option<&str>, usage_n: Option<usize>| {
        let mut c = json!({"content": {"role": "model", "parts": parts}, "index": 0});
        if let Some(f) = finish {
            c["finishReason"] = json!(f);
        }
        let mut v = json!({"candidates": [c], "modelVersion": model, "responseId": "gem-mock"});
        if let Some(u) = usage_n {
            v["usageMetadata"] = usage(u);
        }
        v
    };
    if blocked {
        let v = json!({"promptFeedback": {"blockReason": "SAFETY"}, "usageMetadata": usage(0), "modelVersion": model});
        if !stream {
            return json_response(StatusCode::OK, &v);
        }
        return sse(vec![v], &s, attempt);
    }
    let call_part =
        |name: &str| json!([{"functionCall": {"name": name, "args": {"city": "Paris"}}}]);
    if !stream {
        let v = match &tool {
            Some(name) => chunk(call_part(name), Some("STOP"), Some(7)),
            None => chunk(
                json!([{"text": (0..n).map(piece).collect::<String>()}]),
                Some("STOP"),
                Some(n),
            ),
        };
        return json_response(StatusCode::OK, &v);
    }
    let events = match &tool {
        Some(name) => vec![chunk(call_part(name), Some("STOP"), Some(7))],
        None => (0..n)
            .map(|i| {
                let last = i + 1 == n;
                chunk(
                    json!([{"text": piece(i)}]),
                    last.then_some("STOP"),
                    Some(i + 1),
                )
            })
            .collect(),
    };
    sse(events, &s, attempt)
}

fn sse(events: Vec<Value>, s: &Script, attempt: u32) -> Response {
    let events = events
        .into_iter()
        .map(|v| Bytes::from(format!("data: {v}\r\n\r\n")))
        .collect();
    scripted_stream(events, s, attempt, "text/event-stream")
}
