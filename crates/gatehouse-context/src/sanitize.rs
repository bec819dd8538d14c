//! The sanitizer (the seed's masking rules): a large message that is tool output, pasted file or
//! codebase context, console output, or a big JSON document is replaced by a short stand-in that
//! keeps its role, a preview, a reference to the stored original, its tags and the tokens saved.
//!
//! Masking is a pure function of the message text, so the same message is masked identically on
//! every later turn of the conversation, and a provider's prompt cache keeps hitting.
//!
//! The stand-in's format is stable (documented in the README):
//!
//! ```text
//! [masked by Gatehouse: tool output, 4210 tokens; ref 3f2a9c0d1e2b4a5c; full text: GET /api/mask/3f2a9c0d1e2b4a5c]
//! <preview: up to preview_length characters>
//! [… 15833 more characters]
//! ```

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Why a message was masked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tag {
    Tool,
    File,
    Codebase,
    Console,
    Json,
}

impl Tag {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Tool => "tool",
            Self::File => "file",
            Self::Codebase => "codebase",
            Self::Console => "console",
            Self::Json => "json",
        }
    }

    fn words(self) -> &'static str {
        match self {
            Self::Tool => "tool output",
            Self::File => "file context",
            Self::Codebase => "codebase context",
            Self::Console => "console output",
            Self::Json => "JSON",
        }
    }
}

/// The sanitizer's settings (`[sanitizer]`).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Messages at or under this many tokens are never masked.
    pub threshold_tokens: u64,
    /// Characters of the original kept as a preview.
    pub preview_length: usize,
}

/// How far into the text "stdout" still marks console output.
const CONSOLE_HEAD: usize = 200;

/// The reasons to mask `text` (of `role`, `tokens` long), or none.
pub fn classify(rules: &Rules, role: &str, text: &str, tokens: u64) -> Vec<Tag> {
    let mut tags = Vec::new();
    if tokens <= rules.threshold_tokens {
        return tags;
    }
    if role == "tool" || role == "function" || text.contains("@tool") {
        tags.push(Tag::Tool);
    }
    if text.contains("@file") {
        tags.push(Tag::File);
    }
    if text.contains("@codebase") {
        tags.push(Tag::Codebase);
    }
    let head = match text.char_indices().nth(CONSOLE_HEAD) {
        Some((i, _)) => &text[..i],
        None => text,
    };
    if text.contains("@console") || text.contains("@output") || head.contains("stdout") {
        tags.push(Tag::Console);
    }
    if tokens > rules.threshold_tokens * 2 && looks_like_json(text) {
        tags.push(Tag::Json);
    }
    tags
}

fn looks_like_json(text: &str) -> bool {
    let t = text.trim();
    (t.starts_with('{') && t.ends_with('}') || t.starts_with('[') && t.ends_with(']'))
        && serde_json::from_str::<serde::de::IgnoredAny>(t).is_ok()
}

/// The stretches of a user message that are a tool's output, not the user's words. Agents
/// without a tool role send their tools' output as user messages: SWE-agent's `OBSERVATION:`,
/// mini-swe-agent's `<output>…</output>`, Cline's `[read_file for 'a.rs'] Result:` blocks
/// (up to the next block, the user's `<feedback>` or the `<environment_details>` Cline appends);
/// and anyone pastes code,
/// logs or JSON in fenced blocks. Byte ranges of `text`, in order, not overlapping, trimmed.
pub fn tool_parts(text: &str) -> Vec<std::ops::Range<usize>> {
    let mut parts: Vec<std::ops::Range<usize>> = Vec::new();
    let lead = text.len() - text.trim_start().len();
    if let Some(rest) = text.get(lead..)
        && (rest.starts_with("OBSERVATION:") || rest.starts_with("Observation:"))
    {
        let body = lead + rest.find('\n').map_or(rest.len(), |n| n + 1);
        push_trimmed(text, body..text.len(), &mut parts);
        return parts;
    }
    let mut from = 0;
    while let Some(open) = text.get(from..).and_then(|t| t.find("<output>")) {
        let start = from + open + "<output>".len();
        let Some(close) = text.get(start..).and_then(|t| t.find("</output>")) else {
            break;
        };
        push_trimmed(text, start..start + close, &mut parts);
        from = start + close;
    }
    if !parts.is_empty() {
        return parts;
    }
    // Cline: a header line ending in "] Result:", its output until the next header.
    let headers: Vec<(usize, usize)> = line_starts(text)
        .filter_map(|at| {
            let line = text.get(at..)?.split('\n').next()?;
            (line.starts_with('[') && line.trim_end().ends_with("] Result:"))
                .then(|| (at, at + line.len()))
        })
        .collect();
    for (k, &(_, header_end)) in headers.iter().enumerate() {
        let next = headers.get(k + 1).map_or(text.len(), |&(at, _)| at);
        // The user's feedback and the environment Cline appends are not the tool's output.
        let block = text.get(header_end..next).unwrap_or_default();
        let end = ["<feedback>", "<environment_details>"]
            .iter()
            .filter_map(|tag| block.find(tag))
            .min()
            .map_or(next, |e| header_end + e);
        push_trimmed(text, header_end..end, &mut parts);
    }
    if !parts.is_empty() {
        return parts;
    }
    // Fenced blocks: the lines between ``` fences.
    let mut open: Option<usize> = None;
    for at in line_starts(text) {
        let line = text
            .get(at..)
            .and_then(|t| t.split('\n').next())
            .unwrap_or("");
        if line.trim_start().starts_with("```") {
            match open.take() {
                Some(start) => push_trimmed(text, start..at, &mut parts),
                None => open = Some(at + line.len()),
            }
        }
    }
    parts
}

fn line_starts(text: &str) -> impl Iterator<Item = usize> + '_ {
    std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1))
}

fn push_trimmed(text: &str, r: std::ops::Range<usize>, out: &mut Vec<std::ops::Range<usize>>) {
    let Some(s) = text.get(r.clone()) else {
        return;
    };
    let start = r.start + (s.len() - s.trim_start().len());
    let end = r.start + s.trim_end().len();
    if end > start {
        out.push(start..end);
    }
}

/// The reference of a text: the first 16 hex characters of its SHA-256.
pub fn reference(text: &str) -> String {
    use std::fmt::Write;
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(16);
    for b in digest.iter().take(8) {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// Up to `max` characters; cut at the last newline when one falls past 70 % of the preview,
/// so the preview ends on a whole line.
pub fn preview(text: &str, max: usize) -> &str {
    let end = match text.char_indices().nth(max) {
        Some((i, _)) => i,
        None => return text,
    };
    let cut = &text[..end];
    match cut.rfind('\n') {
        Some(nl) if nl * 10 >= end * 7 => &cut[..nl],
        _ => cut,
    }
}

/// The stand-in for a masked message.
pub fn stand_in(
    text: &str,
    tags: &[Tag],
    tokens: u64,
    reference: &str,
    preview_len: usize,
) -> String {
    let p = preview(text, preview_len);
    let rest = text[p.len()..].chars().count();
    let what = tags
        .iter()
        .map(|t| t.words())
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[masked by Gatehouse: {what}, {tokens} tokens; ref {reference}; full text: GET /api/mask/{reference}]\n{p}\n[… {rest} more characters]"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_of(text: &str) -> Vec<&str> {
        tool_parts(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn tool_output_is_found_inside_user_messages() {
        assert_eq!(
            parts_of("OBSERVATION:\nfile.py:1: def f():\n    pass\n"),
            ["file.py:1: def f():\n    pass"]
        );
        assert_eq!(
            parts_of("<returncode>0</returncode>\n<output>\nline 1\nline 2\n</output>"),
            ["line 1\nline 2"]
        );
        assert_eq!(
            parts_of(
                "[read_file for 'src/a.ts'] Result:\nconst a = 1;\n\n[execute_command for 'ls'] Result:\nsrc\n\n<environment_details>\n# Open Tabs\n</environment_details>"
            ),
            ["const a = 1;", "src"]
        );
        assert_eq!(
            parts_of("Here is my log, what is wrong?\n```\nE   assert 1 == 2\n```\nThanks"),
            ["E   assert 1 == 2"]
        );
        assert_eq!(
            parts_of("Please fix the bug in orders.rs."),
            Vec::<&str>::new()
        );
    }

    const RULES: Rules = Rules {
        threshold_tokens: 1000,
        preview_length: 200,
    };

    #[test]
    fn each_rule_and_the_threshold() {
        let t = "x";
        assert_eq!(
            classify(&RULES, "tool", t, 1000),
            [],
            "at the threshold: kept"
        );
        assert_eq!(classify(&RULES, "tool", t, 1001), [Tag::Tool]);
        assert_eq!(classify(&RULES, "function", t, 5000), [Tag::Tool]);
        assert_eq!(
            classify(&RULES, "user", "see @file src/main.rs", 2000),
            [Tag::File]
        );
        assert_eq!(
            classify(&RULES, "user", "@codebase where is X", 2000),
            [Tag::Codebase]
        );
        assert_eq!(
            classify(&RULES, "user", "@console last run", 2000),
            [Tag::Console]
        );
        assert_eq!(
            classify(&RULES, "user", "$ cargo test\nstdout:\n...", 2000),
            [Tag::Console]
        );
        let late = format!("{}stdout", "a".repeat(300));
        assert_eq!(
            classify(&RULES, "user", &late, 2000),
            [],
            "stdout far from the start"
        );
        assert_eq!(classify(&RULES, "user", "plain long question", 50_000), []);
        let json = r#"{"items": [1, 2, 3], "ok": true}"#;
        assert_eq!(
            classify(&RULES, "user", json, 1500),
            [],
            "JSON needs twice the threshold"
        );
        assert_eq!(classify(&RULES, "user", json, 2001), [Tag::Json]);
        assert_eq!(classify(&RULES, "user", "{not json}", 5000), []);
        assert_eq!(
            classify(&RULES, "tool", json, 5000),
            [Tag::Tool, Tag::Json],
            "several tags"
        );
    }

    #[test]
    fn references_are_16_hex_and_stable() {
        let r = reference("hello");
        assert_eq!(r, "2cf24dba5fb0a30e"); // SHA-256("hello") begins 2cf24dba5fb0a30e…
        assert_eq!(reference("hello"), r);
        assert_ne!(reference("hello!"), r);
    }

    #[test]
    fn previews_end_on_a_line_past_seventy_percent() {
        let text = format!("{}\n{}", "a".repeat(150), "b".repeat(200));
        assert_eq!(
            preview(&text, 200),
            "a".repeat(150),
            "newline at 75 %: cut there"
        );
        let early = format!("{}\n{}", "a".repeat(50), "b".repeat(300));
        assert_eq!(
            preview(&early, 200).len(),
            200,
            "newline at 25 %: cut at the limit"
        );
        assert_eq!(preview("short", 200), "short");
        assert_eq!(preview("ééééé", 3), "ééé", "characters, not bytes");
    }

    #[test]
    fn the_stand_in_format() {
        let text = format!("{}\n{}", "line one", "z".repeat(500));
        let s = stand_in(&text, &[Tag::Tool, Tag::Json], 4210, "0123456789abcdef", 20);
        assert_eq!(
            s,
            "[masked by Gatehouse: tool output, JSON, 4210 tokens; ref 0123456789abcdef; full text: GET /api/mask/0123456789abcdef]\nline one\nzzzzzzzzzzz\n[… 489 more characters]"
        );
    }
}
