//! Integration tests: a real Gatehouse on port 0 with a temporary database, in front of a real
//! mock provider on its own socket. Only the provider is fake.
#![expect(
    clippy::unwrap_used,
    reason = "test helpers fail the test where they fail"
)]

mod support;

mod bounds;
mod compaction;
mod durability;
mod errors;
mod export;
mod faults;
mod gemini;
mod guard;
mod http2;
mod keys;
mod limits;
mod live;
mod login;
mod memory;
mod metrics;
mod outbound;
mod passthrough;
mod privacy;
mod provider_keys;
mod proxy;
mod redaction;
mod repair;
mod responses;
mod responses_through;
mod routing;
mod sanitizer;
mod sessions;
mod shared;
mod shutdown;
mod surface;
mod teams;
mod tls;
mod translate;
