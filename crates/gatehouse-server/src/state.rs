//! Everything a handler may touch, built once at start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::Instant;

use gatehouse_config::Config;
use gatehouse_core::TokenCounter;
use gatehouse_proxy::{Router, Upstream};
use gatehouse_services::Sessions;
use gatehouse_store::{Store, WriterHandle};

/// Shared state. Cloning is an `Arc` bump.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub listen: SocketAddr,
    pub router: Router,
    pub upstream: Upstream,
    pub counter: TokenCounter,
    pub sessions: Sessions,
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub started: Instant,
    /// Requests being proxied right now (streams count until their last byte).
    pub in_flight: AtomicU64,
    /// Set when shutdown begins: readiness turns false so load balancers stop sending.
    pub shutting_down: AtomicBool,
}

impl std::ops::Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("listen", &self.listen)
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

/// Counts a request in [`Inner::in_flight`] for as long as it lives.
#[derive(Debug)]
pub struct InFlight(AppState);

impl InFlight {
    pub fn new(st: &AppState) -> Self {
        st.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Self(st.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}
