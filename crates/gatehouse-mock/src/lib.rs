//! A mock OpenAI-compatible provider, the only thing Gatehouse's tests fake: the outside world.
//!
//! Behaviour is chosen by the upstream model name, a `+`-separated list of directives, so a test
//! scripts a scenario just by asking the gateway for `mock/<directives>`:
//!
//! | directive | effect |
//! |---|---|
//! | `chunks:N` | N content pieces (default 3), streamed as N chunks |
//! | `delay:MS` | wait MS before each stream chunk (or before a non-streamed answer) |
//! | `gap:MS` | streams: wait MS before each chunk after the first |
//! | `fail:N` | answer 503 (overloaded: safe to retry) to the first N attempts of a request (counted per `X-Request-ID`) |
//! | `status:C` | always answer status C with an OpenAI error body |
//! | `first:MS` | on the first attempt only, wait MS before the response head |
//! | `silent:N` | streams: send the head, then nothing, for the first N attempts |
//! | `empty:N` | streams: send the head and close at once, for the first N attempts |
//! | `cut:N` | streams: break the connection after N chunks |
//! | `nousage` | never report usage |
//! | `hugeusage` | whole answers report usage near `u64::MAX` (a broken provider) |
//! | `usagelast` | streams: put usage in the finish chunk, asked or not (Mistral's way) |
//! | `nostreamopts` | answer 422 to a body with `stream_options` (Mistral's way) |
//! | `tool` | call the request's first tool (`{"city": "Paris"}`), unless the last message is a tool result |
//! | `retryafter:S` | error answers carry `Retry-After: S` |
//! | `hold:N` | wait before answering until N requests are open at the mock at once (at most 10 s; in-process mocks only) |
//! | `shell` | call the request's shell tool (Codex `exec_command`/`shell`, Claude Code `Bash`, Gemini CLI `run_shell_command`) to run `echo gatehouse-tool-ok`; once its result is back, answer `Tool said: <result>` |
//!
//! `GET /mock/captured` lists the requests received (path and body) when the mock runs with
//! `--capture` (the real-client tests read it). `GET /mock/stats` says how an in-process mock
//! (`Mock::spawn`, the tests') was reached: the most requests open at once, the HTTP/2
//! requests, the connections seen.
//!
//! `POST /v1/messages` answers in Anthropic's format with the same directives (errors in its
//! shape, `x-api-key` required, `max_tokens` required); `POST /v1/models/{m}:generateContent`
//! and `:streamGenerateContent` in Gemini's (`x-goog-api-key` required; `safety` blocks);
//! `POST /api/chat` in Ollama's (NDJSON streams); `POST /v1/responses` in OpenAI's Responses API
//! (a Response object or its event stream; a `reasoning` item with encrypted content when the
//! request asks to `include` it).
//!
//! Responses are deterministic (fixed id and timestamp), so a test can compare the bytes a client
//! gets through the gateway with the bytes the mock sends directly.

mod anthropic;
mod gemini;
mod ollama;
mod responses;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

/// Prompt tokens the mock reports for every request.
pub const PROMPT_TOKENS: u64 = 11;
/// Cached prompt tokens the mock reports.
pub const CACHED_TOKENS: u64 = 4;

/// A request as the mock received it.
#[derive(Debug, Clone)]
pub struct Captured {
    pub headers: HeaderMap,
    pub body: Value,
}

#[derive(Default)]
pub(crate) struct Shared {
    attempts: Mutex<HashMap<String, u32>>,
    captured: Mutex<Vec<Captured>>,
    /// Keep a log only when asked: benchmarks must not grow memory.
    capture: bool,
    /// How the mock is reached, kept by in-process mocks only: benchmarks must not pay for it.
    tracked: bool,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    open: AtomicUsize,
    max_open: AtomicUsize,
    http2: AtomicU64,
    peers: Mutex<HashSet<SocketAddr>>,
    /// Woken whenever a request opens, for `hold:N`.
    opened: tokio::sync::Notify,
}

/// Counts a request open until its response body is gone.
struct OpenGuard(Arc<Shared>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.stats.open.fetch_sub(1, Ordering::SeqCst);
    }
}

async fn track(
    State(shared): State<Arc<Shared>>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let st = &shared.stats;
    if req.version() == axum::http::Version::HTTP_2 {
        st.http2.fetch_add(1, Ordering::SeqCst);
    }
    if let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>() {
        lock(&st.peers).insert(*peer);
    }
    let now = st.open.fetch_add(1, Ordering::SeqCst) + 1;
    st.max_open.fetch_max(now, Ordering::SeqCst);
    st.opened.notify_waiters();
    let guard = OpenGuard(shared.clone());
    let (parts, body) = next.run(req).await.into_parts();
    let body = futures_util::StreamExt::map(body.into_data_stream(), move |chunk| {
        let _open = &guard;
        chunk
    });
    Response::from_parts(parts, Body::from_stream(body))
}

/// `hold:N`: until N requests have been open at once, or 10 s. The most ever open, not the
/// number open now: the first released may finish before the last wakes.
async fn hold(shared: &Shared, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let opened = shared.stats.opened.notified();
        if shared.stats.max_open.load(Ordering::SeqCst) >= n {
            return;
        }
        if tokio::time::timeout_at(deadline, opened).await.is_err() {
            return;
        }
    }
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    let st = &shared.stats;
    json_response(
        StatusCode::OK,
        &json!({
            "max_open": st.max_open.load(Ordering::SeqCst),
            "http2_requests": st.http2.load(Ordering::SeqCst),
            "connections": lock(&st.peers).len(),
        }),
    )
}

/// A running mock, for tests.
#[derive(Clone)]
pub struct Mock {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Mock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mock").field("addr", &self.addr).finish()
    }
}

impl Mock {
    /// Starts a capturing mock on a free loopback port.
    pub async fn spawn() -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            capture: true,
            tracked: true,
            ..Shared::default()
        });
        let app = app(shared.clone())
            .layer(axum::middleware::from_fn_with_state(shared.clone(), track))
            .into_make_service_with_connect_info::<SocketAddr>();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, shared })
    }

    /// `http://127.0.0.1:PORT/v1`
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn captured(&self) -> Vec<Captured> {
        lock(&self.shared.captured).clone()
    }

    /// Attempts seen for one `X-Request-ID`.
    pub fn attempts(&self, request_id: &str) -> u32 {
        lock(&self.shared.attempts)
            .get(request_id)
            .copied()
            .unwrap_or(0)
    }
}

/// Serves a mock on `listener` (the `gatehouse-mock` binary): capturing only when asked, since
/// benchmarks must not grow memory.
pub async fn serve(listener: tokio::net::TcpListener, capture: bool) -> std::io::Result<()> {
    let shared = Shared {
        capture,
        ..Shared::default()
    };
    axum::serve(listener, app(Arc::new(shared))).await
}

/// The command the `shell` directive asks a client to run.
pub const SHELL_MARKER: &str = "gatehouse-tool-ok";

/// The shell tool among `names` and the arguments that run `echo SHELL_MARKER` with it.
pub(crate) fn shell_call<'a>(names: impl Iterator<Item = &'a str>) -> Option<(String, Value)> {
    let cmd = format!("echo {SHELL_MARKER}");
    for n in names {
        let args = match n {
            "exec_command" => json!({"cmd": cmd}),
            "shell" => json!({"command": ["bash", "-lc", cmd]}),
            "Bash" => json!({"command": cmd, "description": "Print a marker"}),
            "run_shell_command" => json!({"command": cmd, "description": "Print a marker"}),
            _ => continue,
        };
        return Some((n.to_owned(), args));
    }
    None
}

/// The answer to a tool result: what the tool said, so a test sees the round trip.
pub(crate) fn tool_said(result: &str) -> String {
    let line = result
        .lines()
        .find(|l| l.contains(SHELL_MARKER))
        .unwrap_or(result);
    format!(
        "Tool said: {}",
        line.trim().chars().take(200).collect::<String>()
    )
}

async fn captured(State(shared): State<Arc<Shared>>) -> Response {
    let list: Vec<Value> = lock(&shared.captured)
        .iter()
        .map(|c| c.body.clone())
        .collect();
    json_response(StatusCode::OK, &Value::Array(list))
}

fn app(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/messages", post(anthropic::messages))
        .route("/v1/responses", post(responses::create))
        .route("/v1/models/{*rest}", post(gemini::generate))
        .route("/api/chat", post(ollama::chat))
        .route("/v1/api/chat", post(ollama::chat))
        .route("/v1/models", get(models))
        .route("/mock/captured", get(captured))
        .route("/mock/stats", get(stats))
        .with_state(shared)
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Debug, Default)]
pub(crate) struct Script {
    chunks: usize,
    delay: Duration,
    gap: Duration,
    fail: u32,
    status: Option<u16>,
    first: Duration,
    silent: u32,
    empty: u32,
    cut: Option<usize>,
    nousage: bool,
    huge_usage: bool,
    usage_last: bool,
    no_stream_opts: bool,
    tool: bool,
    shell: bool,
    retry_after: Option<u64>,
    hold: usize,
}

pub(crate) fn script(model: &str) -> Script {
    let mut s = Script {
        chunks: 3,
        ..Script::default()
    };
    for d in model.split('+') {
        let (k, v) = d.split_once(':').unwrap_or((d, ""));
        let n: u64 = v.parse().unwrap_or(0);
        match k {
            "chunks" => s.chunks = usize::try_from(n).unwrap_or(3),
            "delay" => s.delay = Duration::from_millis(n),
            "gap" => s.gap = Duration::from_millis(n),
            "fail" => s.fail = u32::try_from(n).unwrap_or(0),
            "status" => s.status = u16::try_from(n).ok(),
            "first" => s.first = Duration::from_millis(n),
            "silent" => s.silent = u32::try_from(n).unwrap_or(0),
            "empty" => s.empty = u32::try_from(n).unwrap_or(0),
            "cut" => s.cut = usize::try_from(n).ok(),
            "nousage" => s.nousage = true,
            "hugeusage" => s.huge_usage = true,
            "usagelast" => s.usage_last = true,
            "nostreamopts" => s.no_stream_opts = true,
            "tool" => s.tool = true,
            "shell" => s.shell = true,
            "retryafter" => s.retry_after = Some(n),
            "hold" => s.hold = usize::try_from(n).unwrap_or(0),
            _ => {}
        }
    }
    s
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": "mock", "object": "model", "created": 0, "owned_by": "mock"}]}),
    )
}

/// Counts the attempt, captures the request, and waits `first:MS` on a first attempt.
pub(crate) async fn start(shared: &Shared, headers: &HeaderMap, req: &Value, s: &Script) -> u32 {
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let attempt = {
        let mut a = lock(&shared.attempts);
        let n = a.entry(request_id).or_insert(0);
        *n += 1;
        *n
    };
    if shared.capture {
        lock(&shared.captured).push(Captured {
            headers: headers.clone(),
            body: req.clone(),
        });
    }
    if shared.tracked && s.hold > 0 {
        hold(shared, s.hold).await;
    }
    if attempt == 1 && !s.first.is_zero() {
        tokio::time::sleep(s.first).await;
    }
    attempt
}

async fn chat(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"message": "mock: body is not JSON", "type": "invalid_request_error", "code": null}}),
        );
    };
    let model = req["model"].as_str().unwrap_or("").to_owned();
    let stream = req["stream"].as_bool().unwrap_or(false);
    let include_usage = req["stream_options"]["include_usage"]
        .as_bool()
        .unwrap_or(false);
    let s = script(&model);
    let attempt = start(&shared, &headers, &req, &s).await;
    if s.no_stream_opts && req.get("stream_options").is_some() {
        return json_response(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({"object": "error", "message": {"detail": [{"type": "extra_forbidden", "loc": ["body", "stream_options", "include_usage"], "msg": "Extra inputs are not permitted"}]}, "type": "invalid_request_error", "param": null, "code": null}),
        );
    }
    if let Some(code) = s.status {
        let status = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return scripted_error(
            &s,
            json_response(
                status,
                &json!({"error": {"message": format!("mock: scripted status {code}"), "type": "mock_error", "code": "scripted"}}),
            ),
        );
    }
    if attempt <= s.fail {
        return scripted_error(
            &s,
            json_response(
                StatusCode::SERVICE_UNAVAILABLE,
                &json!({"error": {"message": format!("mock: scripted failure {attempt} of {}", s.fail), "type": "server_error", "code": null}}),
            ),
        );
    }
    let last = req["messages"]
        .as_array()
        .and_then(|m| m.iter().rev().find(|m| m["role"] != "system"));
    let last_is_result = last.is_some_and(|m| m["role"] == "tool");
    let call_id = format!("call_mock_{}", turn_of(&req));
    if s.shell {
        let tools = req["tools"].as_array().cloned().unwrap_or_default();
        let names = tools.iter().filter_map(|t| t["function"]["name"].as_str());
        if last_is_result {
            let result = last.map(|m| text_of(&m["content"])).unwrap_or_default();
            return text_answer(&model, &tool_said(&result), stream, include_usage);
        }
        if let Some((name, args)) = shell_call(names) {
            return call(
                &model,
                &call_id,
                &name,
                &args.to_string(),
                stream,
                include_usage,
            );
        }
    }
    if s.tool && !last_is_result {
        let name = req["tools"][0]["function"]["name"]
            .as_str()
            .unwrap_or("get_weather")
            .to_owned();
        return tool_call(&model, &call_id, &name, stream, include_usage);
    }
    if stream {
        stream_response(model, s, attempt, include_usage)
    } else {
        if !s.delay.is_zero() {
            tokio::time::sleep(s.delay).await;
        }
        let content: String = (0..s.chunks).map(piece).collect();
        let mut v = json!({
            "id": "chatcmpl-mock",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}],
        });
        if s.huge_usage {
            v["usage"] = json!({"prompt_tokens": u64::MAX - 1, "completion_tokens": u64::MAX - 1, "total_tokens": u64::MAX});
        } else if !s.nousage {
            v["usage"] = usage(s.chunks);
        }
        json_response(StatusCode::OK, &v)
    }
}

/// A call of tool `name`, whole or streamed with its arguments in pieces.
fn tool_call(model: &str, id: &str, name: &str, stream: bool, include_usage: bool) -> Response {
    call(
        model,
        id,
        name,
        "{\"city\": \"Paris\"}",
        stream,
        include_usage,
    )
}

/// Which answer of the conversation this is (1 for the first): tool call ids differ from turn
/// to turn, as a provider's do, so a client that checks them for repeats accepts each.
pub(crate) fn turn_of(req: &Value) -> usize {
    req["messages"]
        .as_array()
        .map_or(0, |m| m.iter().filter(|m| m["role"] == "assistant").count())
        + 1
}

/// A call of `name` with `args` (JSON text), whole or streamed in three pieces.
fn call(
    model: &str,
    id: &str,
    name: &str,
    args: &str,
    stream: bool,
    include_usage: bool,
) -> Response {
    if !stream {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "tool_calls": [
                    {"id": id, "type": "function", "function": {"name": name, "arguments": args}}]},
                    "finish_reason": "tool_calls"}],
                "usage": usage(7),
            }),
        );
    }
    let mut out = Vec::new();
    out.push(chunk(model, &json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0, "id": id, "type": "function", "function": {"name": name, "arguments": ""}}]}), None));
    let chars: Vec<char> = args.chars().collect();
    let third = chars.len().div_ceil(3).max(1);
    for part in chars.chunks(third) {
        out.push(chunk(
            model,
            &json!({"tool_calls": [{"index": 0, "function": {"arguments": part.iter().collect::<String>()}}]}),
            None,
        ));
    }
    out.push(chunk(model, &json!({}), Some("tool_calls")));
    finish_stream(model, out, include_usage, 7)
}

/// A text answer, whole or streamed as one chunk.
fn text_answer(model: &str, text: &str, stream: bool, include_usage: bool) -> Response {
    if !stream {
        return json_response(
            StatusCode::OK,
            &json!({
                "id": "chatcmpl-mock", "object": "chat.completion", "created": 1_700_000_000, "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": usage(5),
            }),
        );
    }
    let out = vec![
        chunk(model, &json!({"role": "assistant", "content": text}), None),
        chunk(model, &json!({}), Some("stop")),
    ];
    finish_stream(model, out, include_usage, 5)
}

fn finish_stream(
    model: &str,
    mut out: Vec<Bytes>,
    include_usage: bool,
    completion: usize,
) -> Response {
    if include_usage {
        let v = json!({"id": "chatcmpl-mock", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage(completion)});
        out.push(Bytes::from(format!("data: {v}\n\n")));
    }
    out.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let body = futures_util::stream::iter(out.into_iter().map(Ok::<Bytes, std::io::Error>));
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

/// The text of a content value: a string, or its text parts joined (an OpenAI message's
/// content, an Anthropic `tool_result`'s, a Responses function call output).
pub(crate) fn text_of(c: &Value) -> String {
    match c {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// An error answer with `Retry-After` when the script asks for it.
pub(crate) fn scripted_error(s: &Script, mut r: Response) -> Response {
    if let Some(secs) = s.retry_after {
        r.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from(secs));
    }
    r
}

/// A stream of pre-built events with the script's faults: `empty` (close at once), `silent`
/// (never send), `cut:N` (break after N events), `gap`/`delay` between events.
pub(crate) fn scripted_stream(
    events: Vec<Bytes>,
    s: &Script,
    attempt: u32,
    content_type: &'static str,
) -> Response {
    let (empty, silent) = (attempt <= s.empty, attempt <= s.silent);
    let (gap, delay, cut) = (s.gap, s.delay, s.cut);
    let body = futures_util::stream::unfold(0usize, move |i| {
        let ev = events.get(i).cloned();
        async move {
            if empty {
                return None;
            }
            if silent {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return None;
            }
            let ev = ev?;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            if !gap.is_zero() && i > 0 {
                tokio::time::sleep(gap).await;
            }
            if cut == Some(i) {
                return Some((Err(std::io::Error::other("mock: scripted cut")), i + 1));
            }
            Some((Ok::<Bytes, std::io::Error>(ev), i + 1))
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

/// The i-th content piece: one token each in cl100k and o200k.
pub(crate) fn piece(i: usize) -> String {
    const WORDS: [&str; 8] = [
        " Hello",
        " from",
        " the",
        " mock",
        " upstream",
        " and",
        " more",
        " words",
    ];
    WORDS[i % WORDS.len()].to_owned()
}

fn usage(completion: usize) -> Value {
    json!({
        "prompt_tokens": PROMPT_TOKENS,
        "completion_tokens": completion,
        "total_tokens": PROMPT_TOKENS + completion as u64,
        "prompt_tokens_details": {"cached_tokens": CACHED_TOKENS},
    })
}

fn chunk(model: &str, delta: &Value, finish: Option<&str>) -> Bytes {
    let v = json!({
        "id": "chatcmpl-mock",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    Bytes::from(format!("data: {v}\n\n"))
}

fn stream_response(model: String, s: Script, attempt: u32, include_usage: bool) -> Response {
    let silent = attempt <= s.silent;
    let usage_chunk = include_usage && !s.nousage;
    let empty = attempt <= s.empty;
    let body = futures_util::stream::unfold(0usize, move |i| {
        let model = model.clone();
        async move {
            if empty {
                return None;
            }
            if silent {
                // Hold the connection open without a byte until the client gives up.
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return None;
            }
            if !s.delay.is_zero() && i < s.chunks {
                tokio::time::sleep(s.delay).await;
            }
            if !s.gap.is_zero() && i > 0 && i < s.chunks {
                tokio::time::sleep(s.gap).await;
            }
            if s.cut == Some(i) {
                return Some((Err(std::io::Error::other("mock: scripted cut")), i + 1));
            }
            let n = s.chunks;
            let out = match i {
                i if i < n => {
                    let mut delta = json!({"content": piece(i)});
                    if i == 0 {
                        delta["role"] = json!("assistant");
                    }
                    chunk(&model, &delta, None)
                }
                i if i == n && s.usage_last => {
                    let v = json!({
                        "id": "chatcmpl-mock",
                        "object": "chat.completion.chunk",
                        "created": 1_700_000_000,
                        "model": model,
                        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
                        "usage": usage(n),
                    });
                    Bytes::from(format!("data: {v}\n\n"))
                }
                i if i == n => chunk(&model, &json!({}), Some("stop")),
                i if i == n + 1 && usage_chunk => {
                    let v = json!({
                        "id": "chatcmpl-mock",
                        "object": "chat.completion.chunk",
                        "created": 1_700_000_000,
                        "model": model,
                        "choices": [],
                        "usage": usage(n),
                    });
                    Bytes::from(format!("data: {v}\n\n"))
                }
                i if i <= n + 2 => Bytes::from_static(b"data: [DONE]\n\n"),
                _ => return None,
            };
            // Skip the usage slot when there is no usage chunk.
            let next = if i == n && !usage_chunk { i + 2 } else { i + 1 };
            Some((Ok(out), next))
        }
    });
    let mut r = Response::new(Body::from_stream(body));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/event-stream"),
    );
    r
}

pub(crate) fn json_response(status: StatusCode, v: &Value) -> Response {
    let mut r = Response::new(Body::from(v.to_string()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}
