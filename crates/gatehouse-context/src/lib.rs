//! The features layer (DESIGN.md §7): what the gateway changes in a prompt before it leaves
//! the machine. Secret redaction, masking, compaction, memory.
//!
//! Depends on core only; nothing here does I/O.
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

pub mod compact;
pub mod memory;
pub mod observe;
pub mod recall;
pub mod redact;
pub mod repair;
pub mod sanitize;

pub use redact::{Finding, Redactor, SecretKind};
