//! Prometheus metrics, `GET /metrics` in the text format.
//!
//! Counters and histograms are atomics, moved as each row is finished
//! ([`Metrics::observe`], from `AppState::request_finished`: every accepted request, whatever
//! became of it) and as each HTTP answer leaves ([`track`], a route layer). Gauges (streams,
//! WebSocket clients, the writer's queue, breakers, key spend) are read from the state when
//! scraped. The request path takes a read lock and a few atomic adds; a write lock only for a
//! label set never seen before, and label sets are bounded (`metrics.max_series`). No prompt,
//! key or session name is ever a label: models and providers are the config's keys, keys
//! appear by id. `[metrics] enabled = false` counts nothing and answers 404.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_core::record::RequestRecord;

use crate::state::AppState;

/// Request and first-byte durations, in microseconds (`le` is shown in seconds).
const DURATION_US: [u64; 15] = [
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
];

/// The gateway's own time per request, in microseconds.
const OVERHEAD_US: [u64; 12] = [
    10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 50_000, 250_000,
];

/// Status classes, in label order.
const CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Error codes a row can carry are a closed set in practice; past this many, `other`.
const MAX_CODES: usize = 128;

fn class(status: u16) -> usize {
    usize::from(status / 100).clamp(2, 5) - 2
}

/// A histogram of fixed buckets; each count is its own bucket's (cumulated when rendered).
struct Histogram<const N: usize> {
    bounds: &'static [u64; N],
    counts: [AtomicU64; N],
    /// Past the last bound.
    over: AtomicU64,
    sum_us: AtomicU64,
}

impl<const N: usize> Histogram<N> {
    fn new(bounds: &'static [u64; N]) -> Self {
        Self {
            bounds,
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            over: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
        }
    }

    fn observe(&self, us: u64) {
        let bucket = self
            .bounds
            .iter()
            .position(|&b| us <= b)
            .and_then(|i| self.counts.get(i))
            .unwrap_or(&self.over);
        bucket.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    /// `name_bucket{labels,le=…}`, `name_sum`, `name_count`.
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut total = 0;
        for (b, c) in self.bounds.iter().zip(&self.counts) {
            total += c.load(Ordering::Relaxed);
            let le = *b as f64 / 1e6;
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {total}");
        }
        total += self.over.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {total}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {sum}");
        let _ = writeln!(out, "{name}_count{braces} {total}");
    }
}

/// What the rows of one model at one provider add up to.
struct ModelSeries {
    requests: [AtomicU64; 4],
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    cached_tokens: AtomicU64,
    /// US dollars in nanodollars: integers add up exactly.
    cost_nanos: AtomicU64,
    duration: Histogram<15>,
    ttfb: Histogram<15>,
}

impl ModelSeries {
    fn new() -> Self {
        Self {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            prompt_tokens: AtomicU64::new(0),
            completion_tokens: AtomicU64::new(0),
            cached_tokens: AtomicU64::new(0),
            cost_nanos: AtomicU64::new(0),
            duration: Histogram::new(&DURATION_US),
            ttfb: Histogram::new(&DURATION_US),
        }
    }
}

/// The HTTP answers of one route.
struct RouteSeries {
    responses: [AtomicU64; 4],
    /// To the response head (a stream's body can last minutes).
    duration: Histogram<15>,
}

type ByModel = HashMap<String, HashMap<String, Arc<ModelSeries>>>;

/// The gateway's counters and histograms.
pub struct Metrics {
    max_series: usize,
    /// model key → provider key → its series.
    models: RwLock<ByModel>,
    series: AtomicUsize,
    /// Where label sets past `max_series` are counted.
    other: Arc<ModelSeries>,
    overhead: Histogram<12>,
    /// Rows with an error, by code.
    errors: RwLock<HashMap<String, Arc<AtomicU64>>>,
    errors_other: AtomicU64,
    /// Matched route pattern → its answers.
    routes: RwLock<HashMap<String, Arc<RouteSeries>>>,
}

impl Metrics {
    pub fn new(max_series: usize) -> Self {
        Self {
            max_series,
            models: RwLock::default(),
            series: AtomicUsize::new(0),
            other: Arc::new(ModelSeries::new()),
            overhead: Histogram::new(&OVERHEAD_US),
            errors: RwLock::default(),
            errors_other: AtomicU64::new(0),
            routes: RwLock::default(),
        }
    }

    fn series(&self, model: &str, provider: &str) -> Arc<ModelSeries> {
        let found = self
            .models
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .and_then(|m| m.get(provider))
            .cloned();
        if let Some(s) = found {
            return s;
        }
        let mut w = self.models.write().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = w.get(model).and_then(|m| m.get(provider)) {
            return s.clone();
        }
        if self.series.load(Ordering::Relaxed) >= self.max_series {
            return self.other.clone();
        }
        self.series.fetch_add(1, Ordering::Relaxed);
        let s = Arc::new(ModelSeries::new());
        w.entry(model.to_owned())
            .or_default()
            .insert(provider.to_owned(), s.clone());
        s
    }

    /// A finished row: every accepted request, answered or not.
    pub fn observe(&self, r: &RequestRecord) {
        // A request refused before routing names whatever model the client wrote: never a
        // label, or anyone could fill the series with made-up names.
        let s = if r.provider.is_empty() {
            self.series("unrouted", "none")
        } else {
            self.series(&r.model_key, &r.provider)
        };
        if let Some(c) = s.requests.get(class(r.status)) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        // What was billed: the provider's figures (or the exact count) for answered requests,
        // what the provider reported for the others.
        let (prompt, completion) = if (200..300).contains(&r.status) {
            (r.effective_prompt_tokens(), r.effective_completion_tokens())
        } else {
            (
                r.prompt_tokens.unwrap_or(0),
                r.completion_tokens.unwrap_or(0),
            )
        };
        s.prompt_tokens.fetch_add(prompt, Ordering::Relaxed);
        s.completion_tokens.fetch_add(completion, Ordering::Relaxed);
        s.cached_tokens
            .fetch_add(r.cached_tokens.unwrap_or(0), Ordering::Relaxed);
        if let Some(cost) = r.cost_usd.filter(|c| c.is_finite() && *c > 0.0) {
            s.cost_nanos
                .fetch_add((cost * 1e9).round() as u64, Ordering::Relaxed);
        }
        s.duration.observe(r.latency_ms.saturating_mul(1000));
        if let Some(t) = r.ttfb_ms {
            s.ttfb.observe(t.saturating_mul(1000));
        }
        self.overhead.observe(r.overhead_us);
        if let Some(code) = &r.error_type {
            self.error(code);
        }
    }

    fn error(&self, code: &str) {
        let found = self
            .errors
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(code)
            .cloned();
        let counter = match found {
            Some(c) => c,
            None => {
                let mut w = self.errors.write().unwrap_or_else(|p| p.into_inner());
                if w.len() >= MAX_CODES && !w.contains_key(code) {
                    self.errors_other.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                w.entry(code.to_owned()).or_default().clone()
            }
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn answered(&self, route: &str, status: StatusCode, since: Instant) {
        let found = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(route)
            .cloned();
        let s = match found {
            Some(s) => s,
            None => self
                .routes
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .entry(route.to_owned())
                .or_insert_with(|| {
                    Arc::new(RouteSeries {
                        responses: std::array::from_fn(|_| AtomicU64::new(0)),
                        duration: Histogram::new(&DURATION_US),
                    })
                })
                .clone(),
        };
        if let Some(c) = s.responses.get(class(status.as_u16())) {
            c.fetch_add(1, Ordering::Relaxed);
        }
        s.duration
            .observe(u64::try_from(since.elapsed().as_micros()).unwrap_or(u64::MAX));
    }

    fn render_counters(&self, out: &mut String) {
        let models = self.models.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<(&str, &str, &ModelSeries)> = models
            .iter()
            .flat_map(|(m, ps)| ps.iter().map(move |(p, s)| (m.as_str(), p.as_str(), &**s)))
            .collect();
        all.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        if self.series.load(Ordering::Relaxed) >= self.max_series {
            all.push(("other", "other", &*self.other));
        }
        let labels: Vec<String> = all
            .iter()
            .map(|(m, p, _)| format!("model=\"{}\",provider=\"{}\"", escape(m), escape(p)))
            .collect();

        help(
            out,
            "gatehouse_requests_total",
            "counter",
            "Requests with a row, by model, provider and status class.",
        );
        for ((_, _, s), l) in all.iter().zip(&labels) {
            for (c, name) in s.requests.iter().zip(CLASSES) {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gatehouse_requests_total{{{l},status_class=\"{name}\"}} {n}"
                    );
                }
            }
        }
        help(
            out,
            "gatehouse_tokens_total",
            "counter",
            "Tokens billed, by model, provider and type (prompt, completion, cached: the part of the prompt read from the provider's cache).",
        );
        for ((_, _, s), l) in all.iter().zip(&labels) {
            for (kind, c) in [
                ("prompt", &s.prompt_tokens),
                ("completion", &s.completion_tokens),
                ("cached", &s.cached_tokens),
            ] {
                let _ = writeln!(
                    out,
                    "gatehouse_tokens_total{{{l},type=\"{kind}\"}} {}",
                    c.load(Ordering::Relaxed)
                );
            }
        }
        help(
            out,
            "gatehouse_cost_usd_total",
            "counter",
            "US dollars spent, by model and provider (models with a price).",
        );
        for ((_, _, s), l) in all.iter().zip(&labels) {
            let usd = s.cost_nanos.load(Ordering::Relaxed) as f64 / 1e9;
            let _ = writeln!(out, "gatehouse_cost_usd_total{{{l}}} {usd}");
        }
        help(
            out,
            "gatehouse_request_duration_seconds",
            "histogram",
            "Arrival to last byte, by model and provider.",
        );
        for ((_, _, s), l) in all.iter().zip(&labels) {
            s.duration
                .render(out, "gatehouse_request_duration_seconds", l);
        }
        help(
            out,
            "gatehouse_time_to_first_byte_seconds",
            "histogram",
            "Arrival to the first byte from the provider, by model and provider.",
        );
        for ((_, _, s), l) in all.iter().zip(&labels) {
            s.ttfb
                .render(out, "gatehouse_time_to_first_byte_seconds", l);
        }
        drop(models);
        help(
            out,
            "gatehouse_overhead_seconds",
            "histogram",
            "The gateway's own time per request, waiting on providers excluded.",
        );
        self.overhead.render(out, "gatehouse_overhead_seconds", "");

        help(
            out,
            "gatehouse_request_errors_total",
            "counter",
            "Requests with a row that failed, by error code (rate_limit_exceeded, budget_exceeded, upstream_timeout, client_disconnected…).",
        );
        let errors = self.errors.read().unwrap_or_else(|p| p.into_inner());
        let mut codes: Vec<_> = errors.iter().collect();
        codes.sort_by(|a, b| a.0.cmp(b.0));
        for (code, n) in codes {
            let _ = writeln!(
                out,
                "gatehouse_request_errors_total{{code=\"{}\"}} {}",
                escape(code),
                n.load(Ordering::Relaxed)
            );
        }
        let other = self.errors_other.load(Ordering::Relaxed);
        if other > 0 {
            let _ = writeln!(
                out,
                "gatehouse_request_errors_total{{code=\"other\"}} {other}"
            );
        }
        drop(errors);

        help(
            out,
            "gatehouse_http_responses_total",
            "counter",
            "HTTP answers, by route pattern and status class.",
        );
        let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
        let mut rs: Vec<_> = routes.iter().collect();
        rs.sort_by(|a, b| a.0.cmp(b.0));
        for (route, s) in &rs {
            for (c, name) in s.responses.iter().zip(CLASSES) {
                let n = c.load(Ordering::Relaxed);
                if n > 0 {
                    let _ = writeln!(
                        out,
                        "gatehouse_http_responses_total{{route=\"{}\",status_class=\"{name}\"}} {n}",
                        escape(route)
                    );
                }
            }
        }
        help(
            out,
            "gatehouse_http_response_seconds",
            "histogram",
            "Arrival to the response head, by route pattern.",
        );
        for (route, s) in &rs {
            s.duration.render(
                out,
                "gatehouse_http_response_seconds",
                &format!("route=\"{}\"", escape(route)),
            );
        }
    }
}

fn help(out: &mut String, name: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {name} {text}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, text: &str, value: impl std::fmt::Display) {
    help(out, name, "gauge", text);
    let _ = writeln!(out, "{name} {value}");
}

/// A label value as the text format wants it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counts each answer under its route pattern (`/v1/chat/completions`, `/api/keys/{id}`).
pub async fn track(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().cloned();
    let t0 = Instant::now();
    let response = next.run(req).await;
    if let Some(route) = route {
        st.metrics.answered(route.as_str(), response.status(), t0);
    }
    response
}

/// `/metrics` takes the scraper's token when one is set (`metrics.token`); otherwise it is a
/// management route like the others (the admin login under `mode = "keys"`).
pub async fn gate(st: State<AppState>, req: Request, next: Next) -> Response {
    let token = st.config.metrics.token.as_str();
    if token.is_empty() {
        return crate::login::require(st, req, next).await;
    }
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), token.as_bytes()) {
        return next.run(req).await;
    }
    let mut r = (
        StatusCode::UNAUTHORIZED,
        "metrics need the scraper's token: Authorization: Bearer <metrics.token>\n",
    )
        .into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `GET /metrics`.
pub async fn render(State(st): State<AppState>) -> Response {
    if !st.config.metrics.enabled {
        return (
            StatusCode::NOT_FOUND,
            "metrics are off ([metrics] enabled = false)\n",
        )
            .into_response();
    }
    let mut out = String::with_capacity(16 * 1024);
    st.metrics.render_counters(&mut out);
    gauges(&st, &mut out);
    let mut r = out.into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

fn gauges(st: &AppState, out: &mut String) {
    help(out, "gatehouse_build_info", "gauge", "The running version.");
    let _ = writeln!(
        out,
        "gatehouse_build_info{{version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    gauge(
        out,
        "gatehouse_uptime_seconds",
        "Seconds since start.",
        st.started.elapsed().as_secs(),
    );
    gauge(
        out,
        "gatehouse_in_flight_requests",
        "Proxy requests accepted whose row is not written yet (streams until their last byte).",
        st.in_flight.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "gatehouse_streams_open",
        "Streamed answers in progress.",
        st.streams_open.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "gatehouse_websocket_clients",
        "Live-view WebSocket clients connected.",
        st.ws.clients.load(Ordering::Relaxed),
    );
    gauge(
        out,
        "gatehouse_sessions",
        "Sessions in memory.",
        st.sessions.count(),
    );
    gauge(
        out,
        "gatehouse_writer_queue_depth",
        "Rows and other writes waiting for the database.",
        st.writer.queued(),
    );
    let stats = st.writer.stats();
    help(
        out,
        "gatehouse_rows_total",
        "counter",
        "Writes to the database by outcome (written; lost: never written, which should stay 0).",
    );
    for (outcome, n) in [
        ("written", &stats.written),
        ("dropped", &stats.dropped),
        ("lost", &stats.lost),
        ("rejected", &stats.rejected),
    ] {
        let _ = writeln!(
            out,
            "gatehouse_rows_total{{outcome=\"{outcome}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    help(
        out,
        "gatehouse_refused_total",
        "counter",
        "Requests refused before they had a row (no valid key, a body that does not parse…), by error code.",
    );
    for (code, n) in st.refusals.counts() {
        let _ = writeln!(out, "gatehouse_refused_total{{code=\"{code}\"}} {n}");
    }
    help(
        out,
        "gatehouse_breaker_state",
        "gauge",
        "Each provider's circuit breaker: 0 closed, 1 half-open (probing), 2 open (skipped).",
    );
    let now = Instant::now();
    let views: Vec<_> = st
        .config
        .providers
        .keys()
        .map(|k| (k, st.upstream.breakers.view(k, now)))
        .collect();
    for (k, v) in &views {
        let n = match v.state {
            gatehouse_proxy::breaker::BreakerState::Closed => 0,
            gatehouse_proxy::breaker::BreakerState::HalfOpen => 1,
            gatehouse_proxy::breaker::BreakerState::Open => 2,
        };
        let _ = writeln!(
            out,
            "gatehouse_breaker_state{{provider=\"{}\"}} {n}",
            escape(k)
        );
    }
    help(
        out,
        "gatehouse_breaker_opened_total",
        "counter",
        "Times each provider's breaker opened.",
    );
    for (k, v) in &views {
        let _ = writeln!(
            out,
            "gatehouse_breaker_opened_total{{provider=\"{}\"}} {}",
            escape(k),
            v.opened_total
        );
    }
    help(
        out,
        "gatehouse_tokens_saved_total",
        "counter",
        "Prompt tokens the context features kept from providers, by feature.",
    );
    let _ = writeln!(
        out,
        "gatehouse_tokens_saved_total{{feature=\"sanitizer\"}} {}",
        st.sanitizer.tokens_saved.load(Ordering::Relaxed)
    );
    keys(st, out);
}

/// Spend, budget and requests in flight of the keys that spent most (`metrics.max_keys`).
fn keys(st: &AppState, out: &mut String) {
    let now = gatehouse_core::time::now_ms();
    let mut keys: Vec<_> = st
        .keys
        .list()
        .into_iter()
        .filter(|k| k.record().deleted_at.is_none())
        .map(|k| {
            let (spend, _) = k.spend(now);
            (k, spend.spend_usd)
        })
        .collect();
    keys.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.id.cmp(&b.0.id)));
    keys.truncate(st.config.metrics.max_keys);
    help(
        out,
        "gatehouse_key_spend_usd",
        "gauge",
        "A virtual key's spend in its current budget period, by key id.",
    );
    for (k, spend) in &keys {
        let _ = writeln!(
            out,
            "gatehouse_key_spend_usd{{key_id=\"{}\"}} {spend}",
            escape(&k.id)
        );
    }
    help(
        out,
        "gatehouse_key_budget_remaining_usd",
        "gauge",
        "What is left of a virtual key's max_budget_usd, by key id (keys with a budget).",
    );
    for (k, spend) in &keys {
        if let Some(max) = k.record().max_budget_usd {
            let _ = writeln!(
                out,
                "gatehouse_key_budget_remaining_usd{{key_id=\"{}\"}} {}",
                escape(&k.id),
                (max - spend).max(0.0)
            );
        }
    }
    help(
        out,
        "gatehouse_key_in_flight_requests",
        "gauge",
        "A virtual key's requests admitted and not finished, by key id.",
    );
    for (k, _) in &keys {
        let _ = writeln!(
            out,
            "gatehouse_key_in_flight_requests{{key_id=\"{}\"}} {}",
            escape(&k.id),
            k.in_flight()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_count_what_is_past_the_last_bound() {
        let h = Histogram::new(&OVERHEAD_US);
        for us in [5, 10, 11, 300, 1_000_000] {
            h.observe(us);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert!(out.contains("x_bucket{le=\"0.00001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.000025\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.0005\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"0.25\"} 4\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\"} 5\n"), "{out}");
        assert!(out.contains("x_count 5\n"), "{out}");
        assert!(out.contains("x_sum 1.000326\n"), "{out}");
    }

    #[test]
    fn label_sets_past_the_bound_are_counted_as_other() {
        let m = Metrics::new(2);
        for model in ["a", "b", "c", "d"] {
            m.series(model, "p").requests[0].fetch_add(1, Ordering::Relaxed);
        }
        let mut out = String::new();
        m.render_counters(&mut out);
        assert!(out.contains("model=\"a\",provider=\"p\",status_class=\"2xx\"} 1"));
        assert!(out.contains("model=\"b\",provider=\"p\",status_class=\"2xx\"} 1"));
        assert!(out.contains("model=\"other\",provider=\"other\",status_class=\"2xx\"} 2"));
        assert!(!out.contains("model=\"c\""));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
