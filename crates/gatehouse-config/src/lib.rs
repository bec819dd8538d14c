//! Gatehouse configuration: the `config.toml` schema, the built-in catalogue, `${VAR}` expansion,
//! `GATEHOUSE_…` environment overrides, command-line overrides and validation.
//!
//! Loading is one pipeline: built-in catalogue < file < environment < flags, then `${VAR}`
//! expansion, then typed deserialisation section by section so that every mistake is reported
//! (with its key path, its line and a hint) rather than only the first.
//!
//! Architecture invariant: the process environment is read only by the binary, which hands a
//! snapshot ([`Env`]) in; nothing here calls `std::env`, so tests never mutate global state.
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

mod compat;
mod load;
mod schema;
mod secret;

pub use compat::SeedKey;
pub use load::{
    CATALOGUE_TOML, ConfigError, Env, Issue, Overrides, check_file, load, load_text, seed_keys_of,
};
pub use schema::{
    AuthConfig, AuthMode, AutoRoute, AutoWeights, Cidr, CircuitBreaker, CompactionAuto,
    CompactionConfig, CompactionStrategy, Config, DashboardConfig, Deployment, EndpointLimit,
    HeavyDuty, LogWatcherConfig, MetricsConfig, ModelConfig, OnError, PassthroughConfig,
    ProviderConfig, ProviderType, ProxyConfig, RateLimitsConfig, RedactionConfig, RedactionMode,
    RedisConfig, RetentionConfig, SanitizerConfig, ServerConfig, SessionsConfig, StorageConfig,
    Timeouts, TlsConfig, WhenNone, parse_window, shown_url,
};
pub use secret::Secret;
