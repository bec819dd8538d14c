//! Compaction: when a conversation fills its window, the history sent upstream is rewritten as
//! the system messages, one summary of the older turns, and the last few exchanges whole.
//!
//! Clients keep sending their full history, so a compaction is remembered as a *point*: the
//! number of leading client messages it covers, a hash of them, and the summary. A later request
//! whose first messages hash the same gets the same rewrite, so the provider sees one stable
//! compacted prefix (and its prompt cache keeps hitting). This module is the pure part: where to
//! cut, how to summarise without a model, the prompt for a model summary, the splice.

use std::ops::Range;

use gatehouse_core::Encoding;
use xxhash_rust::xxh3::Xxh3;

use crate::observe;

/// Marks the summary message, so a person reading the upstream log knows where it came from.
pub const SUMMARY_HEADER: &str = "[Summary of the earlier conversation, written by Gatehouse";

/// One message as the summarisers see it.
#[derive(Debug, Clone)]
pub struct Item<'a> {
    pub role: &'a str,
    /// Text content (parts joined); empty when the message has none.
    pub text: &'a str,
    /// Names of the tools an assistant message calls.
    pub tools: Vec<&'a str>,
}

/// What a compaction of `n` messages keeps and replaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Messages `[0, cut)` are covered by the summary (their system messages excepted).
    pub cut: usize,
    /// System messages before the cut, kept whole ahead of the summary.
    pub system: Vec<usize>,
    /// Non-system messages before the cut (those `from` and later go into the summary).
    pub summarized: Vec<usize>,
}

/// Where to cut `roles` so the last `keep_exchanges` user turns stay whole, given that messages
/// `[0, from)` are already summarised by an earlier point. `None` when nothing new would be
/// summarised.
pub fn plan(roles: &[&str], keep_exchanges: usize, from: usize) -> Option<Plan> {
    let cut = observe::cutoff(roles, keep_exchanges.max(1));
    if cut <= from {
        return None;
    }
    let (system, rest): (Vec<usize>, Vec<usize>) =
        (0..cut).partition(|&i| roles.get(i) == Some(&"system"));
    let summarized: Vec<usize> = rest.into_iter().filter(|&i| i >= from).collect();
    if summarized.is_empty() {
        return None;
    }
    Some(Plan {
        cut,
        system,
        summarized,
    })
}

/// Identity of the first messages of a conversation: their exact JSON, in order. xxh3 is a
/// specified algorithm, so the value is stable across builds and can be stored.
pub fn prefix_hash<'a>(raws: impl IntoIterator<Item = &'a str>) -> String {
    let mut h = Xxh3::new();
    for raw in raws {
        h.update(&(raw.len() as u64).to_le_bytes());
        h.update(raw.as_bytes());
    }
    format!("{:032x}", h.digest128())
}

/// The summary message's JSON (role `system`, so it joins the leading system block).
pub fn summary_message(summary: &str) -> String {
    serde_json::json!({"role": "system", "content": summary}).to_string()
}

/// The body with messages `[0, cut)` replaced by the system messages among them and the
/// summary. `spans` are the byte ranges of every message in `body`; `cut < spans.len()` (a plan
/// always keeps at least one exchange).
pub fn splice(
    body: &[u8],
    spans: &[Range<usize>],
    system: &[usize],
    cut: usize,
    summary_json: &str,
) -> Option<Vec<u8>> {
    let first = spans.first()?;
    let kept = spans.get(cut)?;
    let mut out = Vec::with_capacity(body.len().saturating_sub(kept.start - first.start) + 4096);
    out.extend_from_slice(body.get(..first.start)?);
    for &i in system {
        out.extend_from_slice(body.get(spans.get(i)?.clone())?);
        out.push(b',');
    }
    out.extend_from_slice(summary_json.as_bytes());
    out.push(b',');
    out.extend_from_slice(body.get(kept.start..)?);
    Some(out)
}

/// Options of the heuristic summary.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub max_tokens: u64,
    /// The task's own budget, on top of `max_tokens`: it is never cut to make room for the rest.
    pub task_max_tokens: u64,
    pub encoding: Encoding,
}

/// Opens the task block of a summary; the block ends with [`TASK_END`].
pub const TASK_TITLE: &str = "The task (the conversation's first request, verbatim):";
pub const TASK_END: &str = "[end of the task]";

/// Tags that clients wrap around context they resend on every turn.
const KNOWN_BOILERPLATE: &[&str] = &["environment_details", "system-reminder", "editor_state"];

/// The blocks (`<name>…</name>`) a conversation's user messages repeat: the known ones, and
/// any other that opens in at least three user messages and in half of them. An agent resends
/// its environment, open files and reminders on every turn; a summary lists them once.
pub fn boilerplate_tags(items: &[Item<'_>]) -> Vec<String> {
    let users: Vec<&str> = items
        .iter()
        .filter(|m| m.role == "user")
        .map(|m| m.text)
        .collect();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for text in &users {
        let mut seen: Vec<&str> = Vec::new();
        for name in block_names(text) {
            if !seen.contains(&name) {
                seen.push(name);
                match counts.iter_mut().find(|(n, _)| n == name) {
                    Some((_, c)) => *c += 1,
                    None => counts.push((name.to_owned(), 1)),
                }
            }
        }
    }
    counts
        .into_iter()
        .filter(|(n, c)| {
            KNOWN_BOILERPLATE.contains(&n.as_str()) || (*c >= 3 && *c * 2 >= users.len())
        })
        .map(|(n, _)| n)
        .collect()
}

/// Names of the closed `<name>…</name>` blocks in `text`.
fn block_names(text: &str) -> impl Iterator<Item = &str> {
    text.match_indices('<').filter_map(move |(i, _)| {
        let rest = text.get(i + 1..)?;
        let end = rest.find('>')?;
        let name = rest.get(..end)?;
        let valid = !name.is_empty()
            && name.len() <= 40
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        (valid && rest.contains(&format!("</{name}>"))).then_some(name)
    })
}

/// `text` without its `<name>…</name>` blocks for every name in `tags`.
pub fn strip_blocks(text: &str, tags: &[String]) -> String {
    let mut out = text.to_owned();
    for tag in tags {
        let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
        while let Some(a) = out.find(&open) {
            let Some(b) = out.get(a..).and_then(|r| r.find(&close)) else {
                break;
            };
            out.replace_range(a..a + b + close.len(), "");
        }
    }
    out
}

/// The conversation's task, for the summary's task block: the previous summary's task block
/// when there is one (a later compaction never loses it), otherwise the opening user
/// messages (those before the first answer) without their boilerplate, within
/// `task_max_tokens`, the last of them whole when it fits.
pub fn task(
    items: &[Item<'_>],
    previous: Option<&str>,
    boilerplate: &[String],
    b: Budget,
) -> Option<String> {
    // Past the first compaction the items start mid-conversation: the task is the one the
    // earlier summary carries, if any.
    if let Some(p) = previous {
        return task_in_summary(p).map(str::to_owned);
    }
    // The opening request may span several user messages before the first answer
    // (SWE-agent sends a demonstration, then the issue): the last is the instruction itself,
    // kept whole first; the earlier ones share what budget is left, in order.
    let lead: Vec<String> = items
        .iter()
        .take_while(|m| m.role != "assistant")
        .filter(|m| m.role == "user")
        .map(|m| strip_blocks(m.text, boilerplate).trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    let (last, earlier) = lead.split_last()?;
    let last = fit(last, b.task_max_tokens, b.encoding);
    let mut left = b.task_max_tokens.saturating_sub(b.encoding.count(&last));
    let mut parts = Vec::with_capacity(lead.len());
    for t in earlier {
        if left < 32 {
            break;
        }
        let kept = fit(t, left, b.encoding);
        left = left.saturating_sub(b.encoding.count(&kept) + 2);
        parts.push(kept);
    }
    parts.push(last);
    Some(parts.join("\n\n"))
}

/// `text` whole when it has at most `budget` tokens, else its head with a note of what is
/// left out, within the budget.
fn fit(text: &str, budget: u64, enc: Encoding) -> String {
    let tokens = enc.count(text);
    if tokens <= budget {
        return text.to_owned();
    }
    let chars = text.chars().count();
    // Cut in proportion, then a little more until it fits: a few counts, not one per word.
    let mut keep = (chars as u64 * budget.saturating_sub(24) / tokens.max(1)) as usize;
    loop {
        let head: String = text.chars().take(keep).collect();
        if enc.count(&head) + 24 <= budget || keep == 0 {
            let left = chars - keep;
            return format!("{} … [{left} more characters left out]", head.trim_end());
        }
        keep = keep * 9 / 10;
    }
}

/// The task block of an earlier summary, when it has one.
pub fn task_in_summary(summary: &str) -> Option<&str> {
    let start = summary.find(TASK_TITLE)? + TASK_TITLE.len();
    let rest = summary.get(start..)?;
    let end = rest.find(TASK_END)?;
    Some(rest.get(..end)?.trim_matches('\n'))
}

/// The task block as it is written into a summary.
pub fn task_block(task: &str) -> String {
    format!("{TASK_TITLE}\n{task}\n{TASK_END}")
}

/// A summary without its task block (what a later summary folds in as "earlier summary").
fn without_task(summary: &str) -> String {
    match (summary.find(TASK_TITLE), summary.find(TASK_END)) {
        (Some(a), Some(b)) if b > a => {
            let mut s = summary.get(..a).unwrap_or_default().to_owned();
            s.push_str(summary.get(b + TASK_END.len()..).unwrap_or_default());
            s
        }
        _ => summary.to_owned(),
    }
}

/// Whether a user message is a tool's report rather than the user's words: agents that have
/// no tool role put their tools' output in user messages (Cline's `[read_file for 'a.rs']
/// Result:`, SWE-agent's `OBSERVATION:`, mini-swe-agent's `<returncode>`).
pub fn is_tool_report(text: &str) -> bool {
    let t = text.trim_start();
    if t.starts_with("OBSERVATION:")
        || t.starts_with("<returncode>")
        || t.starts_with("Observation:")
    {
        return true;
    }
    t.starts_with('[')
        && t.split('\n')
            .next()
            .is_some_and(|l| l.contains("] Result:") || l.ends_with("] Result"))
}

const USER_LINE: usize = 240;
const ASSISTANT_LINE: usize = 200;
const ERROR_LINE: usize = 200;
const MAX_FILES: usize = 30;
const MAX_ERRORS: usize = 8;
/// Characters at the start of a line where an error word must appear.
const ERROR_HEAD: usize = 24;

/// A summary written without a model: what the user asked (every request, newest first when
/// the budget runs short), the files and tools involved, the errors seen, the assistant's last
/// conclusions, and what an earlier summary said. Deterministic: the same history gives the
/// same bytes. `tokens` is the size of the history it replaces.
pub fn heuristic(items: &[Item<'_>], previous: Option<&str>, tokens: u64, b: Budget) -> String {
    let boilerplate = boilerplate_tags(items);
    let task = task(items, previous, &boilerplate, b);
    // The user messages before the first answer are the task.
    let first_answer = items
        .iter()
        .position(|m| m.role == "assistant")
        .unwrap_or(items.len());
    // The user's own requests after the task, without what is resent on every turn and
    // without tool reports; a request repeated word for word is listed once.
    let folded = previous.map(fold).unwrap_or_default();
    let mut users: Vec<String> = folded.users;
    for (i, m) in items.iter().enumerate() {
        if m.role != "user" || (previous.is_none() && i < first_answer) || is_tool_report(m.text) {
            continue;
        }
        let text = strip_blocks(m.text, &boilerplate);
        let line = first_line(&text, USER_LINE);
        if line.is_empty() {
            continue;
        }
        let line = format!("- {line}");
        if !users.contains(&line) {
            users.push(line);
        }
    }
    let mut recurring_counts = folded.recurring;
    for tag in &boilerplate {
        let n = items
            .iter()
            .filter(|m| m.role == "user" && m.text.contains(&format!("<{tag}>")))
            .count();
        match recurring_counts.iter_mut().find(|(t, _)| t == tag) {
            Some((_, c)) => *c += n,
            None => recurring_counts.push((tag.clone(), n)),
        }
    }
    let recurring: Vec<String> = recurring_counts
        .iter()
        .map(|(tag, n)| {
            format!("- <{tag}> in {n} messages (the latest copy is in the exchanges below)")
        })
        .collect();
    let mut assistants: Vec<String> = folded.assistants;
    assistants.extend(
        items
            .iter()
            .filter(|m| m.role == "assistant" && !m.text.trim().is_empty())
            .map(|m| format!("- {}", first_line(m.text, ASSISTANT_LINE))),
    );
    let mut tools: Vec<(String, usize)> = folded.tools;
    for t in items.iter().flat_map(|m| m.tools.iter()) {
        match tools.iter_mut().find(|(n, _)| n == t) {
            Some((_, c)) => *c += 1,
            None => tools.push(((*t).to_owned(), 1)),
        }
    }
    let mut files: Vec<String> = folded.files;
    for m in items {
        for f in paths(m.text) {
            if files.len() < MAX_FILES && !files.iter().any(|x| x == f) {
                files.push(f.to_owned());
            }
        }
    }
    let mut errors: Vec<String> = folded.errors;
    errors.truncate(MAX_ERRORS / 2);
    for m in items
        .iter()
        .filter(|m| m.role == "tool" || m.role == "user")
    {
        for line in m.text.lines() {
            if errors.len() >= MAX_ERRORS {
                break;
            }
            // An error line says so near its start; prose that merely mentions one does not.
            let trimmed = line.trim_start();
            let head = match trimmed.char_indices().nth(ERROR_HEAD) {
                Some((i, _)) => trimmed.get(..i).unwrap_or(trimmed),
                None => trimmed,
            };
            if observe::looks_like_error(head) {
                let l = format!("- {}", clip(line.trim(), ERROR_LINE));
                if !errors.contains(&l) {
                    errors.push(l);
                }
            }
        }
    }

    let header = format!(
        "{SUMMARY_HEADER} (heuristic) to save tokens: {} messages, {tokens} tokens, replaced; the latest exchanges follow in full.]",
        items.len()
    );
    // Sections in the order they are written; filled in order of importance.
    let mut sections: Vec<Section> = vec![
        Section::new(EARLIER, folded.other, 5),
        Section::new(RECURRING, recurring, 1),
        Section::new(USERS, users, 0).newest_first(),
        Section::new(
            TOOLS,
            if tools.is_empty() {
                Vec::new()
            } else {
                vec![
                    tools
                        .iter()
                        .map(|(n, c)| format!("{n} ×{c}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                ]
            },
            2,
        ),
        Section::new(
            FILES,
            if files.is_empty() {
                Vec::new()
            } else {
                vec![files.join(", ")]
            },
            2,
        ),
        Section::new(ERRORS, errors, 3),
        Section::new(ASSISTANT, assistants, 4).newest_first(),
    ];

    // Tokens do not always add up across a newline; a little slack keeps the total under.
    let mut left = b.max_tokens.saturating_sub(b.encoding.count(&header) + 8);
    let mut order: Vec<&mut Section> = sections.iter_mut().collect();
    order.sort_by_key(|s| s.priority);
    for s in order {
        if s.lines.is_empty() {
            continue;
        }
        // Room for the title, its newline and a possible "(k of n, the rest left out)".
        let title = b.encoding.count(s.title) + 12;
        if title >= left {
            continue;
        }
        let mut used = title;
        let mut take = |j: usize, line: &String| {
            let n = b.encoding.count(line) + 1;
            if used + n > left {
                return false;
            }
            used += n;
            s.keep.push(j);
            true
        };
        // When a section does not fit whole, `newest_first` keeps its latest lines.
        if s.newest_first {
            for (j, line) in s.lines.iter().enumerate().rev() {
                if !take(j, line) {
                    break;
                }
            }
        } else {
            for (j, line) in s.lines.iter().enumerate() {
                if !take(j, line) {
                    break;
                }
            }
        }
        if s.keep.is_empty() {
            continue;
        }
        s.keep.sort_unstable();
        left -= used;
    }
    let mut out = header;
    if let Some(t) = &task {
        out.push('\n');
        out.push_str(&task_block(t));
    }
    for s in &sections {
        if s.keep.is_empty() {
            continue;
        }
        out.push('\n');
        out.push_str(s.title);
        if s.keep.len() < s.lines.len() {
            out.push_str(&format!(
                " ({} of {}, the rest left out)",
                s.keep.len(),
                s.lines.len()
            ));
        }
        for line in s.keep.iter().filter_map(|&j| s.lines.get(j)) {
            out.push('\n');
            out.push_str(line);
        }
    }
    out
}

const EARLIER: &str = "Earlier summary:";
const RECURRING: &str = "Resent with every turn, listed once:";
const USERS: &str = "The user asked, in order:";
const TOOLS: &str = "Tools called:";
const FILES: &str = "Files mentioned:";
const ERRORS: &str = "Errors seen:";
const ASSISTANT: &str = "The assistant said (latest last):";

/// An earlier summary read back into its sections, so a later one merges them (counts added,
/// lists extended) instead of nesting the whole text; what is not a heuristic section (an
/// `llm` summary's prose) stays as "earlier summary".
#[derive(Default)]
struct Folded {
    users: Vec<String>,
    tools: Vec<(String, usize)>,
    files: Vec<String>,
    errors: Vec<String>,
    assistants: Vec<String>,
    recurring: Vec<(String, usize)>,
    other: Vec<String>,
}

fn fold(previous: &str) -> Folded {
    let mut f = Folded::default();
    let mut section: Option<&str> = None;
    for line in without_task(previous).lines() {
        if line.starts_with(SUMMARY_HEADER) || line.trim().is_empty() {
            continue;
        }
        if let Some(title) = [EARLIER, RECURRING, USERS, TOOLS, FILES, ERRORS, ASSISTANT]
            .into_iter()
            .find(|t| line.starts_with(t))
        {
            section = Some(title);
            continue;
        }
        let item = line.to_owned();
        match section {
            Some(USERS) => f.users.push(item),
            Some(ERRORS) => f.errors.push(item),
            Some(ASSISTANT) => f.assistants.push(item),
            Some(TOOLS) => {
                for part in line.split(", ") {
                    if let Some((name, n)) = part.rsplit_once(" ×") {
                        f.tools.push((name.to_owned(), n.parse().unwrap_or(1)));
                    }
                }
            }
            Some(FILES) => f.files.extend(line.split(", ").map(str::to_owned)),
            Some(RECURRING) => {
                let tag = line.strip_prefix("- <").and_then(|r| r.split_once('>'));
                if let Some((tag, rest)) = tag {
                    let n = rest
                        .trim_start()
                        .strip_prefix("in ")
                        .and_then(|r| r.split(' ').next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0);
                    f.recurring.push((tag.to_owned(), n));
                }
            }
            _ => f.other.push(item),
        }
    }
    f
}

struct Section {
    title: &'static str,
    lines: Vec<String>,
    priority: u8,
    newest_first: bool,
    keep: Vec<usize>,
}

impl Section {
    fn new(title: &'static str, lines: Vec<String>, priority: u8) -> Self {
        Self {
            title,
            lines,
            priority,
            newest_first: false,
            keep: Vec::new(),
        }
    }

    /// When the section does not fit whole, keep its latest lines (the user's requests, the
    /// assistant's conclusions).
    fn newest_first(mut self) -> Self {
        self.newest_first = true;
        self
    }
}

/// The first non-empty line, at most `max` characters.
fn first_line(text: &str, max: usize) -> String {
    // A line that is only a tag (`<task>`, `<feedback>`) says nothing by itself.
    let only_tag = |l: &str| l.starts_with('<') && l.ends_with('>') && !l[1..].contains('<');
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !only_tag(l))
        .unwrap_or("");
    let more = text.trim().len() > line.len();
    let mut s = clip(line, max);
    if more && !s.ends_with('…') {
        s.push_str(" …");
    }
    s
}

fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

/// Words that look like source paths: a `/` or a known extension, no spaces or URL scheme.
fn paths(text: &str) -> impl Iterator<Item = &str> {
    const EXT: &[&str] = &[
        ".rs", ".py", ".ts", ".tsx", ".js", ".jsx", ".go", ".java", ".kt", ".c", ".h", ".cc",
        ".cpp", ".hpp", ".rb", ".php", ".cs", ".swift", ".toml", ".yaml", ".yml", ".json", ".md",
        ".sql", ".sh", ".html", ".css", ".vue", ".lock", ".txt", ".cfg", ".ini",
    ];
    text.split(|c: char| c.is_whitespace() || "\"'`()[]{}<>,;".contains(c))
        .map(|w| w.trim_end_matches([':', '.']))
        .filter(|w| {
            w.len() > 3
                && w.len() < 160
                && !w.contains("://")
                && EXT.iter().any(|e| {
                    w.ends_with(e) || w.find(e).is_some_and(|i| w[i + e.len()..].starts_with(':'))
                })
                && w.chars()
                    .next()
                    .is_some_and(|c| c.is_alphanumeric() || c == '.' || c == '/' || c == '_')
        })
        .map(|w| match w.find(':') {
            // `src/lib.rs:42:7` names the file.
            Some(i) => &w[..i],
            None => w,
        })
}

/// Characters of one message put in front of the summarising model; longer ones are cut.
const LLM_MESSAGE_CHARS: usize = 2_000;
/// Characters of transcript sent in all; the oldest messages go first when over.
const LLM_TRANSCRIPT_CHARS: usize = 48_000;

/// The chat-completions body asking `model` for a summary (the seed's prompt, in English).
pub fn llm_request(
    model: &str,
    items: &[Item<'_>],
    previous: Option<&str>,
    max_tokens: u64,
    temperature: f64,
) -> serde_json::Value {
    let mut lines: Vec<String> = items
        .iter()
        .map(|m| {
            let mut line = format!(
                "{}: {}",
                m.role.to_uppercase(),
                clip(m.text.trim(), LLM_MESSAGE_CHARS)
            );
            if !m.tools.is_empty() {
                line.push_str(&format!(" [calls {}]", m.tools.join(", ")));
            }
            line
        })
        .collect();
    let mut total: usize = lines.iter().map(String::len).sum();
    let mut dropped = 0;
    while total > LLM_TRANSCRIPT_CHARS && lines.len() > 1 {
        total -= lines.remove(0).len();
        dropped += 1;
    }
    let mut transcript = String::new();
    if let Some(p) = previous {
        transcript.push_str("EARLIER SUMMARY: ");
        transcript.push_str(p);
        transcript.push_str("\n\n");
    }
    if dropped > 0 {
        transcript.push_str(&format!("({dropped} older messages not shown)\n\n"));
    }
    transcript.push_str(&lines.join("\n\n"));
    let prompt = format!(
        "Summarize the following conversation briefly. Keep the key points, the decisions taken and the technical context needed to carry on (files, commands, errors, what is still to do). Be concise: at most 300 words.\n\n{transcript}\n\nSUMMARY:"
    );
    serde_json::json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You summarize technical conversations between a developer and a coding assistant, concisely and faithfully."},
            {"role": "user", "content": prompt},
        ],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "stream": false,
    })
}

/// The summary message text around a model's answer. The task goes in verbatim: a model's
/// summary may paraphrase it, and the agent must still have it word for word.
pub fn llm_summary(
    answer: &str,
    task: Option<&str>,
    model: &str,
    messages: usize,
    tokens: u64,
) -> String {
    let task = task
        .map(|t| format!("{}\n", task_block(t)))
        .unwrap_or_default();
    format!(
        "{SUMMARY_HEADER} by {model} to save tokens: {messages} messages, {tokens} tokens, replaced; the latest exchanges follow in full.]\n{task}{}",
        answer.trim()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item<'a>(role: &'a str, text: &'a str) -> Item<'a> {
        Item {
            role,
            text,
            tools: Vec::new(),
        }
    }

    #[test]
    fn plan_keeps_system_messages_and_the_last_exchanges() {
        let roles = [
            "system",
            "user",
            "assistant",
            "tool",
            "assistant",
            "user",
            "assistant",
            "user",
            "assistant",
            "tool",
            "user",
        ];
        let p = plan(&roles, 2, 0).unwrap();
        assert_eq!(p.cut, 7, "the second-to-last user turn starts at 7");
        assert_eq!(p.system, vec![0]);
        assert_eq!(p.summarized, vec![1, 2, 3, 4, 5, 6]);
        // Already summarised up to 5: only 5 and 6 are new.
        assert_eq!(plan(&roles, 2, 5).unwrap().summarized, vec![5, 6]);
        assert_eq!(plan(&roles, 2, 7), None, "nothing new");
        assert_eq!(plan(&["system", "user", "assistant", "user"], 2, 0), None);
        assert_eq!(plan(&["user"], 1, 0), None);
        // A mid-history system message stays, ahead of the summary.
        let p = plan(&["user", "system", "assistant", "user"], 1, 0).unwrap();
        assert_eq!((p.cut, p.system, p.summarized), (3, vec![1], vec![0, 2]));
    }

    #[test]
    fn splice_rewrites_only_the_messages_array_head() {
        let body = br#"{"model":"m","messages":[{"role":"system","content":"s"}, {"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"user","content":"c"}],"x":1}"#;
        let v = gatehouse_core::ChatRequestView::parse(body).unwrap();
        let spans: Vec<_> = v.messages.iter().map(|m| m.span.clone()).collect();
        let out = splice(body, &spans, &[0], 3, &summary_message("sum")).unwrap();
        let j: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            j,
            serde_json::json!({"model":"m","messages":[{"role":"system","content":"s"},{"role":"system","content":"sum"},{"role":"user","content":"c"}],"x":1})
        );
    }

    #[test]
    fn prefix_hash_separates_messages() {
        assert_ne!(prefix_hash(["ab", "c"]), prefix_hash(["a", "bc"]));
        assert_eq!(prefix_hash(["ab", "c"]), prefix_hash(["ab", "c"]));
        assert_eq!(prefix_hash(["x"]).len(), 32);
    }

    #[test]
    fn heuristic_summary_keeps_requests_files_tools_errors_within_budget() {
        let mut call = item("assistant", "");
        call.tools = vec!["read_file", "read_file", "run_tests"];
        let items = vec![
            item(
                "user",
                "Fix the failing test in src/orders.rs please.\nIt broke yesterday.",
            ),
            call,
            item(
                "tool",
                "running 3 tests\nerror[E0308]: mismatched types at src/orders.rs:42:7\n",
            ),
            item(
                "assistant",
                "The total is computed as i32; I changed it to u64 in src/orders.rs.",
            ),
            item("user", "Now update README.md too."),
        ];
        let b = Budget {
            max_tokens: 500,
            task_max_tokens: 2000,
            encoding: Encoding::Cl100k,
        };
        let s = heuristic(&items, None, 12_345, b);
        assert!(s.starts_with(SUMMARY_HEADER), "{s}");
        assert!(s.contains("5 messages, 12345 tokens"), "{s}");
        assert!(
            s.contains(&task_block(items[0].text)),
            "the first request is the task, kept verbatim: {s}"
        );
        assert!(s.contains("- Now update README.md too."), "{s}");
        assert!(s.contains("read_file ×2, run_tests ×1"), "{s}");
        assert!(s.contains("src/orders.rs, README.md"), "{s}");
        assert!(s.contains("error[E0308]: mismatched types"), "{s}");
        assert!(s.contains("changed it to u64"), "{s}");
        assert_eq!(s, heuristic(&items, None, 12_345, b), "deterministic");

        // A tight budget keeps the newest requests and says what it left out.
        let many: Vec<String> = (0..200)
            .map(|i| format!("request number {i} about a thing"))
            .collect();
        let items: Vec<Item<'_>> = many.iter().map(|t| item("user", t)).collect();
        let s = heuristic(&items, Some("[Summary of ...]\nolder stuff"), 9, b);
        assert!(
            Encoding::Cl100k.count(&s) <= 500,
            "{}",
            Encoding::Cl100k.count(&s)
        );
        assert!(s.contains("request number 199 "), "{s}");
        assert!(!s.contains("request number 0 "), "{s}");
        assert!(s.contains("of 200, the rest left out"), "{s}");
    }

    #[test]
    fn a_long_opening_keeps_its_instruction_whole() {
        // SWE-agent: a long demonstration, then the issue to solve, before the first answer.
        let demo = "Here is a demonstration of how to correctly accomplish this task.\n".to_owned()
            + &"ls -la\nfile.py\n".repeat(3000);
        let issue =
            "We're currently solving the following issue: TimeDelta serialization loses precision.";
        let items = vec![
            item("user", &demo),
            item("user", issue),
            item("assistant", "Let me look."),
            item("user", "OBSERVATION:\nfile.py"),
        ];
        let b = Budget {
            max_tokens: 500,
            task_max_tokens: 1000,
            encoding: Encoding::Cl100k,
        };
        let t = task(&items, None, &[], b).unwrap();
        assert!(t.ends_with(issue), "{t}");
        assert!(t.starts_with("Here is a demonstration"), "{t}");
        assert!(t.contains("more characters left out"), "{t}");
        assert!(Encoding::Cl100k.count(&t) <= 1000);
        let s = heuristic(&items, None, 9000, b);
        assert!(
            !s.contains("- We're currently solving"),
            "the task is not a request: {s}"
        );
        assert!(!s.contains("- OBSERVATION"), "nor a tool report: {s}");
        // A later summary carries the same task.
        assert_eq!(
            task(&items[2..], Some(&s), &[], b).as_deref(),
            Some(t.as_str())
        );
    }

    #[test]
    fn paths_are_found_without_urls_or_prose() {
        let found: Vec<&str> =
            paths("see src/a.rs:10 and `web/app.js`, not https://x.io/a.js nor e.g. or 3.5")
                .collect();
        assert_eq!(found, vec!["src/a.rs", "web/app.js"]);
    }

    #[test]
    fn llm_request_carries_the_transcript_and_the_settings() {
        let items = vec![item("user", "hello"), item("assistant", "hi")];
        let r = llm_request("m", &items, Some("before"), 500, 0.3);
        assert_eq!(r["max_tokens"], 500);
        assert_eq!(r["temperature"], 0.3);
        let prompt = r["messages"][1]["content"].as_str().unwrap();
        assert!(prompt.contains("EARLIER SUMMARY: before"));
        assert!(prompt.contains("USER: hello\n\nASSISTANT: hi"));
        let long = "x".repeat(10_000);
        let items: Vec<Item<'_>> = (0..40).map(|_| item("user", &long)).collect();
        let r = llm_request("m", &items, None, 500, 0.3);
        let prompt = r["messages"][1]["content"].as_str().unwrap();
        assert!(prompt.len() < LLM_TRANSCRIPT_CHARS + 1_000);
        assert!(prompt.contains("older messages not shown"));
    }
}
