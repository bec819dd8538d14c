//! OpenAI Responses ⇄ the internal representation: requests (`input` items), whole responses
//! (`output` items), and a stream as the Responses event sequence. Responses is a client format
//! here: a request is read into the representation and sent on in the provider's format, and the
//! provider's answer comes back as a Response object.

use serde_json::{Map, Value, json};

use super::ir::{
    Event, FinishReason, Message, Part, Request, Response, Role, Tool, ToolChoice, Usage,
};
use super::openai::{arguments_text, image_from_url, image_url, parse_arguments};
use super::{TranslateError, as_u64, field_str, put, sse_named};

// ---------- requests ----------

/// Top-level fields the gateway reads (translated, or handled itself: `store` and
/// `previous_response_id` by its response store, `metadata` echoed, `prompt_cache_key` naming the
/// session, `include` asking for what only OpenAI can produce).
const MAPPED: &[&str] = &[
    "model",
    "stream",
    "input",
    "instructions",
    "max_output_tokens",
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "parallel_tool_calls",
    "tools",
    "tool_choice",
    "text",
    "reasoning",
    "store",
    "previous_response_id",
    "metadata",
    "prompt_cache_key",
    "include",
    "stream_options",
    "client_metadata",
];

/// A Responses request read into the representation, with what a translation leaves out (for
/// the row's notes).
pub fn request_to_ir_noting(body: &[u8]) -> Result<(Request, Vec<String>), TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let o = v
        .as_object()
        .ok_or_else(|| TranslateError::shape("the body must be a JSON object"))?;
    let mut left: Vec<String> = o
        .keys()
        .filter(|k| !MAPPED.contains(&k.as_str()))
        .cloned()
        .collect();
    let mut r = Request {
        model: field_str(o, "model").unwrap_or_default().to_owned(),
        stream: o.get("stream").and_then(Value::as_bool).unwrap_or(false),
        max_tokens: o.get("max_output_tokens").and_then(Value::as_u64),
        temperature: o.get("temperature").and_then(Value::as_f64),
        top_p: o.get("top_p").and_then(Value::as_f64),
        user: field_str(o, "user")
            .or_else(|| field_str(o, "safety_identifier"))
            .map(str::to_owned),
        parallel_tool_calls: o.get("parallel_tool_calls").and_then(Value::as_bool),
        reasoning_effort: o
            .get("reasoning")
            .and_then(|r| r.get("effort"))
            .and_then(Value::as_str)
            .map(str::to_owned),
        ..Request::default()
    };
    if let Some(i) = field_str(o, "instructions").filter(|i| !i.is_empty()) {
        r.system.push(i.to_owned());
    }
    match o.get("input") {
        Some(Value::String(s)) => push(&mut r, Role::User, vec![Part::Text(s.clone())]),
        Some(Value::Array(items)) => {
            let mut skipped: Vec<&str> = Vec::new();
            for item in items {
                read_item(item, &mut r, &mut skipped)?;
            }
            skipped.sort_unstable();
            skipped.dedup();
            left.extend(skipped.iter().map(|k| format!("{k} items")));
        }
        None | Some(Value::Null) => {}
        Some(_) => {
            return Err(TranslateError::shape(
                "`input` must be a string or an array of input items",
            ));
        }
    }
    let mut other_tools: Vec<&str> = Vec::new();
    for t in o
        .get("tools")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let kind = t.get("type").and_then(Value::as_str).unwrap_or("function");
        match (kind, t.get("name").and_then(Value::as_str)) {
            ("function", Some(name)) => r.tools.push(Tool {
                name: name.to_owned(),
                description: t
                    .get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                parameters: t
                    .get("parameters")
                    .filter(|p| p.is_object())
                    .cloned()
                    .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
            }),
            // Built-in tools (web search, file search, …) run at OpenAI; nowhere else.
            _ => other_tools.push(kind),
        }
    }
    other_tools.sort_unstable();
    other_tools.dedup();
    left.extend(other_tools.iter().map(|k| format!("{k} tool")));
    r.tool_choice = match o.get("tool_choice") {
        Some(Value::String(s)) => match s.as_str() {
            "none" => Some(ToolChoice::None),
            "required" => Some(ToolChoice::Required),
            _ => Some(ToolChoice::Auto),
        },
        Some(Value::Object(c)) => match c.get("name").and_then(Value::as_str) {
            Some(n) if c.get("type").and_then(Value::as_str) == Some("function") => {
                Some(ToolChoice::Tool(n.to_owned()))
            }
            _ => Some(ToolChoice::Auto),
        },
        _ => None,
    };
    r.response_format = o
        .get("text")
        .and_then(|t| t.get("format"))
        .and_then(response_format);
    Ok((r, left))
}

/// `text.format` as chat completions' `response_format`.
fn response_format(f: &Value) -> Option<Value> {
    match f.get("type").and_then(Value::as_str)? {
        "json_schema" => {
            let mut s = Map::new();
            s.insert(
                "name".into(),
                f.get("name").cloned().unwrap_or_else(|| json!("response")),
            );
            for k in ["schema", "strict", "description"] {
                if let Some(v) = f.get(k) {
                    s.insert(k.into(), v.clone());
                }
            }
            Some(json!({"type": "json_schema", "json_schema": s}))
        }
        "json_object" => Some(json!({"type": "json_object"})),
        _ => None,
    }
}

fn read_item<'a>(
    item: &'a Value,
    r: &mut Request,
    skipped: &mut Vec<&'a str>,
) -> Result<(), TranslateError> {
    let kind = item
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("message");
    match kind {
        "message" => {
            let role = item.get("role").and_then(Value::as_str).unwrap_or("user");
            let parts = content_parts(item.get("content"));
            match role {
                "system" | "developer" => {
                    let text = texts(&parts);
                    if !text.is_empty() {
                        r.system.push(text);
                    }
                }
                "user" => push(r, Role::User, parts),
                "assistant" => push(r, Role::Assistant, parts),
                other => {
                    return Err(TranslateError::shape(format!(
                        "message role must be `user`, `assistant`, `system` or `developer`, not `{other}`"
                    )));
                }
            }
        }
        "function_call" => push(
            r,
            Role::Assistant,
            vec![Part::ToolUse {
                id: call_id(item),
                name: item
                    .get("name")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_owned(),
                input: parse_arguments(item.get("arguments").and_then(Value::as_str).unwrap_or("")),
            }],
        ),
        "function_call_output" => {
            let content = match item.get("output") {
                Some(Value::String(s)) => vec![Part::Text(s.clone())],
                other => content_parts(other),
            };
            push(
                r,
                Role::User,
                vec![Part::ToolResult {
                    id: call_id(item),
                    content,
                    is_error: false,
                }],
            );
        }
        // Reasoning items (summaries, encrypted content) only mean something to OpenAI; the
        // rest (built-in tool calls, item references) has no equivalent elsewhere.
        other => skipped.push(other),
    }
    Ok(())
}

fn call_id(item: &Value) -> String {
    item.get("call_id")
        .or_else(|| item.get("id"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Content parts: a string, or `input_text` / `output_text` / `refusal` / `input_image` parts.
fn content_parts(c: Option<&Value>) -> Vec<Part> {
    match c {
        Some(Value::String(s)) => vec![Part::Text(s.clone())],
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| match p.get("type").and_then(Value::as_str)? {
                "input_text" | "output_text" | "text" => p
                    .get("text")
                    .and_then(Value::as_str)
                    .map(|t| Part::Text(t.to_owned())),
                "refusal" => p
                    .get("refusal")
                    .and_then(Value::as_str)
                    .map(|t| Part::Text(t.to_owned())),
                "input_image" => {
                    let url = p
                        .get("image_url")
                        .and_then(|u| u.as_str().or_else(|| u.get("url")?.as_str()))?;
                    Some(Part::Image(image_from_url(url)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn texts(parts: &[Part]) -> String {
    parts
        .iter()
        .filter_map(|p| match p {
            Part::Text(t) => Some(t.as_str()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Assistant items in a row make one message (a text and its function calls are one turn), and
/// so do call outputs in a row; user messages stay apart, as the client sent them.
fn push(r: &mut Request, role: Role, content: Vec<Part>) {
    if content.is_empty() {
        return;
    }
    let results = |c: &[Part]| c.iter().all(|p| matches!(p, Part::ToolResult { .. }));
    if let Some(last) = r.messages.last_mut()
        && last.role == role
        && (role == Role::Assistant || (results(&last.content) && results(&content)))
    {
        last.content.extend(content);
        return;
    }
    r.messages.push(Message { role, content });
}

/// The representation as a Responses request (for a provider that speaks it, and the round-trip
/// test).
pub fn request_from_ir(r: &Request) -> Value {
    let mut input = Vec::new();
    for m in &r.messages {
        let mut content = Vec::new();
        let flush = |content: &mut Vec<Value>, input: &mut Vec<Value>| {
            if !content.is_empty() {
                let role = match m.role {
                    Role::User => "user",
                    Role::Assistant => "assistant",
                };
                input.push(
                    json!({"type": "message", "role": role, "content": std::mem::take(content)}),
                );
            }
        };
        for p in &m.content {
            match p {
                Part::Text(t) => content.push(match m.role {
                    Role::User => json!({"type": "input_text", "text": t}),
                    Role::Assistant => json!({"type": "output_text", "text": t}),
                }),
                Part::Image(i) => {
                    content.push(json!({"type": "input_image", "image_url": image_url(i)}));
                }
                Part::ToolUse {
                    id,
                    name,
                    input: args,
                } => {
                    flush(&mut content, &mut input);
                    input.push(json!({"type": "function_call", "call_id": id, "name": name, "arguments": arguments_text(args)}));
                }
                Part::ToolResult { id, content: c, .. } => {
                    flush(&mut content, &mut input);
                    input.push(json!({"type": "function_call_output", "call_id": id, "output": super::openai::content_text(c)}));
                }
                Part::Thinking { .. } | Part::RedactedThinking(_) => {}
            }
        }
        flush(&mut content, &mut input);
    }
    let mut o = Map::new();
    o.insert("model".into(), json!(r.model));
    if !r.system.is_empty() {
        o.insert("instructions".into(), json!(r.system.join("\n\n")));
    }
    o.insert("input".into(), Value::Array(input));
    if r.stream {
        o.insert("stream".into(), json!(true));
    }
    put(&mut o, "max_output_tokens", r.max_tokens);
    put(&mut o, "temperature", r.temperature);
    put(&mut o, "top_p", r.top_p);
    put(&mut o, "user", r.user.as_ref());
    if !r.tools.is_empty() {
        let tools: Vec<Value> = r
            .tools
            .iter()
            .map(|t| {
                let mut f = json!({"type": "function", "name": t.name, "parameters": t.parameters});
                if let Some(d) = &t.description {
                    gatehouse_core::json::set(&mut f, "description", json!(d));
                }
                f
            })
            .collect();
        o.insert("tools".into(), Value::Array(tools));
    }
    if let Some(c) = &r.tool_choice {
        o.insert(
            "tool_choice".into(),
            match c {
                ToolChoice::Auto => json!("auto"),
                ToolChoice::None => json!("none"),
                ToolChoice::Required => json!("required"),
                ToolChoice::Tool(n) => json!({"type": "function", "name": n}),
            },
        );
    }
    put(&mut o, "parallel_tool_calls", r.parallel_tool_calls);
    Value::Object(o)
}

// ---------- responses ----------

/// What every Response object of one request says besides its output: its id and time, the
/// model the client asked for, and the request's settings echoed back (as OpenAI does).
#[derive(Debug, Clone)]
pub struct Meta {
    pub id: String,
    pub created_at: i64,
    pub model: String,
    pub echo: Map<String, Value>,
}

impl Meta {
    /// The echo of a Responses request body; `id` is the response's (`resp_…`).
    pub fn of_request(body: &[u8], id: String, created_at: i64) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(o)) => Self::of_object(&o, id, created_at),
            _ => Self::of_object(&Map::new(), id, created_at),
        }
    }

    /// [`of_request`](Self::of_request) of a body already parsed.
    pub fn of_object(v: &Map<String, Value>, id: String, created_at: i64) -> Self {
        let get = |k: &str| v.get(k).cloned();
        let mut echo = Map::new();
        for (k, default) in [
            ("instructions", Value::Null),
            ("max_output_tokens", Value::Null),
            ("metadata", json!({})),
            ("parallel_tool_calls", json!(true)),
            ("previous_response_id", Value::Null),
            ("reasoning", json!({"effort": null, "summary": null})),
            ("store", json!(true)),
            ("temperature", json!(1.0)),
            ("text", json!({"format": {"type": "text"}})),
            ("tool_choice", json!("auto")),
            ("tools", json!([])),
            ("top_p", json!(1.0)),
            ("truncation", json!("disabled")),
            ("user", Value::Null),
        ] {
            echo.insert(
                k.to_owned(),
                get(k).filter(|v| !v.is_null()).unwrap_or(default),
            );
        }
        Self {
            id,
            created_at,
            model: v
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
            echo,
        }
    }

    /// The id's unique part, for item ids.
    pub fn stem(&self) -> &str {
        self.id.strip_prefix("resp_").unwrap_or(&self.id)
    }

    fn object(&self, status: &str, output: Vec<Value>, usage: Option<&Usage>) -> Value {
        let mut o = Map::new();
        o.insert("id".into(), json!(self.id));
        o.insert("object".into(), json!("response"));
        o.insert("created_at".into(), json!(self.created_at));
        o.insert("status".into(), json!(status));
        o.insert("error".into(), Value::Null);
        let incomplete = match status {
            "incomplete" => json!({"reason": "max_output_tokens"}),
            _ => Value::Null,
        };
        o.insert("incomplete_details".into(), incomplete);
        o.insert("model".into(), json!(self.model));
        o.insert("output".into(), Value::Array(output));
        for (k, v) in &self.echo {
            o.insert(k.clone(), v.clone());
        }
        o.insert("usage".into(), usage.map_or(Value::Null, usage_to));
        Value::Object(o)
    }
}

pub fn usage_to(u: &Usage) -> Value {
    json!({
        "input_tokens": u.input,
        "input_tokens_details": {"cached_tokens": u.cache_read},
        "output_tokens": u.output,
        "output_tokens_details": {"reasoning_tokens": u.reasoning},
        "total_tokens": u.input.saturating_add(u.output),
    })
}

pub fn usage_from(u: &Value) -> Usage {
    Usage {
        input: as_u64(u.get("input_tokens")),
        output: as_u64(u.get("output_tokens")),
        cache_read: as_u64(
            u.get("input_tokens_details")
                .and_then(|d| d.get("cached_tokens")),
        ),
        cache_creation: 0,
        reasoning: as_u64(
            u.get("output_tokens_details")
                .and_then(|d| d.get("reasoning_tokens")),
        ),
    }
}

/// A response's status for how its answer finished.
fn status_of(f: Option<&FinishReason>) -> &'static str {
    match f {
        Some(FinishReason::Length | FinishReason::ContentFilter) => "incomplete",
        _ => "completed",
    }
}

/// A whole answer as a Response object (the first choice: the format has one).
pub fn response_from_ir(r: &Response, meta: &Meta) -> Value {
    let c = r.choices.first();
    let mut output = Vec::new();
    let mut text = String::new();
    let stem = meta.stem();
    let flush = |text: &mut String, output: &mut Vec<Value>| {
        if !text.is_empty() {
            let id = format!("msg_{stem}_{}", output.len());
            output.push(message_item(&id, &std::mem::take(text), "completed"));
        }
    };
    for p in c.map(|c| c.content.as_slice()).unwrap_or_default() {
        match p {
            Part::Text(t) => text.push_str(t),
            Part::Thinking { text: t, .. } if !t.is_empty() => {
                flush(&mut text, &mut output);
                let id = format!("rs_{stem}_{}", output.len());
                output.push(reasoning_item(&id, t));
            }
            Part::ToolUse { id, name, input } => {
                flush(&mut text, &mut output);
                let item = format!("fc_{stem}_{}", output.len());
                output.push(call_item(
                    &item,
                    id,
                    name,
                    &arguments_text(input),
                    "completed",
                ));
            }
            _ => {}
        }
    }
    flush(&mut text, &mut output);
    let usage = r.usage.unwrap_or_default();
    meta.object(
        status_of(c.and_then(|c| c.finish.as_ref())),
        output,
        Some(&usage),
    )
}

/// A Response object read back into the representation (what the gateway stored, or a provider
/// that speaks Responses).
pub fn response_to_ir(body: &[u8]) -> Result<Response, TranslateError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| TranslateError::json(&e))?;
    let mut content = Vec::new();
    let mut called = false;
    for item in v
        .get("output")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        match item.get("type").and_then(Value::as_str) {
            Some("message") => content.extend(content_parts(item.get("content"))),
            Some("function_call") => {
                called = true;
                content.push(Part::ToolUse {
                    id: call_id(item),
                    name: item
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    input: parse_arguments(
                        item.get("arguments").and_then(Value::as_str).unwrap_or(""),
                    ),
                });
            }
            Some("reasoning") => {
                let text = summary_text(item);
                if !text.is_empty() {
                    content.push(Part::Thinking {
                        text,
                        signature: None,
                    });
                }
            }
            _ => {}
        }
    }
    let finish = match v.get("status").and_then(Value::as_str) {
        Some("incomplete") => FinishReason::Length,
        _ if called => FinishReason::ToolCalls,
        _ => FinishReason::Stop,
    };
    Ok(Response {
        id: v.get("id").and_then(Value::as_str).unwrap_or("").to_owned(),
        model: v
            .get("model")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        choices: vec![super::ir::Choice {
            content,
            finish: Some(finish),
        }],
        usage: v.get("usage").filter(|u| u.is_object()).map(usage_from),
    })
}

fn summary_text(item: &Value) -> String {
    item.get("summary")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|s| s.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("\n")
}

fn message_item(id: &str, text: &str, status: &str) -> Value {
    json!({"type": "message", "id": id, "status": status, "role": "assistant",
           "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]})
}

fn reasoning_item(id: &str, text: &str) -> Value {
    json!({"type": "reasoning", "id": id, "summary": [{"type": "summary_text", "text": text}]})
}

fn call_item(id: &str, call_id: &str, name: &str, arguments: &str, status: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
           "arguments": arguments, "status": status})
}

/// An error as the Responses API writes it (the chat completions shape).
pub fn error_body(message: &str, kind: &str, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
}

// ---------- streams ----------

/// The output item being written.
#[derive(Debug)]
enum Open {
    Message {
        id: String,
        text: String,
    },
    Reasoning {
        id: String,
        text: String,
    },
    Call {
        id: String,
        call_id: String,
        name: String,
        args: String,
        index: u32,
    },
}

/// Events → the Responses event sequence: `response.created`, `response.in_progress`, per
/// output item `…output_item.added`, its deltas and `…output_item.done`, then
/// `response.completed` (or `response.incomplete`) with the whole Response and its usage.
#[derive(Debug)]
pub struct Encoder {
    meta: Meta,
    seq: u64,
    started: bool,
    open: Option<Open>,
    /// Finished output items, for the closing Response.
    done: Vec<Value>,
    finish: Option<FinishReason>,
    usage: Option<Usage>,
    /// The closing Response, once written.
    completed: Option<Value>,
}

impl Encoder {
    pub fn new(meta: Meta) -> Self {
        Self {
            meta,
            seq: 0,
            started: false,
            open: None,
            done: Vec::new(),
            finish: None,
            usage: None,
            completed: None,
        }
    }

    fn emit(&mut self, kind: &str, mut v: Value, out: &mut Vec<u8>) {
        gatehouse_core::json::set(&mut v, "type", json!(kind));
        gatehouse_core::json::set(&mut v, "sequence_number", json!(self.seq));
        self.seq += 1;
        sse_named(kind, &v, out);
    }

    fn start(&mut self, out: &mut Vec<u8>) {
        if self.started {
            return;
        }
        self.started = true;
        let r = self.meta.object("in_progress", Vec::new(), None);
        self.emit("response.created", json!({"response": r}), out);
        let r = self.meta.object("in_progress", Vec::new(), None);
        self.emit("response.in_progress", json!({"response": r}), out);
    }

    fn index(&self) -> usize {
        self.done.len()
    }

    fn item_id(&self, prefix: &str) -> String {
        format!("{prefix}_{}_{}", self.meta.stem(), self.index())
    }

    /// Ends the open item: its `…done` events and `response.output_item.done`.
    fn close(&mut self, out: &mut Vec<u8>) {
        let Some(open) = self.open.take() else {
            return;
        };
        let i = self.index();
        let item = match open {
            Open::Message { id, text } => {
                let part =
                    json!({"type": "output_text", "text": text, "annotations": [], "logprobs": []});
                self.emit(
                    "response.output_text.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "text": text, "logprobs": []}),
                    out,
                );
                self.emit(
                    "response.content_part.done",
                    json!({"item_id": id, "output_index": i, "content_index": 0, "part": part}),
                    out,
                );
                message_item(&id, &text, "completed")
            }
            Open::Reasoning { id, text } => {
                self.emit(
                    "response.reasoning_summary_text.done",
                    json!({"item_id": id, "output_index": i, "summary_index": 0, "text": text}),
                    out,
                );
                self.emit(
                    "response.reasoning_summary_part.done",
                    json!({"item_id": id, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": text}}),
                    out,
                );
                reasoning_item(&id, &text)
            }
            Open::Call {
                id,
                call_id,
                name,
                args,
                ..
            } => {
                self.emit(
                    "response.function_call_arguments.done",
                    json!({"item_id": id, "output_index": i, "arguments": args}),
                    out,
                );
                call_item(&id, &call_id, &name, &args, "completed")
            }
        };
        self.emit(
            "response.output_item.done",
            json!({"output_index": i, "item": item}),
            out,
        );
        self.done.push(item);
    }

    fn open_message(&mut self, out: &mut Vec<u8>) {
        if matches!(self.open, Some(Open::Message { .. })) {
            return;
        }
        self.close(out);
        let (id, i) = (self.item_id("msg"), self.index());
        self.emit(
            "response.output_item.added",
            json!({"output_index": i, "item": {"type": "message", "id": id, "status": "in_progress", "role": "assistant", "content": []}}),
            out,
        );
        self.emit(
            "response.content_part.added",
            json!({"item_id": id, "output_index": i, "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}}),
            out,
        );
        self.open = Some(Open::Message {
            id,
            text: String::new(),
        });
    }

    fn open_reasoning(&mut self, out: &mut Vec<u8>) {
        if matches!(self.open, Some(Open::Reasoning { .. })) {
            return;
        }
        self.close(out);
        let (id, i) = (self.item_id("rs"), self.index());
        self.emit(
            "response.output_item.added",
            json!({"output_index": i, "item": {"type": "reasoning", "id": id, "summary": []}}),
            out,
        );
        self.emit(
            "response.reasoning_summary_part.added",
            json!({"item_id": id, "output_index": i, "summary_index": 0, "part": {"type": "summary_text", "text": ""}}),
            out,
        );
        self.open = Some(Open::Reasoning {
            id,
            text: String::new(),
        });
    }

    pub fn event(&mut self, e: &Event, out: &mut Vec<u8>) {
        match e {
            Event::Start { .. } => self.start(out),
            Event::Text { choice: 0, text } => {
                self.start(out);
                self.open_message(out);
                let i = self.index();
                if let Some(Open::Message { id, text: all }) = &mut self.open {
                    all.push_str(text);
                    let id = id.clone();
                    self.emit(
                        "response.output_text.delta",
                        json!({"item_id": id, "output_index": i, "content_index": 0, "delta": text, "logprobs": []}),
                        out,
                    );
                }
            }
            Event::Thinking { choice: 0, text } => {
                self.start(out);
                self.open_reasoning(out);
                let i = self.index();
                if let Some(Open::Reasoning { id, text: all }) = &mut self.open {
                    all.push_str(text);
                    let id = id.clone();
                    self.emit(
                        "response.reasoning_summary_text.delta",
                        json!({"item_id": id, "output_index": i, "summary_index": 0, "delta": text}),
                        out,
                    );
                }
            }
            Event::ToolStart {
                choice: 0,
                index,
                id,
                name,
            } => {
                self.start(out);
                self.close(out);
                let (item, i) = (self.item_id("fc"), self.index());
                self.emit(
                    "response.output_item.added",
                    json!({"output_index": i, "item": call_item(&item, id, name, "", "in_progress")}),
                    out,
                );
                self.open = Some(Open::Call {
                    id: item,
                    call_id: id.clone(),
                    name: name.clone(),
                    args: String::new(),
                    index: *index,
                });
            }
            Event::ToolArgs {
                choice: 0,
                index,
                json,
            } => {
                let i = self.index();
                if let Some(Open::Call {
                    id,
                    args,
                    index: open,
                    ..
                }) = &mut self.open
                    && open == index
                {
                    args.push_str(json);
                    let id = id.clone();
                    self.emit(
                        "response.function_call_arguments.delta",
                        json!({"item_id": id, "output_index": i, "delta": json}),
                        out,
                    );
                }
            }
            Event::Finish { choice: 0, reason } => self.finish = Some(reason.clone()),
            Event::Usage(u) => self.usage = Some(*u),
            Event::Error { kind, message } => {
                self.start(out);
                let mut r = self.meta.object(
                    "failed",
                    std::mem::take(&mut self.done),
                    self.usage.as_ref(),
                );
                gatehouse_core::json::set(
                    &mut r,
                    "error",
                    json!({"code": kind, "message": message}),
                );
                self.emit("response.failed", json!({"response": r}), out);
            }
            // Other choices, and signatures: the format has one choice and no signatures.
            _ => {}
        }
    }

    /// Closes the open item, then `response.completed` (or `response.incomplete`).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        self.start(out);
        self.close(out);
        let status = status_of(self.finish.as_ref());
        let usage = self.usage.unwrap_or_default();
        let r = self
            .meta
            .object(status, std::mem::take(&mut self.done), Some(&usage));
        let kind = if status == "incomplete" {
            "response.incomplete"
        } else {
            "response.completed"
        };
        self.emit(kind, json!({"response": r.clone()}), out);
        self.completed = Some(r);
    }

    /// The closing Response, once [`finish`](Self::finish) wrote it.
    pub fn completed(&mut self) -> Option<Value> {
        self.completed.take()
    }
}
