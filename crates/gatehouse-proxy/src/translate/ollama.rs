//! Ollama's native `/api/chat` ⇄ the internal representation: requests, answers, and the
//! newline-delimited JSON stream (usage from `prompt_eval_count` / `eval_count`).
//!
//! Ollama's OpenAI-compatible `/v1` endpoint needs none of this: it works with type `openai`.

use serde_json::{Map, Value, json};

use super::ir::{Choice, Event, FinishReason, Image, Part, Request, Response, Role, Usage};
use super::{TranslateError, as_u64, put};

pub const PATH: &str = "api/chat";

// ---------- requests ----------

pub fn request_from_ir(r: &Request) -> Value {
    let mut messages = Vec::new();
    if !r.system.is_empty() {
        messages.push(json!({"role": "system", "content": r.system.join("\n\n")}));
    }
    // Call id → function name, for the results.
    let mut names: Vec<(&str, &str)> = Vec::new();
    for m in &r.messages {
        let mut text = String::new();
        let mut thinking = String::new();
        let mut images = Vec::new();
        let mut calls = Vec::new();
        for p in &m.content {
            match p {
                Part::Text(t) => push_text(&mut text, t),
                Part::Image(Image::Base64 { data, .. }) => images.push(json!(data)),
                // Ollama takes image bytes only; a link is kept as text.
                Part::Image(Image::Url(u)) => push_text(&mut text, &format!("[image: {u}]")),
                Part::ToolUse { id, name, input } => {
                    names.push((id, name));
                    let args = if input.is_object() {
                        input.clone()
                    } else {
                        json!({"input": input})
                    };
                    calls.push(json!({"function": {"name": name, "arguments": args}}));
                }
                Part::ToolResult { id, content, .. } => {
                    let name = names
                        .iter()
                        .rev()
                        .find(|(i, _)| i == id)
                        .map_or(id.as_str(), |(_, n)| n);
                    messages.push(json!({"role": "tool", "content": super::openai::content_text(content), "tool_name": name}));
                }
                Part::Thinking { text: t, .. } => thinking.push_str(t),
                Part::RedactedThinking(_) => {}
            }
        }
        if text.is_empty() && images.is_empty() && calls.is_empty() && thinking.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        let mut msg = json!({"role": role, "content": text});
        if !images.is_empty() {
            gatehouse_core::json::set(&mut msg, "images", Value::Array(images));
        }
        if !calls.is_empty() {
            gatehouse_core::json::set(&mut msg, "tool_calls", Value::Array(calls));
        }
        if !thinking.is_empty() {
            gatehouse_core::json::set(&mut msg, "thinking", json!(thinking));
        }
        messages.push(msg);
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(r.model));
    o.insert("messages".into(), Value::Array(messages));
    // Ollama streams unless told not to.
    o.insert("stream".into(), json!(r.stream));
    if !r.tools.is_empty() {
        o.insert("tools".into(), super::openai::tools_json(&r.tools));
    }
    let mut opts = Map::new();
    put(&mut opts, "temperature", r.temperature);
    put(&mut opts, "top_p", r.top_p);
    put(&mut opts, "top_k", r.top_k);
    put(&mut opts, "num_predict", r.max_tokens);
    put(&mut opts, "stop", (!r.stop.is_empty()).then_some(&r.stop));
    if !opts.is_empty() {
        o.insert("options".into(), Value::Object(opts));
    }
    if r.thinking_budget.is_some() {
        o.insert("think".into(), json!(true));
    }
    Value::Object(o)
}

fn push_text(text: &mut String, t: &str) {
    if !text.is_empty() {
        text.push('\n');
    }
    text.push_str(t);
}

// ---------- responses ----------

fn finish_from(s: &str, called: bool) -> FinishReason {
    match s {
        "stop" if called => FinishReason::ToolCalls,
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        other => FinishReason::Other(other.to_owned()),
    }
}

fn usage_from(v: &Value) -> Option<Usage> {
    (v.get("prompt_eval_count").is_some() || v.get("eval_count").is_some()).then(|| Usage {
        input: as_u64(v.get("prompt_eval_count")),
        output: as_u64(v.get("eval_count")),
        ..Usage::default()
    })
}

/// The parts of a message: thinking, text, calls. Ollama's calls have no id: one is made from
/// the answer's time and a counter, unique across the turns of a conversation.
fn message_parts(m: &Value, stamp: &str, next_id: &mut u32) -> Vec<Part> {
    let mut out = Vec::new();
    if let Some(t) = m
        .get("thinking")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        out.push(Part::Thinking {
            text: t.to_owned(),
            signature: None,
        });
    }
    if let Some(t) = m
        .get("content")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    {
        out.push(Part::Text(t.to_owned()));
    }
    for c in m
        .get("tool_calls")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        *next_id += 1;
        let f = c.get("function").cloned().unwrap_or(Value::Null);
        out.push(Part::ToolUse {
            id: c
                .get("id")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{stamp}_{next_id}"), str::to_owned),
            name: f
                .get("name")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            input: f.get("arguments").cloned().unwrap_or_else(|| json!({})),
        });
    }
    out
}

pub fn response_to_ir(body: &[u8]) -> Result<Response, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        return Err(TranslateError(format!("Ollama: {e}")));
    }
    let mut n = 0;
    let content = v
        .get("message")
        .map(|m| message_parts(m, &stamp(&v), &mut n))
        .unwrap_or_default();
    let called = content.iter().any(|p| matches!(p, Part::ToolUse { .. }));
    Ok(Response {
        id: v
            .get("created_at")
            .and_then(Value::as_str)
            .unwrap_or("ollama")
            .to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        choices: vec![Choice {
            finish: v
                .get("done_reason")
                .and_then(Value::as_str)
                .map(|r| finish_from(r, called)),
            content,
        }],
        usage: usage_from(&v),
    })
}

/// The digits of `created_at`: a per-answer stamp for made-up call ids.
fn stamp(v: &Value) -> String {
    let s: String = v
        .get("created_at")
        .and_then(Value::as_str)
        .unwrap_or("")
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    if s.is_empty() { "ollama".to_owned() } else { s }
}

/// An Ollama error body (`{"error": "text"}`) in OpenAI's shape.
pub fn error_to_openai(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let m = v.get("error").and_then(Value::as_str)?;
    Some(json!({"error": {"message": m, "type": "api_error", "code": null, "param": null}}))
}

// ---------- streams ----------

/// NDJSON lines → events.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    calls: u32,
    called: bool,
}

impl Decoder {
    /// One line (without its newline).
    pub fn line(&mut self, line: &[u8], out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(line) else {
            return;
        };
        if let Some(e) = v.get("error").and_then(Value::as_str) {
            out.push(Event::Error {
                kind: "api_error".to_owned(),
                message: e.to_owned(),
            });
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v
                    .get("created_at")
                    .and_then(Value::as_str)
                    .unwrap_or("ollama")
                    .to_owned(),
                model: v
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        if let Some(m) = v.get("message") {
            for p in message_parts(m, &stamp(&v), &mut self.calls) {
                match p {
                    Part::Text(text) => out.push(Event::Text { choice: 0, text }),
                    Part::Thinking { text, .. } => out.push(Event::Thinking { choice: 0, text }),
                    Part::ToolUse { id, name, input } => {
                        self.called = true;
                        let index = self.calls - 1;
                        out.push(Event::ToolStart {
                            choice: 0,
                            index,
                            id,
                            name,
                        });
                        out.push(Event::ToolArgs {
                            choice: 0,
                            index,
                            json: input.to_string(),
                        });
                    }
                    _ => {}
                }
            }
        }
        if v.get("done").and_then(Value::as_bool) == Some(true) {
            let reason = v
                .get("done_reason")
                .and_then(Value::as_str)
                .unwrap_or("stop");
            out.push(Event::Finish {
                choice: 0,
                reason: finish_from(reason, self.called),
            });
            if let Some(u) = usage_from(&v) {
                out.push(Event::Usage(u));
            }
        }
    }
}
