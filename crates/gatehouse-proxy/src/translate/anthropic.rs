//! Anthropic Messages ⇄ the internal representation: requests, responses, stream events, errors.

use serde_json::{Map, Value, json};

use super::ir::{
    Choice, Event, FinishReason, Image, Message, Part, Request, Response, Role, Tool, ToolChoice,
    Usage,
};
use super::{TranslateError, as_u64, field_str, put, sse_named};

/// The API version sent upstream when the client named none.
pub const VERSION: &str = "2023-06-01";
/// `max_tokens` is required by Anthropic; this is used when an OpenAI client sends none.
pub const DEFAULT_MAX_TOKENS: u64 = 8192;

// ---------- requests ----------

pub fn request_to_ir(body: &[u8]) -> Result<Request, TranslateError> {
    Ok(request_to_ir_noting(body)?.0)
}

/// The representation, and what a translation of it to another format leaves out (see
/// [`untranslated_fields`]), from one parse of the body.
pub fn request_to_ir_noting(body: &[u8]) -> Result<(Request, Vec<String>), TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let o = v
        .as_object()
        .ok_or_else(|| TranslateError::shape("the body must be a JSON object"))?;
    Ok((ir_of(o)?, untranslated_fields(o)))
}

fn ir_of(o: &Map<String, Value>) -> Result<Request, TranslateError> {
    let mut r = Request {
        model: field_str(o, "model").unwrap_or_default().to_owned(),
        stream: o.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens: o.get("max_tokens").and_then(Value::as_u64),
        temperature: o.get("temperature").and_then(Value::as_f64),
        top_p: o.get("top_p").and_then(Value::as_f64),
        top_k: o.get("top_k").and_then(Value::as_u64),
        user: o
            .get("metadata")
            .and_then(|m| m.get("user_id"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        thinking_budget: o
            .get("thinking")
            .filter(|t| t.get("type").and_then(Value::as_str) == Some("enabled"))
            .and_then(|t| t.get("budget_tokens"))
            .and_then(Value::as_u64),
        ..Request::default()
    };
    match o.get("system") {
        Some(Value::String(s)) if !s.is_empty() => r.system.push(s.clone()),
        Some(Value::Array(blocks)) => {
            for b in blocks {
                if let Some(t) = b.get("text").and_then(Value::as_str) {
                    r.system.push(t.to_owned());
                }
            }
        }
        _ => {}
    }
    r.stop = o
        .get("stop_sequences")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let messages = o
        .get("messages")
        .and_then(Value::as_array)
        .ok_or_else(|| TranslateError::shape("`messages` must be an array"))?;
    for m in messages {
        let role = match m.get("role").and_then(Value::as_str) {
            Some("user") => Role::User,
            Some("assistant") => Role::Assistant,
            // Claude Code sends one mid-conversation (its reminders). Elsewhere there is one
            // system prompt, so its text joins the top-level one, in order.
            Some("system") => {
                r.system
                    .extend(blocks_to_parts(m.get("content")).into_iter().filter_map(
                        |p| match p {
                            Part::Text(t) if !t.is_empty() => Some(t),
                            _ => None,
                        },
                    ));
                continue;
            }
            Some(other) => {
                return Err(TranslateError::shape(format!(
                    "message role must be `user`, `assistant` or `system`, not `{other}`"
                )));
            }
            None => {
                return Err(TranslateError::shape(
                    "every message needs a `role` (`user` or `assistant`)",
                ));
            }
        };
        r.messages.push(Message {
            role,
            content: blocks_to_parts(m.get("content")),
        });
    }
    for t in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        // Server tools (web search, …) have a `type` and no schema; they cannot be translated.
        if let Some(name) = t.get("name").and_then(Value::as_str)
            && let Some(schema) = t.get("input_schema")
        {
            r.tools.push(Tool {
                name: name.to_owned(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: schema.clone(),
            });
        }
    }
    if let Some(c) = o.get("tool_choice") {
        r.tool_choice = match c.get("type").and_then(Value::as_str) {
            Some("auto") => Some(ToolChoice::Auto),
            Some("any") => Some(ToolChoice::Required),
            Some("none") => Some(ToolChoice::None),
            Some("tool") => c
                .get("name")
                .and_then(Value::as_str)
                .map(|n| ToolChoice::Tool(n.to_owned())),
            _ => None,
        };
        if c.get("disable_parallel_tool_use").and_then(Value::as_bool) == Some(true) {
            r.parallel_tool_calls = Some(false);
        }
    }
    Ok(r)
}

/// What a translation of this Anthropic request to another format leaves out: top-level fields
/// with no equivalent (`context_management`, `output_config`, unknown ones), a `thinking` form
/// other than a budget, and server tools. For the row's notes.
fn untranslated_fields(o: &Map<String, Value>) -> Vec<String> {
    const MAPPED: &[&str] = &[
        "model",
        "stream",
        "max_tokens",
        "temperature",
        "top_p",
        "top_k",
        "metadata",
        "system",
        "stop_sequences",
        "messages",
        "tools",
        "tool_choice",
        "thinking",
    ];
    let mut out: Vec<String> = o
        .keys()
        .filter(|k| !MAPPED.contains(&k.as_str()))
        .cloned()
        .collect();
    if let Some(kind) = o
        .get("thinking")
        .and_then(|t| t.get("type"))
        .and_then(Value::as_str)
        .filter(|k| !matches!(*k, "enabled" | "disabled"))
    {
        out.push(format!("thinking ({kind})"));
    }
    let server_tools = o.get("tools").and_then(Value::as_array).map_or(0, |t| {
        t.iter().filter(|t| t.get("input_schema").is_none()).count()
    });
    if server_tools > 0 {
        out.push(format!("{server_tools} server tool(s)"));
    }
    out
}

fn blocks_to_parts(c: Option<&Value>) -> Vec<Part> {
    match c {
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        Some(Value::Array(blocks)) => blocks.iter().filter_map(block_to_part).collect(),
        _ => Vec::new(),
    }
}

fn block_to_part(b: &Value) -> Option<Part> {
    let s = |k: &str| b.get(k).and_then(Value::as_str).map(str::to_owned);
    match b.get("type").and_then(Value::as_str)? {
        "text" => s("text").map(Part::Text),
        "image" => {
            let src = b.get("source")?;
            match src.get("type").and_then(Value::as_str)? {
                "base64" => Some(Part::Image(Image::Base64 {
                    media_type: src.get("media_type").and_then(Value::as_str)?.to_owned(),
                    data: src.get("data").and_then(Value::as_str)?.to_owned(),
                })),
                "url" => Some(Part::Image(Image::Url(
                    src.get("url").and_then(Value::as_str)?.to_owned(),
                ))),
                _ => None,
            }
        }
        "tool_use" => Some(Part::ToolUse {
            id: s("id").unwrap_or_default(),
            name: s("name").unwrap_or_default(),
            input: b.get("input").cloned().unwrap_or_else(|| json!({})),
        }),
        "tool_result" => Some(Part::ToolResult {
            id: s("tool_use_id").unwrap_or_default(),
            content: blocks_to_parts(b.get("content")),
            is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
        }),
        "thinking" => Some(Part::Thinking {
            text: s("thinking").unwrap_or_default(),
            signature: s("signature"),
        }),
        "redacted_thinking" => s("data").map(Part::RedactedThinking),
        // Documents, citations, server tool blocks: no equivalent elsewhere.
        _ => None,
    }
}

fn part_to_block(p: &Part) -> Value {
    match p {
        Part::Text(t) => json!({"type": "text", "text": t}),
        Part::Image(Image::Base64 { media_type, data }) => {
            json!({"type": "image", "source": {"type": "base64", "media_type": media_type, "data": data}})
        }
        Part::Image(Image::Url(u)) => json!({"type": "image", "source": {"type": "url", "url": u}}),
        Part::ToolUse { id, name, input } => {
            // Anthropic wants an object; arguments that were not JSON are wrapped.
            let input = if input.is_object() {
                input.clone()
            } else {
                json!({"input": input})
            };
            json!({"type": "tool_use", "id": id, "name": name, "input": input})
        }
        Part::ToolResult {
            id,
            content,
            is_error,
        } => {
            let content: Vec<Value> = content.iter().map(part_to_block).collect();
            let mut b = json!({"type": "tool_result", "tool_use_id": id, "content": content});
            if *is_error {
                gatehouse_core::json::set(&mut b, "is_error", json!(true));
            }
            b
        }
        Part::Thinking { text, signature } => {
            let mut b = json!({"type": "thinking", "thinking": text});
            if let Some(s) = signature {
                gatehouse_core::json::set(&mut b, "signature", json!(s));
            }
            b
        }
        Part::RedactedThinking(d) => json!({"type": "redacted_thinking", "data": d}),
    }
}

/// The representation as an Anthropic Messages request.
pub fn request_from_ir(r: &Request) -> Value {
    let mut messages: Vec<Value> = Vec::new();
    let mut last_role = None;
    for m in &r.messages {
        let mut blocks: Vec<&Part> = m.content.iter().collect();
        // Thinking without a signature (from another provider) cannot be sent back.
        blocks.retain(|p| {
            !matches!(
                p,
                Part::Thinking {
                    signature: None,
                    ..
                }
            )
        });
        // Tool results must open the user turn.
        blocks.sort_by_key(|p| !matches!(p, Part::ToolResult { .. }));
        let content: Vec<Value> = blocks.into_iter().map(part_to_block).collect();
        if content.is_empty() {
            continue;
        }
        let role = match m.role {
            Role::User => "user",
            Role::Assistant => "assistant",
        };
        // Consecutive turns of one role are merged: the API wants them alternating.
        if last_role == Some(role)
            && let Some(prev) = messages
                .last_mut()
                .and_then(|p| p["content"].as_array_mut())
        {
            prev.extend(content);
            continue;
        }
        messages.push(json!({"role": role, "content": content}));
        last_role = Some(role);
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(r.model));
    o.insert("messages".into(), Value::Array(messages));
    o.insert(
        "max_tokens".into(),
        json!(r.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if !r.system.is_empty() {
        o.insert("system".into(), json!(r.system.join("\n\n")));
    }
    if r.stream {
        o.insert("stream".into(), json!(true));
    }
    // OpenAI's temperature range is 0-2, Anthropic's 0-1.
    put(
        &mut o,
        "temperature",
        r.temperature.map(|t| t.clamp(0.0, 1.0)),
    );
    put(&mut o, "top_p", r.top_p);
    put(&mut o, "top_k", r.top_k);
    put(
        &mut o,
        "stop_sequences",
        (!r.stop.is_empty()).then_some(&r.stop),
    );
    if let Some(u) = &r.user {
        o.insert("metadata".into(), json!({"user_id": u}));
    }
    if let Some(b) = r.thinking_budget {
        o.insert(
            "thinking".into(),
            json!({"type": "enabled", "budget_tokens": b}),
        );
    }
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut v = json!({"name": t.name, "input_schema": t.parameters});
                if let Some(d) = &t.description {
                    gatehouse_core::json::set(&mut v, "description", json!(d));
                }
                v
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
    }
    let mut choice = r.tool_choice.as_ref().map(|c| match c {
        ToolChoice::Auto => json!({"type": "auto"}),
        ToolChoice::None => json!({"type": "none"}),
        ToolChoice::Required => json!({"type": "any"}),
        ToolChoice::Tool(n) => json!({"type": "tool", "name": n}),
    });
    if r.parallel_tool_calls == Some(false) && !r.tools.is_empty() {
        let c = choice.get_or_insert_with(|| json!({"type": "auto"}));
        gatehouse_core::json::set(c, "disable_parallel_tool_use", json!(true));
    }
    if let Some(c) = choice {
        o.insert("tool_choice".into(), c);
    }
    Value::Object(o)
}

/// An Anthropic request with some message texts replaced in place (`(old, new)` pairs, matched
/// on the whole text of a message or of a tool result), everything else kept: `cache_control`
/// markers, unknown fields, block order. Used to mask an Anthropic client's request bound for
/// Anthropic without translating it. `None` when the body is not an Anthropic request.
/// How many leading Anthropic messages of `body` become the first `openai_cut` messages of its
/// OpenAI translation (one system message first, then each message's share); `None` when the
/// cut falls inside a message.
pub fn messages_before(body: &[u8], openai_cut: usize) -> Option<usize> {
    let ir = request_to_ir(body).ok()?;
    let raw: Value = serde_json::from_slice(body).ok()?;
    let raw = raw.get("messages")?.as_array()?;
    // The OpenAI view has one system message for all the system text, and none in place of a
    // `system` message inside `messages`: those count for nothing here (and stay, when the cut
    // falls next to one).
    let mut at = usize::from(!ir.system.is_empty());
    let mut translated = ir.messages.iter();
    for (k, m) in raw.iter().enumerate() {
        if at == openai_cut {
            return Some(k);
        }
        if m.get("role").and_then(Value::as_str) == Some("system") {
            continue;
        }
        at += super::openai::message_count(translated.next()?);
        if at > openai_cut {
            return None;
        }
    }
    (at == openai_cut).then_some(raw.len())
}

/// A compaction spliced into the client's own Anthropic bytes: its first `drop` messages are
/// removed, and `summary` becomes a last `system` text block. Every other byte is the client's:
/// top-level fields (`thinking`, `top_k`, `metadata`, unknown ones), the kept messages with
/// their signed thinking blocks, documents, images and `cache_control` markers.
pub fn splice_compaction(body: &[u8], drop: usize, summary: &str) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        messages: Vec<&'a RawValue>,
        #[serde(borrow, default)]
        system: Option<&'a RawValue>,
    }
    let top: Top<'_> = serde_json::from_slice(body).ok()?;
    let offset = |raw: &RawValue| (raw.get().as_ptr() as usize).checked_sub(body.as_ptr() as usize);
    let block = json!({"type": "text", "text": summary}).to_string();
    // Edits as (range, replacement), applied back to front.
    let mut edits: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    if drop > 0 {
        let first = offset(top.messages.first()?)?;
        let keep = match top.messages.get(drop) {
            Some(m) => offset(m)?,
            // Everything summarised: the messages array is left empty.
            None => {
                let last = top.messages.last()?;
                offset(last)? + last.get().len()
            }
        };
        edits.push((first..keep, String::new()));
    }
    match top.system {
        Some(raw) => {
            let start = offset(raw)?;
            let text = raw.get();
            if text.starts_with('[') {
                let end = start + text.trim_end().len() - 1;
                let empty = text.trim_start_matches('[').trim().starts_with(']');
                let insert = if empty { block } else { format!(",{block}") };
                edits.push((end..end, insert));
            } else if text.starts_with('"') {
                let own =
                    json!({"type": "text", "text": serde_json::from_str::<String>(text).ok()?});
                edits.push((start..start + text.len(), format!("[{own},{block}]")));
            } else {
                edits.push((start..start + text.len(), format!("[{block}]")));
            }
        }
        None => {
            let open = body.iter().position(|&b| b == b'{')?;
            edits.push((open + 1..open + 1, format!("\"system\":[{block}],")));
        }
    }
    edits.sort_by_key(|(r, _)| std::cmp::Reverse(r.start));
    let mut out = body.to_vec();
    for (range, with) in edits {
        if range.end > out.len() || range.start > range.end {
            return None;
        }
        out.splice(range, with.into_bytes());
    }
    // The removed range runs from the first message to the first kept one, commas included,
    // so what is left is still JSON; checked anyway before it is sent.
    serde_json::from_slice::<serde::de::IgnoredAny>(&out).ok()?;
    Some(out)
}

pub fn replace_texts(body: &[u8], replacements: &[(String, String)]) -> Option<Vec<u8>> {
    let mut v: Value = serde_json::from_slice(body).ok()?;
    for m in v.get_mut("messages")?.as_array_mut()? {
        let Some(content) = m.get_mut("content") else {
            continue;
        };
        replace_in(content, replacements);
        for b in content.as_array_mut().into_iter().flatten() {
            if b.get("type").and_then(Value::as_str) == Some("tool_result")
                && let Some(c) = b.get_mut("content")
            {
                replace_in(c, replacements);
            }
        }
    }
    serde_json::to_vec(&v).ok()
}

/// Replaces `content` (a string, or the text blocks of an array joined by newlines) when its
/// text is one of the `old`s; the text blocks become one, keeping a `cache_control` they had.
fn replace_in(content: &mut Value, replacements: &[(String, String)]) {
    let text = match &*content {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks
            .iter()
            .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => return,
    };
    let Some((_, new)) = replacements.iter().find(|(old, _)| *old == text) else {
        return;
    };
    match content {
        Value::String(s) => *s = new.clone(),
        Value::Array(blocks) => {
            let cache = blocks
                .iter()
                .filter(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .find_map(|b| b.get("cache_control").cloned());
            let at = blocks
                .iter()
                .position(|b| b.get("type").and_then(Value::as_str) == Some("text"))
                .unwrap_or(0);
            blocks.retain(|b| b.get("type").and_then(Value::as_str) != Some("text"));
            let mut block = json!({"type": "text", "text": new});
            if let Some(c) = cache {
                gatehouse_core::json::set(&mut block, "cache_control", c);
            }
            blocks.insert(at.min(blocks.len()), block);
        }
        _ => {}
    }
}

// ---------- responses ----------

pub fn finish_from(s: &str) -> FinishReason {
    match s {
        "end_turn" | "pause_turn" => FinishReason::Stop,
        "max_tokens" | "model_context_window_exceeded" => FinishReason::Length,
        "tool_use" => FinishReason::ToolCalls,
        "stop_sequence" => FinishReason::StopSequence,
        "refusal" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

pub fn finish_to(f: &FinishReason) -> &'static str {
    match f {
        FinishReason::Stop | FinishReason::Other(_) => "end_turn",
        FinishReason::Length => "max_tokens",
        FinishReason::ToolCalls => "tool_use",
        FinishReason::StopSequence => "stop_sequence",
        FinishReason::ContentFilter => "refusal",
    }
}

/// Anthropic usage → the representation (its `input_tokens` leaves cached tokens out).
pub fn usage_from(u: &Value) -> Usage {
    let cache_read = as_u64(u.get("cache_read_input_tokens"));
    let cache_creation = as_u64(u.get("cache_creation_input_tokens"));
    Usage {
        input: as_u64(u.get("input_tokens"))
            .saturating_add(cache_read)
            .saturating_add(cache_creation),
        output: as_u64(u.get("output_tokens")),
        cache_read,
        cache_creation,
        reasoning: 0,
    }
}

pub fn usage_to(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input
            .saturating_sub(u.cache_read.saturating_add(u.cache_creation)),
        "output_tokens": u.output,
        "cache_creation_input_tokens": u.cache_creation,
        "cache_read_input_tokens": u.cache_read,
    })
}

pub fn response_to_ir(body: &[u8]) -> Result<Response, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    Ok(Response {
        id: v.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        choices: vec![Choice {
            content: blocks_to_parts(v.get("content")),
            finish: v
                .get("stop_reason")
                .and_then(Value::as_str)
                .map(finish_from),
        }],
        usage: v.get("usage").filter(|u| u.is_object()).map(usage_from),
    })
}

pub fn response_from_ir(r: &Response) -> Value {
    let c = r.choices.first();
    let content: Vec<Value> = c
        .map(|c| {
            c.content
                .iter()
                .filter(
                    |p| !matches!(p, Part::Thinking { signature: None, text } if text.is_empty()),
                )
                .map(part_to_block)
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": message_id(&r.id),
        "type": "message",
        "role": "assistant",
        "model": r.model,
        "content": content,
        "stop_reason": c.and_then(|c| c.finish.as_ref()).map(finish_to),
        "stop_sequence": null,
        "usage": usage_to(&r.usage.unwrap_or_default()),
    })
}

fn message_id(id: &str) -> String {
    if id.starts_with("msg_") {
        id.to_owned()
    } else {
        format!("msg_{}", id.trim_start_matches("chatcmpl-"))
    }
}

/// Anthropic error `type` for an HTTP status.
pub fn error_type(status: u16) -> &'static str {
    match status {
        400 | 413 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        529 | 503 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error body.
pub fn error_body(status: u16, message: &str) -> Value {
    json!({"type": "error", "error": {"type": error_type(status), "message": message}})
}

/// An Anthropic error body as an OpenAI one (same message; Anthropic's type kept, which OpenAI
/// clients only display: they classify errors by status).
pub fn error_to_openai(body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v
        .get("error")
        .filter(|_| v.get("type").and_then(Value::as_str) == Some("error"))?;
    Some(json!({"error": {
        "message": e.get("message").and_then(Value::as_str).unwrap_or("upstream error"),
        "type": e.get("type").and_then(Value::as_str).unwrap_or("api_error"),
        "code": null,
        "param": null,
    }}))
}

/// An OpenAI error body as an Anthropic one, typed by `status` as Anthropic would.
pub fn error_from_openai(status: u16, body: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(body).ok()?;
    let e = v.get("error").filter(|e| e.is_object())?;
    let message = e
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("upstream error");
    Some(error_body(status, message))
}

// ---------- streams ----------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Block {
    Text,
    Thinking,
    Tool(u32),
    Other,
}

/// Anthropic SSE events → events.
#[derive(Debug, Default)]
pub struct Decoder {
    /// Kind of each content block, by its index.
    blocks: Vec<(u64, Block)>,
    tools: u32,
    usage: Usage,
}

impl Decoder {
    pub fn event(&mut self, data: &[u8], out: &mut Vec<Event>) {
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        match v.get("type").and_then(Value::as_str) {
            Some("message_start") => {
                let m = v.get("message").cloned().unwrap_or(Value::Null);
                if let Some(u) = m.get("usage") {
                    self.usage = usage_from(u);
                }
                out.push(Event::Start {
                    id: m.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                    model: m
                        .get("model")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                });
            }
            Some("content_block_start") => {
                let index = as_u64(v.get("index"));
                let b = v.get("content_block").cloned().unwrap_or(Value::Null);
                let kind = match b.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        if let Some(t) = b
                            .get("text")
                            .and_then(Value::as_str)
                            .filter(|t| !t.is_empty())
                        {
                            out.push(Event::Text {
                                choice: 0,
                                text: t.to_owned(),
                            });
                        }
                        Block::Text
                    }
                    Some("thinking") => Block::Thinking,
                    Some("tool_use") => {
                        let i = self.tools;
                        self.tools += 1;
                        out.push(Event::ToolStart {
                            choice: 0,
                            index: i,
                            id: b.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
                            name: b
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                        });
                        Block::Tool(i)
                    }
                    _ => Block::Other,
                };
                self.blocks.push((index, kind));
            }
            Some("content_block_delta") => {
                let index = as_u64(v.get("index"));
                let kind = self
                    .blocks
                    .iter()
                    .rev()
                    .find(|(i, _)| *i == index)
                    .map(|(_, k)| *k);
                let d = v.get("delta").cloned().unwrap_or(Value::Null);
                let s = |k: &str| d.get(k).and_then(Value::as_str).unwrap_or("").to_owned();
                match (d.get("type").and_then(Value::as_str), kind) {
                    (Some("text_delta"), _) => out.push(Event::Text {
                        choice: 0,
                        text: s("text"),
                    }),
                    (Some("thinking_delta"), _) => out.push(Event::Thinking {
                        choice: 0,
                        text: s("thinking"),
                    }),
                    (Some("signature_delta"), _) => out.push(Event::ThinkingSignature {
                        choice: 0,
                        signature: s("signature"),
                    }),
                    (Some("input_json_delta"), Some(Block::Tool(i))) => {
                        let json = s("partial_json");
                        if !json.is_empty() {
                            out.push(Event::ToolArgs {
                                choice: 0,
                                index: i,
                                json,
                            });
                        }
                    }
                    _ => {}
                }
            }
            Some("message_delta") => {
                if let Some(u) = v.get("usage") {
                    let later = usage_from(u);
                    self.usage.output = later.output;
                    // Newer API versions repeat the input figures here; take them when present.
                    if u.get("input_tokens").is_some() {
                        self.usage.input = later.input;
                        self.usage.cache_read = later.cache_read;
                        self.usage.cache_creation = later.cache_creation;
                    }
                }
                if let Some(r) = v
                    .get("delta")
                    .and_then(|d| d.get("stop_reason"))
                    .and_then(Value::as_str)
                {
                    out.push(Event::Finish {
                        choice: 0,
                        reason: finish_from(r),
                    });
                }
                out.push(Event::Usage(self.usage));
            }
            Some("error") => {
                out.push(super::error_event(v.get("error").unwrap_or(&Value::Null)));
            }
            _ => {}
        }
    }
}

/// Events → Anthropic SSE. Only the first choice is written (the format has one).
#[derive(Debug)]
pub struct Encoder {
    model: String,
    /// Prompt tokens to announce in `message_start` before the provider's figure is known.
    input_estimate: u64,
    started: bool,
    open: Option<(u64, Block)>,
    next: u64,
    stop: Option<FinishReason>,
    usage: Option<Usage>,
}

impl Encoder {
    pub fn new(model: &str, input_estimate: u64) -> Self {
        Self {
            model: model.to_owned(),
            input_estimate,
            started: false,
            open: None,
            next: 0,
            stop: None,
            usage: None,
        }
    }

    fn start(&mut self, id: &str, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let id = if id.is_empty() {
            format!("msg_{}", gatehouse_core::time::now_ms())
        } else {
            message_id(id)
        };
        sse_named(
            "message_start",
            &json!({"type": "message_start", "message": {
                "id": id, "type": "message", "role": "assistant", "model": self.model,
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": self.input_estimate, "output_tokens": 0},
            }}),
            out,
        );
    }

    fn close(&mut self, out: &mut Vec<u8>) {
        if let Some((index, _)) = self.open.take() {
            sse_named(
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": index}),
                out,
            );
        }
    }

    /// Makes sure a block of `kind` is open, starting it with `first` as its content block.
    fn ensure(&mut self, kind: Block, first: Value, out: &mut Vec<u8>) -> u64 {
        if let Some((i, k)) = self.open
            && k == kind
        {
            return i;
        }
        self.start("", out);
        self.close(out);
        let index = self.next;
        self.next += 1;
        self.open = Some((index, kind));
        sse_named(
            "content_block_start",
            &json!({"type": "content_block_start", "index": index, "content_block": first}),
            out,
        );
        index
    }

    fn delta(&mut self, index: u64, delta: Value, out: &mut Vec<u8>) {
        sse_named(
            "content_block_delta",
            &json!({"type": "content_block_delta", "index": index, "delta": delta}),
            out,
        );
    }

    pub fn event(&mut self, e: &Event, out: &mut Vec<u8>) {
        match e {
            Event::Start { id, model } => {
                if self.model.is_empty() {
                    self.model = model.clone();
                }
                self.start(id, out);
            }
            Event::Text { choice: 0, text } => {
                let i = self.ensure(Block::Text, json!({"type": "text", "text": ""}), out);
                self.delta(i, json!({"type": "text_delta", "text": text}), out);
            }
            Event::Thinking { choice: 0, text } => {
                let i = self.ensure(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": ""}),
                    out,
                );
                self.delta(i, json!({"type": "thinking_delta", "thinking": text}), out);
            }
            Event::ThinkingSignature {
                choice: 0,
                signature,
            } => {
                let i = self.ensure(
                    Block::Thinking,
                    json!({"type": "thinking", "thinking": ""}),
                    out,
                );
                self.delta(
                    i,
                    json!({"type": "signature_delta", "signature": signature}),
                    out,
                );
            }
            Event::ToolStart {
                choice: 0,
                index,
                id,
                name,
            } => {
                self.start("", out);
                self.close(out);
                let b = self.next;
                self.next += 1;
                self.open = Some((b, Block::Tool(*index)));
                sse_named(
                    "content_block_start",
                    &json!({"type": "content_block_start", "index": b, "content_block": {"type": "tool_use", "id": id, "name": name, "input": {}}}),
                    out,
                );
            }
            Event::ToolArgs {
                choice: 0,
                index,
                json,
            } => {
                if let Some((b, Block::Tool(i))) = self.open
                    && i == *index
                {
                    self.delta(
                        b,
                        json!({"type": "input_json_delta", "partial_json": json}),
                        out,
                    );
                }
            }
            Event::Finish { choice: 0, reason } => {
                self.stop = Some(reason.clone());
            }
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { kind, message } => {
                self.start("", out);
                let kind = match kind.as_str() {
                    "rate_limit_error"
                    | "overloaded_error"
                    | "invalid_request_error"
                    | "authentication_error"
                    | "permission_error"
                    | "not_found_error" => kind.as_str(),
                    _ => "api_error",
                };
                sse_named(
                    "error",
                    &json!({"type": "error", "error": {"type": kind, "message": message}}),
                    out,
                );
            }
            // Other choices: Anthropic's format has one.
            _ => {}
        }
    }

    /// Closes the open block, then `message_delta` (stop reason, usage) and `message_stop`.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.start("", out);
        self.close(out);
        let u = self.usage.unwrap_or(Usage {
            input: self.input_estimate,
            ..Usage::default()
        });
        sse_named(
            "message_delta",
            &json!({"type": "message_delta",
                "delta": {"stop_reason": finish_to(self.stop.as_ref().unwrap_or(&FinishReason::Stop)), "stop_sequence": null},
                "usage": usage_to(&u)}),
            out,
        );
        sse_named("message_stop", &json!({"type": "message_stop"}), out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_replaced_in_place_keeping_markers_and_other_blocks() {
        let body = json!({"model": "m", "extra": true, "messages": [
            {"role": "user", "content": "plain old"},
            {"role": "user", "content": [
                {"type": "image", "source": {"type": "url", "url": "u"}},
                {"type": "text", "text": "a"},
                {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": "result old"}]},
            {"role": "user", "content": "untouched"}]});
        let out = replace_texts(
            body.to_string().as_bytes(),
            &[
                ("plain old".into(), "plain new".into()),
                ("a\nb".into(), "ab new".into()),
                ("result old".into(), "result new".into()),
            ],
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["extra"], true);
        assert_eq!(v["messages"][0]["content"], "plain new");
        assert_eq!(
            v["messages"][1]["content"],
            json!([{"type": "image", "source": {"type": "url", "url": "u"}},
                   {"type": "text", "text": "ab new", "cache_control": {"type": "ephemeral"}}])
        );
        assert_eq!(v["messages"][2]["content"][0]["content"], "result new");
        assert_eq!(v["messages"][3]["content"], "untouched");
        assert!(replace_texts(b"not json", &[]).is_none());
    }

    #[test]
    fn system_messages_inside_messages_join_the_system_prompt() {
        let body = r#"{"model":"c","max_tokens":8,
"system":[{"type":"text","text":"one"},{"type":"text","text":"two"}],
"messages":[
 {"role":"user","content":"task"},
 {"role":"system","content":[{"type":"text","text":"reminder","cache_control":{"type":"ephemeral"}}]},
 {"role":"assistant","content":"ok"},
 {"role":"user","content":"more"}]}"#;
        let ir = request_to_ir(body.as_bytes()).unwrap();
        assert_eq!(ir.system, ["one", "two", "reminder"]);
        assert_eq!(ir.messages.len(), 3);
        // OpenAI layout: 1 system, then task, ok, more; the raw system message counts nothing.
        assert_eq!(messages_before(body.as_bytes(), 1), Some(0));
        assert_eq!(
            messages_before(body.as_bytes(), 2),
            Some(1),
            "the reminder stays"
        );
        assert_eq!(messages_before(body.as_bytes(), 3), Some(3));
        assert_eq!(messages_before(body.as_bytes(), 4), Some(4));
        assert_eq!(messages_before(body.as_bytes(), 5), None);
        let err = request_to_ir(br#"{"messages":[{"role":"tool","content":"x"}]}"#).unwrap_err();
        assert_eq!(
            err.0,
            "message role must be `user`, `assistant` or `system`, not `tool`"
        );
    }

    #[test]
    fn a_compaction_splices_into_the_clients_own_bytes() {
        let body = r#"{"model":"claude","max_tokens":64,"top_k":5,"thinking":{"type":"enabled","budget_tokens":1024},"x-unknown":1,
"system":[{"type":"text","text":"You are Claude Code.","cache_control":{"type":"ephemeral"}}],
"messages":[
 {"role":"user","content":"first task"},
 {"role":"assistant","content":[{"type":"tool_use","id":"t1","name":"read","input":{}}]},
 {"role":"user","content":[{"type":"tool_result","tool_use_id":"t1","content":"file"}]},
 {"role":"assistant","content":"ok"},
 {"role":"user","content":[{"type":"text","text":"next","cache_control":{"type":"ephemeral"}}]},
 {"role":"assistant","content":[{"type":"thinking","thinking":"hmm","signature":"c2lnbmVk"},{"type":"text","text":"done"}]},
 {"role":"user","content":"last"}]}"#;
        // OpenAI layout: 1 system, then 1, 1, 1 (the tool result), 1, 1, 1, 1.
        assert_eq!(messages_before(body.as_bytes(), 1), Some(0));
        assert_eq!(messages_before(body.as_bytes(), 5), Some(4));
        assert_eq!(messages_before(body.as_bytes(), 8), Some(7));
        assert_eq!(messages_before(body.as_bytes(), 9), None);
        let out = splice_compaction(body.as_bytes(), 4, "SUMMARY").unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["top_k"], 5);
        assert_eq!(v["thinking"]["budget_tokens"], 1024);
        assert_eq!(v["x-unknown"], 1);
        assert_eq!(v["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(v["system"][1]["text"], "SUMMARY");
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0]["content"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(m[1]["content"][0]["signature"], "c2lnbmVk");
        // The kept messages are the client's bytes.
        let tail = &body[body
            .find(r#"{"role":"user","content":[{"type":"text","text":"next""#)
            .unwrap()..];
        assert!(String::from_utf8_lossy(&out).ends_with(tail));
        // A string system, no system at all, and everything summarised.
        let s = splice_compaction(
            br#"{"system":"be brief","messages":[{"role":"user","content":"a"}]}"#,
            0,
            "S",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["system"][0]["text"], "be brief");
        assert_eq!(v["system"][1]["text"], "S");
        let s = splice_compaction(
            br#"{"messages":[{"role":"user","content":"a"},{"role":"user","content":"b"}]}"#,
            2,
            "S",
        )
        .unwrap();
        let v: Value = serde_json::from_slice(&s).unwrap();
        assert_eq!(v["system"][0]["text"], "S");
        assert_eq!(v["messages"], json!([]));
        let s = splice_compaction(br#"{"system":[],"messages":[]}"#, 0, "S").unwrap();
        assert_eq!(
            serde_json::from_slice::<Value>(&s).unwrap()["system"][0]["text"],
            "S"
        );
        assert!(splice_compaction(b"[]", 0, "S").is_none());
    }
}
