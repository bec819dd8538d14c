//! Golden files for every translation: `tests/golden/<kind>/<from>-to-<to>/<case>.in.*` is
//! translated and compared with `<case>.out.*`. `GOLDEN_BLESS=1 cargo test -p gatehouse-proxy
//! --test golden` writes the outputs after a change; review the diff before committing it.
//!
//! Also here: a stream and its non-streamed equivalent give the same accounting, and a property
//! test that arbitrary OpenAI requests survive OpenAI → Anthropic → OpenAI without losing content.
#![expect(
    clippy::unwrap_used,
    clippy::panic,
    reason = "test helpers fail the test where they fail"
)]

use std::path::{Path, PathBuf};

use gatehouse_core::Encoding;
use gatehouse_proxy::tap::{
    AnthropicTap, ResponsesTap, StreamTap, summarize_anthropic, summarize_response,
    summarize_responses,
};
use gatehouse_proxy::translate::stream::StreamTranslator;
use gatehouse_proxy::translate::{Format, anthropic, gemini, ollama, openai, responses};
use serde_json::{Value, json};

const CREATED: i64 = 1_700_000_000;

fn dir(kind: &str, direction: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(kind)
        .join(direction)
}

/// Every `*.in.<ext>` of a directory, with its case name.
fn cases(d: &Path, ext: &str) -> Vec<(String, PathBuf)> {
    let mut out: Vec<(String, PathBuf)> = std::fs::read_dir(d)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_owned();
            let case = name.strip_suffix(&format!(".in.{ext}"))?.to_owned();
            Some((case, p))
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no cases in {}", d.display());
    out
}

fn check(d: &Path, case: &str, ext: &str, got: &str) {
    let out = d.join(format!("{case}.out.{ext}"));
    if std::env::var_os("GOLDEN_BLESS").is_some() {
        std::fs::write(&out, got).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&out)
        .unwrap_or_else(|_| panic!("{} is missing: run with GOLDEN_BLESS=1", out.display()));
    assert_eq!(got, want, "{} differs from the translation", out.display());
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap() + "\n"
}

fn each_json(kind: &str, direction: &str, f: impl Fn(&str, &[u8]) -> Value) {
    let d = dir(kind, direction);
    for (case, path) in cases(&d, "json") {
        let input = std::fs::read(&path).unwrap();
        check(&d, &case, "json", &pretty(&f(&case, &input)));
    }
}

#[test]
fn requests_openai_to_anthropic() {
    each_json("request", "openai-to-anthropic", |_, b| {
        anthropic::request_from_ir(&openai::request_to_ir(b).unwrap())
    });
}

#[test]
fn requests_anthropic_to_openai() {
    each_json("request", "anthropic-to-openai", |_, b| {
        openai::request_from_ir(&anthropic::request_to_ir(b).unwrap())
    });
}

#[test]
fn requests_openai_to_gemini() {
    each_json("request", "openai-to-gemini", |_, b| {
        gemini::request_from_ir(&openai::request_to_ir(b).unwrap())
    });
}

#[test]
fn responses_gemini_to_openai() {
    each_json("response", "gemini-to-openai", |_, b| {
        openai::response_from_ir(&gemini::response_to_ir(b).unwrap(), CREATED)
    });
}

#[test]
fn streams_gemini_to_openai() {
    each_stream("gemini-to-openai", Format::Gemini, Format::OpenAi);
}

#[test]
fn responses_anthropic_to_openai() {
    each_json("response", "anthropic-to-openai", |_, b| {
        openai::response_from_ir(&anthropic::response_to_ir(b).unwrap(), CREATED)
    });
}

#[test]
fn responses_openai_to_anthropic() {
    each_json("response", "openai-to-anthropic", |_, b| {
        anthropic::response_from_ir(&openai::response_to_ir(b).unwrap())
    });
}

/// A Responses request as chat completions, with what the translation leaves out.
#[test]
fn requests_responses_to_openai() {
    each_json("request", "responses-to-openai", |_, b| {
        let (ir, left) = responses::request_to_ir_noting(b).unwrap();
        json!({"openai": openai::request_from_ir(&ir), "not_translated": left})
    });
}

/// A Gemini client's request as chat completions, with what the translation leaves out.
#[test]
fn requests_gemini_to_openai() {
    each_json("request", "gemini-to-openai", |_, b| {
        let (ir, left) = gemini::client_request_to_ir(b).unwrap();
        json!({"openai": openai::request_from_ir(&ir), "not_translated": left})
    });
}

#[test]
fn responses_openai_to_gemini() {
    each_json("response", "openai-to-gemini", |_, b| {
        gemini::response_from_ir(&openai::response_to_ir(b).unwrap(), "gemini-2.5-pro")
    });
}

#[test]
fn streams_openai_to_gemini() {
    each_stream("openai-to-gemini", Format::OpenAi, Format::Gemini);
}

fn meta() -> responses::Meta {
    responses::Meta::of_request(
        br#"{"model": "gpt-5", "store": false}"#,
        "resp_test".to_owned(),
        CREATED,
    )
}

#[test]
fn responses_openai_to_responses() {
    each_json("response", "openai-to-responses", |_, b| {
        responses::response_from_ir(&openai::response_to_ir(b).unwrap(), &meta())
    });
}

#[test]
fn streams_openai_to_responses() {
    let d = dir("stream", "openai-to-responses");
    for (case, path) in cases(&d, "sse") {
        let input = std::fs::read(&path).unwrap();
        let run = |size: usize| {
            let mut t = StreamTranslator::to_responses(Format::OpenAi, meta(), CREATED);
            let mut out = Vec::new();
            for c in input.chunks(size) {
                out.extend_from_slice(&t.push(c));
            }
            if t.finished() {
                out.extend_from_slice(&t.finish());
            }
            String::from_utf8(out).unwrap()
        };
        let whole = run(input.len());
        for size in [1, 7, 64] {
            assert_eq!(run(size), whole, "{case}: chunking changes the translation");
        }
        check(&d, &case, "sse", &whole);
    }
}

/// The status is in the case name: `rate_limit.429`.
fn status_of(case: &str) -> u16 {
    case.rsplit('.')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap()
}

#[test]
fn errors_both_ways() {
    each_json("error", "anthropic-to-openai", |_, b| {
        anthropic::error_to_openai(b).unwrap()
    });
    each_json("error", "openai-to-anthropic", |case, b| {
        anthropic::error_from_openai(status_of(case), b).unwrap()
    });
}

/// Feeds `input` in chunks of `size` bytes, as the network might cut it.
fn translate_stream(from: Format, to: Format, input: &[u8], size: usize) -> String {
    let mut t = StreamTranslator::new(from, to, "", 42, CREATED);
    let mut out = Vec::new();
    for c in input.chunks(size) {
        out.extend_from_slice(&t.push(c));
    }
    if t.finished() {
        out.extend_from_slice(&t.finish());
    }
    String::from_utf8(out).unwrap()
}

fn each_stream(direction: &str, from: Format, to: Format) {
    each_stream_ext(direction, from, to, "sse");
}

fn each_stream_ext(direction: &str, from: Format, to: Format, ext: &str) {
    let d = dir("stream", direction);
    for (case, path) in cases(&d, ext) {
        let input = std::fs::read(&path).unwrap();
        let whole = translate_stream(from, to, &input, input.len());
        for size in [1, 7, 64] {
            assert_eq!(
                translate_stream(from, to, &input, size),
                whole,
                "{case}: chunking changes the translation"
            );
        }
        check(&d, &case, "sse", &whole);
    }
}

#[test]
fn requests_openai_to_ollama() {
    each_json("request", "openai-to-ollama", |_, b| {
        ollama::request_from_ir(&openai::request_to_ir(b).unwrap())
    });
}

#[test]
fn responses_ollama_to_openai() {
    each_json("response", "ollama-to-openai", |_, b| {
        openai::response_from_ir(&ollama::response_to_ir(b).unwrap(), CREATED)
    });
}

#[test]
fn streams_ollama_to_openai() {
    each_stream_ext("ollama-to-openai", Format::Ollama, Format::OpenAi, "ndjson");
}

#[test]
fn streams_anthropic_to_openai() {
    each_stream("anthropic-to-openai", Format::Anthropic, Format::OpenAi);
}

#[test]
fn streams_openai_to_anthropic() {
    each_stream("openai-to-anthropic", Format::OpenAi, Format::Anthropic);
}

/// A translated stream and the translated non-streamed answer it corresponds to are accounted
/// alike: usage, finish reason, completion text.
#[test]
fn streams_and_whole_answers_account_alike() {
    let enc = Encoding::Cl100k;
    for case in ["text", "parallel_tools", "thinking"] {
        let sse =
            std::fs::read(dir("stream", "anthropic-to-openai").join(format!("{case}.out.sse")))
                .unwrap();
        let mut tap = StreamTap::new(false);
        tap.process(bytes::Bytes::from(sse));
        let streamed = tap.summary(enc);
        let body =
            std::fs::read(dir("response", "anthropic-to-openai").join(format!("{case}.out.json")))
                .unwrap();
        let whole = summarize_response(&body, enc);
        assert_eq!(streamed.usage, whole.usage, "{case}");
        assert_eq!(streamed.finish_reason, whole.finish_reason, "{case}");
        // The fallback count (used only without usage) reads arguments as sent: a stream
        // carries the provider's JSON text (`{"city": "Paris"}`), a whole answer re-serialised
        // JSON (`{"city":"Paris"}`), so whitespace may differ by a token or two.
        let (a, b) = (
            streamed.counted_completion_tokens,
            whole.counted_completion_tokens,
        );
        assert!(a.abs_diff(b) <= 2 + b / 10, "{case}: {a} vs {b}");
    }
    for (direction, case) in [
        ("gemini-to-openai", "text"),
        ("gemini-to-openai", "parallel_calls"),
        ("ollama-to-openai", "text"),
        ("ollama-to-openai", "tool_calls"),
    ] {
        let sse = std::fs::read(dir("stream", direction).join(format!("{case}.out.sse"))).unwrap();
        let mut tap = StreamTap::new(false);
        tap.process(bytes::Bytes::from(sse));
        let streamed = tap.summary(enc);
        let body =
            std::fs::read(dir("response", direction).join(format!("{case}.out.json"))).unwrap();
        let whole = summarize_response(&body, enc);
        assert_eq!(streamed.usage, whole.usage, "{direction}/{case}");
        assert_eq!(
            streamed.finish_reason, whole.finish_reason,
            "{direction}/{case}"
        );
    }
    for case in ["text", "parallel_tools"] {
        let sse =
            std::fs::read(dir("stream", "openai-to-responses").join(format!("{case}.out.sse")))
                .unwrap();
        let mut tap = ResponsesTap::new();
        tap.process(bytes::Bytes::from(sse));
        let streamed = tap.summary(enc);
        let body =
            std::fs::read(dir("response", "openai-to-responses").join(format!("{case}.out.json")))
                .unwrap();
        let whole = summarize_responses(&body, enc);
        assert_eq!(streamed.usage, whole.usage, "responses {case}");
        assert_eq!(
            streamed.finish_reason, whole.finish_reason,
            "responses {case}"
        );
    }
    for case in ["text", "parallel_tools"] {
        let sse =
            std::fs::read(dir("stream", "openai-to-anthropic").join(format!("{case}.out.sse")))
                .unwrap();
        let mut tap = AnthropicTap::new();
        tap.process(bytes::Bytes::from(sse));
        let streamed = tap.summary(enc);
        let body =
            std::fs::read(dir("response", "openai-to-anthropic").join(format!("{case}.out.json")))
                .unwrap();
        let whole = summarize_anthropic(&body, enc);
        assert_eq!(streamed.usage, whole.usage, "{case}");
        assert_eq!(streamed.finish_reason, whole.finish_reason, "{case}");
    }
}

// ---------- property: OpenAI → Anthropic → OpenAI keeps the content ----------

/// A small deterministic generator (xorshift), so failures reproduce from the seed.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn text(&mut self) -> String {
        const W: [&str; 10] = [
            "alpha",
            "β",
            "日本",
            "tab\t",
            "quote\"",
            "line\n",
            "emoji🙂",
            "{json}",
            "  ",
            "x",
        ];
        (0..1 + self.below(6))
            .map(|_| W[self.below(10) as usize])
            .collect()
    }
}

/// A valid OpenAI request: user and assistant turns, tool calls answered by tool results.
fn request(g: &mut Gen) -> Value {
    let mut messages = Vec::new();
    if g.below(2) == 0 {
        messages.push(json!({"role": "system", "content": g.text()}));
    }
    let mut call = 0;
    for _ in 0..1 + g.below(4) {
        messages.push(json!({"role": "user", "content": g.text()}));
        if g.below(2) == 0 {
            let n = 1 + g.below(3);
            let calls: Vec<Value> = (0..n)
                .map(|_| {
                    call += 1;
                    json!({"id": format!("call_{call}"), "type": "function",
                           "function": {"name": "tool", "arguments": json!({"q": g.text()}).to_string()}})
                })
                .collect();
            let content = if g.below(2) == 0 {
                json!(g.text())
            } else {
                Value::Null
            };
            messages.push(json!({"role": "assistant", "content": content, "tool_calls": calls}));
            for c in &calls {
                messages
                    .push(json!({"role": "tool", "tool_call_id": c["id"], "content": g.text()}));
            }
        }
        messages.push(json!({"role": "assistant", "content": g.text()}));
    }
    messages.push(json!({"role": "user", "content": g.text()}));
    json!({"model": "m", "messages": messages,
           "tools": [{"type": "function", "function": {"name": "tool", "parameters": {"type": "object"}}}]})
}

/// What must survive: the system text, and per role the texts, the calls (id, name, arguments
/// as JSON) and the results (id, text), in order.
fn content(v: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for m in v["messages"].as_array().unwrap() {
        let role = m["role"].as_str().unwrap();
        if let Some(t) = m["content"].as_str().filter(|t| !t.is_empty()) {
            out.push(format!("{role}: {t}"));
        }
        for c in m["tool_calls"].as_array().into_iter().flatten() {
            let args: Value =
                serde_json::from_str(c["function"]["arguments"].as_str().unwrap()).unwrap();
            out.push(format!("call {} {} {args}", c["id"], c["function"]["name"]));
        }
        if role == "tool" {
            out.push(format!("result {}", m["tool_call_id"]));
        }
    }
    out
}

#[test]
fn openai_requests_survive_a_round_trip_through_anthropic() {
    let mut g = Gen(0x5eed_1234_abcd_ef01);
    for i in 0..500 {
        let original = request(&mut g);
        let body = original.to_string();
        let there = anthropic::request_from_ir(&openai::request_to_ir(body.as_bytes()).unwrap());
        let back = openai::request_from_ir(
            &anthropic::request_to_ir(there.to_string().as_bytes()).unwrap(),
        );
        assert_eq!(content(&back), content(&original), "case {i}: {body}");
    }
}

#[test]
fn openai_requests_survive_a_round_trip_through_responses() {
    let mut g = Gen(0x0dd_ba11_5eed_f00d);
    for i in 0..500 {
        let original = request(&mut g);
        let body = original.to_string();
        let there = responses::request_from_ir(&openai::request_to_ir(body.as_bytes()).unwrap());
        let (ir, left) = responses::request_to_ir_noting(there.to_string().as_bytes()).unwrap();
        assert!(left.is_empty(), "case {i}: {left:?}");
        let back = openai::request_from_ir(&ir);
        assert_eq!(content(&back), content(&original), "case {i}: {body}");
    }
}
