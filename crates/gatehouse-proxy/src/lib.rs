//! The proxy layer: choosing the upstream for a request, rewriting what must change, sending it
//! with retries and timeouts through pooled clients, and reading streams on the side.
//!
//! Architecture invariant: this crate knows nothing of storage or HTTP routes. It returns what
//! upstream said (a complete body or a live stream) plus timing, and the server decides what to
//! record. When client and provider speak the same format, bodies are forwarded as the
//! client's bytes with splices only (model name, `stream_options`); otherwise [`translate`]
//! converts them through one internal representation.
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

pub mod breaker;
mod client;
pub mod headers;
pub mod passthrough;
pub mod ratelimit;
pub mod rewrite;
pub mod route;
pub mod select;
pub mod sse;
pub mod tap;
pub mod translate;
pub mod upstream;

pub use client::{ClientError, OutboundProxy};
pub use route::{Route, Router};
pub use tap::{CompletionSummary, StreamTap};
pub use upstream::{Failure, Outcome, Upstream, UpstreamStream};

/// The header that marks a request as having passed through a Gatehouse.
pub const HOP_HEADER: &str = "x-gatehouse-hop";
