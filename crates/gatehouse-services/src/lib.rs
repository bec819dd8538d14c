//! Services the request path and the API share: live session state, the event bus, the context
//! gauge and its alerts, the log watcher, and the export formats.
//!
//! Architecture invariant: services keep their hot state in memory behind short synchronous
//! locks (never held across an `.await`) and persist through the store's writer queue.
// Input (requests, provider answers, config, client logs) reaches this crate: an index out of
// range must be an error, never a panic.
#![deny(clippy::indexing_slicing)]

pub mod endpoints;
pub mod events;
pub mod export;
pub mod gauge;
pub mod keys;
pub mod logwatch;
pub mod responses;
pub mod retention;
pub mod secrets;
pub mod sessions;
pub mod shared;
pub mod users;

pub use events::{Event, EventBus, LocalBus};
pub use gauge::Gauges;
pub use keys::Keys;
pub use sessions::{Resolved, SessionError, Sessions};
