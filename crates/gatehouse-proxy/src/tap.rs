//! Reading OpenAI completions on the side: usage, finish reason and completion text, from a live
//! SSE stream (chunk by chunk) or from a complete response body.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};
use gatehouse_core::{Encoding, Usage};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::sse::{Framer, parse_event};

/// What a completion said about itself.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CompletionSummary {
    /// Usage as the provider reported it.
    pub usage: Option<Usage>,
    /// Completion tokens counted from the text, for when the provider reports none.
    pub counted_completion_tokens: u64,
    pub finish_reason: Option<String>,
    /// An error the provider reported inside a 200 response (an SSE `error` event).
    pub upstream_error: Option<String>,
    /// The stream ended with `data: [DONE]`.
    pub saw_done: bool,
}

#[derive(Deserialize)]
struct ChunkJson<'a> {
    #[serde(borrow, default)]
    choices: Option<Vec<ChoiceJson<'a>>>,
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ChoiceJson<'a> {
    #[serde(borrow, default)]
    delta: Option<MessageJson<'a>>,
    #[serde(borrow, default)]
    message: Option<MessageJson<'a>>,
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    /// Moonshot reports usage inside the final choice.
    #[serde(borrow, default)]
    usage: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageJson<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reasoning_content: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    refusal: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tool_calls: Option<Vec<ToolCallJson<'a>>>,
}

#[derive(Deserialize)]
struct ToolCallJson<'a> {
    #[serde(borrow, default)]
    function: Option<FunctionJson<'a>>,
}

#[derive(Deserialize)]
struct FunctionJson<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// Accumulates what the chunks of one completion say.
#[derive(Debug, Default)]
struct Collector {
    text: String,
    usage: Option<Usage>,
    finish_reason: Option<String>,
    upstream_error: Option<String>,
    saw_done: bool,
}

impl Collector {
    /// Reads one JSON chunk (or whole response). Returns true when it is the usage-only chunk
    /// (empty `choices`, `usage` set).
    fn read(&mut self, json: &[u8]) -> bool {
        let Ok(chunk) = serde_json::from_slice::<ChunkJson<'_>>(json) else {
            return false;
        };
        if let Some(err) = chunk.error {
            self.upstream_error = Some(err.get().chars().take(500).collect());
        }
        let usage = chunk.usage.and_then(Usage::from_openai);
        if usage.is_some() {
            self.usage = usage;
        }
        let choices = chunk.choices.unwrap_or_default();
        let usage_only = choices.is_empty() && usage.is_some();
        for c in choices {
            if let Some(m) = c.delta.or(c.message) {
                for t in [m.content, m.reasoning_content, m.refusal]
                    .into_iter()
                    .flatten()
                {
                    self.text.push_str(&t);
                }
                for call in m.tool_calls.unwrap_or_default() {
                    if let Some(f) = call.function {
                        for t in [f.name, f.arguments].into_iter().flatten() {
                            self.text.push_str(&t);
                        }
                    }
                }
            }
            if let Some(u) = c.usage.and_then(Usage::from_openai) {
                self.usage = Some(u);
            }
            if let Some(r) = c.finish_reason {
                self.finish_reason = Some(r.into_owned());
            }
        }
        usage_only
    }

    fn summary(self, enc: Encoding) -> CompletionSummary {
        CompletionSummary {
            usage: self.usage,
            counted_completion_tokens: enc.count(&self.text),
            finish_reason: self.finish_reason,
            upstream_error: self.upstream_error,
            saw_done: self.saw_done,
        }
    }
}

/// Taps an OpenAI SSE stream as it is forwarded.
#[derive(Debug)]
pub struct StreamTap {
    framer: Framer,
    collector: Collector,
    /// Withhold the usage-only chunk: the gateway asked for it, the client did not.
    strip_usage_chunk: bool,
}

impl StreamTap {
    pub fn new(strip_usage_chunk: bool) -> Self {
        Self {
            framer: Framer::new(),
            collector: Collector::default(),
            strip_usage_chunk,
        }
    }

    /// Reads a chunk and returns the bytes to send to the client now. Without stripping that is
    /// the chunk itself, at once; with stripping, whole events (the chunk itself when nothing
    /// was withheld or held back).
    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        let collector = &mut self.collector;
        if !self.strip_usage_chunk || self.framer.overflowed {
            self.framer.feed(&chunk, |ev| {
                read_event(collector, ev);
            });
            return chunk;
        }
        let had_pending = self.framer.has_pending();
        let mut out = BytesMut::new();
        let mut withheld = false;
        let clean_end = self.framer.feed(&chunk, |ev| {
            if read_event(collector, ev) {
                withheld = true;
            } else {
                out.extend_from_slice(ev);
            }
        });
        if self.framer.overflowed {
            // Too big to frame: stop withholding and let the rest through untouched.
            out.extend_from_slice(&self.framer.take_pending());
            return out.freeze();
        }
        if !had_pending && clean_end && !withheld {
            return chunk;
        }
        out.freeze()
    }

    /// Bytes of an unfinished event still held (stripping mode), to flush at the end.
    pub fn take_pending(&mut self) -> Bytes {
        if self.strip_usage_chunk {
            Bytes::from(self.framer.take_pending())
        } else {
            Bytes::new()
        }
    }

    /// Whether the client has received part of an event that never finished.
    pub fn mid_event(&self) -> bool {
        self.framer.has_pending()
    }

    pub fn summary(self, enc: Encoding) -> CompletionSummary {
        self.collector.summary(enc)
    }
}

/// Returns true when the event is the usage-only chunk.
fn read_event(c: &mut Collector, raw: &[u8]) -> bool {
    let (_, data) = parse_event(raw);
    if data.is_empty() {
        return false;
    }
    if data == b"[DONE]" {
        c.saw_done = true;
        return false;
    }
    c.read(&data)
}

/// Reads a complete (non-streaming) chat completion body.
pub fn summarize_response(body: &[u8], enc: Encoding) -> CompletionSummary {
    let mut c = Collector::default();
    c.read(body);
    c.summary(enc)
}

/// What an Anthropic Messages stream says about itself, read as it is forwarded.
#[derive(Debug, Default)]
pub struct AnthropicTap {
    framer: Framer,
    text: String,
    usage: Option<crate::translate::ir::Usage>,
    finish_reason: Option<String>,
    upstream_error: Option<String>,
    saw_stop: bool,
}

impl AnthropicTap {
    pub fn new() -> Self {
        Self {
            framer: Framer::new(),
            ..Self::default()
        }
    }

    /// Reads a chunk; the bytes go to the client unchanged.
    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        let (text, usage, finish, error, stop) = (
            &mut self.text,
            &mut self.usage,
            &mut self.finish_reason,
            &mut self.upstream_error,
            &mut self.saw_stop,
        );
        self.framer.feed(&chunk, |raw| {
            let (_, data) = parse_event(raw);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
                return;
            };
            let get = |k: &str| v.get(k);
            match get("type").and_then(serde_json::Value::as_str) {
                Some("message_start") => {
                    if let Some(u) = get("message").and_then(|m| m.get("usage")) {
                        *usage = Some(crate::translate::anthropic::usage_from(u));
                    }
                }
                Some("content_block_start") => {
                    if let Some(b) = get("content_block") {
                        for k in ["text", "name"] {
                            if let Some(t) = b.get(k).and_then(serde_json::Value::as_str) {
                                text.push_str(t);
                            }
                        }
                    }
                }
                Some("content_block_delta") => {
                    if let Some(d) = get("delta") {
                        for k in ["text", "partial_json", "thinking"] {
                            if let Some(t) = d.get(k).and_then(serde_json::Value::as_str) {
                                text.push_str(t);
                            }
                        }
                    }
                }
                Some("message_delta") => {
                    if let Some(r) = get("delta")
                        .and_then(|d| d.get("stop_reason"))
                        .and_then(serde_json::Value::as_str)
                    {
                        *finish = Some(r.to_owned());
                    }
                    if let Some(u) = get("usage") {
                        let later = crate::translate::anthropic::usage_from(u);
                        let cur = usage.get_or_insert_with(Default::default);
                        cur.output = later.output;
                        if u.get("input_tokens").is_some() {
                            cur.input = later.input;
                            cur.cache_read = later.cache_read;
                            cur.cache_creation = later.cache_creation;
                        }
                    }
                }
                Some("message_stop") => *stop = true,
                Some("error") => {
                    *error = Some(
                        get("error")
                            .map_or_else(|| v.to_string(), ToString::to_string)
                            .chars()
                            .take(500)
                            .collect(),
                    );
                }
                _ => {}
            }
        });
        chunk
    }

    pub fn mid_event(&self) -> bool {
        self.framer.has_pending()
    }

    pub fn summary(self, enc: Encoding) -> CompletionSummary {
        CompletionSummary {
            usage: self.usage.map(|u| Usage {
                prompt_tokens: u.input,
                completion_tokens: u.output,
                cached_tokens: Some(u.cache_read),
                reasoning_tokens: None,
            }),
            counted_completion_tokens: enc.count(&self.text),
            finish_reason: self.finish_reason,
            upstream_error: self.upstream_error,
            saw_done: self.saw_stop,
        }
    }
}

/// Reads a complete Anthropic Messages response.
pub fn summarize_anthropic(body: &[u8], enc: Encoding) -> CompletionSummary {
    let Ok(r) = crate::translate::anthropic::response_to_ir(body) else {
        return CompletionSummary::default();
    };
    let mut text = String::new();
    let mut finish = None;
    for c in &r.choices {
        for p in &c.content {
            match p {
                crate::translate::ir::Part::Text(t) => text.push_str(t),
                crate::translate::ir::Part::Thinking { text: t, .. } => text.push_str(t),
                crate::translate::ir::Part::ToolUse { name, input, .. } => {
                    text.push_str(name);
                    text.push_str(&input.to_string());
                }
                _ => {}
            }
        }
        finish = c
            .finish
            .as_ref()
            .map(|f| crate::translate::anthropic::finish_to(f).to_owned());
    }
    CompletionSummary {
        usage: r.usage.map(|u| Usage {
            prompt_tokens: u.input,
            completion_tokens: u.output,
            cached_tokens: Some(u.cache_read),
            reasoning_tokens: None,
        }),
        counted_completion_tokens: enc.count(&text),
        finish_reason: finish,
        upstream_error: None,
        saw_done: true,
    }
}

/// What a Responses event stream says about itself, read as it is forwarded.
#[derive(Debug, Default)]
pub struct ResponsesTap {
    framer: Framer,
    text: String,
    called: bool,
    usage: Option<crate::translate::ir::Usage>,
    status: Option<String>,
    upstream_error: Option<String>,
}

impl ResponsesTap {
    pub fn new() -> Self {
        Self {
            framer: Framer::new(),
            ..Self::default()
        }
    }

    /// Reads a chunk; the bytes go to the client unchanged.
    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        let (text, called, usage, status, error) = (
            &mut self.text,
            &mut self.called,
            &mut self.usage,
            &mut self.status,
            &mut self.upstream_error,
        );
        self.framer.feed(&chunk, |raw| {
            let (_, data) = parse_event(raw);
            let Ok(v) = serde_json::from_slice::<serde_json::Value>(&data) else {
                return;
            };
            let str_of = |k: &str| v.get(k).and_then(serde_json::Value::as_str);
            match str_of("type") {
                Some(
                    "response.output_text.delta"
                    | "response.function_call_arguments.delta"
                    | "response.reasoning_summary_text.delta",
                ) => text.push_str(str_of("delta").unwrap_or("")),
                Some("response.output_item.added") => {
                    if let Some(item) = v.get("item")
                        && item.get("type").and_then(serde_json::Value::as_str)
                            == Some("function_call")
                    {
                        *called = true;
                        text.push_str(
                            item.get("name")
                                .and_then(serde_json::Value::as_str)
                                .unwrap_or(""),
                        );
                    }
                }
                Some(kind @ ("response.completed" | "response.incomplete" | "response.failed")) => {
                    let r = v.get("response");
                    if let Some(u) = r.and_then(|r| r.get("usage")).filter(|u| u.is_object()) {
                        *usage = Some(crate::translate::responses::usage_from(u));
                    }
                    *status = Some(kind.trim_start_matches("response.").to_owned());
                    if kind == "response.failed" {
                        *error = Some(
                            r.and_then(|r| r.get("error"))
                                .map_or_else(
                                    || "the response failed".to_owned(),
                                    ToString::to_string,
                                )
                                .chars()
                                .take(500)
                                .collect(),
                        );
                    }
                }
                Some("error") => {
                    *error = Some(
                        str_of("message")
                            .unwrap_or("stream error")
                            .chars()
                            .take(500)
                            .collect(),
                    );
                }
                _ => {}
            }
        });
        chunk
    }

    pub fn mid_event(&self) -> bool {
        self.framer.has_pending()
    }

    pub fn summary(self, enc: Encoding) -> CompletionSummary {
        let finish_reason = match self.status.as_deref() {
            Some("incomplete") => Some("length".to_owned()),
            Some("completed") if self.called => Some("tool_calls".to_owned()),
            Some("completed") => Some("stop".to_owned()),
            _ => None,
        };
        CompletionSummary {
            usage: self.usage.map(|u| Usage {
                prompt_tokens: u.input,
                completion_tokens: u.output,
                cached_tokens: Some(u.cache_read),
                reasoning_tokens: Some(u.reasoning),
            }),
            counted_completion_tokens: enc.count(&self.text),
            finish_reason,
            upstream_error: self.upstream_error,
            saw_done: self.status.is_some(),
        }
    }
}

/// What a Gemini `streamGenerateContent` stream says about itself, read as it is forwarded
/// (through the provider-side decoder, which already reads every Gemini chunk).
#[derive(Debug, Default)]
pub struct GeminiTap {
    framer: Framer,
    decoder: crate::translate::gemini::Decoder,
    events: Vec<crate::translate::ir::Event>,
    text: String,
    usage: Option<crate::translate::ir::Usage>,
    finish_reason: Option<String>,
    upstream_error: Option<String>,
}

impl GeminiTap {
    pub fn new() -> Self {
        Self {
            framer: Framer::new(),
            ..Self::default()
        }
    }

    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        let (decoder, events) = (&mut self.decoder, &mut self.events);
        self.framer.feed(&chunk, |raw| {
            let (_, data) = parse_event(raw);
            decoder.event(&data, events);
        });
        for e in self.events.drain(..) {
            use crate::translate::ir::Event;
            match e {
                Event::Text { text, .. } | Event::Thinking { text, .. } => {
                    self.text.push_str(&text)
                }
                Event::ToolStart { name, .. } => self.text.push_str(&name),
                Event::ToolArgs { json, .. } => self.text.push_str(&json),
                Event::Finish { reason, .. } => {
                    self.finish_reason =
                        Some(crate::translate::openai::finish_to(&reason).to_owned());
                }
                Event::Usage(u) => self.usage = Some(u),
                Event::Error { message, .. } => {
                    self.upstream_error = Some(message.chars().take(500).collect());
                }
                _ => {}
            }
        }
        chunk
    }

    pub fn mid_event(&self) -> bool {
        self.framer.has_pending()
    }

    pub fn summary(self, enc: Encoding) -> CompletionSummary {
        CompletionSummary {
            usage: self.usage.map(|u| Usage {
                prompt_tokens: u.input,
                completion_tokens: u.output,
                cached_tokens: Some(u.cache_read),
                reasoning_tokens: Some(u.reasoning),
            }),
            counted_completion_tokens: enc.count(&self.text),
            // Gemini streams have no end marker: the finish reason is the end.
            saw_done: self.finish_reason.is_some(),
            finish_reason: self.finish_reason,
            upstream_error: self.upstream_error,
        }
    }
}

/// Reads a complete Gemini `generateContent` response.
pub fn summarize_gemini(body: &[u8], enc: Encoding) -> CompletionSummary {
    let mut tap = GeminiTap::new();
    if let Ok(r) = crate::translate::gemini::response_to_ir(body) {
        for c in r.choices.iter().take(1) {
            for p in &c.content {
                match p {
                    crate::translate::ir::Part::Text(t)
                    | crate::translate::ir::Part::Thinking { text: t, .. } => tap.text.push_str(t),
                    crate::translate::ir::Part::ToolUse { name, input, .. } => {
                        tap.text.push_str(name);
                        tap.text.push_str(&input.to_string());
                    }
                    _ => {}
                }
            }
            tap.finish_reason = c
                .finish
                .as_ref()
                .map(|f| crate::translate::openai::finish_to(f).to_owned());
        }
        tap.usage = r.usage;
    }
    tap.summary(enc)
}

/// Reads a complete Responses API response.
pub fn summarize_responses(body: &[u8], enc: Encoding) -> CompletionSummary {
    let mut tap = ResponsesTap::new();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        for item in v
            .get("output")
            .and_then(serde_json::Value::as_array)
            .into_iter()
            .flatten()
        {
            if item.get("type").and_then(serde_json::Value::as_str) == Some("function_call") {
                tap.called = true;
            }
        }
        if let Ok(r) = crate::translate::responses::response_to_ir(body) {
            for p in r.choices.iter().flat_map(|c| &c.content) {
                match p {
                    crate::translate::ir::Part::Text(t)
                    | crate::translate::ir::Part::Thinking { text: t, .. } => tap.text.push_str(t),
                    crate::translate::ir::Part::ToolUse { name, input, .. } => {
                        tap.text.push_str(name);
                        tap.text.push_str(&input.to_string());
                    }
                    _ => {}
                }
            }
        }
        tap.usage = v
            .get("usage")
            .filter(|u| u.is_object())
            .map(crate::translate::responses::usage_from);
        tap.status = v
            .get("status")
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned);
    }
    tap.summary(enc)
}

/// The tap on what the client receives, in the client's format.
#[derive(Debug)]
pub enum ClientTap {
    OpenAi(StreamTap),
    Anthropic(AnthropicTap),
    Responses(Box<ResponsesTap>),
    Gemini(Box<GeminiTap>),
}

impl ClientTap {
    pub fn process(&mut self, chunk: Bytes) -> Bytes {
        match self {
            Self::OpenAi(t) => t.process(chunk),
            Self::Anthropic(t) => t.process(chunk),
            Self::Responses(t) => t.process(chunk),
            Self::Gemini(t) => t.process(chunk),
        }
    }

    pub fn take_pending(&mut self) -> Bytes {
        match self {
            Self::OpenAi(t) => t.take_pending(),
            Self::Anthropic(_) | Self::Responses(_) | Self::Gemini(_) => Bytes::new(),
        }
    }

    pub fn mid_event(&self) -> bool {
        match self {
            Self::OpenAi(t) => t.mid_event(),
            Self::Anthropic(t) => t.mid_event(),
            Self::Responses(t) => t.mid_event(),
            Self::Gemini(t) => t.mid_event(),
        }
    }

    pub fn summary(self, enc: Encoding) -> CompletionSummary {
        match self {
            Self::OpenAi(t) => t.summary(enc),
            Self::Anthropic(t) => t.summary(enc),
            Self::Responses(t) => t.summary(enc),
            Self::Gemini(t) => t.summary(enc),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STREAM: &[u8] = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hello\"}}]}\n\n\
data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"finish_reason\":\"stop\"}]}\n\n\
data: {\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,\"total_tokens\":11}}\n\n\
data: [DONE]\n\n";

    fn run(strip: bool, chunk: usize) -> (Vec<u8>, CompletionSummary) {
        let mut tap = StreamTap::new(strip);
        let mut out = Vec::new();
        for c in STREAM.chunks(chunk) {
            out.extend_from_slice(&tap.process(Bytes::copy_from_slice(c)));
        }
        out.extend_from_slice(&tap.take_pending());
        (out, tap.summary(Encoding::Cl100k))
    }

    #[test]
    fn passthrough_forwards_every_byte() {
        for size in [1, 7, 64, STREAM.len()] {
            let (out, s) = run(false, size);
            assert_eq!(out, STREAM);
            assert_eq!(s.usage.unwrap().completion_tokens, 2);
            assert_eq!(s.finish_reason.as_deref(), Some("stop"));
            assert!(s.saw_done);
            assert_eq!(s.counted_completion_tokens, 2);
        }
    }

    #[test]
    fn injected_usage_chunk_is_withheld() {
        for size in [1, 5, 100, STREAM.len()] {
            let (out, s) = run(true, size);
            let text = String::from_utf8(out).unwrap();
            assert!(!text.contains("usage"), "{text}");
            assert!(text.ends_with("data: [DONE]\n\n"));
            assert_eq!(text.matches("data:").count(), 3);
            assert_eq!(s.usage.unwrap().prompt_tokens, 9);
        }
    }

    #[test]
    fn whole_responses_are_summarized() {
        let body = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"length"}],"usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
        let s = summarize_response(body, Encoding::Cl100k);
        assert_eq!(s.finish_reason.as_deref(), Some("length"));
        assert_eq!(s.usage.unwrap().prompt_tokens, 3);
        assert_eq!(s.counted_completion_tokens, 2);
        assert_eq!(
            summarize_response(b"not json", Encoding::Cl100k).usage,
            None
        );
    }

    #[test]
    fn usage_inside_the_choice_is_read() {
        let mut tap = StreamTap::new(false);
        tap.process(Bytes::from_static(
            b"data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\",\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":1}}]}\n\n",
        ));
        assert_eq!(
            tap.summary(Encoding::Cl100k).usage.unwrap().prompt_tokens,
            7
        );
    }

    #[test]
    fn errors_inside_streams_are_noticed() {
        let mut tap = StreamTap::new(false);
        tap.process(Bytes::from_static(
            b"data: {\"error\":{\"message\":\"overloaded\"}}\n\n",
        ));
        assert!(
            tap.summary(Encoding::Cl100k)
                .upstream_error
                .unwrap()
                .contains("overloaded")
        );
    }
}
