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

// ---------- Gemini as the client's format ----------

/// Top-level fields of a `generateContent` request the representation carries.
const CLIENT_MAPPED: &[&str] = &[
    "contents",
    "systemInstruction",
    "system_instruction",
    "tools",
    "toolConfig",
    "generationConfig",
    // Spliced in by the gateway from the URL.
    "model",
    "stream",
];

/// A Gemini client's request read into the representation (the model and the mode come from the
/// URL and are spliced into the body as `model` and `stream`), with what a translation leaves
/// out. Calls carry no id in Gemini: each gets `call_<n>`, and each result takes the id of the
/// oldest unanswered call of its name.
pub fn client_request_to_ir(body: &[u8]) -> Result<(Request, Vec<String>), TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let o = v
        .as_object()
        .ok_or_else(|| TranslateError::shape("the body must be a JSON object"))?;
    let mut left: Vec<String> = o
        .keys()
        .filter(|k| !CLIENT_MAPPED.contains(&k.as_str()))
        .cloned()
        .collect();
    let g = o.get("generationConfig").cloned().unwrap_or(Value::Null);
    let mut r = Request {
        model: o
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        stream: o.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens: g.get("maxOutputTokens").and_then(Value::as_u64),
        temperature: g.get("temperature").and_then(Value::as_f64),
        top_p: g.get("topP").and_then(Value::as_f64),
        top_k: g.get("topK").and_then(Value::as_u64),
        n: g.get("candidateCount")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        thinking_budget: g
            .get("thinkingConfig")
            .and_then(|t| t.get("thinkingBudget"))
            .and_then(Value::as_u64)
            .filter(|b| *b > 0),
        ..Request::default()
    };
    r.stop = g
        .get("stopSequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    if g.get("responseMimeType").and_then(Value::as_str) == Some("application/json") {
        r.response_format = Some(
            match g
                .get("responseJsonSchema")
                .or_else(|| g.get("responseSchema"))
            {
                Some(schema) => {
                    json!({"type": "json_schema", "json_schema": {"name": "response", "schema": schema}})
                }
                None => json!({"type": "json_object"}),
            },
        );
    }
    let system = o
        .get("systemInstruction")
        .or_else(|| o.get("system_instruction"));
    if let Some(parts) = system
        .and_then(|s| s.get("parts"))
        .and_then(Value::as_array)
    {
        let text: Vec<&str> = parts
            .iter()
            .filter_map(|p| p.get("text")?.as_str())
            .collect();
        if !text.is_empty() {
            r.system.push(text.join("\n"));
        }
    } else if let Some(s) = system.and_then(Value::as_str) {
        r.system.push(s.to_owned());
    }
    // Calls not answered yet, oldest first: (name, id).
    let mut open: Vec<(String, String)> = Vec::new();
    let mut calls = 0u32;
    for c in o
        .get("contents")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::shape("`contents` must be an array"))?
    {
        let role = match c.get("role").and_then(Value::as_str) {
            Some("model") => Role::Assistant,
            Some("user") | None => Role::User,
            Some(other) => {
                return Err(TranslateError::shape(format!(
                    "content role must be `user` or `model`, not `{other}`"
                )));
            }
        };
        let mut content = Vec::new();
        for p in c
            .get("parts")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(f) = p.get("functionCall") {
                calls += 1;
                let name = f
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned();
                let id = f
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("call_{calls}"), str::to_owned);
                open.push((name.clone(), id.clone()));
                content.push(Part::ToolUse {
                    id,
                    name,
                    input: f.get("args").cloned().unwrap_or_else(|| json!({})),
                });
            } else if let Some(f) = p.get("functionResponse") {
                let name = f.get("name").and_then(Value::as_str).unwrap_or("");
                let id = match f.get("id").and_then(Value::as_str) {
                    Some(id) => {
                        open.retain(|(_, i)| i != id);
                        id.to_owned()
                    }
                    None => match open.iter().position(|(n, _)| n == name) {
                        Some(i) => open.remove(i).1,
                        None => name.to_owned(),
                    },
                };
                let response = f.get("response").cloned().unwrap_or(Value::Null);
                let text = match response.get("output").or_else(|| response.get("content")) {
                    Some(Value::String(s))
                        if response.as_object().is_some_and(|o| o.len() == 1) =>
                    {
                        s.clone()
                    }
                    _ => response.to_string(),
                };
                content.push(Part::ToolResult {
                    id,
                    content: vec![Part::Text(text)],
                    is_error: response.get("error").is_some(),
                });
            } else if let Some(t) = p.get("text").and_then(Value::as_str) {
                if p.get("thought").and_then(Value::as_bool) == Some(true) {
                    // A thought without Gemini's signature means nothing to another provider.
                    continue;
                }
                content.push(Part::Text(t.to_owned()));
            } else if let Some(d) = p.get("inlineData") {
                content.push(Part::Image(Image::Base64 {
                    media_type: d
                        .get("mimeType")
                        .and_then(Value::as_str)
                        .unwrap_or("image/png")
                        .to_owned(),
                    data: d
                        .get("data")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                }));
            } else if let Some(u) = p
                .get("fileData")
                .and_then(|f| f.get("fileUri"))
                .and_then(Value::as_str)
            {
                content.push(Part::Image(Image::Url(u.to_owned())));
            } else if let Some(k) = p.as_object().and_then(|o| o.keys().next()) {
                let note = format!("{k} parts");
                if !left.contains(&note) {
                    left.push(note);
                }
            }
        }
        if content.is_empty() {
            continue;
        }
        match r.messages.last_mut() {
            Some(last) if last.role == role => last.content.extend(content),
            _ => r.messages.push(super::ir::Message { role, content }),
        }
    }
    for t in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(decls) = t.get("functionDeclarations").and_then(Value::as_array) else {
            if let Some(k) = t.as_object().and_then(|o| o.keys().next()) {
                left.push(format!("{k} tool"));
            }
            continue;
        };
        for d in decls {
            let Some(name) = d.get("name").and_then(Value::as_str) else {
                continue;
            };
            r.tools.push(super::ir::Tool {
                name: name.to_owned(),
                description: d
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: d
                    .get("parametersJsonSchema")
                    .or_else(|| d.get("parameters"))
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
        }
    }
    let cfg = o
        .get("toolConfig")
        .and_then(|c| c.get("functionCallingConfig"));
    r.tool_choice = match cfg.and_then(|c| c.get("mode")).and_then(Value::as_str) {
        Some("NONE") => Some(ToolChoice::None),
        Some("ANY") => match cfg
            .and_then(|c| c.get("allowedFunctionNames"))
            .and_then(Value::as_array)
            .map(Vec::as_slice)
        {
            Some([one]) => one.as_str().map(|n| ToolChoice::Tool(n.to_owned())),
            _ => Some(ToolChoice::Required),
        },
        Some("AUTO") => Some(ToolChoice::Auto),
        _ => None,
    };
    Ok((r, left))
}

fn finish_to(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "MAX_TOKENS",
        FinishReason::ContentFilter => "SAFETY",
        _ => "STOP",
    }
}

fn usage_to(u: &Usage) -> Value {
    json!({
        "promptTokenCount": u.input,
        "candidatesTokenCount": u.output.saturating_sub(u.reasoning),
        "totalTokenCount": u.input.saturating_add(u.output),
        "cachedContentTokenCount": u.cache_read,
        "thoughtsTokenCount": u.reasoning,
    })
}

fn part_json(p: &Part) -> Option<Value> {
    match p {
        Part::Text(t) => Some(json!({"text": t})),
        Part::Thinking { text, .. } if !text.is_empty() => {
            Some(json!({"text": text, "thought": true}))
        }
        Part::ToolUse { id, name, input } => {
            let args = if input.is_object() {
                input.clone()
            } else {
                json!({"input": input})
            };
            Some(json!({"functionCall": {"id": id, "name": name, "args": args}}))
        }
        _ => None,
    }
}

/// A whole answer as a `generateContent` response; `model` is what the client asked for.
pub fn response_from_ir(r: &Response, model: &str) -> Value {
    let candidates: Vec<Value> = r
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let parts: Vec<Value> = c.content.iter().filter_map(part_json).collect();
            json!({
                "content": {"role": "model", "parts": parts},
                "finishReason": finish_to(c.finish.as_ref().unwrap_or(&FinishReason::Stop)),
                "index": i,
            })
        })
        .collect();
    json!({
        "candidates": candidates,
        "usageMetadata": usage_to(&r.usage.unwrap_or_default()),
        "modelVersion": model,
        "responseId": r.id,
    })
}

/// Gemini's error `status` for an HTTP status.
pub fn error_status(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        429 => "RESOURCE_EXHAUSTED",
        503 | 529 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        _ => "INTERNAL",
    }
}

/// A Gemini error body.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": error_status(status)}})
}

/// Events → `streamGenerateContent?alt=sse` chunks: text and thoughts as they come, each call
/// whole once its arguments are complete (Gemini sends calls whole), the finish reason and
/// usage on the last chunk. The first choice only.
#[derive(Debug)]
pub struct Encoder {
    model: String,
    id: String,
    /// The call being received: id, name, arguments so far.
    call: Option<(String, String, String)>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Encoder {
    pub fn new(model: &str) -> Self {
        Self {
            model: model.to_owned(),
            id: String::new(),
            call: None,
            finish: None,
            usage: None,
        }
    }

    fn chunk(&self, parts: Vec<Value>, out: &mut Vec<u8>) {
        let v = json!({
            "candidates": [{"content": {"role": "model", "parts": parts}, "index": 0}],
            "modelVersion": self.model,
            "responseId": self.id,
        });
        super::sse_data(&v, out);
    }

    fn flush_call(&mut self, out: &mut Vec<u8>) {
        if let Some((id, name, args)) = self.call.take() {
            let input = super::openai::parse_arguments(&args);
            if let Some(p) = part_json(&Part::ToolUse { id, name, input }) {
                self.chunk(vec![p], out);
            }
        }
    }

    pub fn event(&mut self, e: &Event, out: &mut Vec<u8>) {
        match e {
            Event::Start { id, .. } => self.id = id.clone(),
            Event::Text { choice: 0, text } => {
                self.flush_call(out);
                self.chunk(vec![json!({"text": text})], out);
            }
            Event::Thinking { choice: 0, text } => {
                self.flush_call(out);
                self.chunk(vec![json!({"text": text, "thought": true})], out);
            }
            Event::ToolStart {
                choice: 0,
                id,
                name,
                ..
            } => {
                self.flush_call(out);
                self.call = Some((id.clone(), name.clone(), String::new()));
            }
            Event::ToolArgs {
                choice: 0, json, ..
            } => {
                if let Some((_, _, args)) = &mut self.call {
                    args.push_str(json);
                }
            }
            Event::Finish { choice: 0, reason } => self.finish = Some(reason.clone()),
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { message, .. } => {
                super::sse_data(&error_body(500, message), out);
            }
            _ => {}
        }
    }

    /// The call still open, then the last chunk: finish reason and usage.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.flush_call(out);
        let v = json!({
            "candidates": [{"content": {"role": "model", "parts": []}, "index": 0,
                            "finishReason": finish_to(self.finish.as_ref().unwrap_or(&FinishReason::Stop))}],
            "usageMetadata": usage_to(&self.usage.unwrap_or_default()),
            "modelVersion": self.model,
            "responseId": self.id,
        });
        super::sse_data(&v, out);
    }
}
