//! `/api/compaction/*` (and the seed's `/api/compress/*` aliases): compact a session by hand,
//! preview and simulate, history and stats, the automatic trigger's switch, threshold and
//! reserved tokens.
//!
//! A manual compaction works on the last request the gateway saw for the session (the history
//! the client will extend next); the point it makes applies from the next request on.

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use gatehouse_config::CompactionStrategy;
use gatehouse_core::record::Session;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_store::WriteOp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::compaction::{self, Ask, Done, Effective, Input, NotDone, Snapshot};
use crate::error::{HttpError, bad_request, json_body};
use crate::origin::SameOrigin;
use crate::routes::sessions::{gauge_of, store_error};
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

const MAX_HISTORY: u32 = 500;

async fn session(st: &AppState, p: Result<Path<String>, PathRejection>) -> ApiResult<Session> {
    let Path(raw) = p?;
    let missing = || {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("session `{raw}` does not exist"),
        ))
    };
    let id = SessionId::parse_client(&raw).ok_or_else(missing)?;
    st.sessions.find(&id).await.ok_or_else(missing)
}

fn strategy(s: Option<&str>, default: CompactionStrategy) -> ApiResult<CompactionStrategy> {
    match s {
        None => Ok(default),
        Some("heuristic") => Ok(CompactionStrategy::Heuristic),
        Some("llm") => Ok(CompactionStrategy::Llm),
        Some(other) => Err(bad_request(format!(
            "unknown strategy `{other}`: use \"heuristic\" or \"llm\""
        ))),
    }
}

fn keep(k: Option<usize>, default: usize) -> ApiResult<usize> {
    match k {
        Some(0) => Err(bad_request("`keep_exchanges` must be at least 1")),
        Some(n) => Ok(n),
        None => Ok(default),
    }
}

/// The automatic trigger's state for a session.
fn auto_status(st: &AppState, id: &SessionId, snap: &Snapshot) -> Value {
    let cfg = &st.config.compaction;
    let eff = Effective::of(cfg, &snap.settings);
    let cooldown_ms =
        i64::try_from(cfg.auto.cooldown_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let remaining = snap
        .last_at
        .map_or(0, |at| (cooldown_ms - (now_ms() - at)).max(0));
    json!({
        "session_id": id,
        "enabled": eff.auto_enabled,
        "threshold_pct": eff.threshold_pct,
        "reserved_tokens": eff.reserved_tokens,
        "overrides": snap.settings,
        "cooldown_secs": cfg.auto.cooldown_secs,
        "cooldown_remaining_ms": remaining,
        "consecutive": snap.consecutive,
        "max_consecutive": cfg.auto.max_consecutive,
        "paused": snap.consecutive >= cfg.auto.max_consecutive,
        "running": snap.busy,
        "strategy": cfg.strategy.as_str(),
    })
}

fn point_json(snap: &Snapshot) -> Value {
    snap.point.as_ref().map_or(Value::Null, |p| {
        json!({
            "compaction_id": p.id,
            "cut": p.cut,
            "created_at": p.created_at,
            "summary": p.summary,
        })
    })
}

async fn context(st: &AppState, s: &Session, snap: &Snapshot) -> ApiResult<Value> {
    st.writer.flush().await;
    let stats = st.store.session_stats(&s.id).await.map_err(store_error)?;
    let gauge = gauge_of(st, &s.id, &stats);
    let eff = Effective::of(&st.config.compaction, &snap.settings);
    let with_reserved = if gauge.max_context > 0 {
        gauge.tokens.saturating_add(eff.reserved_tokens) as f64 * 100.0 / gauge.max_context as f64
    } else {
        0.0
    };
    Ok(json!({
        "current_tokens": gauge.tokens,
        "max_context": gauge.max_context,
        "percentage": gauge.pct,
        "reserved_tokens": eff.reserved_tokens,
        "percentage_with_reserved": with_reserved,
        "threshold_pct": eff.threshold_pct,
        "compaction_ready": eff.reached(gauge.tokens, gauge.max_context),
    }))
}

fn done_json(done: &Done) -> Value {
    let r = &done.record;
    json!({
        "compacted": true,
        "compaction": r,
        "savings_pct": if r.tokens_before > 0 { r.tokens_saved as f64 * 100.0 / r.tokens_before as f64 } else { 0.0 },
        "message": format!("{} messages summarised: {} → {} tokens ({} saved); applies to the next request that extends this history", r.summarized, r.tokens_before, r.tokens_after, r.tokens_saved),
    })
}

fn not_done_json(n: &NotDone) -> Value {
    json!({ "compacted": false, "reason": n.reason, "message": n.message })
}

fn no_request(id: &SessionId) -> NotDone {
    NotDone {
        reason: "no_request_seen",
        message: format!(
            "the gateway has not seen a request of session `{id}` since it started: there is no history to compact yet"
        ),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CompactBody {
    force: Option<bool>,
    strategy: Option<String>,
    keep_exchanges: Option<usize>,
    /// The seed's name for `keep_exchanges`.
    preserve_messages: Option<usize>,
}

/// `POST /api/compaction/{id}`: compacts the session's history now. Without `force`, at least
/// `compaction.min_tokens` must be summarisable.
pub async fn compact(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let target = Some(format!("session:{}", s.id.as_str()));
    let b: CompactBody = json_body(
        &raw,
        "{\"force\": bool, \"strategy\": \"heuristic\"|\"llm\", \"keep_exchanges\": n} (all optional)",
    )?;
    let cfg = &st.config.compaction;
    let ask = Ask {
        auto: false,
        strategy: strategy(b.strategy.as_deref(), cfg.strategy)?,
        keep_exchanges: keep(b.keep_exchanges.or(b.preserve_messages), cfg.keep_exchanges)?,
        min_tokens: if b.force.unwrap_or(false) {
            0
        } else {
            cfg.min_tokens
        },
        request_id: None,
        dry: false,
    };
    let Some(input) = st.compaction.last(&s.id) else {
        return Ok(Json(not_done_json(&no_request(&s.id))));
    };
    let Some(claim) = st.compaction.begin_manual(&s.id) else {
        return Ok(Json(not_done_json(&NotDone {
            reason: "running",
            message: "a compaction of this session is already running".to_owned(),
        })));
    };
    let point = st.compaction.snapshot(&s.id).point;
    match compaction::run(&st, &s.id, &input, point, &ask).await {
        Ok(done) => {
            compaction::finish(&st, claim, &done).await;
            let v = done_json(&done);
            audit::record(&st, &actor, Change::new("compaction.compact", target), "ok");
            Ok(Json(v))
        }
        Err(n) => {
            let outcome = format!("not done: {}", n.message);
            audit::record(
                &st,
                &actor,
                Change::new("compaction.compact", target),
                &outcome,
            );
            Ok(Json(not_done_json(&n)))
        }
    }
}

/// `GET /api/compaction/{id}/preview`: what compacting now would do (heuristic summary; nothing
/// is changed).
pub async fn preview(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let snap = st.compaction.snapshot(&s.id);
    let ctx = context(&st, &s, &snap).await?;
    let Some(input) = st.compaction.last(&s.id) else {
        let n = no_request(&s.id);
        return Ok(Json(json!({
            "can_compact": false, "reason": n.reason, "message": n.message, "context": ctx,
        })));
    };
    let cfg = &st.config.compaction;
    let ask = dry_ask(cfg.keep_exchanges);
    Ok(Json(
        match compaction::run(&st, &s.id, &input, snap.point.clone(), &ask).await {
            Ok(done) => estimate(&done, ctx, cfg.strategy.as_str()),
            Err(n) => json!({
                "can_compact": false, "reason": n.reason, "message": n.message, "context": ctx,
            }),
        },
    ))
}

fn dry_ask(keep_exchanges: usize) -> Ask {
    Ask {
        auto: false,
        strategy: CompactionStrategy::Heuristic,
        keep_exchanges,
        min_tokens: 0,
        request_id: None,
        dry: true,
    }
}

fn estimate(done: &Done, ctx: Value, strategy: &str) -> Value {
    let r = &done.record;
    json!({
        "can_compact": true,
        "strategy": strategy,
        "summary_preview": r.summary,
        "preview": {
            "messages_before": r.messages_before,
            "messages_after": r.messages_after,
            "messages_to_summarize": r.summarized,
            "messages_preview": done.replaced.iter().take(10).map(|(role, text)| json!({"role": role, "preview": text})).collect::<Vec<_>>(),
        },
        "estimate": {
            "tokens_before": r.tokens_before,
            "tokens_after": r.tokens_after,
            "tokens_saved": r.tokens_saved,
            "savings_pct": if r.tokens_before > 0 { r.tokens_saved as f64 * 100.0 / r.tokens_before as f64 } else { 0.0 },
            "note": "estimated with the heuristic summary; an llm summary is of similar size (at most summary_max_tokens)",
        },
        "context": ctx,
    })
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SimulateBody {
    messages: Option<Vec<Value>>,
    model: Option<String>,
    keep_exchanges: Option<usize>,
    preserve_messages: Option<usize>,
}

/// `POST /api/compaction/{id}/simulate`: compacts the given `messages` (or, without them, the
/// session's last request) with the heuristic strategy and returns the result; nothing is
/// stored or applied.
pub async fn simulate(
    _: SameOrigin,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let b: SimulateBody = json_body(
        &raw,
        "{\"messages\": [...], \"model\": \"provider/model\", \"keep_exchanges\": n} (all optional)",
    )?;
    let keep = keep(
        b.keep_exchanges.or(b.preserve_messages),
        st.config.compaction.keep_exchanges,
    )?;
    let snap = st.compaction.snapshot(&s.id);
    let (input, point) = match b.messages {
        Some(messages) => {
            if messages.is_empty() {
                return Err(bad_request("`messages` is empty: nothing to simulate"));
            }
            let model = b
                .model
                .or_else(|| s.model_key.clone())
                .ok_or_else(|| bad_request("the session has no model yet: name one in `model`"))?;
            let route = st.router.resolve(&model).map_err(HttpError)?;
            let bytes = Bytes::from(json!({"model": model, "messages": messages}).to_string());
            gatehouse_core::ChatRequestView::parse(&bytes)
                .map_err(|e| bad_request(format!("`messages` is not a valid chat history: {e}")))?;
            (
                Input {
                    redacted: bytes.clone(),
                    masked: bytes,
                    route,
                },
                None,
            )
        }
        None => match st.compaction.last(&s.id) {
            Some(i) => (i, snap.point.clone()),
            None => {
                return Err(bad_request(
                    "send `messages` to simulate on: the gateway has not seen a request of this session since it started",
                ));
            }
        },
    };
    let r = compaction::run(&st, &s.id, &input, point, &dry_ask(keep)).await;
    Ok(Json(match r {
        Ok(done) => {
            let mut v = done_json(&done);
            gatehouse_core::json::set(&mut v, "simulated", json!(true));
            gatehouse_core::json::set(
                &mut v,
                "message",
                format!(
                    "{} messages would be summarised: {} → {} tokens",
                    done.record.summarized, done.record.tokens_before, done.record.tokens_after
                ),
            );
            v
        }
        Err(n) => {
            let mut v = not_done_json(&n);
            gatehouse_core::json::set(&mut v, "simulated", json!(true));
            v
        }
    }))
}

/// `GET /api/compaction/{id}/stats`.
pub async fn session_stats(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let snap = st.compaction.snapshot(&s.id);
    let ctx = context(&st, &s, &snap).await?;
    let totals = st
        .store
        .compaction_totals(Some(&s.id))
        .await
        .map_err(store_error)?;
    let last = st
        .store
        .list_compactions(Some(&s.id), 1)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "session_id": s.id,
        "compaction": totals,
        "last": last.first(),
        "point": point_json(&snap),
        "auto": auto_status(&st, &s.id, &snap),
        "context": ctx,
    })))
}

#[derive(Deserialize)]
pub struct HistoryQuery {
    limit: Option<u32>,
}

/// `GET /api/compaction/{id}/history`: the session's compactions, newest first, with running
/// totals.
pub async fn history(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(50).clamp(1, MAX_HISTORY);
    st.writer.flush().await;
    let rows = st
        .store
        .list_compactions(Some(&s.id), limit)
        .await
        .map_err(store_error)?;
    let total_saved: u64 = rows.iter().map(|r| r.tokens_saved).sum();
    Ok(Json(json!({
        "session_id": s.id,
        "history": rows,
        "total_entries": rows.len(),
        "tokens_saved": total_saved,
    })))
}

/// `GET /api/compaction/{id}/auto-status`.
pub async fn auto(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let snap = st.compaction.snapshot(&s.id);
    Ok(Json(auto_status(&st, &s.id, &snap)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ToggleBody {
    enabled: Option<bool>,
    /// A number sets the session's threshold; `null` goes back to the configured one.
    #[serde(default, deserialize_with = "double_option")]
    threshold_pct: Option<Option<f64>>,
}

fn double_option<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<f64>>, D::Error> {
    Option::<f64>::deserialize(d).map(Some)
}

/// `POST /api/compaction/{id}/toggle-auto` (`{"enabled": bool, "threshold_pct": n|null}`, or no
/// body to flip): the session's automatic compaction, persisted.
pub async fn toggle_auto(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    let b: ToggleBody = json_body(
        &raw,
        "{\"enabled\": bool, \"threshold_pct\": number|null} (all optional)",
    )?;
    if let Some(Some(t)) = b.threshold_pct
        && !(t.is_finite() && t > 0.0 && t <= 100.0)
    {
        return Err(bad_request(
            "`threshold_pct` must be above 0 and at most 100",
        ));
    }
    let cfg = &st.config.compaction;
    let flip_only = b.enabled.is_none() && b.threshold_pct.is_none();
    let before = st.compaction.snapshot(&s.id).settings;
    let settings = st.compaction.update_settings(&s.id, |set| {
        let now = set.auto_enabled.unwrap_or(cfg.auto.enabled);
        if let Some(e) = b.enabled {
            set.auto_enabled = Some(e);
        } else if flip_only {
            set.auto_enabled = Some(!now);
        }
        if let Some(t) = b.threshold_pct {
            set.threshold_pct = t;
        }
    });
    audit::record(
        &st,
        &actor,
        Change::new(
            "compaction.toggle_auto",
            format!("session:{}", s.id.as_str()),
        )
        .before(json!(before))
        .after(json!(settings)),
        "ok",
    );
    st.writer
        .record(WriteOp::SetCompactionSettings {
            session: s.id.clone(),
            settings,
        })
        .await;
    let snap = st.compaction.snapshot(&s.id);
    Ok(Json(auto_status(&st, &s.id, &snap)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReservedBody {
    reserved_tokens: u64,
}

/// `POST /api/compaction/{id}/reserved` (`{"reserved_tokens": n}`): tokens kept free for the
/// answer, counted with the prompt against the threshold.
pub async fn reserved(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let s = session(&st, id).await?;
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(bad_request("send {\"reserved_tokens\": n}"));
    }
    let b: ReservedBody = json_body(&raw, "{\"reserved_tokens\": n}")?;
    if b.reserved_tokens > 10_000_000 {
        return Err(bad_request(
            "`reserved_tokens` is larger than any model's window",
        ));
    }
    let before = st.compaction.snapshot(&s.id).settings;
    let settings = st
        .compaction
        .update_settings(&s.id, |set| set.reserved_tokens = b.reserved_tokens);
    audit::record(
        &st,
        &actor,
        Change::new("compaction.reserved", format!("session:{}", s.id.as_str()))
            .before(json!(before))
            .after(json!(settings)),
        "ok",
    );
    st.writer
        .record(WriteOp::SetCompactionSettings {
            session: s.id.clone(),
            settings,
        })
        .await;
    let snap = st.compaction.snapshot(&s.id);
    let mut v = auto_status(&st, &s.id, &snap);
    gatehouse_core::json::set(&mut v, "context", context(&st, &s, &snap).await?);
    Ok(Json(v))
}

/// `GET /api/compaction/stats`: totals across sessions, since start, the configuration and the
/// active session's state.
pub async fn global_stats(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    st.writer.flush().await;
    let totals = st
        .store
        .compaction_totals(None)
        .await
        .map_err(store_error)?;
    let cfg = &st.config.compaction;
    let active = match st.sessions.active() {
        Some(s) => {
            let snap = st.compaction.snapshot(&s.id);
            json!({
                "session_id": s.id,
                "point": point_json(&snap),
                "auto": auto_status(&st, &s.id, &snap),
                "context": context(&st, &s, &snap).await?,
            })
        }
        None => Value::Null,
    };
    use std::sync::atomic::Ordering;
    Ok(Json(json!({
        "global": totals,
        "since_start": {
            "requests_rewritten": st.compaction.applied.load(Ordering::Relaxed),
            "tokens_saved_on_requests": st.compaction.applied_saved.load(Ordering::Relaxed),
        },
        "config": {
            "strategy": cfg.strategy.as_str(),
            "summary_model": if cfg.summary_model.is_empty() { Value::Null } else { json!(cfg.summary_model) },
            "keep_exchanges": cfg.keep_exchanges,
            "summary_max_tokens": cfg.summary_max_tokens,
            "summary_temperature": cfg.summary_temperature,
            "min_tokens": cfg.min_tokens,
            "auto": {
                "enabled": cfg.auto.enabled,
                "threshold_pct": cfg.auto.threshold_pct,
                "cooldown_secs": cfg.auto.cooldown_secs,
                "max_consecutive": cfg.auto.max_consecutive,
            },
        },
        "active_session": active,
    })))
}
