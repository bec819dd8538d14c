//! Compaction on live traffic: each session's compaction point, settings and automatic-trigger
//! state, and the one routine that compacts (automatic on the proxy path, manual from the API).
//!
//! The pure parts (where to cut, summaries, the splice) are `gatehouse_context::compact`. Here:
//! the state behind one short-held mutex (never across an await), the model call of the `llm`
//! strategy, and the rows and events a compaction leaves.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use gatehouse_config::{CompactionConfig, CompactionStrategy};
use gatehouse_context::compact::{self, Item, Plan};
use gatehouse_core::record::{CompactionRecord, CompactionSettings};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ChatRequestView, SessionId};
use gatehouse_proxy::{Outcome, Route};
use gatehouse_services::events::{Event, emit};
use gatehouse_store::WriteOp;
use serde::Serialize;

use crate::state::AppState;

/// Request bodies kept for manual compaction and previews (the last one of each session), in
/// bytes; past this the least recently used sessions' are dropped.
const LAST_BODIES_BYTES: usize = 64 * 1024 * 1024;
/// Bodies above this are parsed on the blocking pool.
const BLOCKING_BYTES: usize = 256 * 1024;

/// A session's compaction point: the summary standing for its first `cut` client messages.
#[derive(Debug)]
pub struct Point {
    pub id: String,
    pub cut: usize,
    pub prefix_hash: String,
    pub summary: String,
    pub summary_json: String,
    pub created_at: i64,
}

impl Point {
    fn of(r: &CompactionRecord) -> Self {
        Self {
            id: r.id.clone(),
            cut: usize::try_from(r.cut).unwrap_or(usize::MAX),
            prefix_hash: r.prefix_hash.clone(),
            summary_json: compact::summary_message(&r.summary),
            summary: r.summary.clone(),
            created_at: r.created_at,
        }
    }
}

/// The bodies of a request, as compaction needs them: the client's messages after redaction
/// (their identity: the point's hash is over these) and after masking (what is sent).
#[derive(Debug, Clone)]
pub struct Input {
    pub redacted: Bytes,
    pub masked: Bytes,
    pub route: Arc<Route>,
}

#[derive(Default)]
struct Entry {
    point: Option<Arc<Point>>,
    settings: CompactionSettings,
    last_at: Option<i64>,
    consecutive: u32,
    paused_reported: bool,
    busy: bool,
    last: Option<(Input, u64)>,
}

#[derive(Default)]
struct Map {
    sessions: HashMap<SessionId, Entry>,
    last_bytes: usize,
    tick: u64,
}

/// What the proxy path needs to know about a session, read in one lock.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub point: Option<Arc<Point>>,
    pub settings: CompactionSettings,
    pub consecutive: u32,
    pub last_at: Option<i64>,
    pub busy: bool,
}

/// Why an automatic compaction does not run now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Busy,
    Cooldown { remaining_ms: i64 },
    Paused { consecutive: u32, first_time: bool },
}

#[derive(Debug)]
pub struct CompactionState {
    map: Mutex<Map>,
    /// Requests whose history was rewritten by a remembered point, and the tokens that saved.
    pub applied: AtomicU64,
    pub applied_saved: AtomicU64,
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map")
            .field("sessions", &self.sessions.len())
            .finish_non_exhaustive()
    }
}

impl CompactionState {
    pub fn new(stored: gatehouse_store::StoredCompactions) -> Self {
        let mut map = Map::default();
        for r in stored.points {
            let e = map.sessions.entry(r.session_id.clone()).or_default();
            e.last_at = Some(r.created_at);
            e.point = Some(Arc::new(Point::of(&r)));
        }
        for (id, s) in stored.settings {
            map.sessions.entry(id).or_default().settings = s;
        }
        Self {
            map: Mutex::new(map),
            applied: AtomicU64::new(0),
            applied_saved: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A compaction another instance made: its point becomes this instance's too, unless this
    /// one holds a newer point for the session already.
    pub fn adopt(&self, r: &CompactionRecord) {
        let mut m = self.lock();
        let e = m.sessions.entry(r.session_id.clone()).or_default();
        if e.point.as_ref().is_none_or(|p| p.created_at < r.created_at) {
            e.last_at = Some(r.created_at);
            e.point = Some(Arc::new(Point::of(r)));
        }
    }

    /// Remembers `input` as the session's last request (for manual compaction and previews)
    /// and returns what the proxy path needs. Two reference-count bumps; no copy.
    pub fn on_request(&self, session: &SessionId, input: &Input) -> Snapshot {
        let mut m = self.lock();
        m.tick += 1;
        let tick = m.tick;
        let size = input.redacted.len()
            + if same_bytes(&input.redacted, &input.masked) {
                0
            } else {
                input.masked.len()
            };
        let (snap, freed) = match m.sessions.get_mut(session) {
            Some(e) => {
                let freed = e
                    .last
                    .replace((input.clone(), tick))
                    .map_or(0, |(i, _)| held(&i));
                (snapshot(e), freed)
            }
            None => {
                let e = Entry {
                    last: Some((input.clone(), tick)),
                    ..Entry::default()
                };
                let s = snapshot(&e);
                m.sessions.insert(session.clone(), e);
                (s, 0)
            }
        };
        m.last_bytes = m.last_bytes.saturating_sub(freed) + size;
        if m.last_bytes > LAST_BODIES_BYTES {
            evict(&mut m);
        }
        snap
    }

    pub fn snapshot(&self, session: &SessionId) -> Snapshot {
        self.lock()
            .sessions
            .get(session)
            .map_or_else(|| snapshot(&Entry::default()), snapshot)
    }

    /// The last request seen for the session, if still held.
    pub fn last(&self, session: &SessionId) -> Option<Input> {
        self.lock()
            .sessions
            .get(session)
            .and_then(|e| e.last.as_ref().map(|(i, _)| i.clone()))
    }

    /// The prompt is under the threshold: the run of automatic compactions ends.
    pub fn under_threshold(&self, session: &SessionId) {
        if let Some(e) = self.lock().sessions.get_mut(session) {
            e.consecutive = 0;
            e.paused_reported = false;
        }
    }

    /// Claims the session for an automatic compaction, unless one runs, the cooldown has not
    /// passed, or the run of consecutive compactions is at its limit. `over_window`: the
    /// request would be refused as it is, so the cooldown does not hold it back.
    pub fn begin_auto<'a>(
        &'a self,
        session: &SessionId,
        cfg: &CompactionConfig,
        now: i64,
        over_window: bool,
    ) -> Result<Claim<'a>, Hold> {
        let mut m = self.lock();
        let e = m.sessions.entry(session.clone()).or_default();
        if e.busy {
            return Err(Hold::Busy);
        }
        if e.consecutive >= cfg.auto.max_consecutive {
            let first_time = !e.paused_reported;
            e.paused_reported = true;
            return Err(Hold::Paused {
                consecutive: e.consecutive,
                first_time,
            });
        }
        let cooldown =
            i64::try_from(cfg.auto.cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
        if let Some(at) = e.last_at
            && now - at < cooldown
            && !over_window
        {
            return Err(Hold::Cooldown {
                remaining_ms: cooldown - (now - at),
            });
        }
        e.busy = true;
        Ok(Claim {
            state: self,
            session: session.clone(),
        })
    }

    /// Claims the session for a manual compaction (only another running one stops it).
    pub fn begin_manual<'a>(&'a self, session: &SessionId) -> Option<Claim<'a>> {
        let mut m = self.lock();
        let e = m.sessions.entry(session.clone()).or_default();
        if e.busy {
            return None;
        }
        e.busy = true;
        Some(Claim {
            state: self,
            session: session.clone(),
        })
    }

    pub fn update_settings(
        &self,
        session: &SessionId,
        f: impl FnOnce(&mut CompactionSettings),
    ) -> CompactionSettings {
        let mut m = self.lock();
        let e = m.sessions.entry(session.clone()).or_default();
        f(&mut e.settings);
        // A changed setting is a fresh start for the automatic trigger.
        e.consecutive = 0;
        e.paused_reported = false;
        e.settings.clone()
    }

    /// An idle session leaves memory: its last request (kept for manual compaction) and its
    /// automatic-trigger run go; its point and settings, small and needed by its next request,
    /// stay.
    pub fn evict(&self, session: &SessionId) {
        let mut m = self.lock();
        let Some(e) = m.sessions.get_mut(session) else {
            return;
        };
        if e.busy {
            return;
        }
        let freed = e.last.take().map_or(0, |(i, _)| held(&i));
        e.consecutive = 0;
        e.paused_reported = false;
        let empty = e.point.is_none() && e.settings == CompactionSettings::default();
        m.last_bytes = m.last_bytes.saturating_sub(freed);
        if empty {
            m.sessions.remove(session);
        }
    }

    pub fn forget(&self, session: &SessionId) {
        let mut m = self.lock();
        if let Some(e) = m.sessions.remove(session) {
            let freed = e.last.map_or(0, |(i, _)| held(&i));
            m.last_bytes = m.last_bytes.saturating_sub(freed);
        }
    }
}

/// A session claimed for one compaction; released (success or not) when dropped, so a client
/// that disconnects mid-summary cannot leave its session claimed.
pub struct Claim<'a> {
    state: &'a CompactionState,
    session: SessionId,
}

impl Claim<'_> {
    /// Installs the new point. Automatic compactions extend the run; manual ones end it.
    pub fn done(self, point: Arc<Point>, auto: bool) {
        let mut m = self.state.lock();
        if let Some(e) = m.sessions.get_mut(&self.session) {
            e.last_at = Some(point.created_at);
            e.point = Some(point);
            e.consecutive = if auto { e.consecutive + 1 } else { 0 };
            e.paused_reported = false;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        if let Some(e) = self.state.lock().sessions.get_mut(&self.session) {
            e.busy = false;
        }
    }
}

fn snapshot(e: &Entry) -> Snapshot {
    Snapshot {
        point: e.point.clone(),
        settings: e.settings.clone(),
        consecutive: e.consecutive,
        last_at: e.last_at,
        busy: e.busy,
    }
}

fn same_bytes(a: &Bytes, b: &Bytes) -> bool {
    a.as_ptr() == b.as_ptr() && a.len() == b.len()
}

fn held(i: &Input) -> usize {
    i.redacted.len()
        + if same_bytes(&i.redacted, &i.masked) {
            0
        } else {
            i.masked.len()
        }
}

fn evict(m: &mut Map) {
    let mut order: Vec<(u64, SessionId)> = m
        .sessions
        .iter()
        .filter_map(|(id, e)| e.last.as_ref().map(|(_, t)| (*t, id.clone())))
        .collect();
    order.sort_unstable_by_key(|(t, _)| *t);
    // The newest stays even when it alone is over the budget.
    for (_, id) in order.iter().take(order.len().saturating_sub(1)) {
        if m.last_bytes <= LAST_BODIES_BYTES {
            break;
        }
        if let Some(e) = m.sessions.get_mut(id)
            && let Some((i, _)) = e.last.take()
        {
            m.last_bytes = m.last_bytes.saturating_sub(held(&i));
        }
    }
}

/// Effective settings of a session.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Effective {
    pub auto_enabled: bool,
    pub threshold_pct: f64,
    pub reserved_tokens: u64,
}

impl Effective {
    pub fn of(cfg: &CompactionConfig, s: &CompactionSettings) -> Self {
        Self {
            auto_enabled: s.auto_enabled.unwrap_or(cfg.auto.enabled),
            threshold_pct: s.threshold_pct.unwrap_or(cfg.auto.threshold_pct),
            reserved_tokens: if s.reserved_tokens > 0 {
                s.reserved_tokens
            } else {
                cfg.reserved_tokens
            },
        }
    }

    /// Whether a prompt of `tokens` has reached the threshold of a `max_context` window.
    pub fn reached(&self, tokens: u64, max_context: u64) -> bool {
        max_context > 0
            && tokens.saturating_add(self.reserved_tokens) as f64
                >= self.threshold_pct / 100.0 * max_context as f64
    }
}

/// How a compaction is asked for.
#[derive(Debug, Clone)]
pub struct Ask {
    pub auto: bool,
    pub strategy: CompactionStrategy,
    pub keep_exchanges: usize,
    /// Refuse when less than this would be summarised (manual without `force`).
    pub min_tokens: u64,
    pub request_id: Option<String>,
    /// A preview: never calls a model, the heuristic summary stands in.
    pub dry: bool,
}

/// A compaction done (not yet installed or recorded).
#[derive(Debug)]
pub struct Done {
    pub record: CompactionRecord,
    /// The masked body with the new point applied.
    pub body: Bytes,
    /// The summarised messages, for previews: `(role, first 200 characters)`.
    pub replaced: Vec<(String, String)>,
}

/// Why a compaction did not happen; `code` is stable, `message` says it to a person.
#[derive(Debug, Clone, Serialize)]
pub struct NotDone {
    pub reason: &'static str,
    pub message: String,
}

fn not_done(reason: &'static str, message: impl Into<String>) -> NotDone {
    NotDone {
        reason,
        message: message.into(),
    }
}

/// The body with the session's point applied; `None` when the request does not extend the
/// history the point was made from.
pub fn apply_point(input: &Input, point: &Point) -> Option<Bytes> {
    let masked = ChatRequestView::parse(&input.masked).ok()?;
    if same_bytes(&input.redacted, &input.masked) {
        return splice_point(&input.masked, &masked, &masked, point);
    }
    let ids = ChatRequestView::parse(&input.redacted).ok()?;
    splice_point(&input.masked, &masked, &ids, point)
}

/// [`apply_point`] on a request already read: `masked` is the body to send, `ids` the client's
/// messages (whose JSON the point's hash covers; the same view when nothing was masked).
fn splice_point(
    body: &[u8],
    masked: &ChatRequestView<'_>,
    ids: &ChatRequestView<'_>,
    point: &Point,
) -> Option<Bytes> {
    if ids.messages.len() <= point.cut || ids.messages.len() != masked.messages.len() {
        return None;
    }
    let hash = compact::prefix_hash(ids.messages.iter().take(point.cut).map(|m| m.raw.get()));
    if hash != point.prefix_hash {
        return None;
    }
    let spans: Vec<_> = masked.messages.iter().map(|m| m.span.clone()).collect();
    let system: Vec<usize> = masked
        .messages
        .iter()
        .take(point.cut)
        .enumerate()
        .filter(|(_, m)| m.role == "system")
        .map(|(i, _)| i)
        .collect();
    compact::splice(body, &spans, &system, point.cut, &point.summary_json).map(Bytes::from)
}

/// [`apply_point`] on the blocking pool when the body is large.
pub async fn apply_point_async(input: &Input, point: &Arc<Point>) -> Option<Bytes> {
    if input.masked.len() <= BLOCKING_BYTES {
        return apply_point(input, point);
    }
    let (input, point) = (input.clone(), point.clone());
    tokio::task::spawn_blocking(move || apply_point(&input, &point))
        .await
        .ok()
        .flatten()
}

/// Everything a summary needs, read from the bodies once.
struct Analysis {
    plan: Plan,
    items: Vec<(String, String, Vec<String>)>,
    previous: Option<String>,
    tokens_before: u64,
    messages_before: usize,
    summarized_tokens: u64,
    prefix_hash: String,
}

fn analyse(
    st: &AppState,
    input: &Input,
    point: Option<&Point>,
    keep: usize,
) -> Result<Analysis, NotDone> {
    let bad = |e: gatehouse_core::request::RequestParseError| {
        not_done(
            "unreadable_request",
            format!("the request cannot be read: {e}"),
        )
    };
    let masked = ChatRequestView::parse(&input.masked).map_err(bad)?;
    let same = same_bytes(&input.redacted, &input.masked);
    let redacted_view;
    let ids = if same {
        &masked
    } else {
        redacted_view = ChatRequestView::parse(&input.redacted).map_err(bad)?;
        &redacted_view
    };
    if ids.messages.len() != masked.messages.len() {
        return Err(not_done(
            "unreadable_request",
            "the request's messages changed in number while being masked",
        ));
    }
    let enc = input.route.encoding;
    // The point counts only if this request extends the history it was made from.
    let applied = point.and_then(|p| Some((p, splice_point(&input.masked, &masked, ids, p)?)));
    let point = applied.as_ref().map(|(p, _)| *p);
    let (tokens_before, messages_before) = match &applied {
        Some((_, body)) => {
            let v = ChatRequestView::parse(body).map_err(bad)?;
            (st.counter.count_prompt(enc, &v).tokens, v.messages.len())
        }
        None => (
            st.counter.count_prompt(enc, &masked).tokens,
            masked.messages.len(),
        ),
    };
    let roles: Vec<&str> = masked.messages.iter().map(|m| m.role.as_ref()).collect();
    let from = point.map_or(0, |p| p.cut);
    let plan = compact::plan(&roles, keep, from).ok_or_else(|| {
        not_done(
            "nothing_to_summarize",
            format!(
                "nothing older than the last {keep} exchange(s) is left to summarise ({} messages{})",
                roles.len(),
                if from > 0 { ", the earlier ones already compacted" } else { "" }
            ),
        )
    })?;
    let mut summarized_tokens = point.map_or(0, |p| enc.count(&p.summary));
    let mut items = Vec::with_capacity(plan.summarized.len());
    for m in plan
        .summarized
        .iter()
        .filter_map(|&i| masked.messages.get(i))
    {
        summarized_tokens += st.counter.count_message(enc, m);
        items.push((
            m.role.to_string(),
            m.text().map(|t| t.into_owned()).unwrap_or_default(),
            m.tool_calls.iter().map(|c| c.name.to_string()).collect(),
        ));
    }
    let prefix_hash = compact::prefix_hash(ids.messages.iter().take(plan.cut).map(|m| m.raw.get()));
    Ok(Analysis {
        plan,
        items,
        previous: point.map(|p| p.summary.clone()),
        tokens_before,
        messages_before,
        summarized_tokens,
        prefix_hash,
    })
}

/// Compacts the history of `input` for `session`, on top of `point` when the request extends
/// it. Nothing is installed or recorded here: see [`finish`].
pub async fn run(
    st: &AppState,
    session: &SessionId,
    input: &Input,
    point: Option<Arc<Point>>,
    ask: &Ask,
) -> Result<Done, NotDone> {
    let cfg = &st.config.compaction;
    let a = if input.masked.len() > BLOCKING_BYTES {
        let (st2, input2, point2, keep) =
            (st.clone(), input.clone(), point.clone(), ask.keep_exchanges);
        tokio::task::spawn_blocking(move || analyse(&st2, &input2, point2.as_deref(), keep))
            .await
            .map_err(|e| not_done("internal", format!("compaction failed: {e}")))??
    } else {
        analyse(st, input, point.as_deref(), ask.keep_exchanges)?
    };
    if a.summarized_tokens < ask.min_tokens {
        return Err(not_done(
            "not_enough_to_summarize",
            format!(
                "only {} tokens would be summarised, under the {}-token minimum; send `force: true` to compact anyway",
                a.summarized_tokens, ask.min_tokens
            ),
        ));
    }
    let items: Vec<Item<'_>> = a
        .items
        .iter()
        .map(|(role, text, tools)| Item {
            role,
            text,
            tools: tools.iter().map(String::as_str).collect(),
        })
        .collect();
    let enc = input.route.encoding;
    let heuristic = || {
        compact::heuristic(
            &items,
            a.previous.as_deref(),
            a.summarized_tokens,
            compact::Budget {
                // Never longer than half of what it replaces, so compacting always pays.
                max_tokens: cfg
                    .summary_max_tokens
                    .min((a.summarized_tokens / 2).max(60)),
                task_max_tokens: cfg.task_max_tokens,
                encoding: enc,
            },
        )
    };
    let (summary, strategy, summary_model, fallback_reason) = if ask.strategy
        == CompactionStrategy::Llm
        && !ask.dry
    {
        match llm(
            st,
            session,
            input,
            &items,
            a.previous.as_deref(),
            a.summarized_tokens,
        )
        .await
        {
            Ok((text, model)) => (text, "llm", Some(model), None),
            Err(why) => {
                tracing::warn!(session = %session, reason = %why, "llm summary failed; using the heuristic one");
                (heuristic(), "heuristic", None, Some(why))
            }
        }
    } else {
        (heuristic(), "heuristic", None, None)
    };

    let summary_json = compact::summary_message(&summary);
    let spans: Vec<_>;
    let body = {
        let masked = ChatRequestView::parse(&input.masked)
            .map_err(|_| not_done("unreadable_request", "the request cannot be read"))?;
        spans = masked.messages.iter().map(|m| m.span.clone()).collect();
        compact::splice(
            &input.masked,
            &spans,
            &a.plan.system,
            a.plan.cut,
            &summary_json,
        )
        .map(Bytes::from)
        .ok_or_else(|| not_done("internal", "the compacted request cannot be built"))?
    };
    let (tokens_after, messages_after) = {
        let v = ChatRequestView::parse(&body)
            .map_err(|_| not_done("internal", "the compacted request cannot be read"))?;
        (st.counter.count_prompt(enc, &v).tokens, v.messages.len())
    };
    if tokens_after >= a.tokens_before {
        return Err(not_done(
            "no_saving",
            format!(
                "the summary would not make the prompt smaller ({} → {tokens_after} tokens; {} tokens summarised into {})",
                a.tokens_before,
                a.summarized_tokens,
                enc.count(&summary)
            ),
        ));
    }
    let replaced = a
        .items
        .iter()
        .map(|(role, text, _)| (role.clone(), gatehouse_core::record::preview(text, 200)))
        .collect();
    let record = CompactionRecord {
        id: uuid::Uuid::now_v7().to_string(),
        session_id: session.clone(),
        request_id: ask.request_id.clone(),
        created_at: now_ms(),
        trigger: if ask.auto { "auto" } else { "manual" }.to_owned(),
        strategy: strategy.to_owned(),
        summary_model,
        fallback_reason,
        model_key: input.route.model_key.clone(),
        max_context: input.route.max_context,
        tokens_before: a.tokens_before,
        tokens_after,
        tokens_saved: a.tokens_before - tokens_after,
        messages_before: a.messages_before as u64,
        messages_after: messages_after as u64,
        summarized: a.items.len() as u64,
        cut: a.plan.cut as u64,
        prefix_hash: a.prefix_hash,
        summary_tokens: enc.count(&summary),
        summary,
    };
    Ok(Done {
        record,
        body,
        replaced,
    })
}

/// Installs a compaction as the session's point, stores its row and tells the dashboard.
pub async fn finish(st: &AppState, claim: Claim<'_>, done: &Done) {
    let r = &done.record;
    claim.done(Arc::new(Point::of(r)), r.trigger == "auto");
    tracing::info!(
        session = %r.session_id,
        trigger = %r.trigger,
        strategy = %r.strategy,
        tokens_before = r.tokens_before,
        tokens_after = r.tokens_after,
        summarized = r.summarized,
        "history compacted"
    );
    st.writer
        .record(WriteOp::InsertCompaction(Box::new(r.clone())))
        .await;
    // Every instance serves the session from this point on.
    if let Some(sh) = &st.shared {
        sh.publish(gatehouse_services::shared::Change::Compaction(Box::new(
            r.clone(),
        )));
    }
    emit(&*st.bus, || Event::CompactionEvent {
        compaction: Box::new(r.clone()),
    });
}

/// The `llm` strategy: a summary written by the configured model (or the session's), through
/// the normal upstream client, in that provider's format. The call is a request row of the
/// session (`purpose = compaction_summary`), so its tokens and cost count. Any failure is a
/// reason to fall back, returned as text.
async fn llm(
    st: &AppState,
    session: &SessionId,
    input: &Input,
    items: &[Item<'_>],
    previous: Option<&str>,
    tokens: u64,
) -> Result<(String, String), String> {
    use crate::routes::chat::{Draft, Finish};
    use gatehouse_proxy::translate::{self, Format};

    let cfg = &st.config.compaction;
    let task = compact::task(
        items,
        previous,
        &compact::boilerplate_tags(items),
        compact::Budget {
            max_tokens: cfg.summary_max_tokens,
            task_max_tokens: cfg.task_max_tokens,
            encoding: input.route.encoding,
        },
    );
    let route = if cfg.summary_model.is_empty() {
        input.route.clone()
    } else {
        st.router
            .resolve(&cfg.summary_model)
            .map_err(|e| e.message.clone())?
    };
    let openai = Bytes::from(
        compact::llm_request(
            &route.upstream_model,
            items,
            previous,
            cfg.summary_max_tokens,
            cfg.summary_temperature,
        )
        .to_string(),
    );
    let prompt = ChatRequestView::parse(&openai)
        .map(|v| st.counter.count_prompt(route.encoding, &v).tokens)
        .unwrap_or(0);
    let format = Format::of_provider(route.provider.kind);
    let body = match format {
        Format::OpenAi => openai,
        other => translate::request_from_openai(&openai, other).map_err(|e| {
            format!(
                "the summary request cannot be written for `{}`: {e}",
                route.model_key
            )
        })?,
    };
    let draft = Draft::for_gateway(st, session, route.clone(), "compaction_summary", prompt);
    let request_id = draft.request_id().to_owned();
    let t0 = std::time::Instant::now();
    let timeout =
        Duration::try_from_secs_f64(cfg.summary_timeout_secs).unwrap_or(Duration::from_secs(30));
    let failed = |draft: Draft, status: u16, code: &str, why: String| {
        draft.write(Finish {
            status,
            summary: None,
            latency: t0.elapsed(),
            ttfb: None,
            overhead: Duration::ZERO,
            attempts: 1,
            error: Some((code.to_owned(), why.clone())),
        });
        why
    };
    let sent = tokio::time::timeout(
        timeout,
        st.upstream
            .send(&route, body, &HeaderMap::new(), &request_id, false),
    )
    .await;
    let (answer, status, ttfb, attempts, upstream_wait) = match sent {
        Err(_) => {
            let why = format!(
                "`{}` did not answer within {:.0} s",
                route.model_key,
                timeout.as_secs_f64()
            );
            return Err(failed(draft, 504, "upstream_timeout", why));
        }
        Ok(Err(f)) => {
            let why = format!("`{}`: {}", route.model_key, f.error.message);
            return Err(failed(draft, f.error.status(), f.error.kind.code(), why));
        }
        Ok(Ok(Outcome::Stream { .. })) => {
            let why = format!("`{}` answered with a stream", route.model_key);
            return Err(failed(draft, 502, "upstream_bad_response", why));
        }
        Ok(Ok(Outcome::Complete {
            body,
            status,
            ttfb,
            attempts,
            upstream_wait,
            ..
        })) => (body, status, ttfb, attempts, upstream_wait),
    };
    let answer = match format {
        Format::OpenAi => answer,
        other => match translate::response_between(&answer, other, Format::OpenAi, now_ms() / 1000)
        {
            Ok(b) => b,
            Err(e) => {
                let why = format!("`{}` answered something unreadable: {e}", route.model_key);
                return Err(failed(draft, 502, "upstream_bad_response", why));
            }
        },
    };
    draft.write(Finish {
        status: status.as_u16(),
        summary: Some(gatehouse_proxy::tap::summarize_response(
            &answer,
            route.encoding,
        )),
        latency: t0.elapsed(),
        ttfb: Some(ttfb),
        overhead: t0.elapsed().saturating_sub(upstream_wait),
        attempts,
        error: None,
    });
    #[derive(serde::Deserialize)]
    struct Completion {
        choices: Vec<Choice>,
    }
    #[derive(serde::Deserialize)]
    struct Choice {
        message: Message,
    }
    #[derive(serde::Deserialize)]
    struct Message {
        content: Option<String>,
    }
    let c: Completion = serde_json::from_slice(&answer)
        .map_err(|e| format!("`{}` answered something unreadable: {e}", route.model_key))?;
    let text = c
        .choices
        .into_iter()
        .next()
        .and_then(|c| c.message.content)
        .filter(|t| !t.trim().is_empty())
        .ok_or_else(|| format!("`{}` answered an empty summary", route.model_key))?;
    let n = items.len();
    Ok((
        compact::llm_summary(&text, task.as_deref(), &route.model_key, n, tokens),
        route.model_key.clone(),
    ))
}
