//! The records the gateway keeps: sessions, one row per proxied request, and session figures.
//!
//! These are what storage stores and the API returns; the proxy path fills them in.

use serde::{Deserialize, Serialize};

use crate::ids::SessionId;

/// A conversation: the requests that share a context window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub name: String,
    /// The model key the session was opened with; `None` until its first request.
    pub model_key: Option<String>,
    pub provider: Option<String>,
    /// Created at, epoch milliseconds.
    pub created_at: i64,
}

/// Whether token figures came from the provider or from the gateway's own count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageSource {
    Upstream,
    Estimated,
}

impl UsageSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Upstream => "upstream",
            Self::Estimated => "estimated",
        }
    }

    pub fn parse(s: &str) -> Self {
        if s == "upstream" {
            Self::Upstream
        } else {
            Self::Estimated
        }
    }
}

/// One proxied request (the seed's `metrics` row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// The row's own id (UUID v7), given by the writer before the first attempt to store it,
    /// so a batch written twice after a database error stores it once. Empty until then.
    #[serde(default)]
    pub row_id: String,
    /// The request id (the client's `X-Request-ID`, or one the gateway made).
    pub id: String,
    pub session_id: SessionId,
    /// Epoch milliseconds when the request arrived.
    pub created_at: i64,
    pub provider: String,
    pub model_key: String,
    pub upstream_model: String,
    pub stream: bool,
    /// HTTP status the client received (for streams: the status of the response head).
    pub status: u16,
    /// The gateway's exact count of the prompt it forwarded.
    pub prompt_tokens_est: u64,
    /// Figures reported by the provider, when it reported them.
    pub prompt_tokens: Option<u64>,
    /// Completion tokens: the provider's figure, or counted from the streamed text.
    pub completion_tokens: Option<u64>,
    pub cached_tokens: Option<u64>,
    pub reasoning_tokens: Option<u64>,
    pub usage_source: UsageSource,
    pub max_context: u64,
    /// Prompt tokens as a percentage of the model's window.
    pub context_pct: f64,
    /// Up to 200 characters of the last user message.
    pub preview: String,
    pub latency_ms: u64,
    pub ttfb_ms: Option<u64>,
    /// Time the gateway itself spent, excluding waiting on upstream.
    pub overhead_us: u64,
    pub attempts: u32,
    pub finish_reason: Option<String>,
    /// Stable error code when the request failed (`upstream_timeout`, `stream_interrupted`…).
    pub error_type: Option<String>,
    pub error_message: Option<String>,
    /// US dollars, when the model has a price.
    #[serde(default)]
    pub cost_usd: Option<f64>,
    /// Prompt tokens of memory/MCP content (the seed's patterns), the rest, and their ratio.
    #[serde(default)]
    pub memory_tokens: u64,
    #[serde(default)]
    pub chat_tokens: u64,
    #[serde(default)]
    pub memory_ratio: f64,
    /// What routing did beyond one plain attempt: retries, fallbacks, a model change.
    #[serde(default)]
    pub routing: Option<String>,
    /// The model key the client asked for, when another answered (`model_key`).
    #[serde(default)]
    pub requested_model: Option<String>,
    /// `None` for a turn of a client's conversation; `aside` for a client's side request (a
    /// title, a probe) kept in the session of another model; what the gateway itself called a
    /// model for otherwise (`compaction_summary`).
    #[serde(default)]
    pub purpose: Option<String>,
    /// The virtual key the request came with (`[auth] mode = "keys"`): its id, never the key.
    #[serde(default)]
    pub key_id: Option<String>,
    /// The key's team, when it has one.
    #[serde(default)]
    pub team_id: Option<String>,
}

impl RequestRecord {
    /// Prompt tokens to account: the provider's figure when known, else the exact estimate.
    pub fn effective_prompt_tokens(&self) -> u64 {
        self.prompt_tokens.unwrap_or(self.prompt_tokens_est)
    }

    pub fn effective_completion_tokens(&self) -> u64 {
        self.completion_tokens.unwrap_or(0)
    }

    pub fn effective_total_tokens(&self) -> u64 {
        self.effective_prompt_tokens()
            .saturating_add(self.effective_completion_tokens())
    }
}

/// The seed's session figures: current context (last request) and cumulative (all requests).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SessionStats {
    pub request_count: u64,
    pub current_input_tokens: u64,
    pub current_output_tokens: u64,
    pub current_total_tokens: u64,
    pub cumulative_input_tokens: u64,
    pub cumulative_output_tokens: u64,
    pub cumulative_total_tokens: u64,
    /// Window of the model of the last request (0 before any request).
    pub max_context: u64,
    /// `current_total_tokens` as a percentage of `max_context`.
    pub current_pct: f64,
    /// Sum of the priced requests' costs, US dollars; `None` when none was priced.
    pub cost_usd: Option<f64>,
}

/// The three kinds of memory entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemoryKind {
    Frequent,
    Episodic,
    Semantic,
}

impl MemoryKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Frequent => "frequent",
            Self::Episodic => "episodic",
            Self::Semantic => "semantic",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "frequent" => Some(Self::Frequent),
            "episodic" => Some(Self::Episodic),
            "semantic" => Some(Self::Semantic),
            _ => None,
        }
    }
}

/// One entry of the memory store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryRecord {
    /// 16 hex characters of the SHA-256 of the content: the identity, so duplicates merge.
    pub id: String,
    pub kind: MemoryKind,
    pub content: String,
    pub tokens: u64,
    pub session_id: Option<String>,
    pub access_count: u64,
    pub created_at: i64,
    pub last_access_at: i64,
}

/// A message the sanitizer replaced, kept so its original can be read back by reference.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaskedContent {
    /// 16 hex characters of the SHA-256 of the original text.
    pub hash: String,
    pub role: String,
    /// Why it was masked: `tool`, `file`, `codebase`, `console`, `json`.
    pub tags: Vec<String>,
    /// Tokens of the original message.
    pub tokens: u64,
    /// Tokens saved on every request that carries it.
    pub tokens_saved: u64,
    /// The original text, absent in listings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// The virtual key of the request that first stored it (`[auth] mode = "keys"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// A Responses API response the gateway keeps (`store`), so a later request can continue from it
/// (`previous_response_id`) and a client can read it back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// `resp_…`.
    pub id: String,
    pub session_id: SessionId,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// The whole input the response answered, as a JSON array of items (history included).
    pub input: String,
    /// The Response object, as JSON.
    pub response: String,
    /// The virtual key of the request that made it.
    #[serde(default)]
    pub key_id: Option<String>,
}

/// One compaction of a session's history: what it replaced, with what, and what it saved.
/// The latest of a session is also its compaction point, reloaded at start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompactionRecord {
    pub id: String,
    pub session_id: SessionId,
    /// The request that triggered it (automatic ones), or the last request seen (manual).
    pub request_id: Option<String>,
    /// Epoch milliseconds.
    pub created_at: i64,
    /// `auto` or `manual`.
    pub trigger: String,
    /// What wrote the summary: `heuristic` or `llm` (`heuristic` after a failed `llm`).
    pub strategy: String,
    pub summary_model: Option<String>,
    /// Why an `llm` summary was not used, when it was asked for.
    pub fallback_reason: Option<String>,
    pub model_key: String,
    pub max_context: u64,
    /// Prompt tokens sent upstream without this compaction, and with it.
    pub tokens_before: u64,
    pub tokens_after: u64,
    pub tokens_saved: u64,
    pub messages_before: u64,
    pub messages_after: u64,
    /// Messages folded into the summary by this compaction.
    pub summarized: u64,
    /// Leading client messages the summary stands for (the point).
    pub cut: u64,
    /// xxh3-128 of those messages' JSON, 32 hex characters.
    pub prefix_hash: String,
    pub summary: String,
    pub summary_tokens: u64,
}

/// A session's own compaction settings; `None` means "as configured".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CompactionSettings {
    pub auto_enabled: Option<bool>,
    pub threshold_pct: Option<f64>,
    /// Tokens kept free for the answer: counted with the prompt against the threshold.
    pub reserved_tokens: u64,
}

/// Truncates to at most `max` characters on a char boundary, collapsing whitespace runs.
pub fn preview(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max * 2));
    let mut n = 0;
    let mut last_space = true;
    let mut rest = text;
    while n < max {
        // Runs of ASCII that is not whitespace (most of a prompt) are copied whole.
        let run = rest
            .bytes()
            .take(max - n)
            .take_while(|b| b.is_ascii_graphic())
            .count();
        if let (Some(head), Some(tail)) = (rest.get(..run), rest.get(run..))
            && run > 0
        {
            out.push_str(head);
            n += run;
            last_space = false;
            rest = tail;
            continue;
        }
        let mut chars = rest.chars();
        let Some(c) = chars.next() else {
            break;
        };
        rest = chars.as_str();
        if c.is_whitespace() {
            if last_space {
                continue;
            }
            out.push(' ');
            last_space = true;
        } else {
            out.push(c);
            last_space = false;
        }
        n += 1;
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preview_collapses_and_cuts_on_chars() {
        assert_eq!(preview("  hello \n\n world  ", 50), "hello world");
        assert_eq!(preview("日本語のテキスト", 3), "日本語");
        assert_eq!(preview("", 10), "");
    }

    /// The run-at-a-time copy gives what a char-at-a-time walk gives.
    #[test]
    fn preview_matches_the_char_walk() {
        fn walk(text: &str, max: usize) -> String {
            let mut out = String::new();
            let (mut n, mut last_space) = (0, true);
            for c in text.chars() {
                if n >= max {
                    break;
                }
                if c.is_whitespace() {
                    if last_space {
                        continue;
                    }
                    out.push(' ');
                    last_space = true;
                } else {
                    out.push(c);
                    last_space = false;
                }
                n += 1;
            }
            out.truncate(out.trim_end().len());
            out
        }
        let texts = [
            "plain ascii words, with punctuation!",
            "  lead\t\ttabs\n\nand\u{b}vt\u{c}ff\r\n  trail  ",
            "ctrl\u{1}\u{7f}chars and\u{a0}nbsp\u{2003}em",
            "日本語 mixed with ascii テキスト",
            "emoji 👍🏽 run",
            "x",
        ];
        for t in texts {
            for max in [0, 1, 2, 3, 5, 8, 13, 40, 1000] {
                assert_eq!(preview(t, max), walk(t, max), "{t:?} {max}");
            }
        }
    }
}

/// A virtual key as stored: its limits, never the key itself (`digest` is SHA-256 of it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub name: String,
    /// Hex SHA-256 of the key.
    #[serde(skip_serializing)]
    pub digest: String,
    /// The key's first characters and last four, so a person can tell keys apart.
    pub prefix: String,
    pub last4: String,
    pub owner: Option<String>,
    /// The team whose limits and budget the key's requests count against as well.
    #[serde(default)]
    pub team_id: Option<String>,
    /// Model keys (globs: `groq/*`) the key may use; empty: every model.
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub max_budget_usd: Option<f64>,
    /// How often spend starts again from zero, in seconds (`30d` in the CLI); `None`: never.
    pub budget_period_secs: Option<u64>,
    pub soft_budget_usd: Option<f64>,
    /// Epoch milliseconds.
    pub expires_at: Option<i64>,
    pub blocked: bool,
    /// Free-form tags and notes (a JSON object).
    pub metadata: serde_json::Value,
    /// The key this one replaced (`rotate`), still accepted until `previous_expires_at`.
    #[serde(skip_serializing)]
    pub previous_digest: Option<String>,
    pub previous_expires_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Set when deleted: the row stays so spend totals and other instances see the deletion.
    pub deleted_at: Option<i64>,
}

/// A team: limits and a budget shared by several keys. A request must fit its key's and its
/// team's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub id: String,
    pub name: String,
    /// Model keys (globs) the team's keys may use; empty: every model (each key may narrow it).
    pub models: Vec<String>,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    pub max_parallel_requests: Option<u64>,
    pub max_budget_usd: Option<f64>,
    pub budget_period_secs: Option<u64>,
    pub soft_budget_usd: Option<f64>,
    /// Blocks every key of the team.
    pub blocked: bool,
    pub metadata: serde_json::Value,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

/// A key's spend in its current budget period (written by the gateway, not by edits).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct KeySpend {
    pub spend_usd: f64,
    /// Epoch milliseconds when spend starts again from zero.
    pub budget_reset_at: Option<i64>,
}

/// One state change in the audit trail. `seq`, `prev_hash` and `hash` are the store's: it
/// chains each row to the one before (`hash = sha256(prev_hash ‖ canonical row)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    #[serde(default)]
    pub seq: i64,
    pub id: String,
    /// Epoch milliseconds.
    pub at: i64,
    /// Who: `admin@loopback` (the local management API), `cli:<user>`, `system`.
    pub actor: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// What: `key.create`, `session.delete`, `sanitizer.toggle`, `export.csv`…
    pub action: String,
    /// On what: `key:key_…`, `session:…`.
    pub target: Option<String>,
    /// The state before and after, with secrets left out.
    pub before: Option<serde_json::Value>,
    pub after: Option<serde_json::Value>,
    /// `ok`, or why it was refused.
    pub outcome: String,
    #[serde(default)]
    pub prev_hash: String,
    #[serde(default)]
    pub hash: String,
    /// Its personal fields were blanked by a user's erasure (the chain still verifies).
    #[serde(default)]
    pub erased: bool,
}

impl AuditEntry {
    /// The fields a user's erasure blanks, as version-2 rows digest them (with a salt).
    pub fn personal(&self) -> String {
        serde_json::json!([
            self.actor,
            self.ip,
            self.user_agent,
            self.target,
            self.before,
            self.after,
            self.outcome,
        ])
        .to_string()
    }

    /// What a version-2 row's hash covers after the previous hash: the fields nobody erases,
    /// and the digest of the others.
    pub fn canonical_v2(&self, personal_hash: &str) -> String {
        serde_json::json!(["v2", self.id, self.seq, self.at, self.action, personal_hash])
            .to_string()
    }

    /// The bytes the hash covers, after the previous hash: every field but the hashes, in a
    /// fixed order (JSON objects' keys are sorted), so a verifier recomputes them exactly.
    pub fn canonical(&self) -> String {
        serde_json::json!([
            self.id,
            self.seq,
            self.at,
            self.actor,
            self.ip,
            self.user_agent,
            self.action,
            self.target,
            self.before,
            self.after,
            self.outcome,
        ])
        .to_string()
    }
}

/// What an admin user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything.
    Admin,
    /// Reads only: every write is refused.
    Viewer,
    /// Their own keys and their own spend, nothing else.
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Admin => "admin",
            Self::Viewer => "viewer",
            Self::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "admin" => Some(Self::Admin),
            "viewer" => Some(Self::Viewer),
            "member" => Some(Self::Member),
            _ => None,
        }
    }
}

/// A person who logs in to the management API and the dashboard.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    /// Argon2id, as a PHC string; never shown.
    #[serde(skip_serializing)]
    pub password_hash: String,
    pub role: Role,
    pub blocked: bool,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
    /// The team a member's new keys join.
    #[serde(default)]
    pub team_id: Option<String>,
}

/// One login attempt, whatever its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoginEvent {
    pub id: String,
    pub at: i64,
    pub username: String,
    pub user_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// `ok`, `failed`, `locked` or `limited`.
    pub outcome: String,
    pub reason: Option<String>,
}

/// A refresh token as the store knows it: its id and lineage, never the token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub jti: String,
    /// The login this token descends from; replaying a used token revokes the family.
    pub family: String,
    pub user_id: String,
    pub issued_at: i64,
    pub expires_at: i64,
}
