//! The fuzz targets: what each one generates and what it feeds it to.
//!
//! Seeds are the translators' golden files (`crates/gatehouse-proxy/tests/golden`), read once:
//! requests, answers, streams and error bodies of every format.

use std::path::Path;
use std::sync::OnceLock;

use bytes::Bytes;
use gatehouse_core::{ChatRequestView, Encoding, TokenCounter};
use gatehouse_proxy::tap::{
    AnthropicTap, GeminiTap, ResponsesTap, summarize_anthropic, summarize_response,
    summarize_responses,
};
use gatehouse_proxy::translate::stream::StreamTranslator;
use gatehouse_proxy::translate::{Format, anthropic, gemini, ollama, openai, responses};
use gatehouse_proxy::{StreamTap, sse};
use serde_json::Value;

use crate::{Rng, mutate};

/// One thing to fuzz.
pub struct Target {
    pub name: &'static str,
    pub generate: fn(&mut Rng) -> Vec<u8>,
    /// Feeds one input; the `Rng` decides chunkings and cut points.
    pub run: fn(&[u8], &mut Rng),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

/// Every target.
pub const ALL: &[Target] = &[
    Target {
        name: "request_parser",
        generate: |r| json_from(&seeds().openai_requests, r),
        run: request_parser,
    },
    Target {
        name: "openai_request",
        generate: |r| json_from(&seeds().openai_requests, r),
        run: openai_request,
    },
    Target {
        name: "anthropic_request",
        generate: |r| json_from(&seeds().anthropic_requests, r),
        run: anthropic_request,
    },
    Target {
        name: "responses_request",
        generate: |r| json_from(&seeds().responses_requests, r),
        run: responses_request,
    },
    Target {
        name: "gemini_request",
        generate: |r| json_from(&seeds().gemini_requests, r),
        run: gemini_request,
    },
    Target {
        name: "openai_response",
        generate: |r| json_from(&seeds().responses[0], r),
        run: |b, _| response(b, Format::OpenAi),
    },
    Target {
        name: "anthropic_response",
        generate: |r| json_from(&seeds().responses[1], r),
        run: |b, _| response(b, Format::Anthropic),
    },
    Target {
        name: "gemini_response",
        generate: |r| json_from(&seeds().responses[2], r),
        run: |b, _| response(b, Format::Gemini),
    },
    Target {
        name: "ollama_response",
        generate: |r| json_from(&seeds().responses[3], r),
        run: |b, _| response(b, Format::Ollama),
    },
    Target {
        name: "openai_stream",
        generate: |r| stream_from(&seeds().streams[0], b"\n\n", r),
        run: |b, r| stream(b, Format::OpenAi, r),
    },
    Target {
        name: "anthropic_stream",
        generate: |r| stream_from(&seeds().streams[1], b"\n\n", r),
        run: |b, r| stream(b, Format::Anthropic, r),
    },
    Target {
        name: "gemini_stream",
        generate: |r| stream_from(&seeds().streams[2], b"\n\n", r),
        run: |b, r| stream(b, Format::Gemini, r),
    },
    Target {
        name: "ollama_stream",
        generate: |r| stream_from(&seeds().streams[3], b"\n", r),
        run: |b, r| stream(b, Format::Ollama, r),
    },
    Target {
        name: "error_bodies",
        generate: |r| json_from(&seeds().errors, r),
        run: error_bodies,
    },
    Target {
        name: "sse_framer",
        generate: |r| stream_from(&seeds().streams[0], b"\n\n", r),
        run: sse_framer,
    },
    Target {
        name: "redaction",
        generate: redaction_input,
        run: redaction,
    },
    Target {
        name: "tool_repair",
        generate: tool_repair_input,
        run: tool_repair,
    },
    Target {
        name: "config_loader",
        generate: config_input,
        run: config_loader,
    },
];

/// The golden files, by kind and format (OpenAI, Anthropic, Gemini, Ollama).
struct Seeds {
    openai_requests: Vec<Vec<u8>>,
    anthropic_requests: Vec<Vec<u8>>,
    responses_requests: Vec<Vec<u8>>,
    gemini_requests: Vec<Vec<u8>>,
    responses: [Vec<Vec<u8>>; 4],
    streams: [Vec<Vec<u8>>; 4],
    errors: Vec<Vec<u8>>,
}

fn seeds() -> &'static Seeds {
    static S: OnceLock<Seeds> = OnceLock::new();
    S.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../gatehouse-proxy/tests/golden");
        let mut s = Seeds {
            openai_requests: Vec::new(),
            anthropic_requests: Vec::new(),
            responses_requests: Vec::new(),
            gemini_requests: Vec::new(),
            responses: Default::default(),
            streams: Default::default(),
            errors: Vec::new(),
        };
        let index = |f: &str| match f {
            "openai" => Some(0),
            "anthropic" => Some(1),
            "gemini" => Some(2),
            "ollama" => Some(3),
            _ => None,
        };
        for kind in ["request", "response", "stream", "error"] {
            let Ok(dirs) = std::fs::read_dir(root.join(kind)) else {
                continue;
            };
            for dir in dirs.flatten() {
                let pair = dir.file_name().to_string_lossy().into_owned();
                let Some((from, to)) = pair.split_once("-to-") else {
                    continue;
                };
                let Ok(files) = std::fs::read_dir(dir.path()) else {
                    continue;
                };
                for f in files.flatten() {
                    let name = f.file_name().to_string_lossy().into_owned();
                    let Ok(bytes) = std::fs::read(f.path()) else {
                        continue;
                    };
                    // Inputs are in `from`'s format, outputs in `to`'s.
                    let format = if name.contains(".in.") { from } else { to };
                    match (kind, format, index(format)) {
                        ("request", "openai", _) => s.openai_requests.push(bytes),
                        ("request", "anthropic", _) => s.anthropic_requests.push(bytes),
                        ("request", "responses", _) => s.responses_requests.push(bytes),
                        // A Gemini client's requests (`gemini-to-*` inputs).
                        ("request", "gemini", _) => s.gemini_requests.push(bytes),
                        ("response", _, Some(i)) => {
                            if let Some(v) = s.responses.get_mut(i) {
                                v.push(bytes);
                            }
                        }
                        ("stream", _, Some(i)) => {
                            if let Some(v) = s.streams.get_mut(i) {
                                v.push(bytes);
                            }
                        }
                        ("error", _, _) => s.errors.push(bytes),
                        _ => {}
                    }
                }
            }
        }
        // Without the golden files (the crate moved), fuzz from minimal shapes.
        let fallback = |v: &mut Vec<Vec<u8>>, seed: &str| {
            if v.is_empty() {
                v.push(seed.as_bytes().to_vec());
            }
        };
        fallback(
            &mut s.openai_requests,
            r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
        );
        fallback(
            &mut s.anthropic_requests,
            r#"{"model":"m","max_tokens":5,"messages":[{"role":"user","content":"hi"}]}"#,
        );
        fallback(
            &mut s.gemini_requests,
            r#"{"model":"m","contents":[{"role":"user","parts":[{"text":"hi"}]}]}"#,
        );
        fallback(&mut s.responses_requests, r#"{"model":"m","input":"hi"}"#);
        fallback(&mut s.errors, r#"{"error":{"message":"x","type":"y"}}"#);
        for v in s.responses.iter_mut().chain(s.streams.iter_mut()) {
            fallback(v, r#"{"choices":[{"message":{"content":"x"}}]}"#);
        }
        s
    })
}

/// A seed, parsed and mutated where decoders look (most of the time), written back, and
/// sometimes damaged as bytes.
fn json_from(pool: &[Vec<u8>], rng: &mut Rng) -> Vec<u8> {
    let seed = rng.pick(pool).cloned().unwrap_or_default();
    let mut out = match serde_json::from_slice::<Value>(&seed) {
        Ok(mut v) if !rng.one_in(10) => {
            mutate::json(&mut v, rng);
            serde_json::to_vec(&v).unwrap_or(seed)
        }
        _ => seed,
    };
    if rng.one_in(6) {
        mutate::bytes(&mut out, rng);
    }
    out
}

/// A seed stream whose events' JSON payloads are mutated, with events dropped, doubled or
/// swapped, and sometimes damaged as bytes.
fn stream_from(pool: &[Vec<u8>], sep: &[u8], rng: &mut Rng) -> Vec<u8> {
    let seed = rng.pick(pool).cloned().unwrap_or_default();
    let mut events: Vec<Vec<u8>> = split(&seed, sep);
    for e in events.iter_mut() {
        if !rng.one_in(3) {
            continue;
        }
        // The JSON after `data: ` (SSE) or the whole line (NDJSON).
        let start = find(e, b"data: ").map_or(0, |i| i + 6);
        let (head, body) = e.split_at(start.min(e.len()));
        if let Ok(mut v) = serde_json::from_slice::<Value>(body) {
            mutate::json(&mut v, rng);
            let mut new = head.to_vec();
            new.extend(serde_json::to_vec(&v).unwrap_or_default());
            *e = new;
        }
    }
    match rng.below(5) {
        0 if events.len() > 1 => {
            let i = rng.below(events.len());
            events.remove(i);
        }
        1 if !events.is_empty() => {
            let i = rng.below(events.len());
            if let Some(x) = events.get(i).cloned() {
                events.insert(i, x);
            }
        }
        2 if events.len() > 1 => {
            let (a, b) = (rng.below(events.len()), rng.below(events.len()));
            events.swap(a, b);
        }
        _ => {}
    }
    let mut out = Vec::with_capacity(seed.len() + 64);
    for e in &events {
        out.extend_from_slice(e);
        out.extend_from_slice(sep);
    }
    if rng.one_in(5) {
        mutate::bytes(&mut out, rng);
    }
    out
}

fn split(b: &[u8], sep: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = b;
    while let Some(i) = find(rest, sep) {
        let (head, tail) = rest.split_at(i);
        if !head.is_empty() {
            out.push(head.to_vec());
        }
        rest = tail.get(sep.len()..).unwrap_or_default();
    }
    if !rest.is_empty() {
        out.push(rest.to_vec());
    }
    out
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len().max(1)).position(|w| w == needle)
}

/// `b` in random pieces of 1 to 64 bytes.
fn chunks(b: &[u8], rng: &mut Rng) -> Vec<Bytes> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < b.len() {
        let end = (at + 1 + rng.below(64)).min(b.len());
        out.push(Bytes::copy_from_slice(b.get(at..end).unwrap_or_default()));
        at = end;
    }
    out
}

fn counter() -> &'static TokenCounter {
    static C: OnceLock<TokenCounter> = OnceLock::new();
    C.get_or_init(|| TokenCounter::new(4096))
}

fn request_parser(b: &[u8], _: &mut Rng) {
    let body = Bytes::copy_from_slice(b);
    let Ok(v) = ChatRequestView::parse(&body) else {
        return;
    };
    let _ = counter().count_prompt(Encoding::Cl100k, &v);
    let _ = (v.first_user_preview(50), v.last_user_preview(200));
    for m in &v.messages {
        let _ = m.text();
    }
    let span = (v.model != "m").then(|| (v.model_span.clone(), "renamed"));
    let ask = if v.stream {
        gatehouse_proxy::rewrite::UsageAsk::Yes {
            client: v.stream_options.as_ref(),
        }
    } else {
        gatehouse_proxy::rewrite::UsageAsk::No
    };
    let (out, _) = gatehouse_proxy::rewrite::rewrite(&body, span, ask);
    let _ = ChatRequestView::parse(&out);
}

fn openai_request(b: &[u8], _: &mut Rng) {
    if let Ok(ir) = openai::request_to_ir(b) {
        let _ = (
            anthropic::request_from_ir(&ir),
            gemini::request_from_ir(&ir),
            ollama::request_from_ir(&ir),
            openai::request_from_ir(&ir),
        );
    }
}

fn anthropic_request(b: &[u8], rng: &mut Rng) {
    if let Ok(ir) = anthropic::request_to_ir(b) {
        let v = openai::request_from_ir(&ir);
        let _ = openai::request_to_ir(v.to_string().as_bytes());
    }
    let _ = anthropic::messages_before(b, rng.below(12));
    let _ = anthropic::splice_compaction(b, rng.below(8), "summary");
    let _ = anthropic::replace_texts(b, &[("hi".to_owned(), "[masked]".to_owned())]);
}

fn responses_request(b: &[u8], _: &mut Rng) {
    if let Ok((ir, _)) = responses::request_to_ir_noting(b) {
        let v = openai::request_from_ir(&ir);
        let _ = openai::request_to_ir(v.to_string().as_bytes());
        let _ = responses::request_from_ir(&ir);
    }
    let _ = responses::Meta::of_request(b, "resp_x".to_owned(), 0);
}

fn gemini_request(b: &[u8], _: &mut Rng) {
    if let Ok((ir, _)) = gemini::client_request_to_ir(b) {
        let v = openai::request_from_ir(&ir);
        let _ = openai::request_to_ir(v.to_string().as_bytes());
    }
}

fn meta() -> responses::Meta {
    responses::Meta::of_request(b"{}", "resp_x".to_owned(), 0)
}

fn response(b: &[u8], from: Format) {
    if let Ok(ir) = gatehouse_proxy::translate::response_to_ir(b, from) {
        let _ = (
            openai::response_from_ir(&ir, 0),
            anthropic::response_from_ir(&ir),
            responses::response_from_ir(&ir, &meta()),
            gemini::response_from_ir(&ir, "m"),
        );
    }
    let _ = summarize_responses(b, Encoding::Cl100k);
    let _ = summarize_response(b, Encoding::Cl100k);
    let _ = summarize_anthropic(b, Encoding::Cl100k);
}

fn stream(b: &[u8], from: Format, rng: &mut Rng) {
    for to in [
        Format::OpenAi,
        Format::Anthropic,
        Format::Responses,
        Format::Gemini,
    ] {
        let mut t = if to == Format::Responses {
            StreamTranslator::to_responses(from, meta(), 0)
        } else {
            StreamTranslator::new(from, to, "m", 10, 0)
        };
        let mut out = Vec::new();
        for c in chunks(b, rng) {
            out.extend_from_slice(&t.push(&c));
        }
        if t.finished() {
            out.extend_from_slice(&t.finish());
        }
        // What the client receives is tapped too.
        let _ = t.completed_response();
        match to {
            Format::Gemini => {
                let mut tap = GeminiTap::new();
                for c in chunks(&out, rng) {
                    let _ = tap.process(c);
                }
                let _ = tap.summary(Encoding::Cl100k);
            }
            Format::Responses => {
                let mut tap = ResponsesTap::new();
                for c in chunks(&out, rng) {
                    let _ = tap.process(c);
                }
                let _ = tap.summary(Encoding::Cl100k);
            }
            Format::Anthropic => {
                let mut tap = AnthropicTap::new();
                for c in chunks(&out, rng) {
                    let _ = tap.process(c);
                }
                let _ = tap.summary(Encoding::Cl100k);
            }
            _ => {
                let mut tap = StreamTap::new(rng.one_in(2));
                for c in chunks(&out, rng) {
                    let _ = tap.process(c);
                }
                let _ = tap.take_pending();
                let _ = tap.summary(Encoding::Cl100k);
            }
        }
    }
}

fn error_bodies(b: &[u8], _: &mut Rng) {
    let _ = (
        anthropic::error_to_openai(b),
        anthropic::error_from_openai(500, b),
        gemini::error_to_openai(b),
        ollama::error_to_openai(b),
        gatehouse_proxy::upstream::is_openai_error(b),
    );
}

fn sse_framer(b: &[u8], rng: &mut Rng) {
    let mut framer = sse::Framer::new();
    let mut total = 0usize;
    for c in chunks(b, rng) {
        framer.feed(&c, |event| {
            total += event.len();
            let _ = sse::parse_event(event);
        });
    }
    let rest = framer.take_pending();
    assert!(total + rest.len() <= b.len(), "the framer invented bytes");
}

/// Secrets, some written with JSON escapes, inside request bodies.
fn redaction_input(rng: &mut Rng) -> Vec<u8> {
    const SECRETS: &[&str] = &[
        "sk-proj-Abc123Def456Ghi789Jkl012Mno345",
        "AKIAIOSFODNN7EXAMPLE",
        "ghp_A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5",
        "postgres://app:s3cretPass99@db:5432/app",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
        "DB_PASSWORD=hunter2hunter2",
        "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
    ];
    let mut body = json_from(&seeds().openai_requests, rng);
    let secret = rng.pick(SECRETS).copied().unwrap_or("sk-");
    let escaped: String = secret
        .chars()
        .map(|c| match rng.below(4) {
            0 => format!("\\u{:04x}", c as u32),
            1 if c == '/' => "\\/".to_owned(),
            _ => serde_json::to_string(&c.to_string())
                .unwrap_or_default()
                .trim_matches('"')
                .to_owned(),
        })
        .collect();
    // Inside a string when the body has one; anywhere otherwise.
    let at = find(&body, b"\"content\":\"").map_or_else(|| rng.below(body.len() + 1), |i| i + 11);
    let tail = body.split_off(at.min(body.len()));
    body.extend_from_slice(escaped.as_bytes());
    body.extend_from_slice(&tail);
    if rng.one_in(4) {
        mutate::bytes(&mut body, rng);
    }
    body
}

fn redaction(b: &[u8], _: &mut Rng) {
    let Some(r) = gatehouse_context::Redactor::shared() else {
        return;
    };
    let found = r.scan(b);
    let out = gatehouse_context::Redactor::redact(b, &found);
    // Redacting valid JSON keeps it valid.
    if serde_json::from_slice::<serde::de::IgnoredAny>(b).is_ok() {
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok(),
            "redaction broke the JSON"
        );
    }
}

/// OpenAI requests with a tool-call history whose ids go missing and whose arguments are
/// almost JSON, then mutated like every other input.
fn tool_repair_input(rng: &mut Rng) -> Vec<u8> {
    const ARGS: &[&str] = &[
        "{'city': 'Paris',}",
        "{city: \"Paris\", n: [1, 2,]}",
        "\"{\\\"a\\\": 1}\"",
        "{'ok': True, 'x': None}",
        "{'unterminated: 1",
        "{a: b}",
        "",
    ];
    let arguments = rng.pick(ARGS).copied().unwrap_or("");
    let id = match rng.below(3) {
        0 => serde_json::Value::Null,
        1 => serde_json::json!(""),
        _ => serde_json::json!("call_1"),
    };
    let body = serde_json::json!({"model": "m", "messages": [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": null, "tool_calls": [
            {"id": id, "type": "function", "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "content": "done"}]});
    json_from(&[serde_json::to_vec(&body).unwrap_or_default()], rng)
}

fn tool_repair(b: &[u8], _: &mut Rng) {
    if let Some((out, r)) = gatehouse_context::repair::repair_tool_calls(b) {
        assert!(r.any(), "a repair that changed nothing");
        assert!(
            serde_json::from_slice::<serde::de::IgnoredAny>(&out).is_ok(),
            "repair made invalid JSON"
        );
        // Repairing a repaired body finds nothing left to do.
        assert!(
            gatehouse_context::repair::repair_tool_calls(&out).is_none(),
            "repair is not idempotent"
        );
    }
}

fn config_input(rng: &mut Rng) -> Vec<u8> {
    static BASE: OnceLock<toml::Table> = OnceLock::new();
    let base = BASE.get_or_init(|| {
        let mut t: toml::Table =
            toml::from_str(gatehouse_config::CATALOGUE_TOML).unwrap_or_default();
        // A file of the shape users write: a provider and a model of their own.
        if let Ok(extra) = toml::from_str::<toml::Table>(
            "[providers.local]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\n[models.\"local/m\"]\nprovider = \"local\"\nmodel = \"m\"\nmax_context_size = 1000\nfallbacks = [\"mistral/codestral-2501\"]\n",
        ) {
            t.extend(extra);
        }
        t
    });
    let mut t = base.clone();
    mutate::toml(&mut t, rng);
    let mut out = toml::to_string(&t).unwrap_or_default().into_bytes();
    if rng.one_in(8) {
        mutate::bytes(&mut out, rng);
    }
    out
}

fn config_loader(b: &[u8], _: &mut Rng) {
    let text = String::from_utf8_lossy(b);
    let _ = gatehouse_config::load_text(&text, &gatehouse_config::Env::default());
}
