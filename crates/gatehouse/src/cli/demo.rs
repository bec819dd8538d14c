//! `serve --demo`: a local, simulated provider and a simulated client, so the dashboard comes
//! alive without any API key.
//!
//! The demo provider is a small OpenAI-compatible server on a free loopback port; it answers
//! with canned coding-assistant replies, streamed word by word at a plausible pace, with usage
//! counted by the same BPE the gateway uses. It goes through the real proxy path (routing,
//! counting, accounting, events), so what the dashboard shows is what real traffic looks like.
//! Everything about it is labelled `demo`: provider `demo`, models `demo/…`, a DEMO badge.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use gatehouse_config::{Config, ModelConfig, ProviderConfig, ProviderType};
use gatehouse_core::{Encoding, Pricing};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

pub const PROVIDER: &str = "demo";

/// Model key, upstream name, window, and made-up prices (USD per million tokens: input,
/// output) so the cost figures have something to show. The small window fills in a few minutes
/// of demo traffic.
const MODELS: &[(&str, &str, u64, f64, f64)] = &[
    ("demo/fast", "demo-fast", 32_768, 0.20, 0.60),
    ("demo/smart", "demo-smart", 131_072, 3.00, 15.00),
    ("demo/tiny", "demo-tiny", 8_192, 0.50, 1.50),
];

const REPLIES: &[&str] = &[
    "Good catch. The parser keeps a reference to the input buffer after `reset()`, so the next call reads stale bytes.\n\n```rust\npub fn reset(&mut self) {\n    self.pos = 0;\n    self.pending.clear();\n    self.state = State::Start;\n}\n```\n\nClearing `pending` is the important part: without it, a half-read token from the previous input is glued onto the first token of the next one. I would also add a test that feeds two inputs back to back and checks the second parses on its own.",
    "The test fails because the fixture is created once per module while the test mutates it. Two options:\n\n1. make the fixture function-scoped, so every test gets a fresh copy;\n2. copy it inside the test before changing it.\n\nOption 1 is simpler and costs about 40 ms per test here. I changed `conftest.py` accordingly and the suite passes: 148 passed, 0 failed.",
    "Here is a version that streams the file instead of loading it whole:\n\n```python\ndef count_lines(path):\n    n = 0\n    with open(path, 'rb') as f:\n        for chunk in iter(lambda: f.read(1 << 16), b''):\n            n += chunk.count(b'\\n')\n    return n\n```\n\nMemory stays flat whatever the file size, and it is about 3x faster than `len(f.readlines())` on the 2 GB log you mentioned, because it never builds the list of lines.",
    "The stack trace points at `OrderService.total()`: `discount` is `None` for orders created before the migration. The safest fix is at the boundary, when loading:\n\n```python\ndiscount = row.discount or Decimal('0')\n```\n\nand a data migration to backfill the column, so the model can declare it non-nullable. I can write the migration next if you want.",
    "I looked at the three call sites. Only `sync_users` needs the retry; the other two run inside a transaction that is retried as a whole already. Adding a retry there would double the attempts on failure.\n\nSo the change is small: wrap the HTTP call in `sync_users` with the existing `with_backoff(max_attempts=3)` helper, and log the attempt number. Want me to apply it?",
    "Summary of the diff:\n\n- `config.rs`: the timeout fields become `Duration`s, parsed from seconds;\n- `client.rs`: one client per provider, built at start, reused;\n- `tests/`: two new tests for the timeout paths (connect and first byte).\n\nNothing else changes behaviour. The public API keeps the same names, so callers compile as they are.",
];

const PROMPTS: &[&str] = &[
    "Why does the parser return garbage on the second file? Here is the module.",
    "The CI run fails on test_update_order, can you look at the log below?",
    "Can you make count_lines work on huge files without loading them in memory?",
    "We get this stack trace in production since yesterday's deploy:",
    "Should sync_users retry on network errors? Here is the code.",
    "Summarise what this diff changes before I review it.",
];

/// Adds the demo provider and its models to `config`.
pub fn add_to_config(config: &mut Config, base_url: &str) {
    let timeouts = config
        .providers
        .values()
        .next()
        .map(|p| p.timeouts)
        .unwrap_or(gatehouse_config::Timeouts {
            connect: Duration::from_secs(5),
            first_byte: Duration::from_secs(30),
            idle: Duration::from_secs(30),
            total: Duration::from_secs(60),
        });
    config.providers.insert(
        PROVIDER.to_owned(),
        ProviderConfig {
            kind: ProviderType::Openai,
            base_url: base_url.to_owned(),
            shown_url: base_url.to_owned(),
            api_key: None,
            api_key_env: None,
            headers: BTreeMap::new(),
            timeouts,
            stream_usage: true,
            rpm: None,
            responses_api: false,
            bearer: false,
            http2: false,
            connections: 1,
        },
    );
    for (key, upstream, window, input, output) in MODELS {
        config.models.insert(
            (*key).to_owned(),
            ModelConfig {
                provider: PROVIDER.to_owned(),
                model: (*upstream).to_owned(),
                max_context_size: *window,
                capabilities: vec!["demo".to_owned()],
                encoding: Encoding::Cl100k,
                pricing: Some(Pricing {
                    input: *input,
                    output: *output,
                    cached_input: None,
                }),
                fallbacks: Vec::new(),
                fallback_on_timeout: false,
                deployments: Vec::new(),
                weight: 1.0,
            },
        );
    }
}

#[derive(Default)]
struct Upstream {
    calls: AtomicU64,
}

/// Starts the demo provider on a free loopback port; returns its base URL (`…/v1`).
pub async fn start_upstream(stop: CancellationToken) -> std::io::Result<String> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new()
        .route("/v1/chat/completions", post(complete))
        .with_state(Arc::new(Upstream::default()));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
    });
    Ok(format!("http://{addr}/v1"))
}

/// A small deterministic generator: the demo varies, but the same request varies the same way.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }
}

fn text_of(content: &Value) -> String {
    match content {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

async fn complete(State(up): State<Arc<Upstream>>, body: Bytes) -> Response {
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": {"message": "demo provider: the body is not JSON", "type": "invalid_request_error"}})),
        )
            .into_response();
    };
    let messages = req["messages"].as_array().cloned().unwrap_or_default();
    let enc = Encoding::Cl100k;
    let prompt_tokens: u64 = messages
        .iter()
        .map(|m| enc.count(&text_of(&m["content"])) + 3)
        .sum::<u64>()
        + 3;
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m["role"] == "user")
        .map(|m| text_of(&m["content"]))
        .unwrap_or_default();
    let call = up.calls.fetch_add(1, Ordering::Relaxed);
    let seed = fnv1a(&last_user) ^ (call.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
    let mut rng = Rng(seed);
    let reply = REPLIES[(rng.next() % REPLIES.len() as u64) as usize];
    let completion_tokens = enc.count(reply);
    let model = req["model"].as_str().unwrap_or("demo").to_owned();
    let id = format!("chatcmpl-demo-{call}");
    let usage = json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    });
    let first_delay = Duration::from_millis(rng.range(250, 700));
    if req["stream"] != true {
        tokio::time::sleep(first_delay + Duration::from_millis(rng.range(300, 900))).await;
        return Json(json!({
            "id": id, "object": "chat.completion", "created": 0, "model": model,
            "system_fingerprint": "gatehouse-demo",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}, "finish_reason": "stop"}],
            "usage": usage,
        }))
        .into_response();
    }
    let include_usage = req["stream_options"]["include_usage"] == true;
    let words: Vec<String> = reply.split_inclusive(' ').map(str::to_owned).collect();
    let gaps: Vec<u64> = (0..words.len()).map(|_| rng.range(12, 45)).collect();
    let stream = async_stream(
        id,
        model,
        words,
        gaps,
        first_delay,
        include_usage.then_some(usage),
    );
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    r
}

fn fnv1a(s: &str) -> u64 {
    // FNV-1a: enough to spread prompts over the canned replies.
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn async_stream(
    id: String,
    model: String,
    words: Vec<String>,
    gaps: Vec<u64>,
    first_delay: Duration,
    usage: Option<Value>,
) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
    let chunk = move |delta: Value, finish: Option<&str>| {
        let v = json!({
            "id": id, "object": "chat.completion.chunk", "created": 0, "model": model,
            "system_fingerprint": "gatehouse-demo",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        });
        Bytes::from(format!("data: {v}\n\n"))
    };
    let mut frames = Vec::with_capacity(words.len() + 3);
    frames.push((
        first_delay,
        chunk(json!({"role": "assistant", "content": ""}), None),
    ));
    // Two or three words per chunk, as real providers tend to send.
    for (i, pair) in words.chunks(2).enumerate() {
        let gap = Duration::from_millis(gaps.get(i).copied().unwrap_or(20));
        frames.push((gap, chunk(json!({"content": pair.concat()}), None)));
    }
    frames.push((Duration::ZERO, chunk(json!({}), Some("stop"))));
    if let Some(u) = usage {
        frames.push((
            Duration::ZERO,
            Bytes::from(format!(
                "data: {}\n\n",
                json!({"id": "usage", "object": "chat.completion.chunk", "created": 0, "model": "demo", "choices": [], "usage": u})
            )),
        ));
    }
    frames.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    futures_util::stream::unfold(frames.into_iter(), |mut it| async move {
        let (wait, bytes) = it.next()?;
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Some((Ok(bytes), it))
    })
}

/// A simulated IDE user: opens a demo session on the small model, asks a question every few
/// seconds with pasted code and logs (so the context grows), and starts a new session once the
/// window is nearly full. Stops with `stop`.
pub async fn traffic(gateway: SocketAddr, stop: CancellationToken) {
    let http = reqwest::Client::new();
    let base = format!("http://{gateway}");
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut conversation = 0usize;
    'sessions: while !stop.is_cancelled() {
        conversation += 1;
        let topic = PROMPTS[conversation % PROMPTS.len()];
        let created = http
            .post(format!("{base}/api/sessions"))
            .json(&json!({"name": format!("Demo {conversation}: {topic}"), "model": "demo/tiny"}))
            .send()
            .await;
        let Some(session) = (match created {
            Ok(r) => r.json::<Value>().await.ok(),
            Err(_) => None,
        })
        .and_then(|v| v["session"]["id"].as_str().map(str::to_owned)) else {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(5)) => continue,
                () = stop.cancelled() => return,
            }
        };
        let mut messages = vec![
            json!({"role": "system", "content": "You are a coding assistant inside an IDE. (Gatehouse demo conversation.)"}),
        ];
        // Long enough to fill demo/tiny past its alerts and see it compacted; then a new session.
        for turn in 0..16 {
            let pasted = pasted_context(&mut rng, turn);
            let prompt = PROMPTS[(conversation + turn) % PROMPTS.len()];
            messages.push(json!({"role": "user", "content": format!("{prompt}\n\n{pasted}")}));
            let stream = turn % 2 == 0;
            let sent = http
                .post(format!("{base}/v1/chat/completions"))
                .header("x-gatehouse-session", &session)
                .json(&json!({"model": "demo/tiny", "stream": stream, "messages": messages}))
                .send()
                .await;
            let answer = match sent {
                Ok(r) if r.status().is_success() => {
                    let text = r.text().await.unwrap_or_default();
                    if stream {
                        content_of_stream(&text)
                    } else {
                        content_of_json(&text)
                    }
                }
                // Window full (413) or anything else: this conversation is over.
                _ => String::new(),
            };
            if answer.is_empty() {
                continue 'sessions;
            }
            messages.push(json!({"role": "assistant", "content": answer}));
            let pause = Duration::from_millis(rng.range(1500, 3500));
            tokio::select! {
                () = tokio::time::sleep(pause) => {},
                () = stop.cancelled() => return,
            }
        }
    }
}

/// What a user pastes: code, a test log, or a stack trace, of a few hundred tokens.
fn pasted_context(rng: &mut Rng, turn: usize) -> String {
    let lines = rng.range(12, 40) as usize;
    let mut out = String::from("```\n");
    for i in 0..lines {
        let line = match turn % 3 {
            0 => format!(
                "    let value_{i} = parser.next_token()?; // offset {}\n",
                rng.range(0, 9999)
            ),
            1 => format!(
                "tests/test_orders.py::test_case_{i} PASSED [{:>3}%]\n",
                (i * 100) / lines
            ),
            _ => format!(
                "  at com.example.orders.OrderService.total(OrderService.java:{})\n",
                rng.range(10, 400)
            ),
        };
        out.push_str(&line);
    }
    out.push_str("```");
    out
}

fn content_of_json(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| {
            v["choices"][0]["message"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .unwrap_or_default()
}

fn content_of_stream(text: &str) -> String {
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}
