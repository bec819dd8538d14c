//! OpenAI chat completions ⇄ the internal representation: requests, responses, stream chunks.

use serde_json::{Map, Value, json};

use super::ir::{
    Choice, Event, FinishReason, Image, Message, Part, Request, Response, Role, Tool, ToolChoice,
    Usage,
};
use super::{TranslateError, as_u64, field_str, put, sse_data};

// ---------- requests ----------

/// An OpenAI chat request, read into the representation.
pub fn request_to_ir(body: &[u8]) -> Result<Request, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let o = v
        .as_object()
        .ok_or_else(|| TranslateError::shape("the body must be a JSON object"))?;
    let mut r = Request {
        model: field_str(o, "model").unwrap_or_default().to_owned(),
        stream: o.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens: o
            .get("max_completion_tokens")
            .or_else(|| o.get("max_tokens"))
            .and_then(Value::as_u64),
        temperature: o.get("temperature").and_then(Value::as_f64),
        top_p: o.get("top_p").and_then(Value::as_f64),
        n: o.get("n")
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok()),
        user: field_str(o, "user").map(str::to_owned),
        parallel_tool_calls: o.get("parallel_tool_calls").and_then(Value::as_bool),
        response_format: o
            .get("response_format")
            .filter(|f| f.get("type").and_then(Value::as_str) != Some("text"))
            .cloned(),
        reasoning_effort: field_str(o, "reasoning_effort").map(str::to_owned),
        ..Request::default()
    };
    match o.get("stop") {
        Some(Value::String(s)) => r.stop.push(s.clone()),
        Some(Value::Array(a)) => r
            .stop
            .extend(a.iter().filter_map(Value::as_str).map(str::to_owned)),
        _ => {}
    }
    for m in o
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::shape("`messages` must be an array"))?
    {
        read_message(m, &mut r)?;
    }
    for t in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let f = t.get("function").unwrap_or(t);
        if let Some(name) = f.get("name").and_then(Value::as_str) {
            r.tools.push(Tool {
                name: name.to_owned(),
                description: f
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: f
                    .get("parameters")
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            });
        }
    }
    r.tool_choice = match o.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        },
        Some(Value::Object(c)) => c
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|n| ToolChoice::Tool(n.to_owned())),
        _ => None,
    };
    Ok(r)
}

fn read_message(m: &Value, r: &mut Request) -> Result<(), TranslateError> {
    let role = m.get("role").and_then(Value::as_str).unwrap_or("");
    match role {
        "system" | "developer" => {
            let t = text_of(m.get("content"));
            if !t.is_empty() {
                r.system.push(t);
            }
        }
        "user" => {
            let content = parts_of(m.get("content"));
            push(r, Role::User, content);
        }
        "assistant" => {
            let mut content = Vec::new();
            if let Some(t) = m.get("reasoning_content").and_then(Value::as_str)
                && !t.is_empty()
            {
                content.push(Part::Thinking {
                    text: t.to_owned(),
                    signature: None,
                });
            }
            content.extend(parts_of(m.get("content")));
            if let Some(t) = m.get("refusal").and_then(Value::as_str) {
                content.push(Part::Text(t.to_owned()));
            }
            for c in m
                .get("tool_calls")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let f = c.get("function");
                let args = f
                    .and_then(|f| f.get("arguments"))
                    .and_then(Value::as_str)
                    .unwrap_or("");
                content.push(Part::ToolUse {
                    id: c.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                    name: f
                        .and_then(|f| f.get("name"))
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    input: parse_arguments(args),
                });
            }
            push(r, Role::Assistant, content);
        }
        "tool" | "function" => {
            let id = m
                .get("tool_call_id")
                .or_else(|| m.get("name"))
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            let content = parts_of(m.get("content"));
            push(
                r,
                Role::User,
                vec![Part::ToolResult {
                    id,
                    content,
                    is_error: false,
                }],
            );
        }
        other => {
            return Err(TranslateError::shape(format!(
                "unknown message role `{other}`"
            )));
        }
    }
    Ok(())
}

/// Appends to the last message when it has the same role (several tool results in a row make
/// one user turn, as Anthropic and Gemini want).
fn push(r: &mut Request, role: Role, content: Vec<Part>) {
    if let Some(last) = r.messages.last_mut()
        && last.role == role
        && role == Role::User
        && last
            .content
            .iter()
            .all(|p| matches!(p, Part::ToolResult { .. }))
        && content.iter().all(|p| matches!(p, Part::ToolResult { .. }))
    {
        last.content.extend(content);
        return;
    }
    r.messages.push(Message { role, content });
}

/// Arguments are a JSON string in OpenAI; a string that is not JSON is kept as a string.
pub fn parse_arguments(args: &str) -> Value {
    if args.trim().is_empty() {
        return json!({});
    }
    serde_json::from_str(args).unwrap_or_else(|_| Value::String(args.to_owned()))
}

/// Arguments back to OpenAI's JSON text.
pub fn arguments_text(input: &Value) -> String {
    match input {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    }
}

fn text_of(c: Option<&Value>) -> String {
    match c {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

fn parts_of(c: Option<&Value>) -> Vec<Part> {
    match c {
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str) {
                Some("text") => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| Part::Text(t.to_owned())),
                Some("image_url") => {
                    let url = p
                        .get("image_url")
                        .and_then(|i| i.get("url").or(Some(i)))
                        .and_then(Value::as_str)?;
                    Some(Part::Image(image_from_url(url)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// `data:` URLs carry the image; anything else is a link.
pub fn image_from_url(url: &str) -> Image {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return Image::Base64 {
            media_type: media_type.to_owned(),
            data: data.to_owned(),
        };
    }
    Image::Url(url.to_owned())
}

pub fn image_url(i: &Image) -> String {
    match i {
        Image::Base64 { media_type, data } => format!("data:{media_type};base64,{data}"),
        Image::Url(u) => u.clone(),
    }
}

/// The representation as an OpenAI chat request.
pub fn request_from_ir(r: &Request) -> Value {
    let mut messages = Vec::new();
    // One system message: several OpenAI-compatible backends refuse a second one.
    if !r.system.is_empty() {
        messages.push(json!({"role": "system", "content": r.system.join("\n\n")}));
    }
    for m in &r.messages {
        write_message(m, &mut messages);
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(r.model));
    o.insert("messages".into(), Value::Array(messages));
    if r.stream {
        o.insert("stream".into(), json!(true));
    }
    put(&mut o, "max_tokens", r.max_tokens);
    put(&mut o, "temperature", r.temperature);
    put(&mut o, "top_p", r.top_p);
    put(&mut o, "stop", (!r.stop.is_empty()).then_some(&r.stop));
    put(&mut o, "n", r.n);
    put(&mut o, "user", r.user.as_ref());
    if !r.tools.is_empty() {
        o.insert("tools".into(), tools_json(&r.tools));
    }
    if let Some(c) = &r.tool_choice {
        o.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(n) => json!({"type": "function", "function": {"name": n}}),
            },
        );
    }
    put(&mut o, "parallel_tool_calls", r.parallel_tool_calls);
    put(&mut o, "response_format", r.response_format.as_ref());
    put(&mut o, "reasoning_effort", r.reasoning_effort.as_ref());
    Value::Object(o)
}

/// Tool definitions in OpenAI's shape (Ollama's too).
pub fn tools_json(tools: &[Tool]) -> Value {
    Value::Array(
        tools
            .iter()
            .map(|t| {
                let mut f = json!({"name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    gatehouse_core::json::set(&mut f, "description", json!(d));
                }
                json!({"type": "function", "function": f})
            })
            .collect(),
    )
}

/// How many OpenAI messages `m` becomes (a user turn with tool results becomes several).
pub fn message_count(m: &Message) -> usize {
    let mut out = Vec::new();
    write_message(m, &mut out);
    out.len()
}

fn write_message(m: &Message, out: &mut Vec<Value>) {
    match m.role {
        Role::User => {
            // Tool results become `tool` messages, in order, before the rest of the turn.
            let mut rest = Vec::new();
            for p in &m.content {
                match p {
                    Part::ToolResult {
                        id,
                        content,
                        is_error,
                    } => {
                        let mut text = content_text(content);
                        if *is_error && !text.to_ascii_lowercase().contains("error") {
                            text = format!("Error: {text}");
                        }
                        out.push(json!({"role": "tool", "tool_call_id": id, "content": text}));
                    }
                    other => rest.push(other),
                }
            }
            if !rest.is_empty() {
                out.push(json!({"role": "user", "content": user_content(&rest)}));
            }
        }
        Role::Assistant => {
            let mut text = String::new();
            let mut reasoning = String::new();
            let mut calls = Vec::new();
            for p in &m.content {
                match p {
                    Part::Text(t) => text.push_str(t),
                    Part::Thinking { text: t, .. } => reasoning.push_str(t),
                    Part::ToolUse { id, name, input } => calls.push(json!({
                        "id": id, "type": "function",
                        "function": {"name": name, "arguments": arguments_text(input)},
                    })),
                    Part::Image(_) | Part::ToolResult { .. } | Part::RedactedThinking(_) => {}
                }
            }
            let mut msg = json!({"role": "assistant", "content": if text.is_empty() && !calls.is_empty() { Value::Null } else { json!(text) }});
            if !calls.is_empty() {
                gatehouse_core::json::set(&mut msg, "tool_calls", Value::Array(calls));
            }
            if !reasoning.is_empty() {
                gatehouse_core::json::set(&mut msg, "reasoning_content", json!(reasoning));
            }
            out.push(msg);
        }
    }
}

/// Text only → one string; with images → content parts.
fn user_content(parts: &[&Part]) -> Value {
    if parts.iter().all(|p| matches!(p, Part::Text(_))) {
        return json!(
            parts
                .iter()
                .filter_map(|p| match p {
                    Part::Text(t) => Some(t.as_str()),
                    _ => None,
                })
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    Value::Array(
        parts
            .iter()
            .filter_map(|p| match p {
                Part::Text(t) => Some(json!({"type": "text", "text": t})),
                Part::Image(i) => {
                    Some(json!({"type": "image_url", "image_url": {"url": image_url(i)}}))
                }
                _ => None,
            })
            .collect(),
    )
}

/// The text of tool-result content (images cannot go in an OpenAI tool message).
pub fn content_text(content: &[Part]) -> String {
    content
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            Part::Image(_) => Some("[image]"),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

// ---------- responses ----------

pub fn finish_from(s: &str) -> FinishReason {
    match s {
        "stop" => FinishReason::Stop,
        "length" => FinishReason::Length,
        "tool_calls" | "function_call" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

pub fn finish_to(f: &FinishReason) -> &str {
    match f {
        FinishReason::Stop | FinishReason::StopSequence => "stop",
        FinishReason::Length => "length",
        FinishReason::ToolCalls => "tool_calls",
        FinishReason::ContentFilter => "content_filter",
        FinishReason::Other(_) => "stop",
    }
}

pub fn usage_from(u: &Value) -> Usage {
    Usage {
        input: as_u64(u.get("prompt_tokens")),
        output: as_u64(u.get("completion_tokens")),
        cache_read: as_u64(
            u.get("prompt_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        ),
        cache_creation: 0,
        reasoning: as_u64(
            u.get("completion_tokens_details")
                .and_then(|d| d.get("reasoning_tokens")),
        ),
    }
}

pub fn usage_to(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.input,
        "completion_tokens": u.output,
        "total_tokens": u.input.saturating_add(u.output),
        "prompt_tokens_details": {"cached_tokens": u.cache_read},
        "completion_tokens_details": {"reasoning_tokens": u.reasoning},
    })
}

pub fn response_to_ir(body: &[u8]) -> Result<Response, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let mut choices = Vec::new();
    for c in v
        .get("choices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let m = c.get("message").cloned().unwrap_or(Value::Null);
        let mut r = Request::default();
        let mut m2 = m.clone();
        gatehouse_core::json::set(&mut m2, "role", json!("assistant"));
        read_message(&m2, &mut r)?;
        choices.push(Choice {
            content: r.messages.pop().map(|m| m.content).unwrap_or_default(),
            finish: c
                .get("finish_reason")
                .and_then(Value::as_str)
                .map(finish_from),
        });
    }
    Ok(Response {
        id: v.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        choices,
        usage: v.get("usage").filter(|u| u.is_object()).map(usage_from),
    })
}

pub fn response_from_ir(r: &Response, created: i64) -> Value {
    let choices: Vec<Value> = r
        .choices
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut msgs = Vec::new();
            write_message(
                &Message {
                    role: Role::Assistant,
                    content: c.content.clone(),
                },
                &mut msgs,
            );
            let mut message = msgs
                .pop()
                .unwrap_or_else(|| json!({"role": "assistant", "content": ""}));
            if message.get("content").is_some_and(Value::is_null)
                && message.get("tool_calls").is_none()
            {
                gatehouse_core::json::set(&mut message, "content", json!(""));
            }
            json!({
                "index": i,
                "message": message,
                "logprobs": null,
                "finish_reason": c.finish.as_ref().map(finish_to),
            })
        })
        .collect();
    let mut out = json!({
        "id": openai_id(&r.id),
        "object": "chat.completion",
        "created": created,
        "model": r.model,
        "choices": choices,
    });
    if let Some(u) = &r.usage {
        gatehouse_core::json::set(&mut out, "usage", usage_to(u));
    }
    out
}

fn openai_id(id: &str) -> String {
    if id.starts_with("chatcmpl") {
        id.to_owned()
    } else {
        format!("chatcmpl-{id}")
    }
}

// ---------- streams ----------

/// OpenAI SSE chunks → events.
#[derive(Debug, Default)]
pub struct Decoder {
    started: bool,
    /// Tool calls already announced, by (choice, index).
    tools: Vec<(u32, u32)>,
}

impl Decoder {
    /// One SSE event's `data` (a chunk, or `[DONE]`).
    pub fn event(&mut self, data: &[u8], out: &mut Vec<Event>) {
        if data == b"[DONE]" {
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            out.push(super::error_event(e));
            return;
        }
        if !self.started {
            self.started = true;
            out.push(Event::Start {
                id: v.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                model: v
                    .get("model")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
            });
        }
        for c in v
            .get("choices")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let choice = super::u32_field(c, "index");
            if let Some(d) = c.get("delta") {
                if let Some(t) = d.get("reasoning_content").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    out.push(Event::Thinking {
                        choice,
                        text: t.to_owned(),
                    });
                }
                if let Some(t) = d.get("content").and_then(Value::as_str)
                    && !t.is_empty()
                {
                    out.push(Event::Text {
                        choice,
                        text: t.to_owned(),
                    });
                }
                for call in d
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    let index = super::u32_field(call, "index");
                    let f = call.get("function");
                    if !self.tools.contains(&(choice, index)) {
                        self.tools.push((choice, index));
                        out.push(Event::ToolStart {
                            choice,
                            index,
                            id: call
                                .get("id")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            name: f
                                .and_then(|f| f.get("name"))
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                        });
                    }
                    if let Some(a) = f.and_then(|f| f.get("arguments")).and_then(Value::as_str)
                        && !a.is_empty()
                    {
                        out.push(Event::ToolArgs {
                            choice,
                            index,
                            json: a.to_owned(),
                        });
                    }
                }
            }
            if let Some(f) = c.get("finish_reason").and_then(Value::as_str) {
                out.push(Event::Finish {
                    choice,
                    reason: finish_from(f),
                });
            }
            if let Some(u) = c.get("usage").filter(|u| u.is_object()) {
                out.push(Event::Usage(usage_from(u)));
            }
        }
        if let Some(u) = v.get("usage").filter(|u| u.is_object()) {
            out.push(Event::Usage(usage_from(u)));
        }
    }
}

/// Events → OpenAI SSE chunks. The usage chunk is always written at the end (the stream tap
/// withholds it from a client that did not ask for it).
#[derive(Debug)]
pub struct Encoder {
    id: String,
    model: String,
    created: i64,
    /// Choices that already sent their `role` delta.
    opened: Vec<u32>,
    usage: Option<Usage>,
}

impl Encoder {
    pub fn new(model: &str, created: i64) -> Self {
        Self {
            id: String::new(),
            model: model.to_owned(),
            created,
            opened: Vec::new(),
            usage: None,
        }
    }

    fn chunk(&self, choices: Value, out: &mut Vec<u8>) {
        let v = json!({
            "id": openai_id(&self.id),
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": choices,
        });
        sse_data(&v, out);
    }

    fn delta(&mut self, choice: u32, mut delta: Value, out: &mut Vec<u8>) {
        if !self.opened.contains(&choice) {
            self.opened.push(choice);
            gatehouse_core::json::set(&mut delta, "role", json!("assistant"));
        }
        self.chunk(
            json!([{"index": choice, "delta": delta, "logprobs": null, "finish_reason": null}]),
            out,
        );
    }

    pub fn event(&mut self, e: &Event, out: &mut Vec<u8>) {
        match e {
            Event::Start { id, model } => {
                self.id = if id.is_empty() { uuid_like() } else { id.clone() };
                if self.model.is_empty() {
                    self.model = model.clone();
                }
            }
            Event::Text { choice, text } => self.delta(*choice, json!({"content": text}), out),
            Event::Thinking { choice, text } => {
                self.delta(*choice, json!({"reasoning_content": text}), out);
            }
            Event::ThinkingSignature { .. } => {}
            Event::ToolStart { choice, index, id, name } => self.delta(
                *choice,
                json!({"tool_calls": [{"index": index, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}),
                out,
            ),
            Event::ToolArgs { choice, index, json } => self.delta(
                *choice,
                serde_json::json!({"tool_calls": [{"index": index, "function": {"arguments": json}}]}),
                out,
            ),
            Event::Finish { choice, reason } => {
                if !self.opened.contains(choice) {
                    self.opened.push(*choice);
                }
                self.chunk(
                    json!([{"index": choice, "delta": {}, "logprobs": null, "finish_reason": finish_to(reason)}]),
                    out,
                );
            }
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { kind, message } => {
                sse_data(&json!({"error": {"message": message, "type": kind, "code": null, "param": null}}), out);
            }
        }
    }

    /// The usage chunk (when known) and `[DONE]`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if let Some(u) = self.usage.take() {
            let v = json!({
                "id": openai_id(&self.id),
                "object": "chat.completion.chunk",
                "created": self.created,
                "model": self.model,
                "choices": [],
                "usage": usage_to(&u),
            });
            sse_data(&v, out);
        }
        out.extend_from_slice(b"data: [DONE]\n\n");
    }
}

fn uuid_like() -> String {
    format!("gh-{}", gatehouse_core::time::now_ms())
}
