//! The loading pipeline and its error reporting.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_core::Encoding;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

use crate::schema::{
    AuthConfig, AutoRoute, CompactionConfig, Config, DashboardConfig, LogWatcherConfig,
    MetricsConfig, ModelConfig, ModelRaw, PassthroughConfig, ProviderConfig, ProviderRaw,
    ProxyConfig, ProxyRaw, RateLimitsConfig, RedactionConfig, RedisConfig, RetentionConfig,
    SanitizerConfig, ServerConfig, SessionsConfig, StorageConfig, TimeoutOverrides, Timeouts,
};
use crate::secret::Secret;

/// The built-in catalogue and defaults; `gatehouse init` writes exactly this text.
pub const CATALOGUE_TOML: &str = include_str!("catalogue.toml");

const SECTIONS: &[&str] = &[
    "server",
    "auth",
    "rate_limits",
    "storage",
    "retention",
    "sessions",
    "dashboard",
    "log_watcher",
    "redaction",
    "sanitizer",
    "compaction",
    "proxy",
    "passthrough",
    "metrics",
    "redis",
    "providers",
    "models",
    "auto",
];
const ENV_PREFIX: &str = "GATEHOUSE_";

/// A snapshot of environment variables, taken once by the binary.
#[derive(Debug, Clone, Default)]
pub struct Env {
    vars: BTreeMap<String, String>,
}

impl Env {
    pub fn from_pairs<I, K, V>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// Command-line flags, the last word on what they set.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub host: Option<String>,
    pub port: Option<u16>,
    pub data_dir: Option<PathBuf>,
}

/// One mistake in a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// Key path, e.g. `models."mistral/codestral-2501".max_context_size`.
    pub path: String,
    /// 1-based line in the file, when the key is in the file.
    pub line: Option<usize>,
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(hint) = &self.hint {
            write!(f, " (hint: {hint})")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration{}:\n{}", file_suffix(.file), list(.issues))]
    Invalid {
        file: Option<PathBuf>,
        issues: Vec<Issue>,
    },
}

fn file_suffix(file: &Option<PathBuf>) -> String {
    file.as_ref()
        .map(|p| format!(" in {}", p.display()))
        .unwrap_or_default()
}

fn list(issues: &[Issue]) -> String {
    issues
        .iter()
        .map(|i| format!("  - {i}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads the configuration: built-in catalogue, then `file`, then `GATEHOUSE_…` variables from
/// `env`, then `overrides`.
pub fn load(file: Option<&Path>, env: &Env, overrides: &Overrides) -> Result<Config, ConfigError> {
    let text = match file {
        Some(p) => Some(
            std::fs::read_to_string(p).map_err(|source| ConfigError::Io {
                path: p.to_owned(),
                source,
            })?,
        ),
        None => None,
    };
    let mut config = build(text.as_deref(), env).map_err(|issues| ConfigError::Invalid {
        file: file.map(Path::to_owned),
        issues,
    })?;
    if let Some(host) = &overrides.host {
        config.server.host.clone_from(host);
    }
    if let Some(port) = overrides.port {
        config.server.port = port;
    }
    if let Some(dir) = &overrides.data_dir {
        config.server.data_dir.clone_from(dir);
    }
    Ok(config)
}

/// Loads configuration text (what a file would hold) with no overrides: for tests and the
/// fuzzer, which feed it text that never touches the disk.
pub fn load_text(text: &str, env: &Env) -> Result<Config, ConfigError> {
    build(Some(text), env).map_err(|issues| ConfigError::Invalid { file: None, issues })
}

/// Validates a file the way `serve` would load it, returning every issue found.
pub fn check_file(path: &Path, env: &Env) -> Result<Vec<Issue>, ConfigError> {
    match load(Some(path), env, &Overrides::default()) {
        Ok(_) => Ok(Vec::new()),
        Err(ConfigError::Invalid { issues, .. }) => Ok(issues),
        Err(e) => Err(e),
    }
}

/// The Kimi Proxy keys of a file and what each becomes, whether or not the file is valid.
pub fn seed_keys_of(text: &str) -> Vec<crate::SeedKey> {
    toml::from_str::<Table>(text)
        .map(|mut t| crate::compat::from_kimi_proxy(&mut t))
        .unwrap_or_default()
}

fn build(file_text: Option<&str>, env: &Env) -> Result<Config, Vec<Issue>> {
    let mut issues = Vec::new();
    let mut root: Table = match toml::from_str(CATALOGUE_TOML) {
        Ok(t) => t,
        Err(e) => {
            return Err(vec![Issue {
                path: String::new(),
                line: None,
                message: format!("the built-in catalogue does not parse: {e}"),
                hint: Some("this is a bug in Gatehouse; please report it".into()),
            }]);
        }
    };

    let spans = file_text.map(LineIndex::new);
    let mut seed_keys = Vec::new();
    if let Some(text) = file_text {
        match toml::from_str::<Table>(text) {
            Ok(mut user) => {
                seed_keys = crate::compat::from_kimi_proxy(&mut user);
                for key in user.keys() {
                    if !SECTIONS.contains(&key.as_str()) {
                        issues.push(Issue {
                            path: quote_key(key),
                            line: None,
                            message: "unknown section".into(),
                            hint: Some(suggest(key, SECTIONS.iter().copied())),
                        });
                    }
                }
                merge(&mut root, user);
            }
            Err(e) => {
                let line = e.span().map(|s| line_of(text, s.start));
                return Err(vec![Issue {
                    path: String::new(),
                    line,
                    message: format!("TOML syntax error: {}", e.message()),
                    hint: Some("check quoting, brackets and `key = value` syntax".into()),
                }]);
            }
        }
    }

    apply_env_overrides(&mut root, env, &mut issues);
    let key_envs = expand_vars(&mut root, env, &mut issues);

    let server: Option<ServerConfig> = section(&root, "server", &mut issues);
    if let Some(sv) = &server {
        for p in &sv.trusted_proxies {
            if crate::schema::Cidr::parse(p).is_none() {
                issues.push(issue(
                    "server.trusted_proxies",
                    &format!("`{p}` is not an address or a CIDR range"),
                    Some("write it as 10.0.0.0/8, 192.168.1.5 or ::1"),
                ));
            }
        }
    }
    let storage: Option<StorageConfig> = section(&root, "storage", &mut issues);
    let retention: Option<RetentionConfig> = section(&root, "retention", &mut issues);
    if let Some(r) = &retention {
        check_duration("retention.interval_secs", r.interval_secs, 1, &mut issues);
        if r.interval_secs == 0 || r.batch_rows == 0 {
            issues.push(issue(
                "retention",
                "interval_secs and batch_rows must be greater than 0",
                Some("leave them out to use the defaults (300 and 1000)"),
            ));
        }
    }
    let sessions: Option<SessionsConfig> = section(&root, "sessions", &mut issues);
    let auth: Option<AuthConfig> = section(&root, "auth", &mut issues);
    if let Some(a) = &auth {
        check_duration("auth.sync_secs", a.sync_secs, 1, &mut issues);
        if a.sync_secs == 0 || a.default_max_tokens == 0 {
            issues.push(issue(
                "auth",
                "sync_secs and default_max_tokens must be greater than 0",
                Some("leave them out to use the defaults (2 and 4096)"),
            ));
        }
        if a.access_ttl_secs < 60
            || a.refresh_ttl_secs < a.access_ttl_secs
            || a.lockout_attempts == 0
            || a.login_per_minute == 0
        {
            issues.push(issue(
                "auth",
                "access_ttl_secs must be at least 60, refresh_ttl_secs at least access_ttl_secs, and lockout_attempts and login_per_minute greater than 0",
                Some("leave them out to use the defaults (1800, 604800, 5 and 5)"),
            ));
        }
    }
    let rate_limits: Option<RateLimitsConfig> = section(&root, "rate_limits", &mut issues);
    if let Some(r) = &rate_limits {
        check_endpoint_limits(r, &mut issues);
    }
    let dashboard: Option<DashboardConfig> = section(&root, "dashboard", &mut issues);
    let log_watcher: Option<LogWatcherConfig> = section(&root, "log_watcher", &mut issues);
    let redaction: Option<RedactionConfig> = section(&root, "redaction", &mut issues);
    let sanitizer: Option<SanitizerConfig> = section(&root, "sanitizer", &mut issues);
    let compaction: Option<CompactionConfig> = section(&root, "compaction", &mut issues);
    let proxy: Option<ProxyRaw> = section(&root, "proxy", &mut issues);
    let passthrough: Option<PassthroughConfig> = section(&root, "passthrough", &mut issues);
    let metrics: Option<MetricsConfig> = section(&root, "metrics", &mut issues);
    let redis: Option<RedisConfig> = section(&root, "redis", &mut issues);
    if let Some(r) = &redis {
        check_redis(r, &mut issues);
    }
    if let Some(p) = &passthrough {
        check_passthrough(p, &mut issues);
    }

    let mut providers_raw = BTreeMap::new();
    for (key, value) in entries(&root, "providers", &mut issues) {
        let path = format!("providers.{}", quote_key(&key));
        if let Some(p) = typed::<ProviderRaw>(value, &path, &mut issues) {
            providers_raw.insert(key, p);
        }
    }
    let mut models_raw = BTreeMap::new();
    for (key, value) in entries(&root, "models", &mut issues) {
        let path = format!("models.{}", quote_key(&key));
        if let Some(m) = typed::<ModelRaw>(value, &path, &mut issues) {
            models_raw.insert(key, m);
        }
    }

    if let Some(s) = &server {
        if s.max_body_bytes == 0 {
            issues.push(issue(
                "server.max_body_bytes",
                "must be greater than 0",
                Some("the default is 33554432 (32 MiB)"),
            ));
        }
        if !(s.shutdown_grace_secs.is_finite() && s.shutdown_grace_secs >= 0.0) {
            issues.push(issue(
                "server.shutdown_grace_secs",
                "must be a non-negative number of seconds",
                Some("the default is 30"),
            ));
        }
        if !(s.header_read_timeout_secs.is_finite()
            && (s.header_read_timeout_secs == 0.0
                || (0.1..=86_400.0).contains(&s.header_read_timeout_secs)))
        {
            issues.push(issue(
                "server.header_read_timeout_secs",
                "must be between 0.1 and 86400 seconds (or 0: no timeout)",
                Some("the default is 30"),
            ));
        }
        for (name, v) in [
            ("max_connections", s.max_connections),
            ("max_connections_per_ip", s.max_connections_per_ip),
            ("max_streams", s.max_streams),
            ("http2_max_streams", s.http2_max_streams as usize),
        ] {
            if v == 0 {
                issues.push(issue(
                    &format!("server.{name}"),
                    "must be greater than 0",
                    Some("leave it out to use the default"),
                ));
            }
        }
        for (i, h) in s.allowed_hosts.iter().enumerate() {
            let ok = !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b));
            if !ok {
                issues.push(issue(
                    &format!("server.allowed_hosts[{i}]"),
                    "must be a host name, optionally with `:port` (no scheme, no path)",
                    Some("for example \"gatehouse.internal\" or \"gatehouse.internal:8000\""),
                ));
            }
        }
        if s.shutdown_grace_secs > 86_400.0 {
            issues.push(issue(
                "server.shutdown_grace_secs",
                "must be at most 86400 seconds (a day)",
                Some("the default is 30"),
            ));
        }
        if s.host.parse::<std::net::IpAddr>().is_err() && s.host != "localhost" {
            issues.push(issue(
                "server.host",
                "must be an IP address or `localhost`",
                Some("use 127.0.0.1 to stay on this machine"),
            ));
        }
    }
    if let Some(c) = &compaction {
        check_compaction(c, &models_raw, &mut issues);
    }
    if let Some(s) = &storage {
        for (name, v) in [
            ("queue_capacity", s.queue_capacity),
            ("batch_size", s.batch_size),
        ] {
            if v == 0 {
                issues.push(issue(
                    &format!("storage.{name}"),
                    "must be greater than 0",
                    Some("leave it out to use the default"),
                ));
            }
        }
        let known = ["sqlite://", "postgres://", "postgresql://"];
        if !s.url.is_empty() && !known.iter().any(|k| s.url.starts_with(k)) {
            issues.push(issue(
                "storage.url",
                "must start with sqlite:// or postgres://",
                Some("leave it empty for the SQLite file in data_dir"),
            ));
        }
        if s.url == "sqlite://" {
            issues.push(issue(
                "storage.url",
                "names no file",
                Some("sqlite://gatehouse.db is the file in data_dir"),
            ));
        }
        if s.sqlite_file.is_empty() {
            issues.push(issue(
                "storage.sqlite_file",
                "must not be empty",
                Some("the default is \"gatehouse.db\""),
            ));
        }
    }

    if let Some(d) = &dashboard {
        if !(16..=1_048_576).contains(&d.event_buffer) {
            issues.push(issue(
                "dashboard.event_buffer",
                "must be between 16 and 1048576",
                Some("the default is 1024"),
            ));
        }
        check_duration("dashboard.ping_secs", d.ping_secs, 1, &mut issues);
        if d.ping_secs == 0 {
            issues.push(issue(
                "dashboard.ping_secs",
                "must be greater than 0",
                Some("the default is 20"),
            ));
        }
        for (i, o) in d.allowed_origins.iter().enumerate() {
            let ok = url::Url::parse(o)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.path() == "/")
                && !o.ends_with('/');
            if !ok {
                issues.push(issue(
                    &format!("dashboard.allowed_origins[{i}]"),
                    "must be an origin: scheme://host[:port], without a path or trailing slash",
                    Some("for example \"http://localhost:5173\""),
                ));
            }
        }
    }
    if let Some(w) = &log_watcher {
        check_duration("log_watcher.poll_ms", w.poll_ms, 1000, &mut issues);
    }
    if let Some(s) = &storage {
        check_duration(
            "storage.max_commit_delay_ms",
            s.max_commit_delay_ms,
            1000,
            &mut issues,
        );
    }
    if let Some(c) = &compaction {
        check_duration(
            "compaction.auto.cooldown_secs",
            c.auto.cooldown_secs,
            1,
            &mut issues,
        );
        if !(c.summary_timeout_secs.is_finite()
            && (0.0..=MAX_DURATION.as_secs_f64()).contains(&c.summary_timeout_secs))
        {
            issues.push(issue(
                "compaction.summary_timeout_secs",
                "must be a number of seconds, at most 86400 (a day)",
                Some("the default is 30"),
            ));
        }
    }
    if let Some(p) = &proxy {
        check_duration(
            "proxy.circuit_breaker.open_secs",
            p.circuit_breaker.open_secs,
            1,
            &mut issues,
        );
        check_duration(
            "proxy.retry_backoff_ms",
            p.retry_backoff_ms,
            1000,
            &mut issues,
        );
        if let Some(u) = p.outbound_proxy.as_deref().filter(|u| !u.trim().is_empty()) {
            check_outbound_proxy(u, &mut issues);
        }
    }
    if let Some(w) = &log_watcher
        && w.poll_ms < 10
    {
        issues.push(issue(
            "log_watcher.poll_ms",
            "must be at least 10",
            Some("the default is 250"),
        ));
    }

    let mut timeouts_default = None;
    let mut timeout_overrides = BTreeMap::new();
    if proxy.is_none() {
        // The section's own issue is reported; providers still get the built-in timeouts, so
        // that one mistake does not make every provider (and model) vanish.
        timeouts_default = builtin_timeouts();
    }
    if let Some(p) = &proxy {
        let t = p.heavy_duty.threshold_pct;
        if !(t.is_finite() && t > 0.0 && t <= 100.0) {
            issues.push(issue(
                "proxy.heavy_duty.threshold_pct",
                "must be a percentage above 0 and at most 100",
                Some("the default is 90"),
            ));
        }
        let t = &p.timeouts;
        let base = TimeoutOverrides {
            connect: Some(t.connect),
            first_byte: Some(t.first_byte),
            idle: Some(t.idle),
            total: Some(t.total),
        };
        timeouts_default = resolve_timeouts("proxy.timeouts", &base, None, &mut issues);
        for (key, o) in &t.providers {
            let path = format!("proxy.timeouts.providers.{}", quote_key(key));
            if !providers_raw.contains_key(key) {
                issues.push(issue(
                    &path,
                    "timeouts for a provider that is not configured",
                    Some(&suggest(key, providers_raw.keys().map(String::as_str))),
                ));
            }
            timeout_overrides.insert(key.clone(), (path, o.clone()));
        }
        if p.retries > 10 {
            issues.push(issue(
                "proxy.retries",
                "must be at most 10",
                Some("the default is 2; fallbacks are the way to go further"),
            ));
        }
    }

    let mut providers = BTreeMap::new();
    for (key, raw) in providers_raw {
        let path = format!("providers.{}", quote_key(&key));
        let url = raw.base_url.trim_end_matches('/').to_owned();
        if !(url.starts_with("http://") || url.starts_with("https://")) || url.len() < 10 {
            issues.push(issue(
                &format!("{path}.base_url"),
                &format!(
                    "`{}` is not an http(s) URL",
                    crate::schema::shown_url(&raw.base_url)
                ),
                Some("e.g. https://api.mistral.ai/v1"),
            ));
        }
        if raw.responses_api && raw.kind != crate::ProviderType::Openai {
            issues.push(issue(
                &format!("{path}.responses_api"),
                &format!(
                    "applies to `type = \"openai\"` providers only, not `{}`",
                    raw.kind.as_str()
                ),
                Some("OpenAI's Responses API is served at {base_url}/responses by OpenAI-type providers"),
            ));
        }
        if !(1..=64).contains(&raw.connections) {
            issues.push(issue(
                &format!("{path}.connections"),
                "must be between 1 and 64",
                Some("the default, 4, carries about a thousand concurrent streams"),
            ));
        }
        if raw.http2 && url.starts_with("https://") {
            issues.push(issue(
                &format!("{path}.http2"),
                "applies to plain http:// base URLs only",
                Some("an https:// provider negotiates HTTP/2 by itself; leave `http2` out"),
            ));
        }
        let timeouts = match (&timeouts_default, timeout_overrides.get(&key)) {
            (Some(d), Some((opath, o))) => resolve_timeouts(opath, o, Some(d), &mut issues),
            (Some(d), None) => Some(*d),
            (None, _) => None,
        };
        let api_key = raw.api_key.filter(|k| !k.is_empty()).map(Secret::new);
        let Some(timeouts) = timeouts else { continue };
        providers.insert(
            key.clone(),
            ProviderConfig {
                kind: raw.kind,
                shown_url: crate::schema::shown_url(&url),
                base_url: url,
                api_key,
                api_key_env: key_envs.get(&key).cloned(),
                headers: raw.headers,
                timeouts,
                stream_usage: raw.stream_usage,
                rpm: raw.rpm.filter(|&r| r > 0),
                responses_api: raw.responses_api,
                bearer: false,
                http2: raw.http2,
                connections: raw.connections.clamp(1, 64) as usize,
            },
        );
    }

    let mut models = BTreeMap::new();
    for (key, raw) in models_raw {
        let path = format!("models.{}", quote_key(&key));
        if !providers.contains_key(&raw.provider)
            && !issues.iter().any(|i| {
                i.path
                    .starts_with(&format!("providers.{}", quote_key(&raw.provider)))
            })
        {
            issues.push(issue(
                &format!("{path}.provider"),
                &format!("provider `{}` is not configured", raw.provider),
                Some(&suggest(
                    &raw.provider,
                    providers.keys().map(String::as_str),
                )),
            ));
        }
        if raw.max_context_size == 0 {
            issues.push(issue(
                &format!("{path}.max_context_size"),
                "must be greater than 0",
                Some("the model's context window in tokens, e.g. 131072"),
            ));
        }
        if raw.model.is_empty() {
            issues.push(issue(
                &format!("{path}.model"),
                "must not be empty",
                Some("the provider's own name for the model, e.g. \"codestral-2501\""),
            ));
        }
        let encoding = match raw.encoding.as_deref() {
            None => Encoding::for_model(&raw.model),
            Some(e) => match e.parse::<Encoding>() {
                Ok(e) => e,
                Err(msg) => {
                    issues.push(issue(
                        &format!("{path}.encoding"),
                        &msg,
                        Some("or leave it out to choose by model family"),
                    ));
                    continue;
                }
            },
        };
        models.insert(
            key,
            ModelConfig {
                provider: raw.provider,
                model: raw.model,
                max_context_size: raw.max_context_size,
                capabilities: raw.capabilities,
                encoding,
                pricing: raw.pricing,
                fallbacks: raw.fallbacks,
                fallback_on_timeout: raw.fallback_on_timeout,
                deployments: raw.deployments,
                weight: raw.weight.unwrap_or(1.0),
            },
        );
    }
    if let Some(p) = &proxy
        && !p.default_model.is_empty()
        && !models.contains_key(&p.default_model)
    {
        issues.push(issue(
            "proxy.default_model",
            &format!("`{}` is not a configured model", p.default_model),
            Some(&suggest(
                &p.default_model,
                models.keys().map(String::as_str),
            )),
        ));
    }
    let mut auto = BTreeMap::new();
    for (name, value) in entries(&root, "auto", &mut issues) {
        let path = format!("auto.{}", quote_key(&name));
        if let Some(a) = typed::<AutoRoute>(value, &path, &mut issues) {
            for (i, c) in a.candidates.iter().enumerate() {
                if !models.contains_key(c) {
                    issues.push(issue(
                        &format!("{path}.candidates[{i}]"),
                        &format!("`{c}` is not a configured model"),
                        Some(&suggest(c, models.keys().map(String::as_str))),
                    ));
                }
            }
            if a.candidates.is_empty() {
                issues.push(issue(
                    &format!("{path}.candidates"),
                    "must name at least one model",
                    Some("e.g. [\"groq/qwen3-32b\", \"cerebras/qwen3-235b\"]"),
                ));
            }
            auto.insert(name, a);
        }
    }
    for (key, m) in &models {
        for (i, d) in m.deployments.iter().enumerate() {
            if d.model == *key
                || !models.contains_key(&d.model)
                || !(d.weight.is_finite() && d.weight > 0.0)
            {
                issues.push(issue(
                    &format!("models.{}.deployments[{i}]", quote_key(key)),
                    &if d.model == *key || !models.contains_key(&d.model) {
                        format!("`{}` is not another configured model", d.model)
                    } else {
                        "`weight` must be a positive number".to_owned()
                    },
                    Some("a deployment is another model key serving the same model (another key or base URL)"),
                ));
            }
        }
        for (i, f) in m.fallbacks.iter().enumerate() {
            if f == key || !models.contains_key(f) {
                issues.push(issue(
                    &format!("models.{}.fallbacks[{i}]", quote_key(key)),
                    &if f == key {
                        "a model cannot fall back to itself".to_owned()
                    } else {
                        format!("`{f}` is not a configured model")
                    },
                    Some(&suggest(f, models.keys().map(String::as_str))),
                ));
            }
        }
    }

    if let Some(index) = &spans {
        for i in &mut issues {
            if i.line.is_none() {
                i.line = index.line_of_path(&i.path);
            }
        }
    }

    issues.sort_by(|a, b| (a.line, &a.path).cmp(&(b.line, &b.path)));
    match (
        (server, auth, rate_limits),
        storage,
        retention,
        sessions,
        dashboard,
        log_watcher,
        redaction,
        sanitizer,
        compaction,
        proxy,
        (passthrough, metrics, redis),
        timeouts_default,
    ) {
        (
            (Some(server), Some(auth), Some(rate_limits)),
            Some(storage),
            Some(retention),
            Some(sessions),
            Some(dashboard),
            Some(log_watcher),
            Some(redaction),
            Some(sanitizer),
            Some(compaction),
            Some(proxy),
            (Some(passthrough), Some(metrics), Some(redis)),
            Some(timeouts),
        ) if issues.is_empty() => Ok(Config {
            server,
            auth,
            rate_limits,
            storage,
            retention,
            sessions,
            dashboard,
            log_watcher,
            redaction,
            sanitizer,
            compaction,
            proxy: ProxyConfig {
                default_model: Some(proxy.default_model).filter(|m| !m.is_empty()),
                retries: proxy.retries,
                repair_tool_calls: proxy.repair_tool_calls,
                retry_backoff: Duration::from_millis(proxy.retry_backoff_ms),
                token_cache_entries: proxy.token_cache_entries,
                circuit_breaker: proxy.circuit_breaker,
                heavy_duty: proxy.heavy_duty,
                timeouts,
                outbound_proxy: proxy.outbound_proxy,
                no_proxy: proxy.no_proxy,
            },
            passthrough,
            metrics,
            redis,
            providers,
            models,
            auto,
            seed_keys,
        }),
        _ => Err(issues),
    }
}

/// An http:// proxy URL: `http://host:port`, with `user:password@` when it needs them. The
/// URL is never echoed: it may hold a password.
fn check_outbound_proxy(u: &str, issues: &mut Vec<Issue>) {
    let ok = url::Url::parse(u.trim())
        .is_ok_and(|url| url.scheme() == "http" && url.host_str().is_some_and(|h| !h.is_empty()));
    if !ok {
        issues.push(issue(
            "proxy.outbound_proxy",
            "must be an http:// proxy URL",
            Some("e.g. \"http://proxy.internal:3128\" or \"http://user:password@proxy.internal:3128\"; \"\" turns off the environment's HTTPS_PROXY"),
        ));
    }
}

/// Each entry a bare host: no scheme, port, path or wildcard other than a leading `*.`.
fn check_passthrough(p: &PassthroughConfig, issues: &mut Vec<Issue>) {
    for (i, host) in p.allowed_hosts.iter().enumerate() {
        let name = host.strip_prefix("*.").unwrap_or(host);
        let bare = name.trim_start_matches('[').trim_end_matches(']');
        let ok = !bare.is_empty()
            && (bare.parse::<std::net::IpAddr>().is_ok()
                || bare
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'));
        if !ok {
            issues.push(issue(
                &format!("passthrough.allowed_hosts[{i}]"),
                &format!("`{host}` is not a host name, `*.suffix` or IP address"),
                Some("list hosts without scheme, port or path: \"api.openai.com\", \"*.openai.azure.com\", \"10.0.0.5\""),
            ));
        }
    }
}

fn check_compaction<M>(
    c: &CompactionConfig,
    models: &BTreeMap<String, M>,
    issues: &mut Vec<Issue>,
) {
    let a = &c.auto;
    if !(a.threshold_pct.is_finite() && a.threshold_pct > 0.0 && a.threshold_pct <= 100.0) {
        issues.push(issue(
            "compaction.auto.threshold_pct",
            "must be a percentage above 0 and at most 100",
            Some("the default is 85"),
        ));
    }
    if c.keep_exchanges == 0 {
        issues.push(issue(
            "compaction.keep_exchanges",
            "must be at least 1: the latest user turn is always kept whole",
            Some("the default is 2"),
        ));
    }
    if c.summary_max_tokens < 50 {
        issues.push(issue(
            "compaction.summary_max_tokens",
            "must be at least 50",
            Some("the default is 500"),
        ));
    }
    if !(c.summary_temperature.is_finite() && (0.0..=2.0).contains(&c.summary_temperature)) {
        issues.push(issue(
            "compaction.summary_temperature",
            "must be between 0 and 2",
            Some("the default is 0.3"),
        ));
    }
    if !(c.summary_timeout_secs.is_finite() && c.summary_timeout_secs > 0.0) {
        issues.push(issue(
            "compaction.summary_timeout_secs",
            "must be a positive number of seconds",
            Some("the default is 30"),
        ));
    }
    if !c.summary_model.is_empty() && !models.contains_key(&c.summary_model) {
        issues.push(issue(
            "compaction.summary_model",
            &format!("`{}` is not a configured model", c.summary_model),
            Some("use a key of [models], or leave it empty for the session's own model"),
        ));
    }
}

fn issue(path: &str, message: &str, hint: Option<&str>) -> Issue {
    // Every issue should carry a hint; `None` is only for messages that already say what to do.
    Issue {
        path: path.to_owned(),
        line: None,
        message: message.to_owned(),
        hint: hint.map(str::to_owned),
    }
}

/// The longest duration any setting may hold: a day. Deadlines are `now + duration`, and one
/// past what an `Instant` holds would be a panic (`open_secs = 9223372036854775807`).
const MAX_DURATION: Duration = Duration::from_secs(86_400);

/// An issue for `path` when `value` (in `unit`s: 1 for seconds, 1000 for milliseconds) is over
/// [`MAX_DURATION`].
fn check_redis(r: &RedisConfig, issues: &mut Vec<Issue>) {
    if !r.url.is_empty() && !r.url.starts_with("redis://") {
        issues.push(issue(
            "redis.url",
            "must start with redis://",
            Some("for example \"redis://127.0.0.1:6379\"; leave it empty to stand alone"),
        ));
    }
    let safe = |c: char| c.is_ascii_alphanumeric() || "_-.:".contains(c);
    if r.prefix.is_empty() || !r.prefix.chars().all(safe) {
        issues.push(issue(
            "redis.prefix",
            "must be letters, digits and _ - . : only, and not empty",
            Some("the default is \"gatehouse\""),
        ));
    }
    check_duration("redis.timeout_ms", r.timeout_ms, 1000, issues);
    check_duration("redis.lease_secs", r.lease_secs, 1, issues);
    if r.timeout_ms == 0 || r.lease_secs == 0 {
        issues.push(issue(
            "redis",
            "timeout_ms and lease_secs must be greater than 0",
            Some("leave them out to use the defaults (250 and 900)"),
        ));
    }
}

fn check_duration(path: &str, value: u64, per_sec: u64, issues: &mut Vec<Issue>) {
    if value / per_sec.max(1) > MAX_DURATION.as_secs() {
        let unit = if per_sec == 1 {
            "seconds"
        } else {
            "milliseconds"
        };
        issues.push(issue(
            path,
            &format!(
                "must be at most {} {unit} (a day)",
                MAX_DURATION.as_secs() * per_sec
            ),
            Some("leave it out to use the default"),
        ));
    }
}

fn resolve_timeouts(
    path: &str,
    o: &TimeoutOverrides,
    base: Option<&Timeouts>,
    issues: &mut Vec<Issue>,
) -> Option<Timeouts> {
    let mut ok = true;
    let mut get = |name: &str, v: Option<f64>, fallback: Option<Duration>| -> Duration {
        match v {
            // A day at most: a deadline `now + timeout` must stay representable.
            Some(secs) => match Duration::try_from_secs_f64(secs) {
                Ok(d) if !d.is_zero() && d <= MAX_DURATION => d,
                _ => {
                    ok = false;
                    issues.push(issue(
                        &format!("{path}.{name}"),
                        "must be a positive number of seconds, at most 86400 (a day)",
                        Some("e.g. 10, or 0.5 for half a second"),
                    ));
                    Duration::ZERO
                }
            },
            None => fallback.unwrap_or(Duration::ZERO),
        }
    };
    let t = Timeouts {
        connect: get("connect", o.connect, base.map(|b| b.connect)),
        first_byte: get("first_byte", o.first_byte, base.map(|b| b.first_byte)),
        idle: get("idle", o.idle, base.map(|b| b.idle)),
        total: get("total", o.total, base.map(|b| b.total)),
    };
    ok.then_some(t)
}

/// Deep-merges `over` into `base`: tables merge key by key, anything else replaces.
fn merge(base: &mut Table, over: Table) {
    for (k, v) in over {
        match (base.get_mut(&k), v) {
            (Some(Value::Table(b)), Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// `GATEHOUSE_SERVER__PORT=9000` sets `server.port`. Values are read as TOML when they parse
/// (numbers, booleans, arrays), else taken as strings.
fn apply_env_overrides(root: &mut Table, env: &Env, issues: &mut Vec<Issue>) {
    for (name, raw) in &env.vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        if !rest.contains("__") {
            // GATEHOUSE_HOST, GATEHOUSE_PORT…: flags' variables, handled by the CLI.
            continue;
        }
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty)
            || !path.first().is_some_and(|p| SECTIONS.contains(&p.as_str()))
        {
            issues.push(Issue {
                path: name.clone(),
                line: None,
                message: "environment override names no known setting".into(),
                hint: Some(
                    "use GATEHOUSE_<SECTION>__<KEY>, e.g. GATEHOUSE_SERVER__PORT=9000".into(),
                ),
            });
            continue;
        }
        let value = toml::from_str::<Table>(&format!("v = {raw}"))
            .ok()
            .and_then(|mut t| t.remove("v"))
            .unwrap_or_else(|| Value::String(raw.clone()));
        set_path(root, &path, value);
    }
}

fn set_path(table: &mut Table, path: &[String], value: Value) {
    match path {
        [] => {}
        [last] => {
            table.insert(last.clone(), value);
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            if let Value::Table(t) = entry {
                set_path(t, rest, value);
            }
        }
    }
}

/// Expands `${VAR}` and `${VAR:-default}` in every string. An unset variable in a provider's
/// `api_key` removes the key (the provider loads, its requests name the variable); elsewhere it
/// is an issue. Returns, per provider, the variable its key comes from.
fn expand_vars(root: &mut Table, env: &Env, issues: &mut Vec<Issue>) -> BTreeMap<String, String> {
    let mut key_envs = BTreeMap::new();
    if let Some(Value::Table(providers)) = root.get_mut("providers") {
        for (pkey, pval) in providers.iter_mut() {
            let Value::Table(p) = pval else { continue };
            let Some(Value::String(raw)) = p.get("api_key") else {
                continue;
            };
            let vars = referenced_vars(raw);
            if let Some(first) = vars.first() {
                key_envs.insert(pkey.clone(), first.clone());
            }
            match expand(raw, env) {
                Ok(v) => {
                    p.insert("api_key".into(), Value::String(v));
                }
                Err(_) => {
                    p.remove("api_key");
                }
            }
        }
    }
    expand_value_tree(root, env, &mut Vec::new(), issues);
    key_envs
}

fn expand_value_tree(t: &mut Table, env: &Env, path: &mut Vec<String>, issues: &mut Vec<Issue>) {
    for (k, v) in t.iter_mut() {
        path.push(k.clone());
        expand_value(v, env, path, issues);
        path.pop();
    }
}

fn expand_value(v: &mut Value, env: &Env, path: &mut Vec<String>, issues: &mut Vec<Issue>) {
    match v {
        Value::String(s) if s.contains("${") => match expand(s, env) {
            Ok(x) => *s = x,
            Err(var) => issues.push(Issue {
                path: display_path(path),
                line: None,
                message: format!("environment variable `{var}` is not set"),
                hint: Some(format!("export {var}=… or write `${{{var}:-default}}`")),
            }),
        },
        Value::Table(t) => expand_value_tree(t, env, path, issues),
        Value::Array(a) => {
            for (i, item) in a.iter_mut().enumerate() {
                path.push(i.to_string());
                expand_value(item, env, path, issues);
                path.pop();
            }
        }
        _ => {}
    }
}

fn referenced_vars(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let inner = &after[..end];
        let name = inner.split(":-").next().unwrap_or(inner);
        out.push(name.to_owned());
        rest = &after[end + 1..];
    }
    out
}

/// Expands variables in `s`; `Err(name)` for the first unset variable without a default.
fn expand(s: &str, env: &Env) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        match (env.get(name).filter(|v| !v.is_empty()), default) {
            (Some(v), _) => out.push_str(v),
            (None, Some(d)) => out.push_str(d),
            (None, None) => return Err(name.to_owned()),
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// The built-in `[proxy.timeouts]`, resolved.
fn builtin_timeouts() -> Option<Timeouts> {
    let root: Table = toml::from_str(CATALOGUE_TOML).ok()?;
    let t: crate::schema::TimeoutsRaw = root
        .get("proxy")?
        .get("timeouts")?
        .clone()
        .try_into()
        .ok()?;
    let base = TimeoutOverrides {
        connect: Some(t.connect),
        first_byte: Some(t.first_byte),
        idle: Some(t.idle),
        total: Some(t.total),
    };
    resolve_timeouts("proxy.timeouts", &base, None, &mut Vec::new())
}

/// Each `[rate_limits.endpoints]` entry: a path pattern of the management API with a positive
/// count and a window the limiter can read.
fn check_endpoint_limits(r: &RateLimitsConfig, issues: &mut Vec<Issue>) {
    for (pattern, limit) in &r.endpoints {
        let path = format!("rate_limits.endpoints.\"{pattern}\"");
        let prefix = pattern.strip_suffix('*').unwrap_or(pattern);
        if !pattern.starts_with('/') || prefix.contains('*') {
            issues.push(issue(
                &path,
                "a pattern is a path (`/api/auth/login`) or a path prefix ending in `*` (`/api/*`)",
                None,
            ));
        } else if pattern.starts_with("/v1")
            || pattern.starts_with("/chat")
            || pattern.starts_with("/responses")
        {
            issues.push(issue(
                &path,
                "the proxy routes are limited per virtual key (`gatehouse keys create --rpm … --tpm …`), not here",
                None,
            ));
        }
        if limit.requests == 0 || crate::schema::parse_window(&limit.window).is_none() {
            issues.push(issue(
                &path,
                "needs requests > 0 and a window such as \"60s\", \"15m\", \"1h\" or \"1d\"",
                None,
            ));
        }
    }
}

fn section<T: DeserializeOwned>(root: &Table, name: &str, issues: &mut Vec<Issue>) -> Option<T> {
    match root.get(name) {
        Some(v) => typed(v.clone(), name, issues),
        None => {
            issues.push(issue(
                name,
                "section is missing",
                Some("this is a bug in the built-in defaults; please report it"),
            ));
            None
        }
    }
}

fn entries(root: &Table, name: &str, issues: &mut Vec<Issue>) -> Vec<(String, Value)> {
    match root.get(name) {
        Some(Value::Table(t)) => t.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        Some(_) => {
            issues.push(issue(
                name,
                "must be a table of named entries",
                Some("write entries as [section.\"key\"] tables"),
            ));
            Vec::new()
        }
        None => Vec::new(),
    }
}

/// Deserialises one value, turning a failure into an issue with the full key path.
fn typed<T: DeserializeOwned>(value: Value, base: &str, issues: &mut Vec<Issue>) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            let inner = e.path().to_string();
            let path = if inner == "." || inner.is_empty() {
                base.to_owned()
            } else {
                format!("{base}.{inner}")
            };
            let message = e.inner().message().to_owned();
            let hint = unknown_field_hint(&message).or_else(|| type_hint(&message));
            issues.push(Issue {
                path,
                line: None,
                message,
                hint,
            });
            None
        }
    }
}

/// serde says "unknown field `prot`, expected one of `host`, `port`"; suggest the closest.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (field, expected) = rest.split_once('`')?;
    let candidates: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some(suggest(field, candidates.into_iter()))
}

/// A hint for serde's other messages, so every issue says what to write instead.
fn type_hint(message: &str) -> Option<String> {
    let hint = if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.split('`').next())
    {
        format!("add `{field} = …` to this table")
    } else if message.contains("expected u") || message.contains("expected i") {
        "write a whole number without quotes, e.g. 8000".to_owned()
    } else if message.contains("expected f64") || message.contains("expected f32") {
        "write a number without quotes, e.g. 30 or 1.5".to_owned()
    } else if message.contains("expected a boolean") {
        "write true or false, without quotes".to_owned()
    } else if message.contains("expected a string") {
        "write the value in double quotes".to_owned()
    } else if message.contains("expected a sequence") {
        "write a list, e.g. [\"tool_use\"]".to_owned()
    } else if message.contains("expected a map") || message.contains("expected struct") {
        "this must be a table: [section] or { key = value }".to_owned()
    } else if message.starts_with("unknown variant") {
        "use one of the values listed".to_owned()
    } else {
        return None;
    };
    Some(hint)
}

fn suggest<'a>(word: &str, candidates: impl Iterator<Item = &'a str>) -> String {
    let all: Vec<&str> = candidates.collect();
    match all
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .min()
        .filter(|(d, c)| *d <= 3.max(c.len() / 3))
    {
        Some((_, best)) => format!("did you mean `{best}`?"),
        None if all.len() <= 8 => format!("expected one of: {}", all.join(", ")),
        None => format!(
            "expected one of: {}, …",
            all.iter().take(8).copied().collect::<Vec<_>>().join(", ")
        ),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    // One row of the Levenshtein table at a time: `prev[j]` is the distance between the first
    // i characters of `a` and the first j of `b`.
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = Vec::with_capacity(b.len() + 1);
        cur.push(i + 1);
        for (j, (diag, up)) in prev.iter().zip(prev.iter().skip(1)).enumerate() {
            let left = cur.last().copied().unwrap_or(0);
            let same = b.get(j).is_some_and(|cb| *cb == ca);
            cur.push((diag + usize::from(!same)).min(up + 1).min(left + 1));
        }
        prev = cur;
    }
    prev.last().copied().unwrap_or(0)
}

fn quote_key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_owned()
    } else {
        format!("\"{}\"", k.replace('"', "\\\""))
    }
}

fn display_path(p: &[String]) -> String {
    p.iter().map(|s| quote_key(s)).collect::<Vec<_>>().join(".")
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()
        .iter()
        .take(offset)
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Finds where a key path is written in the user's file, using the parser's spans.
struct LineIndex<'a> {
    text: &'a str,
    table: Option<toml::Spanned<toml::de::DeTable<'a>>>,
}

impl<'a> LineIndex<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            text,
            table: toml::de::DeTable::parse(text).ok(),
        }
    }

    fn line_of_path(&self, path: &str) -> Option<usize> {
        let table = self.table.as_ref()?;
        let segments = split_path(path);
        let mut current = table.get_ref();
        let mut best = None;
        for (i, seg) in segments.iter().enumerate() {
            let (key, value) = current.get_key_value(seg.as_str())?;
            best = Some(key.span().start);
            match value.get_ref() {
                toml::de::DeValue::Table(t) if i + 1 < segments.len() => current = t,
                _ => break,
            }
        }
        best.map(|o| line_of(self.text, o))
    }
}

fn split_path(path: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = path.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => quoted = !quoted,
            '\\' if quoted => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            '.' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().copied())
    }

    fn build_err(text: &str) -> Vec<Issue> {
        match build(Some(text), &Env::default()) {
            Ok(_) => panic!("expected issues"),
            Err(i) => i,
        }
    }

    #[test]
    fn builtin_catalogue_loads_with_no_file_and_no_keys() {
        let c = load(None, &Env::default(), &Overrides::default()).unwrap();
        assert_eq!(c.server.host, "127.0.0.1");
        assert_eq!(c.server.port, 8000);
        assert_eq!(c.providers.len(), 11);
        assert_eq!(
            c.models
                .keys()
                .filter(|k| !k.starts_with("openai/")
                    && !k.starts_with("ollama/")
                    && !k.starts_with("anthropic/"))
                .count(),
            20
        );
        assert_eq!(
            c.providers["anthropic"].kind,
            crate::ProviderType::Anthropic
        );
        let mistral = &c.providers["mistral"];
        assert!(mistral.key_missing());
        assert_eq!(mistral.api_key_env.as_deref(), Some("MISTRAL_API_KEY"));
        assert!(!c.providers["ollama"].key_missing());
        assert_eq!(
            c.providers["gemini"].timeouts.total,
            Duration::from_secs(180)
        );
        assert_eq!(c.providers["groq"].timeouts.idle, Duration::from_secs(60));
        assert_eq!(
            c.providers["mistral"].timeouts.total,
            Duration::from_secs(120)
        );
        assert_eq!(
            c.providers["mistral"].timeouts.connect,
            Duration::from_secs(10)
        );
        assert_eq!(c.models["openai/gpt-4o"].encoding, Encoding::O200k);
        assert_eq!(
            c.models["mistral/codestral-2501"].encoding,
            Encoding::Cl100k
        );
        assert_eq!(
            c.models["siliconflow/deepseek-v3.2"].max_context_size,
            164_000
        );
    }

    #[test]
    fn durations_past_a_day_are_refused_not_a_panic_later() {
        let issues = build_err(
            "[proxy.circuit_breaker]\nopen_secs = 9223372036854775807\n[dashboard]\nping_secs = 9223372036854775807\n[proxy.timeouts]\nfirst_byte = 1e300\n[proxy]\nretry_backoff_ms = 9223372036854775807\n[compaction.auto]\ncooldown_secs = 9223372036854775807\n[storage]\nmax_commit_delay_ms = 9223372036854775807\n",
        );
        for path in [
            "proxy.circuit_breaker.open_secs",
            "dashboard.ping_secs",
            "proxy.timeouts.first_byte",
            "proxy.retry_backoff_ms",
            "compaction.auto.cooldown_secs",
            "storage.max_commit_delay_ms",
        ] {
            assert!(
                issues
                    .iter()
                    .any(|i| i.path == path && i.message.contains("a day")),
                "{path}: {issues:?}"
            );
        }
    }

    #[test]
    fn responses_api_is_for_openai_providers_and_on_for_openai_itself() {
        let issues = build_err(
            "[providers.a]\ntype = \"anthropic\"\nbase_url = \"https://api.anthropic.com/v1\"\nresponses_api = true\n",
        );
        assert!(
            issues
                .iter()
                .any(|i| i.path == "providers.a.responses_api" && i.message.contains("`anthropic`")),
            "{issues:?}"
        );
        let c = load(None, &Env::default(), &Overrides::default()).unwrap();
        assert!(c.providers["openai"].responses_api);
        assert!(!c.providers["groq"].responses_api);
    }

    #[test]
    fn http2_connections_are_bounded_and_prior_knowledge_is_for_plain_http() {
        let issues = build_err(
            "[providers.a]\ntype = \"openai\"\nbase_url = \"https://api.example.com/v1\"\nhttp2 = true\nconnections = 0\n",
        );
        for path in ["providers.a.http2", "providers.a.connections"] {
            assert!(issues.iter().any(|i| i.path == path), "{path}: {issues:?}");
        }
        let c = load(None, &Env::default(), &Overrides::default()).unwrap();
        assert_eq!(c.providers["openai"].connections, 4);
        assert!(!c.providers["openai"].http2);
    }

    #[test]
    fn a_provider_url_is_shown_without_its_credentials() {
        assert_eq!(
            crate::shown_url("https://user:pa55@api.example.com/v1?key=secret#x"),
            "https://api.example.com/v1"
        );
        assert_eq!(
            crate::shown_url("http://127.0.0.1:9/v1"),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(crate::shown_url("//user:pw@host/v1?k=s"), "host/v1");
        let c = build(
            Some("[providers.x]\ntype = \"openai\"\nbase_url = \"https://k3y:s3cret@api.example.com/v1?api_key=s3cret\"\n"),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(c.providers["x"].shown_url, "https://api.example.com/v1");
        assert!(
            c.providers["x"].base_url.contains("s3cret"),
            "still used to send"
        );
    }

    #[test]
    fn keys_come_from_the_environment_and_never_print() {
        let c = build(None, &env(&[("MISTRAL_API_KEY", "sk-mistral-secret")])).unwrap();
        let p = &c.providers["mistral"];
        assert!(!p.key_missing());
        assert_eq!(p.api_key.as_ref().unwrap().expose(), "sk-mistral-secret");
        assert!(!format!("{c:?}").contains("sk-mistral-secret"));
    }

    #[test]
    fn precedence_file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "[server]\nport = 9001\nhost = \"0.0.0.0\"\n").unwrap();
        let c = load(Some(&f), &Env::default(), &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 9001);
        assert_eq!(
            c.server.shutdown_grace_secs, 30.0,
            "defaults survive a partial file"
        );
        let e = env(&[
            ("GATEHOUSE_SERVER__PORT", "9002"),
            ("GATEHOUSE_PROXY__RETRIES", "0"),
        ]);
        let c = load(Some(&f), &e, &Overrides::default()).unwrap();
        assert_eq!(c.server.port, 9002);
        assert_eq!(c.proxy.retries, 0);
        let o = Overrides {
            port: Some(9003),
            ..Default::default()
        };
        assert_eq!(load(Some(&f), &e, &o).unwrap().server.port, 9003);
    }

    #[test]
    fn every_mistake_is_reported_with_path_line_and_hint() {
        let text = r#"
[server]
prot = 8000

[providers.local]
type = "openai"
base_url = "ftp://nowhere"

[providers.weird]
type = "martian"
base_url = "http://localhost:1"

[models."local/a"]
provider = "locl"
model = "a"
max_context_size = 0

[models."local/b"]
provider = "local"
model = "b"
max_context_size = "big"
"#;
        let issues = build_err(text);
        let find = |p: &str| {
            issues
                .iter()
                .find(|i| i.path == p)
                .unwrap_or_else(|| panic!("no issue for {p} in {issues:#?}"))
        };
        let prot = find("server.prot");
        assert!(prot.message.contains("unknown field `prot`"));
        assert_eq!(prot.hint.as_deref(), Some("did you mean `port`?"));
        assert_eq!(prot.line, Some(3));
        assert_eq!(find("providers.local.base_url").line, Some(7));
        assert!(find("providers.weird.type").message.contains("martian"));
        let p = find("models.\"local/a\".provider");
        assert_eq!(p.hint.as_deref(), Some("did you mean `local`?"));
        assert_eq!(p.line, Some(14));
        assert_eq!(find("models.\"local/a\".max_context_size").line, Some(16));
        assert_eq!(find("models.\"local/b\".max_context_size").line, Some(21));
        assert!(issues.len() >= 6);
        assert!(
            issues.iter().all(|i| i.hint.is_some()),
            "every issue carries a hint: {issues:#?}"
        );
        assert_eq!(
            find("models.\"local/b\".max_context_size").hint.as_deref(),
            Some("write a whole number without quotes, e.g. 8000")
        );
    }

    #[test]
    fn builtin_prices_are_overridden_and_fallbacks_checked() {
        let c = build(None, &Env::default()).unwrap();
        let p = c.models["anthropic/claude-sonnet-4-5"].pricing.unwrap();
        assert_eq!((p.input, p.output, p.cached_input), (3.0, 15.0, Some(0.3)));
        let c = build(
            Some("[models.\"anthropic/claude-sonnet-4-5\"]\npricing = { input = 1.5, output = 7.5 }\nfallbacks = [\"anthropic/claude-haiku-4-5\"]\n"),
            &Env::default(),
        )
        .unwrap();
        let m = &c.models["anthropic/claude-sonnet-4-5"];
        assert_eq!(m.pricing.unwrap().input, 1.5);
        assert_eq!(
            m.model, "claude-sonnet-4-5",
            "the rest of the entry is the catalogue's"
        );
        assert_eq!(m.fallbacks, ["anthropic/claude-haiku-4-5"]);
        let issues = build_err(
            "[models.\"groq/qwen3-32b\"]\nfallbacks = [\"groq/qwen3-32b\", \"groq/qwen3-23b\"]\n",
        );
        assert_eq!(issues.len(), 2, "{issues:?}");
        assert!(issues[0].message.contains("itself"), "{issues:?}");
        assert!(
            issues[1]
                .hint
                .as_deref()
                .unwrap_or("")
                .contains("groq/qwen3-32b"),
            "{issues:?}"
        );
    }

    #[test]
    fn syntax_errors_give_a_line() {
        let issues = build_err("[server]\nport = = 3\n");
        assert_eq!(issues.len(), 1);
        assert_eq!(issues[0].line, Some(2));
    }

    #[test]
    fn unset_variables_outside_keys_are_issues() {
        let issues = build_err("[providers.x]\ntype = \"openai\"\nbase_url = \"${X_URL}\"\n");
        assert!(issues[0].message.contains("X_URL"), "{issues:?}");
        let ok = build(
            Some("[providers.x]\ntype = \"openai\"\nbase_url = \"${X_URL:-http://127.0.0.1:9}\"\n"),
            &Env::default(),
        )
        .unwrap();
        assert_eq!(ok.providers["x"].base_url, "http://127.0.0.1:9");
    }

    #[test]
    fn unknown_sections_and_env_overrides_are_reported() {
        let issues = build_err("[servr]\nport = 1\n");
        assert_eq!(issues[0].hint.as_deref(), Some("did you mean `server`?"));
        let issues = match build(None, &env(&[("GATEHOUSE_NOPE__X", "1")])) {
            Err(i) => i,
            Ok(_) => panic!("expected an issue"),
        };
        assert_eq!(issues[0].path, "GATEHOUSE_NOPE__X");
    }

    #[test]
    fn endpoint_limits_name_management_paths_with_readable_windows() {
        let c = build(None, &Env::default()).unwrap();
        assert_eq!(c.rate_limits.endpoints["/api/auth/login"].requests, 10);
        let issues = build_err(
            "[rate_limits.endpoints]\n\"/v1/*\" = { requests = 5, window = \"1m\" }\n\"/api/x\" = { requests = 0, window = \"1m\" }\n\"/api/y\" = { requests = 1, window = \"soon\" }\n\"api/*/z\" = { requests = 1, window = \"1m\" }\n",
        );
        let text: Vec<String> = issues
            .iter()
            .map(|i| format!("{} {}", i.path, i.message))
            .collect();
        assert_eq!(issues.len(), 4, "{text:?}");
        assert!(
            text.iter()
                .any(|t| t.contains("/v1/*") && t.contains("per virtual key")),
            "{text:?}"
        );
        assert!(
            text.iter()
                .any(|t| t.contains("api/*/z") && t.contains("prefix")),
            "{text:?}"
        );
        assert_eq!(crate::schema::parse_window("1h"), Some(3600));
        assert_eq!(crate::schema::parse_window("90"), Some(90));
        assert_eq!(crate::schema::parse_window("8d"), None);
    }

    #[test]
    fn catalogue_text_is_what_init_writes() {
        // `init` writes CATALOGUE_TOML; loading it as a file must be a no-op.
        let from_file = build(Some(CATALOGUE_TOML), &Env::default()).unwrap();
        let builtin = build(None, &Env::default()).unwrap();
        assert_eq!(from_file.models.len(), builtin.models.len());
    }
}

#[cfg(test)]
mod doc_tests {
    use super::*;

    /// docs/configuration.md lists the catalogue; it must not drift from the code.
    #[test]
    fn configuration_reference_lists_every_builtin_model_and_provider() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/configuration.md"
        ))
        .unwrap();
        let c = build(None, &Env::default()).unwrap();
        for (key, m) in &c.models {
            assert!(
                doc.contains(&format!("| `{key}` | `{}` |", m.model)),
                "docs/configuration.md is missing model {key}"
            );
        }
        for key in c.providers.keys() {
            assert!(
                doc.contains(&format!("| `{key}` |")),
                "docs/configuration.md is missing provider {key}"
            );
        }
    }
}
