//! The virtual keys API (`/api/keys`). A change applies to the registry at once and reaches
//! the database through the writer; the key itself appears once, in the answer that creates or
//! rotates it.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::record::KeyRecord;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::keys::{self, KeyChange};
use gatehouse_store::{SpendGroup, SpendOf, WriteOp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, json_body};
use crate::login::Caller;
use crate::origin::SameOrigin;
use crate::routes::sessions::store_error;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

fn not_found(id: &str) -> HttpError {
    HttpError(ApiError::new(
        ErrorKind::NotFound,
        format!("key `{id}` does not exist"),
    ))
}

/// Key `id`, if the caller may see it: a member's view has their own keys only, and another's
/// key reads as absent (so ids cannot be probed).
fn entry(st: &AppState, caller: &Caller, id: &str) -> ApiResult<std::sync::Arc<keys::KeyEntry>> {
    st.keys
        .get(id)
        .filter(|e| caller.may_use_key(e.record().owner.as_deref()))
        .ok_or_else(|| not_found(id))
}

/// Applies `record` here and queues it for the database, with its audit row.
fn save(st: &AppState, actor: &Actor, action: &str, before: Option<&KeyRecord>, record: KeyRecord) {
    let shown = |r: &KeyRecord| serde_json::to_value(r).unwrap_or(Value::Null);
    let mut change = Change::new(action, format!("key:{}", record.id)).after(shown(&record));
    if let Some(b) = before {
        change = change.before(shown(b));
    }
    audit::record(st, actor, change, "ok");
    st.writer
        .record_now(WriteOp::UpsertKey(Box::new(record.clone())));
    if let Some(sh) = &st.shared {
        sh.publish(gatehouse_services::shared::Change::Key(Box::new(
            record.clone(),
        )));
    }
    st.keys.apply(record, None);
}

/// Members create, use, rotate, block and delete their keys; loosening what an admin set (limits,
/// models, a block) is an admin's.
fn members_may_not(caller: &Caller, what: &str) -> ApiResult<()> {
    if caller.member().is_some() {
        return Err(HttpError(ApiError::new(
            ErrorKind::Forbidden,
            format!("a member may not {what}; ask an admin"),
        )));
    }
    Ok(())
}

/// A key's team, when the change names one, must exist; putting a key in a team or taking it
/// out is an admin's (a team's budget is shared, and leaving one lifts its limits).
fn check_team(st: &AppState, caller: &Caller, c: &KeyChange) -> Result<(), ApiError> {
    let Some(team) = &c.team_id else {
        return Ok(());
    };
    if caller.member().is_some() {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            "a member may not move a key between teams; ask an admin",
        ));
    }
    if let Some(id) = team
        && st.keys.team(id.trim()).is_none()
    {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("team `{id}` does not exist; GET /api/teams lists them"),
        )
        .with_param("team_id"));
    }
    Ok(())
}

/// The team of the member making a request, from their record.
async fn member_team(st: &AppState, caller: &Caller) -> ApiResult<Option<String>> {
    let Some(p) = caller.0.as_deref().filter(|_| caller.member().is_some()) else {
        return Ok(None);
    };
    Ok(st
        .store
        .user_by_id(&p.user_id)
        .await
        .map_err(crate::error::store_failed)?
        .and_then(|u| u.team_id))
}

/// A member's keys are theirs: whatever owner the body names, the member is the owner.
fn owned_by_member(caller: &Caller, mut c: KeyChange) -> KeyChange {
    if let Some(own) = caller.member() {
        c.owner = Some(Some(own.to_owned()));
    }
    c
}

/// A refused change still leaves its audit row.
pub(crate) fn refused<T>(
    st: &AppState,
    actor: &Actor,
    action: &str,
    target: Option<String>,
    r: Result<T, ApiError>,
) -> Result<T, HttpError> {
    r.map_err(|e| {
        audit::record(
            st,
            actor,
            Change::new(action, target),
            &format!("refused: {}", e.message),
        );
        HttpError(e)
    })
}

pub async fn list(State(st): State<AppState>, caller: Caller) -> Json<Value> {
    let now = now_ms();
    let keys: Vec<Value> = st
        .keys
        .list()
        .iter()
        .filter(|e| caller.may_use_key(e.record().owner.as_deref()))
        .map(|e| e.view(now))
        .collect();
    Json(json!({ "keys": keys, "count": keys.len() }))
}

pub async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    Ok(Json(entry(&st, &caller, &id)?.view(now_ms())))
}

/// The answer that carries a key, the only time it is shown.
fn with_key(st: &AppState, id: &str, raw: &str, status: StatusCode) -> ApiResult<Response> {
    let mut v = st.keys.get(id).ok_or_else(|| not_found(id))?.view(now_ms());
    if let Some(o) = v.as_object_mut() {
        o.insert("key".into(), raw.into());
    }
    Ok((status, Json(v)).into_response())
}

pub async fn create(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let shape = "a key's settings: {\"name\": …, \"models\": […], \"rpm\": …}";
    let member_team = member_team(&st, &caller).await?;
    let change = json_body::<KeyChange>(&body, shape)
        .map_err(|e| e.0)
        .map(|c| owned_by_member(&caller, c))
        .and_then(|c| check_team(&st, &caller, &c).map(|()| c))
        .map(|mut c| {
            // A member's key joins the member's team: a new key is no way out of its limits.
            if caller.member().is_some() {
                c.team_id = Some(member_team);
            }
            c
        });
    let created = change.and_then(|c| keys::create(c, now_ms()));
    let (raw, record) = refused(&st, &actor, "key.create", None, created)?;
    let id = record.id.clone();
    tracing::info!(key = %record.name, id = %id, "virtual key created");
    save(&st, &actor, "key.create", None, record);
    with_key(&st, &id, &raw, StatusCode::CREATED)
}

pub async fn update(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let target = Some(format!("key:{id}"));
    let e = entry(&st, &caller, &id)?;
    members_may_not(&caller, "change a key's settings")?;
    let before = e.record();
    let change = json_body::<KeyChange>(&body, "the settings to change")
        .map_err(|e| e.0)
        .map(|c| owned_by_member(&caller, c))
        .and_then(|c| check_team(&st, &caller, &c).map(|()| c));
    let updated = change.and_then(|c| keys::update(&before, c, now_ms()));
    let record = refused(&st, &actor, "key.update", target, updated)?;
    save(&st, &actor, "key.update", Some(&before), record);
    Ok(Json(e.view(now_ms())))
}

async fn set_blocked(
    st: &AppState,
    actor: &Actor,
    caller: &Caller,
    id: &str,
    blocked: bool,
) -> ApiResult<Json<Value>> {
    let e = entry(st, caller, id)?;
    if !blocked {
        members_may_not(caller, "unblock a key")?;
    }
    let change = KeyChange {
        blocked: Some(blocked),
        ..KeyChange::default()
    };
    let before = e.record();
    let action = if blocked { "key.block" } else { "key.unblock" };
    save(
        st,
        actor,
        action,
        Some(&before),
        keys::update(&before, change, now_ms())?,
    );
    Ok(Json(e.view(now_ms())))
}

pub async fn block(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_blocked(&st, &actor, &caller, &id, true).await
}

pub async fn unblock(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    set_blocked(&st, &actor, &caller, &id, false).await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateBody {
    /// How long the old key keeps working: `60s`, `1h`; `0` or absent ends it at once.
    #[serde(default)]
    grace: Option<String>,
}

pub async fn rotate(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: RotateBody = json_body(&body, "{\"grace\": \"60s\"}")?;
    let grace = match b.grace.as_deref().map(str::trim) {
        None | Some("0" | "0s" | "") => 0,
        Some(g) => keys::parse_duration(g).map_err(|m| {
            HttpError(ApiError::new(ErrorKind::InvalidRequest, m).with_param("grace"))
        })?,
    };
    let e = entry(&st, &caller, &id)?;
    let before = e.record();
    let (raw, record) = keys::rotate(&before, grace, now_ms())?;
    tracing::info!(key = %record.name, id = %id, grace_s = grace, "virtual key rotated");
    save(&st, &actor, "key.rotate", Some(&before), record);
    with_key(&st, &id, &raw, StatusCode::OK)
}

pub async fn delete(
    _: SameOrigin,
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = entry(&st, &caller, &id)?;
    let before = e.record();
    let record = keys::delete(&before, now_ms());
    tracing::info!(key = %record.name, id = %id, "virtual key deleted");
    save(&st, &actor, "key.delete", Some(&before), record);
    Ok(Json(json!({ "deleted": id })))
}

#[derive(Deserialize)]
pub(crate) struct SpendQuery {
    /// Epoch milliseconds; default: 30 days ago.
    from: Option<i64>,
    /// Epoch milliseconds, exclusive; default: now.
    to: Option<i64>,
    /// `day` (default) or `model`.
    group_by: Option<String>,
}

/// `GET /api/keys/{id}/spend`: the key's rows summed per day or per model.
pub async fn spend(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    q: Result<Query<SpendQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let e = entry(&st, &caller, &id)?;
    spend_report(&st, SpendOf::Key(&id), &q, |now| e.spend(now)).await
}

/// The rows of a key or a team summed per group, beside its live spend (`current`).
pub(crate) async fn spend_report(
    st: &AppState,
    of: SpendOf<'_>,
    q: &SpendQuery,
    current: impl FnOnce(i64) -> (gatehouse_core::record::KeySpend, f64),
) -> ApiResult<Json<Value>> {
    let group = match q.group_by.as_deref() {
        None | Some("day") => SpendGroup::Day,
        Some("model") => SpendGroup::Model,
        Some(other) => {
            return Err(HttpError(
                ApiError::new(
                    ErrorKind::InvalidRequest,
                    format!("group_by must be `day` or `model`, not `{other}`"),
                )
                .with_param("group_by"),
            ));
        }
    };
    let now = now_ms();
    let to = q.to.unwrap_or(now.saturating_add(1));
    let from = q.from.unwrap_or(to.saturating_sub(30 * 86_400_000));
    // Rows still queued are part of the answer.
    st.writer.flush().await;
    let rows = st
        .store
        .spend(of, from, to, group)
        .await
        .map_err(store_error)?;
    let total: f64 = rows.iter().map(|r| r.cost_usd).sum();
    let requests: u64 = rows.iter().map(|r| r.requests).sum();
    let (spend, reserved) = current(now);
    let (id_field, id) = match of {
        SpendOf::Key(id) => ("key_id", id),
        SpendOf::Team(id) => ("team_id", id),
    };
    Ok(Json(json!({
        id_field: id,
        "from": from,
        "to": to,
        "group_by": if group == SpendGroup::Day { "day" } else { "model" },
        "groups": rows,
        "total_cost_usd": total,
        "requests": requests,
        "period_spend_usd": spend.spend_usd,
        "budget_reset_at": spend.budget_reset_at,
        "reserved_usd": reserved,
    })))
}
