//! Services the request path and the API share: today, live session state.
//!
//! Architecture invariant: services keep their hot state in memory behind short synchronous
//! locks (never held across an `.await`) and persist through the store's writer queue.

pub mod sessions;

pub use sessions::{Resolved, SessionError, Sessions};
