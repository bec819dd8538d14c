//! Token figures in a client's log lines (the seed's patterns, parsed without regexes).
//!
//! Three shapes are understood, case-insensitively, with an optional `~` before numbers and
//! `snake_case`, `camelCase` or spaced keys:
//! - token lines: `prompt tokens: ~1234`, `completion_tokens: 56`, `total tokens 1290`,
//!   `contextLength: 131072`, JSON-ish `"prompt_tokens": 1234`;
//! - Continue's `Request had the following token counts` block, whose `- key: value` lines give
//!   the context length, tools, system message and message tokens;
//! - rate-limit and quota errors (429, `quota`, `rate limit`, `RESOURCE_EXHAUSTED`) quoting a
//!   `limit` and the requested count.

use serde::Serialize;

use gatehouse_core::record::preview;

/// Longest raw excerpt kept with a metric.
const RAW_CHARS: usize = 200;
/// A block longer than this is closed anyway.
const BLOCK_LINES: usize = 12;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    #[default]
    Tokens,
    CompileChat,
    ApiError,
}

/// One figure found in a log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct LogMetric {
    pub kind: MetricKind,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    pub context_length: Option<u64>,
    pub tools_tokens: Option<u64>,
    pub system_tokens: Option<u64>,
    /// For API errors: the limit the provider quoted.
    pub limit: Option<u64>,
    /// The line (or block) it came from, shortened.
    pub raw: String,
}

impl LogMetric {
    /// Tokens in the context window according to this figure, when it says.
    pub fn context_tokens(&self) -> Option<u64> {
        match (
            self.total_tokens,
            self.prompt_tokens,
            self.completion_tokens,
        ) {
            (Some(t), _, _) => Some(t),
            (None, Some(p), c) => Some(p + c.unwrap_or(0)),
            (None, None, _) => None,
        }
    }
}

/// Lower-cases and turns `_` into spaces, so `prompt_tokens` and `Prompt Tokens` look alike.
fn normalise(line: &str) -> String {
    line.chars()
        .map(|c| {
            if c == '_' {
                ' '
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

/// The number that follows the first occurrence of any of `keys` (after `:`, `=`, quotes,
/// spaces or `~`).
fn number_after(hay: &str, keys: &[&str]) -> Option<u64> {
    for key in keys {
        let mut from = 0;
        while let Some(i) = hay[from..].find(key) {
            let start = from + i + key.len();
            let rest = hay[start..].trim_start_matches([' ', '\t', ':', '=', '"', '\'', '~', '≈']);
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if (1..=12).contains(&digits)
                && let Ok(n) = rest[..digits].parse()
            {
                return Some(n);
            }
            from = start;
        }
    }
    None
}

const PROMPT: &[&str] = &[
    "prompt tokens",
    "prompttokens",
    "prompt token",
    "input tokens",
];
const COMPLETION: &[&str] = &[
    "completion tokens",
    "completiontokens",
    "completion token",
    "output tokens",
];
const TOTAL: &[&str] = &["total tokens", "totaltokens", "total token"];
const CONTEXT: &[&str] = &["context length", "contextlength", "context window"];
const LOOSE: &[&str] = &["token count", "tokens"];
const BLOCK_START: &str = "request had the following token counts";
const BLOCK_TOOLS: &[&str] = &["tools", "tool"];
const BLOCK_SYSTEM: &[&str] = &["system message", "systemmessage", "system prompt"];
const BLOCK_TOTAL: &[&str] = &["counted tokens", "total", "prompt", "messages"];

fn is_api_error(n: &str) -> bool {
    n.contains("429")
        || n.contains("quota")
        || n.contains("rate limit")
        || n.contains("ratelimit")
        || n.contains("resource exhausted")
        || n.contains("too many requests")
}

fn relevant(n: &str) -> bool {
    n.contains("token") || n.contains("context") || is_api_error(n)
}

/// A line-by-line parser; it keeps the open `token counts` block between lines.
#[derive(Debug, Default)]
pub struct LogParser {
    block: Option<Vec<String>>,
}

impl LogParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds one line (without its newline); figures it completes are pushed to `out`.
    pub fn feed(&mut self, line: &str, out: &mut Vec<LogMetric>) {
        let n = normalise(line);
        if n.contains(BLOCK_START) {
            self.close(out);
            self.block = Some(vec![line.to_owned()]);
            return;
        }
        if let Some(block) = &mut self.block {
            let t = line.trim_start();
            let continues = !line.trim().is_empty()
                && (t.starts_with(['-', '*', '•']) || line.starts_with([' ', '\t']));
            if continues {
                block.push(line.to_owned());
                if block.len() >= BLOCK_LINES {
                    self.close(out);
                }
                return;
            }
            self.close(out);
        }
        if relevant(&n)
            && let Some(m) = parse_line(line, &n)
        {
            out.push(m);
        }
    }

    /// Ends an open block (end of input, or before a pause).
    pub fn close(&mut self, out: &mut Vec<LogMetric>) {
        if let Some(block) = self.block.take()
            && let Some(m) = parse_block(&block)
        {
            out.push(m);
        }
    }
}

fn parse_line(line: &str, n: &str) -> Option<LogMetric> {
    let mut m = LogMetric {
        raw: preview(line, RAW_CHARS),
        ..LogMetric::default()
    };
    if is_api_error(n) {
        m.kind = MetricKind::ApiError;
        m.limit = number_after(n, &["limit"]);
        m.total_tokens = number_after(n, &["input token count", "requested", "current"])
            .or_else(|| number_after(n, TOTAL));
        // Quota errors without any figure are not metrics.
        return (m.limit.is_some() || m.total_tokens.is_some()).then_some(m);
    }
    m.prompt_tokens = number_after(n, PROMPT);
    m.completion_tokens = number_after(n, COMPLETION);
    m.total_tokens = number_after(n, TOTAL);
    m.context_length = number_after(n, CONTEXT);
    if m.prompt_tokens.is_none() && m.completion_tokens.is_none() && m.total_tokens.is_none() {
        m.total_tokens = number_after(n, LOOSE);
    }
    if m.total_tokens.is_none()
        && let Some(p) = m.prompt_tokens
    {
        m.total_tokens = Some(p + m.completion_tokens.unwrap_or(0));
    }
    (m.total_tokens.is_some() || m.context_length.is_some()).then_some(m)
}

fn parse_block(lines: &[String]) -> Option<LogMetric> {
    let mut m = LogMetric {
        kind: MetricKind::CompileChat,
        raw: preview(&lines.join(" "), RAW_CHARS),
        ..LogMetric::default()
    };
    let mut messages = None;
    for line in lines.iter().skip(1) {
        let n = normalise(line);
        if let Some(v) = number_after(&n, CONTEXT) {
            m.context_length = Some(v);
        } else if let Some(v) = number_after(&n, BLOCK_SYSTEM) {
            m.system_tokens = Some(v);
        } else if let Some(v) = number_after(&n, BLOCK_TOOLS) {
            m.tools_tokens = Some(v);
        } else if let Some(v) = number_after(&n, BLOCK_TOTAL) {
            messages = Some(v);
        }
    }
    let parts = [messages, m.tools_tokens, m.system_tokens];
    if parts.iter().all(Option::is_none) {
        return None;
    }
    m.prompt_tokens = messages;
    m.total_tokens = Some(parts.iter().flatten().sum());
    Some(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(text: &str) -> Vec<LogMetric> {
        let mut p = LogParser::new();
        let mut out = Vec::new();
        for l in text.lines() {
            p.feed(l, &mut out);
        }
        p.close(&mut out);
        out
    }

    #[test]
    fn token_lines_in_their_spellings() {
        let m = all("[2026-03-01] LLM usage: prompt tokens: ~1234, completion tokens: 56");
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].prompt_tokens, Some(1234));
        assert_eq!(m[0].completion_tokens, Some(56));
        assert_eq!(m[0].context_tokens(), Some(1290));
        let m = all(r#"usage {"prompt_tokens":900,"completion_tokens":10,"total_tokens":910}"#);
        assert_eq!(m[0].total_tokens, Some(910));
        let m = all("contextLength: 262144");
        assert_eq!(m[0].context_length, Some(262_144));
        assert_eq!(m[0].context_tokens(), None);
        let m = all("Token count: ~4096");
        assert_eq!(m[0].total_tokens, Some(4096));
    }

    #[test]
    fn lines_without_figures_are_ignored() {
        assert!(all("Starting Continue core; tokens will be counted").is_empty());
        assert!(all("user opened file main.rs").is_empty());
        assert!(all("quota check ok").is_empty());
        assert!(all("").is_empty());
    }

    #[test]
    fn the_token_counts_block() {
        let text = "Request had the following token counts\n- contextLength: 131072\n- counted tokens: ~9000\n- tools: ~1200\n- system message: 340\nnext log line";
        let m = all(text);
        assert_eq!(m.len(), 1, "{m:?}");
        let b = &m[0];
        assert_eq!(b.kind, MetricKind::CompileChat);
        assert_eq!(b.context_length, Some(131_072));
        assert_eq!(b.tools_tokens, Some(1200));
        assert_eq!(b.system_tokens, Some(340));
        assert_eq!(b.total_tokens, Some(10_540));
    }

    #[test]
    fn a_block_cut_by_the_end_of_input_still_counts() {
        let m = all("Request had the following token counts\n  tools: 10\n  messages: 20");
        assert_eq!(m[0].total_tokens, Some(30));
    }

    #[test]
    fn rate_limit_errors() {
        let m = all(
            "Error 429: quota exceeded for metric input_token_count, limit: 1000000, requested: 1200000",
        );
        assert_eq!(m[0].kind, MetricKind::ApiError);
        assert_eq!(m[0].limit, Some(1_000_000));
        assert_eq!(m[0].total_tokens, Some(1_200_000));
        let m = all(
            r#"HTTP 429 {"error":{"code":429,"message":"Resource has been exhausted","limit": 32000}}"#,
        );
        assert_eq!(m[0].limit, Some(32_000));
    }

    #[test]
    fn never_panics_on_odd_bytes() {
        for l in [
            "tokens: 99999999999999999999",
            "tokens:",
            "~~~~tokens~~~:~",
            "токены tokens: 5 😀",
        ] {
            let _ = all(l);
        }
        assert_eq!(all("токены tokens: 5 😀")[0].total_tokens, Some(5));
    }
}
