//! The teams API (`/api/teams`, admins): limits and a budget shared by several keys. As with
//! keys, a change applies to the registry at once and reaches the database through the writer.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::record::TeamRecord;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::keys::{self, TeamChange, TeamEntry};
use gatehouse_store::{SpendOf, WriteOp};
use serde_json::{Value, json};

use super::keys::{SpendQuery, refused, spend_report};
use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, json_body};
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

fn entry(st: &AppState, id: &str) -> ApiResult<std::sync::Arc<TeamEntry>> {
    st.keys.team(id).ok_or_else(|| {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("team `{id}` does not exist"),
        ))
    })
}

/// A team as listings show it, with the ids of its keys.
fn view(st: &AppState, t: &TeamEntry) -> Value {
    let mut v = t.view(now_ms());
    if let Some(o) = v.as_object_mut() {
        let members: Vec<Value> = st
            .keys
            .members(&t.id)
            .iter()
            .map(|k| k.id.clone().into())
            .collect();
        o.insert("keys".into(), members.into());
    }
    v
}

/// Applies `record` here and queues it for the database, with its audit row.
fn save(
    st: &AppState,
    actor: &Actor,
    action: &str,
    before: Option<&TeamRecord>,
    record: TeamRecord,
) {
    let shown = |r: &TeamRecord| serde_json::to_value(r).unwrap_or(Value::Null);
    let mut change = Change::new(action, format!("team:{}", record.id)).after(shown(&record));
    if let Some(b) = before {
        change = change.before(shown(b));
    }
    audit::record(st, actor, change, "ok");
    st.writer
        .record_now(WriteOp::UpsertTeam(Box::new(record.clone())));
    if let Some(sh) = &st.shared {
        sh.publish(gatehouse_services::shared::Change::Team(Box::new(
            record.clone(),
        )));
    }
    st.keys.apply_team(record, None);
}

pub async fn list(State(st): State<AppState>) -> Json<Value> {
    let teams: Vec<Value> = st.keys.teams().iter().map(|t| view(&st, t)).collect();
    Json(json!({ "teams": teams, "count": teams.len() }))
}

pub async fn show(State(st): State<AppState>, Path(id): Path<String>) -> ApiResult<Json<Value>> {
    let t = entry(&st, &id)?;
    Ok(Json(view(&st, &t)))
}

pub async fn create(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let shape = "a team's settings: {\"name\": …, \"max_budget_usd\": …, \"rpm\": …}";
    let created = json_body::<TeamChange>(&body, shape)
        .map_err(|e| e.0)
        .and_then(|c| keys::create_team(c, now_ms()));
    let record = refused(&st, &actor, "team.create", None, created)?;
    let id = record.id.clone();
    tracing::info!(team = %record.name, id = %id, "team created");
    save(&st, &actor, "team.create", None, record);
    let t = entry(&st, &id)?;
    Ok((StatusCode::CREATED, Json(view(&st, &t))).into_response())
}

pub async fn update(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let t = entry(&st, &id)?;
    let before = t.record();
    let updated = json_body::<TeamChange>(&body, "the settings to change")
        .map_err(|e| e.0)
        .and_then(|c| keys::update_team(&before, c, now_ms()));
    let record = refused(
        &st,
        &actor,
        "team.update",
        Some(format!("team:{id}")),
        updated,
    )?;
    save(&st, &actor, "team.update", Some(&before), record);
    Ok(Json(view(&st, &t)))
}

/// Refused while keys belong to the team: deleting it would free them of its limits.
pub async fn delete(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<Value>> {
    let t = entry(&st, &id)?;
    let members = st.keys.members(&id).len();
    if members > 0 {
        return refused(
            &st,
            &actor,
            "team.delete",
            Some(format!("team:{id}")),
            Err(ApiError::new(
                ErrorKind::InvalidRequest,
                format!(
                    "team `{}` still has {members} key(s); move them to another team (PATCH /api/keys/{{id}} with team_id) or delete them first",
                    t.record().name
                ),
            )),
        );
    }
    let before = t.record();
    let record = keys::delete_team(&before, now_ms());
    tracing::info!(team = %record.name, id = %id, "team deleted");
    save(&st, &actor, "team.delete", Some(&before), record);
    Ok(Json(json!({ "deleted": id })))
}

/// `GET /api/teams/{id}/spend`: the rows of the team's keys summed per day or per model.
pub async fn spend(
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<SpendQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q?;
    let t = entry(&st, &id)?;
    spend_report(&st, SpendOf::Team(&id), &q, |now| t.spend(now)).await
}
