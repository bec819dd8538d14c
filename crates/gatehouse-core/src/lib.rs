//! The foundation every other Gatehouse crate stands on: domain types, the error table with its
//! HTTP mapping, the borrowed view of a chat request, usage figures and exact token counting.
//!
//! Architecture invariant: `gatehouse-core` does no I/O and depends on no other Gatehouse crate.
//! Everything here is plain data and pure functions, so it can be tested and fuzzed in isolation.
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

pub mod error;
pub mod ids;
pub mod json;
pub mod record;
pub mod request;
pub mod time;
pub mod tokens;
pub mod usage;

pub use error::{ApiError, ErrorKind, Fault};
pub use ids::{ModelKey, ProviderKey, RequestId, SessionId};
pub use request::{ChatRequestView, RequestParseError};
pub use tokens::{Encoding, PromptCount, TokenCounter};
pub use usage::{Pricing, Usage};
