//! The typed configuration the rest of the gateway reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_core::{Encoding, Pricing};
use serde::Deserialize;

use crate::secret::Secret;

/// The whole configuration, validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub auth: AuthConfig,
    pub rate_limits: RateLimitsConfig,
    pub storage: StorageConfig,
    pub retention: RetentionConfig,
    pub sessions: SessionsConfig,
    pub dashboard: DashboardConfig,
    pub log_watcher: LogWatcherConfig,
    pub redaction: RedactionConfig,
    pub sanitizer: SanitizerConfig,
    pub compaction: CompactionConfig,
    pub proxy: ProxyConfig,
    pub passthrough: PassthroughConfig,
    pub metrics: MetricsConfig,
    pub redis: RedisConfig,
    pub providers: BTreeMap<String, ProviderConfig>,
    pub models: BTreeMap<String, ModelConfig>,
    /// Smart-routing virtual models, by name: `auto/<name>`.
    pub auto: BTreeMap<String, AutoRoute>,
    /// Kimi Proxy keys the file used, and what each became (`gatehouse check` prints them).
    pub seed_keys: Vec<crate::SeedKey>,
}

/// A virtual model `auto/<name>`: each request goes to the best-scoring candidate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoRoute {
    pub candidates: Vec<String>,
    #[serde(default)]
    pub weights: AutoWeights,
}

/// How much each criterion counts (they are normalised to sum to 1).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutoWeights {
    pub headroom: f64,
    pub cost: f64,
    pub latency: f64,
    pub margin: f64,
}

impl Default for AutoWeights {
    fn default() -> Self {
        Self {
            headroom: 0.4,
            cost: 0.3,
            latency: 0.2,
            margin: 0.1,
        }
    }
}

/// Another deployment of a model (another key or base URL), balanced with it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deployment {
    pub model: String,
    #[serde(default = "one")]
    pub weight: f64,
}

fn one() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub max_body_bytes: usize,
    pub shutdown_grace_secs: f64,
    /// Host names answered besides localhost and IP literals (lower case, with or without port).
    pub allowed_hosts: Vec<String>,
    pub header_read_timeout_secs: f64,
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    pub max_streams: usize,
    pub http2_max_streams: u32,
    /// Serve HTTPS with this certificate and key (`[server.tls]`).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Addresses or CIDR ranges (`10.0.0.0/8`, `127.0.0.1`) of reverse proxies whose
    /// `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<String>,
}

/// PEM files; a relative path is under `data_dir`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// An address range: `10.0.0.0/8`, `::1/128`, or a bare address (all its bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    addr: std::net::IpAddr,
    bits: u8,
}

impl Cidr {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        let (a, bits) = match s.split_once('/') {
            Some((a, b)) => (a, Some(b.parse::<u8>().ok()?)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = a.parse().ok()?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(max);
        (bits <= max).then_some(Self { addr, bits })
    }

    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Who may use the gateway (`[auth]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// The completion a reservation assumes for a request without `max_tokens`.
    pub default_max_tokens: u64,
    pub sync_secs: u64,
    pub access_ttl_secs: u64,
    pub refresh_ttl_secs: u64,
    pub lockout_attempts: u32,
    pub lockout_secs: u64,
    pub login_per_minute: u32,
    pub jwt_secret_file: String,
    pub previous_jwt_secret_files: Vec<String>,
}

/// Requests per window on the management API's routes (`[rate_limits]`), per logged-in user,
/// else per client address.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsConfig {
    pub enabled: bool,
    /// Path (or prefix ending in `*`) → limit; the longest matching pattern applies.
    pub endpoints: BTreeMap<String, EndpointLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointLimit {
    pub requests: u32,
    /// `60s`, `15m`, `1h`, `1d`.
    pub window: String,
}

/// `60s`, `15m`, `1h`, `1d` (or bare seconds) in seconds, between 1 s and a week.
pub fn parse_window(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return None,
    };
    n.checked_mul(mult).filter(|v| (1..=7 * 86_400).contains(v))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    None,
    Keys,
}

impl AuthMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Keys => "keys",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// `sqlite://file` (in the data directory) or `postgres://…`; empty: `sqlite_file`.
    pub url: String,
    /// Connections of the store's pool; 0 is the engine's default (SQLite 4, PostgreSQL 8).
    pub pool_size: u32,
    pub sqlite_file: String,
    pub queue_capacity: usize,
    pub batch_size: usize,
    /// Longest a row waits for others to share its write transaction, in milliseconds.
    pub max_commit_delay_ms: u64,
}

/// What the pruner keeps (`[retention]`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Request rows older than this many days are deleted; 0 keeps them.
    pub requests_days: u32,
    /// Masked originals not seen for this many days are deleted; 0 keeps them.
    pub masked_days: u32,
    /// Above 0: the oldest request rows go until the database holds less than this.
    pub max_db_mb: u64,
    /// Sessions idle this long leave memory (their data stays in the database).
    pub session_idle_hours: u32,
    pub interval_secs: u64,
    pub batch_rows: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    pub new_on_model_change: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DashboardConfig {
    pub enabled: bool,
    /// Browser origins allowed besides the gateway's own (`scheme://host[:port]`).
    pub allowed_origins: Vec<String>,
    /// Capacity of the event ring shared by WebSocket clients.
    pub event_buffer: usize,
    pub ping_secs: u64,
    pub recent_requests: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedactionMode {
    Off,
    Redact,
    Block,
}

impl RedactionMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::Redact => "redact",
            Self::Block => "block",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SanitizerConfig {
    pub enabled: bool,
    pub threshold_tokens: u64,
    pub preview_length: usize,
    pub observation_masking: bool,
    pub observation_keep_turns: usize,
    /// Old tool results this small stay: hiding them saves less than the cache miss costs.
    pub observation_min_tokens: u64,
    /// Old tool results are hidden in batches of at least this many tokens, so the prefix the
    /// provider caches changes once per batch rather than on every turn.
    pub observation_batch_tokens: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CompactionStrategy {
    /// A summary built from the messages themselves, no model call.
    Heuristic,
    /// A summary written by a model; the heuristic one when that fails.
    Llm,
}

impl CompactionStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Heuristic => "heuristic",
            Self::Llm => "llm",
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionConfig {
    pub strategy: CompactionStrategy,
    /// Model key that writes `llm` summaries; empty means the session's own model.
    pub summary_model: String,
    pub keep_exchanges: usize,
    pub summary_max_tokens: u64,
    /// The conversation's first request (its task) is kept verbatim in every summary, within
    /// this budget of its own.
    pub task_max_tokens: u64,
    pub summary_temperature: f64,
    pub summary_timeout_secs: f64,
    /// A manual compaction without `force` needs at least this many tokens to summarise.
    pub min_tokens: u64,
    /// Tokens kept free for the answer, counted with the prompt against the threshold (a
    /// session's own non-zero value wins).
    pub reserved_tokens: u64,
    pub auto: CompactionAuto,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompactionAuto {
    pub enabled: bool,
    pub threshold_pct: f64,
    pub cooldown_secs: u64,
    pub max_consecutive: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactionConfig {
    pub mode: RedactionMode,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogWatcherConfig {
    pub enabled: bool,
    /// Files to tail; a leading `~/` means the home directory.
    pub paths: Vec<String>,
    pub poll_ms: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProxyRaw {
    pub default_model: String,
    pub retries: u32,
    pub repair_tool_calls: bool,
    pub retry_backoff_ms: u64,
    pub token_cache_entries: usize,
    pub circuit_breaker: CircuitBreaker,
    pub heavy_duty: HeavyDuty,
    pub timeouts: TimeoutsRaw,
    #[serde(default)]
    pub outbound_proxy: Option<String>,
    #[serde(default)]
    pub no_proxy: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutsRaw {
    pub connect: f64,
    pub first_byte: f64,
    pub idle: f64,
    pub total: f64,
    #[serde(default)]
    pub providers: BTreeMap<String, TimeoutOverrides>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TimeoutOverrides {
    pub connect: Option<f64>,
    pub first_byte: Option<f64>,
    pub idle: Option<f64>,
    pub total: Option<f64>,
}

/// Proxy behaviour shared by every provider.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The model of a request that names none (`model` missing or empty).
    pub default_model: Option<String>,
    pub retries: u32,
    /// Tool calls without ids or with almost-JSON arguments are repaired before they leave.
    pub repair_tool_calls: bool,
    pub retry_backoff: Duration,
    pub token_cache_entries: usize,
    pub circuit_breaker: CircuitBreaker,
    pub heavy_duty: HeavyDuty,
    /// `[proxy.timeouts]` without the per-provider overrides: what a passthrough target gets.
    pub timeouts: Timeouts,
    /// The http:// proxy providers are reached through; `None`: the environment's
    /// (`HTTPS_PROXY` and kin), `Some("")`: none, whatever the environment says.
    pub outbound_proxy: Option<String>,
    /// Hosts reached directly despite `outbound_proxy` (`NO_PROXY`'s syntax, one per entry).
    pub no_proxy: Vec<String>,
}

/// Shared live state for several instances (`[redis]`): limits, budgets and key changes.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port[/db]`; empty: this instance stands alone.
    pub url: String,
    pub on_error: OnError,
    /// The namespace of every Redis key and channel; instances of one gateway share it.
    pub prefix: String,
    /// Longest a limit check waits for Redis before `on_error` applies.
    pub timeout_ms: u64,
    /// A request's place and reservation, left by an instance that died, go after this long.
    pub lease_secs: u64,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The url may carry a password.
        f.debug_struct("RedisConfig")
            .field("url", &if self.url.is_empty() { "" } else { "***" })
            .field("on_error", &self.on_error)
            .field("prefix", &self.prefix)
            .field("timeout_ms", &self.timeout_ms)
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

/// What limited requests get while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnError {
    /// Served under this instance's own limits.
    Open,
    /// Refused, 503 `limiter_unavailable`.
    Closed,
}

/// Prometheus metrics at `GET /metrics`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// A scraper's bearer token; empty: the admin login under `mode = "keys"`, open otherwise.
    pub token: String,
    /// Model × provider label sets; the ones past this are counted under `model="other"`.
    pub max_series: usize,
    /// Virtual keys with spend series of their own (the most spent first).
    pub max_keys: usize,
}

impl std::fmt::Debug for MetricsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsConfig")
            .field("enabled", &self.enabled)
            .field("token", &if self.token.is_empty() { "" } else { "***" })
            .field("max_series", &self.max_series)
            .field("max_keys", &self.max_keys)
            .finish()
    }
}

/// Session-less passthrough: `X-Target-Base-URL` names where a request goes, with the client's
/// own key. Only to the hosts listed; an empty list turns it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PassthroughConfig {
    /// Host names (`api.openai.com`), `*.`-prefixed suffixes (`*.openai.azure.com`) or IP
    /// addresses; a private or loopback address is reached only when listed as an address.
    pub allowed_hosts: Vec<String>,
}

/// The seed's heavy-duty fallback: a prompt at `threshold_pct` of its model's window moves to
/// the smallest model of the same provider whose window holds it below that mark.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeavyDuty {
    pub enabled: bool,
    pub threshold_pct: f64,
    /// With no larger model: `forward` (the prompt still fits) or `refuse` (413 now).
    pub when_none: WhenNone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenNone {
    Forward,
    Refuse,
}

/// When a provider is skipped: after `failures` requests in a row failed (retries included),
/// for `open_secs`; then one request probes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CircuitBreaker {
    pub failures: u32,
    pub open_secs: u64,
}

/// The four timeouts of one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Response head, and for streams the first chunk.
    pub first_byte: Duration,
    /// Largest gap between two stream chunks.
    pub idle: Duration,
    /// A whole non-streaming exchange.
    pub total: Duration,
}

/// The wire protocol a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderType {
    Openai,
    /// Moonshot's Kimi endpoints: OpenAI-compatible.
    Kimi,
    Anthropic,
    Gemini,
    Ollama,
}

impl ProviderType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Openai => "openai",
            Self::Kimi => "kimi",
            Self::Anthropic => "anthropic",
            Self::Gemini => "gemini",
            Self::Ollama => "ollama",
        }
    }

    /// Whether this build can forward requests to such a provider.
    pub fn is_served(self) -> bool {
        matches!(
            self,
            Self::Openai | Self::Kimi | Self::Anthropic | Self::Gemini | Self::Ollama
        )
    }

    /// Whether it speaks OpenAI's chat completions (requests pass through untranslated).
    pub fn is_openai_compatible(self) -> bool {
        matches!(self, Self::Openai | Self::Kimi)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ProviderRaw {
    #[serde(rename = "type")]
    pub kind: ProviderType,
    pub base_url: String,
    #[serde(default)]
    pub api_key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    pub stream_usage: bool,
    #[serde(default)]
    pub rpm: Option<u32>,
    #[serde(default)]
    pub responses_api: bool,
    #[serde(default)]
    pub http2: bool,
    #[serde(default = "default_connections")]
    pub connections: u32,
}

fn default_connections() -> u32 {
    4
}

fn yes() -> bool {
    true
}

/// One upstream provider, resolved.
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    pub kind: ProviderType,
    /// Without a trailing slash.
    pub base_url: String,
    /// `base_url` as messages, rows, events and `/api/providers` show it: without a user, a
    /// password or a query, where credentials can hide (`https://key@host/v1?key=…`).
    pub shown_url: String,
    pub api_key: Option<Secret>,
    /// The variable `api_key` was read from (`MISTRAL_API_KEY`), for messages; set even when the
    /// variable is unset, which is how a missing key is told apart from a keyless provider.
    pub api_key_env: Option<String>,
    /// Extra headers sent on every request to this provider.
    pub headers: BTreeMap<String, String>,
    pub timeouts: Timeouts,
    /// Ask for usage in streams (`stream_options.include_usage`). Some OpenAI-compatible APIs
    /// (Mistral) reject the field; for those it is off, and usage is read from whatever the
    /// stream carries or counted from the text.
    pub stream_usage: bool,
    /// Requests per minute this gateway sends at most; past it, requests wait their turn.
    pub rpm: Option<u32>,
    /// It also serves OpenAI's Responses API at `{base_url}/responses`: a Responses client's
    /// own bytes go there (OpenAI's `reasoning` items and encrypted content included).
    pub responses_api: bool,
    /// Send the key as `Authorization: Bearer` whatever the type: a passthrough client's
    /// Anthropic or Gemini OAuth token goes the way the client sent it.
    pub bearer: bool,
    /// Speak HTTP/2 to a plain `http://` base URL (prior knowledge, as vLLM or a local h2c
    /// server take it). `https://` negotiates HTTP/2 by ALPN whatever this says.
    pub http2: bool,
    /// HTTP/2 connections kept to this provider, requests spread over them in turn: one
    /// connection carries only as many concurrent streams as the provider allows (often
    /// 100–256), and the client does not open a second one by itself.
    pub connections: usize,
}

/// `url` without its user, password, query and fragment.
pub fn shown_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string().trim_end_matches('/').to_owned()
        }
        // Not a URL: show the part after a possible `user:password@`, up to a `?`.
        Err(_) => {
            let tail = url.rsplit_once('@').map_or(url, |(_, t)| t);
            tail.split(['?', '#']).next().unwrap_or("").to_owned()
        }
    }
}

impl ProviderConfig {
    /// A key was asked for (through `${VAR}`) but the variable is unset.
    pub fn key_missing(&self) -> bool {
        self.api_key.is_none() && self.api_key_env.is_some()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ModelRaw {
    pub provider: String,
    pub model: String,
    pub max_context_size: u64,
    #[serde(default)]
    pub capabilities: Vec<String>,
    #[serde(default)]
    pub encoding: Option<String>,
    #[serde(default)]
    pub pricing: Option<Pricing>,
    #[serde(default)]
    pub fallbacks: Vec<String>,
    #[serde(default)]
    pub fallback_on_timeout: bool,
    #[serde(default)]
    pub deployments: Vec<Deployment>,
    #[serde(default)]
    pub weight: Option<f64>,
}

/// One model a client may ask for.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    pub provider: String,
    /// The provider's own name for the model.
    pub model: String,
    pub max_context_size: u64,
    pub capabilities: Vec<String>,
    pub encoding: Encoding,
    /// US dollars per million tokens; requests of unpriced models have no cost.
    pub pricing: Option<Pricing>,
    /// Model keys tried in order when this one fails before answering.
    pub fallbacks: Vec<String>,
    /// A whole answer that timed out may still be generating (and be billed): it goes to the
    /// fallbacks only when this says so.
    pub fallback_on_timeout: bool,
    /// Other deployments of the same model; requests are balanced across all of them.
    pub deployments: Vec<Deployment>,
    /// This deployment's share in the balance (1 unless set).
    pub weight: f64,
}
