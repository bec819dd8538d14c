//! Gemini `generateContent` ⇄ the internal representation: requests (the model goes in the URL),
//! responses, `streamGenerateContent?alt=sse` chunks, safety blocks.
//!
//! Gemini names function results by function name, not by call id, and its calls carry no id:
//! ids are made up on the way out (`call_<n>`) and results are matched to their call's name on
//! the way in, from the assistant turn that made the call.

use serde_json::{Map, Value, json};

use super::ir::{
    Choice, Event, FinishReason, Image, Part, Request, Response, Role, ToolChoice, Usage,
};
use super::{TranslateError, as_u64, put};

/// The URL path after `{base_url}/` for a model and a mode.
pub fn path(model: &str, stream: bool) -> String {
    if stream {
        format!("models/{model}:streamGenerateContent?alt=sse")
    } else {
        format!("models/{model}:generateContent")
    }
}

// ---------- requests ----------

/// JSON Schema keywords Gemini's function declarations refuse.
fn clean_schema(v: &Value) -> Value {
    match v {
        Value::Object(o) => Value::Object(
            o.iter()
                .filter(|(k, _)| {
                    !matches!(
                        k.as_str(),
                        "$schema" | "additionalProperties" | "strict" | "$id"
                    )
                })
                .map(|(k, v)| (k.clone(), clean_schema(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(clean_schema).collect()),
        other => other.clone(),
    }
}

/// A function result as the object Gemini wants: JSON objects as they are, anything else
/// under `content`.
fn result_object(content: &[Part], is_error: bool) -> Value {
    let text = super::openai::content_text(content);
    let mut v = match serde_json::from_str::<Value>(&text) {
        Ok(Value::Object(o)) => Value::Object(o),
        _ => json!({"content": text}),
    };
    if is_error {
        gatehouse_core::json::set(&mut v, "error", json!(true));
    }
    v
}

/// The representation as a Gemini request body.
pub fn request_from_ir(r: &Request) -> Value {
    // Call id → function name, for the results.
    let mut names: Vec<(&str, &str)> = Vec::new();
    let mut contents: Vec<Value> = Vec::new();
    for m in &r.messages {
        let mut parts = Vec::new();
        for p in &m.content {
            match p {
                Part::Text(t) => parts.push(json!({"text": t})),
                Part::Image(Image::Base64 { media_type, data }) => {
                    parts.push(json!({"inlineData": {"mimeType": media_type, "data": data}}));
                }
                Part::Image(Image::Url(u)) => {
                    parts.push(json!({"fileData": {"mimeType": mime_of(u), "fileUri": u}}));
                }
                Part::ToolUse { id, name, input } => {
                    names.push((id, name));
                    let args = if input.is_object() {
                        input.clone()
                    } else {
                        json!({"input": input})
                    };
                    parts.push(json!({"functionCall": {"name": name, "args": args}}));
                }
                Part::ToolResult {
                    id,
                    content,
                    is_error,
                } => {
                    let name = names
                        .iter()
                        .rev()
                        .find(|(i, _)| i == id)
                        .map_or(id.as_str(), |(_, n)| n);
                    parts.push(json!({"functionResponse": {"name": name, "response": result_object(content, *is_error)}}));
                }
                Part::Thinking { text, .. } if !text.is_empty() => {
                    parts.push(json!({"text": text, "thought": true}));
                }
                Part::Thinking { .. } | Part::RedactedThinking(_) => {}
            }
        }
        if parts.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "model",
        };
        if let Some(prev) = contents.last_mut()
            && prev["role"] == role
            && let Some(a) = prev["parts"].as_array_mut()
        {
            a.extend(parts);
            continue;
        }
        contents.push(json!({"role": role, "parts": parts}));
    }
    let mut o = Map::new();
    o.insert("contents".into(), Value::Array(contents));
    if !r.system.is_empty() {
        o.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": r.system.join("\n\n")}]}),
        );
    }
    if !r.tools.is_empty() {
        let decls: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut d = json!({"name": t.name, "parameters": clean_schema(&t.parameters)});
                if let Some(desc) = &t.description {
                    gatehouse_core::json::set(&mut d, "description", json!(desc));
                }
                d
            })
            .collect();
        o.insert("tools".into(), json!([{"functionDeclarations": decls}]));
    }
    if let Some(c) = &r.tool_choice {
        let cfg = match c {
            ToolChoice::Auto => json!({"mode": "AUTO"}),
            ToolChoice::None => json!({"mode": "NONE"}),
            ToolChoice::Required => json!({"mode": "ANY"}),
            ToolChoice::Tool(n) => json!({"mode": "ANY", "allowedFunctionNames": [n]}),
        };
        o.insert("toolConfig".into(), json!({"functionCallingConfig": cfg}));
    }
    let mut g = Map::new();
    put(&mut g, "maxOutputTokens", r.max_tokens);
    put(&mut g, "temperature", r.temperature);
    put(&mut g, "topP", r.top_p);
    put(&mut g, "topK", r.top_k);
    put(
        &mut g,
        "stopSequences",
        (!r.stop.is_empty()).then_some(&r.stop),
    );
    if let Some(n) = r.n.filter(|n| *n > 1) {
        g.insert("candidateCount".into(), json!(n));
    }
    if let Some(b) = r.thinking_budget {
        g.insert(
            "thinkingConfig".into(),
            json!({"thinkingBudget": b, "includeThoughts": true}),
        );
    }
    if let Some(f) = &r.response_format {
        g.insert("responseMimeType".into(), json!("application/json"));
        if let Some(schema) = f.get("json_schema").and_then(|s| s.get("schema")) {
            g.insert("responseSchema".into(), clean_schema(schema));
        }
    }
    if !g.is_empty() {
        o.insert("generationConfig".into(), Value::Object(g));
    }
    Value::Object(o)
}

fn mime_of(url: &str) -> &'static str {
    let u = url.to_ascii_lowercase();
    if u.ends_with(".png") {
        "image/png"
    } else if u.ends_with(".gif") {
        "image/gif"
    } else if u.ends_with(".webp") {
        "image/webp"
    } else {
        "image/jpeg"
    }
}

// ---------- responses ----------

pub fn finish_from(s: &str, called: bool) -> FinishReason {
    match s {
        "STOP" if called => FinishReason::ToolCalls,
        "STOP" => FinishReason::Stop,
        "MAX_TOKENS" => FinishReason::Length,
        "SAFETY" | "RECITATION" | "BLOCKLIST" | "PROHIBITED_CONTENT" | "SPII" | "IMAGE_SAFETY" => {
            FinishReason::ContentFilter
        }
        other => FinishReason::Other(other.to_owned()),
    }
}

pub fn usage_from(u: &Value) -> Usage {
    let thoughts = as_u64(u.get("thoughtsTokenCount"));
    Usage {
        input: as_u64(u.get("promptTokenCount")),
        output: as_u64(u.get("candidatesTokenCount")).saturating_add(thoughts),
        cache_read: as_u64(u.get("cachedContentTokenCount")),
        cache_creation: 0,
        reasoning: thoughts,
    }
}

/// A prompt Gemini refused outright (no candidates, a block reason): an error to report.
pub fn blocked(v: &Value) -> Option<String> {
    let reason = v
        .get("promptFeedback")
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)?;
    let empty = v
        .get("candidates")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty);
    empty.then(|| format!("Gemini blocked the prompt ({reason})"))
}

/// The parts of one candidate: text, thoughts, calls. Gemini's calls have no id: one is made
/// from the response's id and a counter, unique across the turns of a conversation.
fn candidate_parts(c: &Value, response: &str, next_id: &mut u32) -> Vec<Part> {
    let mut out = Vec::new();
    for p in c
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(f) = p.get("functionCall") {
            *next_id += 1;
            out.push(Part::ToolUse {
                id: f
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{response}_{next_id}"), str::to_owned),
                name: f
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                input: f.get("args").cloned().unwrap_or_else(|| json!({})),
            });
        } else if let Some(t) = p.get("text").and_then(Value::as_str) {
            if p.get("thought").and_then(Value::as_bool) == Some(true) {
                out.push(Part::Thinking {
                    text: t.to_owned(),
                    signature: None,
                });
            } else {
                out.push(Part::Text(t.to_owned()));
            }
        }
    }
    out
}

pub fn response_to_ir(body: &[u8]) -> Result<Response, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    if let Some(why) = blocked(&v) {
        return Err(TranslateError(why));
    }
    let mut next_id = 0;
    let id = v
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("gemini")
        .to_owned();
    let choices = v
        .get("candidates")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|c| {
            let content = candidate_parts(c, &id, &mut next_id);
            let called = content.iter().any(|p| matches!(p, Part::ToolUse { .. }));
            Choice {
                finish: c
                    .get("finishReason")
                    .and_then(Value::as_str)
                    .map(|f| finish_from(f, called)),
                content,
            }
        })
        .collect();
    Ok(Response {
        id,
        model: v
            .get("modelVersion")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        choices,
        usage: v.get("usageMetadata").map(usage_from),
    })
}

/// A Gemini error body (`{"error": {"code", "message", "status"}}`) in OpenAI's shape.
pub fn error_to_openai(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").filter(|e| e.is_object())?;
    Some(json!({"error": {
        "message": e.get("message").and_then(Value::as_str).unwrap_or("upstream error"),
        "type": e.get("status").and_then(Value::as_str).unwrap_or("api_error").to_ascii_lowercase(),
        "code": null,
        "param": null,
    }}))
}

// ---------- streams ----------

/// `streamGenerateContent?alt=sse` chunks → events. Each chunk is a small response: text
/// pieces, whole function calls, and on the last one the finish reason and usage.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    response: String,
    calls: u32,
    /// Calls per candidate, to report `STOP` after a call as a tool-call finish.
    called: Vec<u32>,
    usage: Option<Usage>,
}

impl Decoder {
    pub fn event(&mut self, data: &[u8], out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            out.push(Event::Error {
                kind: e
                    .get("status")
                    .and_then(Value::as_str)
                    .unwrap_or("api_error")
                    .to_ascii_lowercase(),
                message: e
                    .get("message")
                    .and_then(Value::as_str)
                    .unwrap_or("stream error")
                    .to_owned(),
            });
            return;
        }
        if let Some(why) = blocked(&v) {
            out.push(Event::Error {
                kind: "content_filter".to_owned(),
                message: why,
            });
            return;
        }
        if !self.started {
            self.started = true;
            self.response = v
                .get("responseId")
                .and_then(Value::as_str)
                .unwrap_or("gemini")
                .to_owned();
            out.push(Event::Start {
                id: self.response.clone(),
                model: v
                    .get("modelVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        for c in v
            .get("candidates")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let choice = super::u32_field(c, "index");
            for p in candidate_parts(c, &self.response, &mut self.calls) {
                match p {
                    Part::Text(text) => out.push(Event::Text { choice, text }),
                    Part::Thinking { text, .. } => out.push(Event::Thinking { choice, text }),
                    Part::ToolUse { id, name, input } => {
                        let index = self.called.iter().filter(|&&c| c == choice).count() as u32;
                        self.called.push(choice);
                        out.push(Event::ToolStart {
                            choice,
                            index,
                            id,
                            name,
                        });
                        out.push(Event::ToolArgs {
                            choice,
                            index,
                            json: input.to_string(),
                        });
                    }
                    _ => {}
                }
            }
            if let Some(f) = c.get("finishReason").and_then(Value::as_str) {
                let called = self.called.contains(&choice);
                out.push(Event::Finish {
                    choice,
                    reason: finish_from(f, called),
                });
            }
        }
        if let Some(u) = v.get("usageMetadata") {
            let u = usage_from(u);
            if self.usage != Some(u) {
                self.usage = Some(u);
                out.push(Event::Usage(u));
            }
        }
    }
}
