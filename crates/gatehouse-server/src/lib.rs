//! The HTTP surface of Gatehouse: the OpenAI-compatible proxy routes, the management API and the
//! health endpoints, plus [`run`], the one entry point that serves them until shutdown.
//!
//! Handlers are thin: they parse, call the proxy and services layers, and turn [`ApiError`]s into
//! responses in exactly one place ([`error`]).
//!
//! [`ApiError`]: gatehouse_core::ApiError
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

pub mod audit;
mod client;
pub mod compaction;
mod dashboard;
pub mod error;
pub mod guard;
pub mod limits;
mod listen;
pub mod login;
pub mod metrics;
pub mod origin;
pub mod routes;
pub mod serve;
pub mod state;
mod stream;
mod ws;

pub use serve::{RunOptions, ServeError, run, run_with, store_url};
pub use state::AppState;
