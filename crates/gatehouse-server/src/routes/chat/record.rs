//! Phase 8, record: the request row.
//!
//! A [`Draft`] is opened as soon as a request has its session, and becomes exactly one row
//! whichever way the request ends: answered, refused by a later phase, failed upstream, cut at
//! shutdown, or abandoned by its client while the provider was still working (the handler's
//! future is dropped then, and so is the draft: its `Drop` writes the row). A stream's draft
//! moves into the stream's [`Recorder`](crate::stream::Recorder), which finishes it when the
//! stream ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::record::{RequestRecord, UsageSource};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, RequestId, SessionId};
use gatehouse_proxy::{CompletionSummary, Route};
use gatehouse_services::sessions::Resolved;

use super::Prepared;
use super::admit::Admission;
use crate::state::{AppState, InFlight};

/// The status of a row whose client left before the answer (nginx's "client closed request").
pub(crate) const CLIENT_CLOSED: u16 = 499;
/// The purpose of a client's side request (a title, a probe) kept in another model's session.
pub(crate) const ASIDE: &str = "aside";

/// The parts of a request row known before upstream answers.
struct Parts {
    /// What routing did, when it did more than one plain attempt.
    routing: Option<String>,
    id: String,
    /// What the client asked for: the route it named, or the model its session is kept under
    /// (`auto/coding`, the primary of deployments).
    requested: Arc<Route>,
    session_model: Option<String>,
    /// `None` for a turn of the client's conversation; [`ASIDE`] for its side request; what
    /// the gateway called a model for otherwise.
    purpose: Option<&'static str>,
    session_id: SessionId,
    created_at: i64,
    t0: Instant,
    route: Arc<Route>,
    stream: bool,
    prompt_tokens_est: u64,
    memory_tokens: u64,
    preview: String,
    key_id: Option<String>,
    team_id: Option<String>,
}

/// A request row in the making; see the module doc.
pub(crate) struct Draft {
    /// `None` once the row is written.
    parts: Option<Parts>,
    /// Counts the request in flight until its row is queued, so shutdown can wait for it.
    guard: InFlight,
    /// What admission holds (a stream's place, the key's reservation) until the row is written.
    admission: Admission,
}

/// The parts known once the exchange is over.
pub(crate) struct Finish {
    pub status: u16,
    pub summary: Option<CompletionSummary>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    pub overhead: Duration,
    pub attempts: u32,
    pub error: Option<(String, String)>,
}

impl Draft {
    pub(super) fn open(
        st: &AppState,
        request_id: &RequestId,
        session: &Resolved,
        t0: Instant,
        p: &mut Prepared,
        admission: Admission,
    ) -> Self {
        Self {
            parts: Some(Parts {
                routing: None,
                id: request_id.as_str().to_owned(),
                requested: p.route.clone(),
                session_model: p.session_model.clone(),
                purpose: session.aside.then_some(ASIDE),
                session_id: session.id.clone(),
                created_at: now_ms(),
                t0,
                route: p.route.clone(),
                stream: p.stream,
                prompt_tokens_est: p.prompt_tokens,
                memory_tokens: p.memory_tokens,
                preview: std::mem::take(&mut p.preview),
                key_id: admission.key.as_ref().map(|r| r.key_id().to_owned()),
                team_id: admission
                    .key
                    .as_ref()
                    .and_then(|r| r.team_id())
                    .map(str::to_owned),
            }),
            guard: InFlight::new(st),
            admission,
        }
    }

    /// The row of a call the gateway makes itself (an `llm` compaction summary), so spend
    /// totals include it.
    pub(crate) fn for_gateway(
        st: &AppState,
        session: &SessionId,
        route: Arc<Route>,
        purpose: &'static str,
        prompt_tokens_est: u64,
    ) -> Self {
        Self {
            parts: Some(Parts {
                routing: None,
                id: RequestId::generate().as_str().to_owned(),
                requested: route.clone(),
                session_model: None,
                purpose: Some(purpose),
                session_id: session.clone(),
                created_at: now_ms(),
                t0: Instant::now(),
                stream: false,
                prompt_tokens_est,
                memory_tokens: 0,
                preview: String::new(),
                route,
                key_id: None,
                team_id: None,
            }),
            guard: InFlight::new(st),
            admission: Admission::none(),
        }
    }

    /// Shutdown's cut happened: a row written now says `shutdown`.
    pub(crate) fn cut(&self) -> bool {
        self.guard.state().cut.is_cancelled()
    }

    pub(crate) fn request_id(&self) -> &str {
        self.parts.as_ref().map_or("", |d| d.id.as_str())
    }

    /// What the economy phase changed: the route (heavy-duty) and the counts (compaction).
    pub(super) fn update(&mut self, p: &Prepared) {
        if let Some(d) = self.parts.as_mut() {
            d.route = p.route.clone();
            d.prompt_tokens_est = p.prompt_tokens;
            d.memory_tokens = p.memory_tokens;
        }
    }

    /// The route that answered (a fallback) and what routing did.
    pub(super) fn routed(&mut self, route: Arc<Route>, routing: Option<String>) {
        if let Some(d) = self.parts.as_mut() {
            d.route = route;
            d.routing = routing;
        }
    }

    pub(crate) fn encoding(&self) -> gatehouse_core::Encoding {
        self.parts
            .as_ref()
            .map_or(gatehouse_core::Encoding::Cl100k, |d| d.route.encoding)
    }

    pub(crate) fn t0(&self) -> Instant {
        self.parts.as_ref().map_or_else(Instant::now, |d| d.t0)
    }

    /// Writes the row of a request a later phase refused (before anything went upstream), and
    /// gives the error back.
    pub(super) fn refuse(self, e: ApiError) -> ApiError {
        let elapsed = self.t0().elapsed();
        self.write(Finish {
            status: e.status(),
            summary: None,
            latency: elapsed,
            ttfb: None,
            overhead: elapsed,
            attempts: 0,
            error: Some((e.kind.code().to_owned(), e.message.clone())),
        });
        e
    }

    /// Queues the row without waiting (the queue's overflow takes it when full): for `Drop`s
    /// and rare paths.
    pub(crate) fn write(mut self, f: Finish) {
        if let Some(d) = self.parts.take() {
            let record = d.finish(f);
            settle(self.guard.state(), &mut self.admission, &record);
            let op = self.guard.state().request_finished(record);
            self.guard.state().writer.record_now(op);
        }
    }

    /// Queues the row once the queue has room (back-pressure). Room is reserved before the
    /// row is taken, so a client that leaves meanwhile still leaves a row (through `Drop`).
    pub(super) async fn finish(mut self, f: Finish) {
        let st = self.guard.state().clone();
        let permit = st.writer.reserve().await;
        if let Some(d) = self.parts.take() {
            let record = d.finish(f);
            settle(&st, &mut self.admission, &record);
            let op = st.request_finished(record);
            match permit {
                Some(permit) => permit.send(op),
                None => st.writer.record_now(op),
            }
        }
    }
}

impl Drop for Draft {
    fn drop(&mut self) {
        let Some(d) = self.parts.take() else {
            return;
        };
        let st = self.guard.state();
        // The handler's future was dropped: the client went away, or shutdown cut its
        // connection.
        let error = if st.cut.is_cancelled() {
            (
                "shutdown".to_owned(),
                "the gateway shut down before the answer was complete".to_owned(),
            )
        } else {
            (
                "client_disconnected".to_owned(),
                "the client closed the connection before the answer arrived".to_owned(),
            )
        };
        let elapsed = d.t0.elapsed();
        let record = d.finish(Finish {
            status: CLIENT_CLOSED,
            summary: None,
            latency: elapsed,
            ttfb: None,
            overhead: Duration::ZERO,
            attempts: 1,
            error: Some(error),
        });
        settle(st, &mut self.admission, &record);
        let op = st.request_finished(record);
        st.writer.record_now(op);
    }
}

/// The key's (and its team's) reservation replaced by what the request used (the new spend
/// reaches the database with the next `key_sync_loop` tick), and crossing a soft budget
/// announced once: a `budget_alert` event and an audit row.
fn settle(st: &AppState, admission: &mut Admission, record: &RequestRecord) {
    let Some(r) = admission.key.take() else {
        return;
    };
    let billed = (200..300).contains(&record.status);
    let tokens = if billed {
        record.effective_total_tokens()
    } else {
        0
    };
    let cost = record.cost_usd.unwrap_or(0.0);
    let key = r.entry().clone();
    match admission.ticket.take() {
        // Admitted by this instance alone: Redis was away (or is not configured).
        None => {
            if let Some(sh) = &st.shared {
                sh.owe(&key, cost);
            }
            announce(st, &key, r.settle(tokens, cost, now_ms()));
        }
        // Counted in Redis: one round trip, off the response's way.
        Some(ticket) => {
            let st = st.clone();
            tokio::spawn(async move {
                let shared = st.shared.as_ref();
                let settled =
                    gatehouse_services::shared::settle(shared, Some(ticket), r, tokens, cost);
                announce(&st, &key, settled.await);
            });
        }
    }
}

/// A soft budget crossed by a settled request, announced once.
fn announce(
    st: &AppState,
    key: &Arc<gatehouse_services::keys::KeyEntry>,
    settled: gatehouse_services::keys::Settled,
) {
    if let Some(crossed) = settled.key.soft_crossed {
        let name = key.record().name.clone();
        soft_budget_crossed(
            st,
            "key",
            &key.id,
            None,
            name,
            settled.key.spend.spend_usd,
            crossed,
        );
    }
    if let Some((team, t)) = settled.team
        && let Some(crossed) = t.soft_crossed
    {
        let name = team.record().name.clone();
        soft_budget_crossed(
            st,
            "team",
            &key.id,
            Some(&team.id),
            name,
            t.spend.spend_usd,
            crossed,
        );
    }
}

fn soft_budget_crossed(
    st: &AppState,
    scope: &'static str,
    key_id: &str,
    team_id: Option<&str>,
    name: String,
    spend_usd: f64,
    (soft, max): (f64, Option<f64>),
) {
    tracing::info!(scope, name = %name, spend_usd, soft_budget_usd = soft, "a soft budget was crossed");
    let target = match team_id {
        Some(t) => format!("team:{t}"),
        None => format!("key:{key_id}"),
    };
    let change =
        crate::audit::Change::new("budget.soft_crossed", target).after(serde_json::json!({
            "spend_usd": spend_usd,
            "soft_budget_usd": soft,
            "max_budget_usd": max,
            "key_id": key_id,
        }));
    crate::audit::record(st, &crate::audit::Actor::system(), change, "ok");
    gatehouse_services::events::emit(&*st.bus, || gatehouse_services::Event::BudgetAlert {
        scope,
        key_id: key_id.to_owned(),
        team_id: team_id.map(str::to_owned),
        name,
        spend_usd,
        soft_budget_usd: soft,
        max_budget_usd: max,
    });
}

impl Parts {
    fn finish(self, f: Finish) -> RequestRecord {
        // A provider's figures are believed up to a bound (`MAX_TOKENS`), so no sum overflows.
        let usage = f
            .summary
            .as_ref()
            .and_then(|s| s.usage)
            .map(gatehouse_core::Usage::clamped);
        let (prompt_tokens, completion_tokens, source) = match (usage, &f.summary) {
            (Some(u), _) => (
                Some(u.prompt_tokens),
                Some(u.completion_tokens),
                UsageSource::Upstream,
            ),
            (None, Some(s)) => (
                None,
                Some(s.counted_completion_tokens),
                UsageSource::Estimated,
            ),
            (None, None) => (None, None, UsageSource::Estimated),
        };
        let prompt = prompt_tokens.unwrap_or(self.prompt_tokens_est);
        let completion_tokens = completion_tokens.map(|t| t.min(gatehouse_core::usage::MAX_TOKENS));
        // Failed exchanges are not billed by providers; streams cut short are, for what was sent.
        let billed = (200..300).contains(&f.status);
        let cost_usd = self.route.pricing.filter(|_| billed).map(|p| {
            p.cost(
                prompt,
                completion_tokens.unwrap_or(0),
                usage.and_then(|u| u.cached_tokens).unwrap_or(0),
            )
        });
        let context_pct = if self.route.max_context > 0 {
            prompt as f64 * 100.0 / self.route.max_context as f64
        } else {
            0.0
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (error_type, error_message) = match f.error {
            Some((t, m)) => (Some(t), Some(m)),
            None => (None, None),
        };
        let requested_model = self.session_model.or_else(|| {
            (self.requested.model_key != self.route.model_key)
                .then(|| self.requested.model_key.clone())
        });
        RequestRecord {
            row_id: String::new(),
            id: self.id,
            session_id: self.session_id,
            created_at: self.created_at,
            provider: self.route.provider_key.clone(),
            model_key: self.route.model_key.clone(),
            upstream_model: self.route.upstream_model.clone(),
            stream: self.stream,
            status: f.status,
            prompt_tokens_est: self.prompt_tokens_est,
            prompt_tokens,
            completion_tokens,
            cached_tokens: usage.and_then(|u| u.cached_tokens),
            reasoning_tokens: usage.and_then(|u| u.reasoning_tokens),
            usage_source: source,
            max_context: self.route.max_context,
            context_pct,
            preview: self.preview,
            latency_ms: ms(f.latency),
            ttfb_ms: f.ttfb.map(ms),
            overhead_us: u64::try_from(f.overhead.as_micros()).unwrap_or(u64::MAX),
            attempts: f.attempts,
            finish_reason: f.summary.and_then(|s| s.finish_reason),
            error_type,
            error_message,
            cost_usd,
            memory_tokens: self.memory_tokens,
            chat_tokens: self.prompt_tokens_est.saturating_sub(self.memory_tokens),
            memory_ratio: if self.prompt_tokens_est > 0 {
                self.memory_tokens as f64 / self.prompt_tokens_est as f64
            } else {
                0.0
            },
            routing: self.routing,
            requested_model,
            purpose: self.purpose.map(str::to_owned),
            key_id: self.key_id,
            team_id: self.team_id,
        }
    }
}

/// A request refused before it had its session and route (phases 1 to 3: an unreadable body, an
/// unknown model, a secret in block mode, the stream cap): counted by code in `/health`, and a
/// row in the session it named or else the active one, so a user whose client fails sees why
/// on the dashboard. With neither (a gateway that has seen no request yet) it is counted only.
pub(super) fn refused(
    st: &AppState,
    request_id: &RequestId,
    t0: Instant,
    session: Option<&SessionId>,
    body: Option<&[u8]>,
    key: Option<&gatehouse_services::keys::KeyEntry>,
    e: ApiError,
) -> ApiError {
    let e = st.refusals.count(e);
    // A session the request named but that does not exist yet is not opened for a refusal.
    let Some(session_id) = session
        .filter(|id| st.sessions.get(id).is_some())
        .cloned()
        .or_else(|| st.sessions.active().map(|s| s.id))
    else {
        return e;
    };
    #[derive(serde::Deserialize)]
    struct Asked<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
        #[serde(default)]
        stream: Option<bool>,
    }
    let asked = body.and_then(|b| serde_json::from_slice::<Asked<'_>>(b).ok());
    let model = asked
        .as_ref()
        .and_then(|a| a.model.as_deref())
        .unwrap_or_default()
        .to_owned();
    let elapsed = t0.elapsed();
    let record = RequestRecord {
        row_id: String::new(),
        id: request_id.as_str().to_owned(),
        session_id,
        created_at: now_ms(),
        provider: String::new(),
        requested_model: (!model.is_empty()).then(|| model.clone()),
        model_key: model,
        upstream_model: String::new(),
        stream: asked.and_then(|a| a.stream).unwrap_or(false),
        status: e.status(),
        prompt_tokens_est: 0,
        prompt_tokens: None,
        completion_tokens: None,
        cached_tokens: None,
        reasoning_tokens: None,
        usage_source: UsageSource::Estimated,
        max_context: 0,
        context_pct: 0.0,
        preview: String::new(),
        latency_ms: u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX),
        ttfb_ms: None,
        overhead_us: u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
        attempts: 0,
        finish_reason: None,
        error_type: Some(e.kind.code().to_owned()),
        error_message: Some(e.message.clone()),
        cost_usd: None,
        memory_tokens: 0,
        chat_tokens: 0,
        memory_ratio: 0.0,
        routing: Some("refused before routing".to_owned()),
        purpose: None,
        key_id: key.map(|k| k.id.clone()),
        team_id: key.and_then(|k| k.record().team_id.clone()),
    };
    let op = st.request_finished(record);
    st.writer.record_now(op);
    e
}
