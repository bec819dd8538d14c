//! Exact token counting with tiktoken-compatible BPE and embedded vocabularies.
//!
//! Text counts equal Python tiktoken's `encode_ordinary` (checked against golden numbers in
//! `tests/tokens`). Chat prompts follow the seed's message rules: 3 tokens per message, 3 to
//! prime the reply, 1 more per `name`, 512 per image part; tool definitions and tool calls are
//! counted from their text. Per-message counts are cached by a hash of the message's raw bytes,
//! so a growing conversation only tokenizes what is new.

use std::str::FromStr;

use quick_cache::sync::Cache;
use serde::{Deserialize, Serialize};
use xxhash_rust::xxh3::Xxh3;

use crate::request::{ChatRequestView, Content, MessageView, Part};

/// Per-message framing overhead of OpenAI chat models (the seed's rule).
pub const TOKENS_PER_MESSAGE: u64 = 3;
/// Tokens that prime the assistant's reply.
pub const TOKENS_PER_REPLY: u64 = 3;
/// Extra token when a message carries a `name`.
pub const TOKENS_PER_NAME: u64 = 1;
/// Flat cost of an image part (the seed's figure; OpenAI's low-detail image cost is 85).
pub const TOKENS_PER_IMAGE: u64 = 512;

/// The BPE vocabularies the gateway ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    #[serde(rename = "cl100k_base")]
    Cl100k,
    #[serde(rename = "o200k_base")]
    O200k,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::Cl100k => "cl100k_base",
            Self::O200k => "o200k_base",
        }
    }

    /// The default for an upstream model name: o200k for OpenAI's 4o / 4.1 / 5 / o-series and
    /// gpt-oss families, cl100k for everything else (the seed's choice for non-OpenAI models).
    pub fn for_model(upstream_model: &str) -> Self {
        let m = upstream_model.rsplit('/').next().unwrap_or(upstream_model);
        let m = m.to_ascii_lowercase();
        let o200k = [
            "gpt-4o",
            "gpt-4.1",
            "gpt-4.5",
            "gpt-5",
            "chatgpt-4o",
            "gpt-oss",
            "o1",
            "o3",
            "o4",
        ];
        if o200k.iter().any(|p| m.starts_with(p)) {
            Self::O200k
        } else {
            Self::Cl100k
        }
    }

    fn bpe(self) -> Option<&'static tiktoken::CoreBpe> {
        tiktoken::get_encoding(self.name())
    }

    /// Exact token count of `text`, special-token strings counted as ordinary text.
    pub fn count(self, text: &str) -> u64 {
        match self.bpe() {
            Some(bpe) => bpe.count(text) as u64,
            // Both vocabularies are compiled in; this arm exists so a build without them degrades
            // to the classic 4-bytes-per-token estimate instead of panicking.
            None => (text.len() as u64).div_ceil(4),
        }
    }
}

impl FromStr for Encoding {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "cl100k_base" | "cl100k" => Ok(Self::Cl100k),
            "o200k_base" | "o200k" => Ok(Self::O200k),
            other => Err(format!(
                "unknown encoding `{other}`: use `cl100k_base` or `o200k_base`"
            )),
        }
    }
}

/// The token count of a prompt and how it was obtained.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCount {
    pub tokens: u64,
    pub messages: usize,
    /// Messages whose count came from the cache.
    pub cached_messages: usize,
    /// Bytes of message text that had to be tokenized for this prompt.
    pub tokenized_bytes: usize,
}

/// Counts prompts, remembering per-message counts across requests.
pub struct TokenCounter {
    cache: Cache<u128, u64>,
}

impl std::fmt::Debug for TokenCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCounter")
            .field("cached", &self.cache.len())
            .finish()
    }
}

impl TokenCounter {
    /// `capacity` is the number of message counts kept; each costs a few dozen bytes.
    pub fn new(capacity: usize) -> Self {
        Self {
            cache: Cache::new(capacity.max(16)),
        }
    }

    /// Loads these vocabularies now (the token bench, so it times counting, not loading). Each costs
    /// memory (about 12 MiB for cl100k, 17 MiB for o200k), so load only those in use; any other
    /// loads on first use.
    pub fn warm(encodings: &[Encoding]) {
        for enc in encodings {
            let _ = enc.count("warm");
        }
    }

    /// Tokens of one message (role, name, content, and the per-message overhead), cached.
    pub fn count_message(&self, enc: Encoding, m: &MessageView<'_>) -> u64 {
        let key = message_key(enc, m);
        if let Some(n) = self.cache.get(&key) {
            return n;
        }
        let (n, _) = count_message(enc, m);
        self.cache.insert(key, n);
        n
    }

    /// Tokens of a stretch of text (a tool's output inside a message), cached like messages.
    pub fn count_text(&self, enc: Encoding, text: &str) -> u64 {
        let mut h = Xxh3::new();
        h.update(enc.name().as_bytes());
        h.update(&[1]);
        h.update(text.as_bytes());
        let key = h.digest128();
        if let Some(n) = self.cache.get(&key) {
            return n;
        }
        let n = enc.count(text);
        self.cache.insert(key, n);
        n
    }

    /// Counts a whole chat prompt: messages, tool definitions and the reply primer.
    pub fn count_prompt(&self, enc: Encoding, req: &ChatRequestView<'_>) -> PromptCount {
        let mut out = PromptCount {
            tokens: TOKENS_PER_REPLY,
            messages: req.messages.len(),
            ..PromptCount::default()
        };
        for m in &req.messages {
            let key = message_key(enc, m);
            let n = match self.cache.get(&key) {
                Some(n) => {
                    out.cached_messages += 1;
                    n
                }
                None => {
                    let (n, bytes) = count_message(enc, m);
                    out.tokenized_bytes += bytes;
                    self.cache.insert(key, n);
                    n
                }
            };
            out.tokens += n;
        }
        if let Some(tools) = req.tools {
            out.tokens += enc.count(tools.get());
            out.tokenized_bytes += tools.get().len();
        }
        out
    }
}

fn message_key(enc: Encoding, m: &MessageView<'_>) -> u128 {
    let mut h = Xxh3::new();
    h.update(enc.name().as_bytes());
    h.update(&[0]);
    h.update(m.raw.get().as_bytes());
    h.digest128()
}

/// Tokens of one message and the bytes tokenized to get them.
fn count_message(enc: Encoding, m: &MessageView<'_>) -> (u64, usize) {
    let mut bytes = m.role.len();
    let mut n = TOKENS_PER_MESSAGE + enc.count(&m.role);
    if let Some(name) = &m.name {
        n += TOKENS_PER_NAME + enc.count(name);
        bytes += name.len();
    }
    match &m.content {
        Content::None => {}
        Content::Text(t) => {
            n += enc.count(t);
            bytes += t.len();
        }
        Content::Parts(parts) => {
            for p in parts {
                match p {
                    Part::Text(t) => {
                        n += enc.count(t);
                        bytes += t.len();
                    }
                    Part::Image => n += TOKENS_PER_IMAGE,
                    Part::Other(raw) => {
                        n += enc.count(raw.get());
                        bytes += raw.get().len();
                    }
                }
            }
        }
    }
    for call in &m.tool_calls {
        n += enc.count(&call.name) + enc.count(&call.arguments);
        bytes += call.name.len() + call.arguments.len();
    }
    (n, bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_counts() {
        assert_eq!(Encoding::Cl100k.count("hello world"), 2);
        assert_eq!(Encoding::O200k.count("hello world"), 2);
        assert_eq!(Encoding::Cl100k.count(""), 0);
        // A special-token string is ordinary text, as in tiktoken's `encode_ordinary`.
        assert!(Encoding::Cl100k.count("<|endoftext|>") > 1);
    }

    #[test]
    fn family_defaults() {
        assert_eq!(Encoding::for_model("gpt-4o-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("openai/gpt-oss-120b"), Encoding::O200k);
        assert_eq!(Encoding::for_model("o3-mini"), Encoding::O200k);
        assert_eq!(Encoding::for_model("codestral-2501"), Encoding::Cl100k);
        assert_eq!(Encoding::for_model("gpt-4"), Encoding::Cl100k);
    }

    #[test]
    fn message_rules_match_the_openai_cookbook() {
        // The cookbook's example: these two messages are 3+1+? ... computed from parts here.
        let body = br#"{"model":"m","messages":[
            {"role":"system","content":"You are a helpful assistant."},
            {"role":"user","name":"bob","content":"Hello!"}]}"#;
        let v = ChatRequestView::parse(body).unwrap();
        let enc = Encoding::Cl100k;
        let expected = TOKENS_PER_REPLY
            + (TOKENS_PER_MESSAGE
                + enc.count("system")
                + enc.count("You are a helpful assistant."))
            + (TOKENS_PER_MESSAGE
                + enc.count("user")
                + enc.count("Hello!")
                + TOKENS_PER_NAME
                + enc.count("bob"));
        let c = TokenCounter::new(100).count_prompt(enc, &v);
        assert_eq!(c.tokens, expected);
    }

    #[test]
    fn images_cost_a_flat_amount() {
        let body = br#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"x"}}]}]}"#;
        let v = ChatRequestView::parse(body).unwrap();
        let c = TokenCounter::new(10).count_prompt(Encoding::Cl100k, &v);
        assert_eq!(
            c.tokens,
            TOKENS_PER_REPLY
                + TOKENS_PER_MESSAGE
                + Encoding::Cl100k.count("user")
                + TOKENS_PER_IMAGE
        );
    }

    #[test]
    fn growing_conversation_only_tokenizes_new_messages() {
        let counter = TokenCounter::new(1000);
        let mut msgs = Vec::new();
        for i in 0..200 {
            msgs.push(format!(
                r#"{{"role":"user","content":"turn {i}: {}"}}"#,
                "word ".repeat(50)
            ));
            let body = format!(r#"{{"model":"m","messages":[{}]}}"#, msgs.join(","));
            let v = ChatRequestView::parse(body.as_bytes()).unwrap();
            let c = counter.count_prompt(Encoding::Cl100k, &v);
            assert_eq!(c.cached_messages, i, "turn {i} re-tokenized old messages");
            assert_eq!(c.messages, i + 1);
        }
        // And the cached total equals a cold count.
        let body = format!(r#"{{"model":"m","messages":[{}]}}"#, msgs.join(","));
        let v = ChatRequestView::parse(body.as_bytes()).unwrap();
        let warm = counter.count_prompt(Encoding::Cl100k, &v);
        let cold = TokenCounter::new(1000).count_prompt(Encoding::Cl100k, &v);
        assert_eq!(warm.tokens, cold.tokens);
        assert_eq!(warm.tokenized_bytes, 0);
    }
}
