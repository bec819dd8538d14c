//! The features layer (DESIGN.md §7): what the gateway changes in a prompt before it leaves
//! the machine. Today: secret redaction. Masking, compaction and memory join here.
//!
//! Depends on core only; nothing here does I/O.

pub mod memory;
pub mod observe;
pub mod recall;
pub mod redact;
pub mod sanitize;

pub use redact::{Finding, Redactor, SecretKind};
