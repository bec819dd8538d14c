//! Everything a handler may touch, built once at start.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use gatehouse_config::Config;
use gatehouse_core::record::RequestRecord;
use gatehouse_core::{ApiError, TokenCounter};
use gatehouse_proxy::{Router, Upstream};
use gatehouse_services::events::{Event, EventBus, emit};
use gatehouse_services::gauge::{AlertChange, GaugeView};
use gatehouse_services::logwatch::WatchStatus;
use gatehouse_services::{Gauges, Sessions};
use gatehouse_store::{Store, WriteOp, WriterHandle};
use tokio_util::sync::CancellationToken;

/// Shared state. Cloning is an `Arc` bump.
#[derive(Clone, Debug)]
pub struct AppState(pub Arc<Inner>);

pub struct Inner {
    pub config: Config,
    pub listen: SocketAddr,
    /// The Host and CORS policy (`guard.rs`), shared with the origin check.
    pub guard: Arc<crate::guard::Policy>,
    pub router: Router,
    pub upstream: Upstream,
    pub counter: TokenCounter,
    pub redactor: &'static gatehouse_context::Redactor,
    pub memory: &'static gatehouse_context::memory::Detector,
    pub sanitizer: SanitizerState,
    /// Compaction points, settings and trigger state per session.
    pub compaction: crate::compaction::CompactionState,
    /// The memory store's index; changes are persisted through the writer.
    pub recall: std::sync::Mutex<gatehouse_context::recall::Recall>,
    pub sessions: Sessions,
    /// Virtual keys (`[auth] mode = "keys"`), checked in memory on the proxy path.
    pub keys: gatehouse_services::Keys,
    /// Limits, budgets and key changes shared with other instances (`[redis]`).
    pub shared: Option<Arc<gatehouse_services::shared::Shared>>,
    /// The event bus's Redis bridge (the same bus as `bus`), for its figures.
    pub redis_bus: Option<Arc<gatehouse_services::shared::bus::RedisBus>>,
    /// Woken when the keys must be read back from the database at once.
    pub resync: tokio::sync::Notify,
    /// Admin logins: the token signer, logouts, the limiter and lockout.
    pub login: crate::login::LoginState,
    /// The master key that seals provider keys set through the API (`GATEHOUSE_MASTER_KEY`).
    pub master_key: Option<gatehouse_services::secrets::MasterKey>,
    /// Providers whose key was set through the API, with its last four characters.
    pub stored_keys: StoredKeys,
    /// `[rate_limits.endpoints]`, for the management routes.
    pub endpoint_limits: gatehouse_services::endpoints::EndpointLimits,
    /// Responses API responses kept for `previous_response_id`.
    pub responses: gatehouse_services::responses::Responses,
    pub store: Arc<dyn Store>,
    pub writer: WriterHandle,
    pub bus: Arc<dyn EventBus>,
    pub gauges: Gauges,
    /// Set once the log watcher runs.
    pub log_watch: OnceLock<WatchStatus>,
    /// Cancelled when shutdown begins; long-lived connections (WebSockets) end on it.
    pub shutdown: CancellationToken,
    /// Cancelled when shutdown's grace period is over: requests still running are cut (their
    /// rows say `shutdown`) before the writer closes.
    pub cut: CancellationToken,
    /// When the pruner last ran, and what it did.
    pub retention: std::sync::Mutex<Option<(i64, gatehouse_services::retention::Pruned)>>,
    /// Streamed answers in flight (`server.max_streams`).
    pub streams_open: AtomicU64,
    /// Proxy requests refused before they had a row, by error code.
    pub refusals: Refusals,
    /// Client connections: open, refused past the bounds (`listen.rs`).
    pub conns: Arc<crate::listen::ConnStats>,
    pub ws: WsStats,
    /// Models served by the built-in demo provider (`serve --demo`) are labelled as such.
    pub demo: bool,
    pub started: Instant,
    /// Counters and histograms for `GET /metrics`.
    pub metrics: crate::metrics::Metrics,
    /// Requests being proxied right now, from the moment they have a row in the making until
    /// that row is queued (streams count until their last byte).
    pub in_flight: AtomicU64,
    /// Set when shutdown begins: readiness turns false so load balancers stop sending.
    pub shutting_down: AtomicBool,
}

/// The sanitizer's live switch and figures since start.
#[derive(Debug)]
pub struct SanitizerState {
    pub enabled: AtomicBool,
    /// Masked messages across requests (a message masked on five turns counts five times).
    pub masked: AtomicU64,
    pub tokens_saved: AtomicU64,
    /// References already handed to the writer, so a long conversation stores its originals
    /// once, not once per turn.
    pub stored: quick_cache::sync::Cache<String, ()>,
}

impl SanitizerState {
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled: AtomicBool::new(enabled),
            masked: AtomicU64::new(0),
            tokens_saved: AtomicU64::new(0),
            stored: quick_cache::sync::Cache::new(100_000),
        }
    }
}

/// Proxy requests refused before they had a row (bad body, unknown model, over a bound…), by
/// error code: what `/health` shows of a misbehaving client.
#[derive(Debug, Default)]
pub struct Refusals(std::sync::Mutex<std::collections::BTreeMap<&'static str, u64>>);

impl Refusals {
    /// Counts `e` and gives it back.
    pub fn count(&self, e: ApiError) -> ApiError {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(e.kind.code()).or_insert(0) += 1;
        e
    }

    /// Each code and its count, in code order.
    pub fn counts(&self) -> Vec<(&'static str, u64)> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter().map(|(k, v)| (*k, *v)).collect()
    }

    pub fn view(&self) -> serde_json::Value {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        serde_json::json!({
            "total": m.values().sum::<u64>(),
            "by_code": &*m,
        })
    }
}

/// WebSocket figures for `/health`.
#[derive(Debug, Default)]
pub struct WsStats {
    pub clients: AtomicU64,
    pub connected_total: AtomicU64,
    /// Times a client fell behind the event ring and was resynchronised.
    pub resyncs: AtomicU64,
}

impl AppState {
    /// What a finished request means for the live view (gauge, alerts, events); returns the
    /// row to hand to the writer.
    pub(crate) fn request_finished(&self, record: RequestRecord) -> WriteOp {
        if self.config.metrics.enabled {
            self.metrics.observe(&record);
        }
        // A side request's or the gateway's own prompt is not the conversation's context.
        let gauge = if (200..300).contains(&record.status)
            && record.error_type.is_none()
            && record.purpose.is_none()
        {
            let tokens = record.effective_total_tokens();
            let (view, change) = self.gauges.on_proxy(
                &record.session_id,
                tokens,
                record.max_context,
                Instant::now(),
            );
            if let Some(c) = change {
                self.publish_alert(&view, c);
            }
            Some(view)
        } else {
            self.gauges.view(&record.session_id)
        };
        let bus = &*self.bus;
        if record.stream
            && record.status < 300
            && let (Some(code), Some(message)) = (&record.error_type, &record.error_message)
        {
            emit(bus, || Event::StreamingError {
                request_id: record.id.clone(),
                session_id: record.session_id.clone(),
                model: record.model_key.clone(),
                provider: record.provider.clone(),
                code: code.clone(),
                message: message.clone(),
            });
        }
        emit(bus, || Event::Metric {
            request: Box::new(record.clone()),
            gauge,
        });
        WriteOp::InsertRequest(Box::new(record))
    }

    pub(crate) fn publish_alert(&self, view: &GaugeView, change: AlertChange) {
        emit(&*self.bus, || {
            let message = match change.level {
                Some(level) => format!(
                    "context at {:.1} % of the {}-token window ({} tokens): {} threshold {} % crossed",
                    view.pct,
                    view.max_context,
                    view.tokens,
                    level.name(),
                    level.threshold()
                ),
                None => format!("context back to {:.1} %", view.pct),
            };
            Event::Alert {
                session_id: view.session_id.clone(),
                level: change.level,
                previous: change.previous,
                color: change.level.map(|l| l.color()),
                pct: view.pct,
                tokens: view.tokens,
                max_context: view.max_context,
                message,
            }
        });
    }
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

    pub fn state(&self) -> &AppState {
        &self.0
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0
            .in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Providers with a key stored through the API: their last four characters.
#[derive(Debug, Default)]
pub struct StoredKeys(std::sync::Mutex<std::collections::BTreeMap<String, String>>);

impl StoredKeys {
    pub fn set(&self, provider: &str, last4: Option<String>) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match last4 {
            Some(l) => {
                m.insert(provider.to_owned(), l);
            }
            None => {
                m.remove(provider);
            }
        }
    }

    pub fn contains(&self, provider: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(provider)
    }

    pub fn last4(&self, provider: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(provider)
            .cloned()
    }
}
