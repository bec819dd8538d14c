//! The sessions API. Reads flush the writer first, so they see every request already answered.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::record::Session;
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_services::SessionError;
use gatehouse_services::gauge::GaugeView;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::error::HttpError;
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

/// Recent requests shown with the active session.
const RECENT: u32 = 10;
const MAX_PAGE: u32 = 500;

fn service_error(e: SessionError) -> HttpError {
    let kind = match e {
        SessionError::NotFound(_) => ErrorKind::NotFound,
        SessionError::BadName => ErrorKind::InvalidRequest,
    };
    let mut err = ApiError::new(kind, e.to_string());
    if matches!(e, SessionError::BadName) {
        err = err.with_param("name");
    }
    HttpError(err)
}

pub(crate) fn store_error(e: gatehouse_store::StoreError) -> HttpError {
    tracing::error!(error = %e, "store read failed");
    HttpError(ApiError::new(
        ErrorKind::Internal,
        "the database could not be read; see the gateway log",
    ))
}

fn session_id(p: Result<Path<String>, PathRejection>) -> ApiResult<SessionId> {
    let Path(raw) = p?;
    SessionId::parse_client(&raw).ok_or_else(|| {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("session `{raw}` does not exist"),
        ))
    })
}

async fn with_stats(st: &AppState, s: Session) -> ApiResult<Value> {
    let stats = st.store.session_stats(&s.id).await.map_err(store_error)?;
    let gauge = gauge_of(st, &s.id, &stats);
    Ok(json!({ "session": s, "stats": stats, "gauge": gauge }))
}

/// The live gauge of a session, or one derived from its stored last request.
pub(crate) fn gauge_of(
    st: &AppState,
    id: &SessionId,
    stats: &gatehouse_core::record::SessionStats,
) -> GaugeView {
    st.gauges.view(id).unwrap_or_else(|| {
        GaugeView::from_stored(id, stats.current_total_tokens, stats.max_context)
    })
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    st.writer.flush().await;
    let sessions = st.store.list_sessions().await.map_err(store_error)?;
    let active = st.sessions.active().map(|s| s.id);
    Ok(Json(json!({ "sessions": sessions, "active_id": active })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBody {
    name: Option<String>,
    model: Option<String>,
}

pub async fn create(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    // An empty body is allowed: it opens an unnamed session with no model yet.
    let body: CreateBody = if body.iter().all(u8::is_ascii_whitespace) {
        CreateBody {
            name: None,
            model: None,
        }
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            HttpError(ApiError::new(
                ErrorKind::InvalidJson,
                format!("invalid session body: {e}"),
            ))
        })?
    };
    let model = match body.model {
        Some(m) => {
            let provider = match st.router.resolve(&m) {
                Ok(route) => route.provider_key.clone(),
                // A session may be prepared for a model whose key is not set yet.
                Err(e)
                    if matches!(
                        e.kind,
                        ErrorKind::ProviderKeyMissing | ErrorKind::ProviderUnsupported
                    ) =>
                {
                    match st.config.models.get(&m) {
                        Some(c) => c.provider.clone(),
                        None => m.split('/').next().unwrap_or_default().to_owned(),
                    }
                }
                Err(e) => return Err(HttpError(e.with_param("model"))),
            };
            Some((m, provider))
        }
        None => None,
    };
    let s = st
        .sessions
        .create(body.name, model)
        .await
        .map_err(service_error)?;
    audit::record(
        &st,
        &actor,
        Change::new("session.create", format!("session:{}", s.id.as_str())).after(json!(s)),
        "ok",
    );
    let v = with_stats(&st, s).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

pub async fn active(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    st.writer.flush().await;
    let Some(s) = st.sessions.active() else {
        return Ok(Json(
            json!({ "session": null, "stats": null, "recent_requests": [] }),
        ));
    };
    let recent = st
        .store
        .list_requests(&s.id, RECENT, 0)
        .await
        .map_err(store_error)?;
    let mut v = with_stats(&st, s).await?;
    gatehouse_core::json::set(&mut v, "recent_requests", json!(recent));
    Ok(Json(v))
}

pub async fn get(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = session_id(id)?;
    st.writer.flush().await;
    let s = st
        .sessions
        .find(&id)
        .await
        .ok_or_else(|| service_error(SessionError::NotFound(id.clone())))?;
    let mut v = with_stats(&st, s).await?;
    gatehouse_core::json::set(
        &mut v,
        "active",
        json!(st.sessions.active().is_some_and(|a| a.id == id)),
    );
    Ok(Json(v))
}

pub async fn activate(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let id = session_id(id)?;
    let s = st.sessions.activate(&id).await.map_err(service_error)?;
    audit::record(
        &st,
        &actor,
        Change::new("session.activate", format!("session:{}", id.as_str())),
        "ok",
    );
    st.writer.flush().await;
    Ok(Json(with_stats(&st, s).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameBody {
    name: String,
}

pub async fn rename(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    body: Result<Json<RenameBody>, JsonRejection>,
) -> ApiResult<Json<Value>> {
    let id = session_id(id)?;
    let Json(body) = body?;
    let s = st
        .sessions
        .rename(&id, &body.name)
        .await
        .map_err(service_error)?;
    audit::record(
        &st,
        &actor,
        Change::new("session.rename", format!("session:{}", id.as_str()))
            .after(json!({ "name": body.name })),
        "ok",
    );
    Ok(Json(json!({ "session": s })))
}

pub async fn delete(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
) -> ApiResult<StatusCode> {
    let id = session_id(id)?;
    st.sessions.delete(&id).await.map_err(service_error)?;
    audit::record(
        &st,
        &actor,
        Change::new("session.delete", format!("session:{}", id.as_str())),
        "ok",
    );
    st.gauges.forget(&id);
    st.compaction.forget(&id);
    st.writer.flush().await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub struct Page {
    limit: Option<u32>,
    offset: Option<u32>,
}

pub async fn requests(
    State(st): State<AppState>,
    id: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let id = session_id(id)?;
    let Query(page) = page?;
    if st.sessions.find(&id).await.is_none() {
        return Err(service_error(SessionError::NotFound(id)));
    }
    let limit = page.limit.unwrap_or(50).clamp(1, MAX_PAGE);
    let offset = page.offset.unwrap_or(0);
    st.writer.flush().await;
    let total = st.store.count_requests(&id).await.map_err(store_error)?;
    let rows = st
        .store
        .list_requests(&id, limit, offset)
        .await
        .map_err(store_error)?;
    Ok(Json(json!({
        "session_id": id,
        "requests": rows,
        "total": total,
        "limit": limit,
        "offset": offset,
    })))
}
