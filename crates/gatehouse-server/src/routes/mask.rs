//! The sanitizer's API: originals by reference, the list, figures, and the switch.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use bytes::Bytes;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_store::WriteOp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::HttpError;
use crate::origin::SameOrigin;
use crate::routes::sessions::store_error;
use crate::serve::SANITIZER_KEY;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

const MAX_PAGE: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    limit: Option<u32>,
    offset: Option<u32>,
}

/// `GET /api/mask`: masked originals, newest first, without their text.
pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<Page>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| {
        HttpError(ApiError::new(ErrorKind::InvalidRequest, e.body_text()).with_param("query"))
    })?;
    st.writer.flush().await;
    let limit = q.limit.unwrap_or(50).min(MAX_PAGE);
    let items = st
        .store
        .list_masked(limit, q.offset.unwrap_or(0))
        .await
        .map_err(store_error)?;
    let totals = st.store.masked_totals().await.map_err(store_error)?;
    Ok(Json(json!({ "masked": items, "total": totals.count })))
}

/// `GET /api/mask/{ref}`: one original, whole.
pub async fn get(
    State(st): State<AppState>,
    reference: Result<Path<String>, PathRejection>,
) -> ApiResult<Json<Value>> {
    let Path(reference) = reference?;
    let valid = reference.len() == 16 && reference.bytes().all(|b| b.is_ascii_hexdigit());
    let missing = || {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!(
                "no masked content with reference `{reference}` (references are 16 hex characters)"
            ),
        ))
    };
    if !valid {
        return Err(missing());
    }
    st.writer.flush().await;
    match st.store.get_masked(&reference).await.map_err(store_error)? {
        Some(m) => Ok(Json(json!(m))),
        None => Err(missing()),
    }
}

/// `GET /api/sanitizer/stats`
pub async fn stats(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    st.writer.flush().await;
    let totals = st.store.masked_totals().await.map_err(store_error)?;
    let cfg = &st.config.sanitizer;
    Ok(Json(json!({
        "enabled": st.sanitizer.enabled.load(Ordering::Relaxed),
        "redaction_mode": st.config.redaction.mode.as_str(),
        "observation_masking": cfg.observation_masking,
        "threshold_tokens": cfg.threshold_tokens,
        "preview_length": cfg.preview_length,
        "since_start": {
            "masked_messages": st.sanitizer.masked.load(Ordering::Relaxed),
            "tokens_saved": st.sanitizer.tokens_saved.load(Ordering::Relaxed),
        },
        "stored": {
            "originals": totals.count,
            "original_tokens": totals.tokens,
            "tokens_saved_per_request": totals.tokens_saved_per_request,
        },
    })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToggleBody {
    enabled: Option<bool>,
}

/// `POST /api/sanitizer/toggle` (`{"enabled": bool}`, or no body to flip): switches masking for
/// the next requests and remembers the choice across restarts.
pub async fn toggle(
    _: SameOrigin,
    actor: crate::audit::Actor,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let before = st.sanitizer.enabled.load(Ordering::Relaxed);
    let wanted = if body.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        let b: ToggleBody = serde_json::from_slice(&body).map_err(|e| {
            HttpError(ApiError::new(
                ErrorKind::InvalidJson,
                format!("the body must be {{\"enabled\": true|false}} or empty: {e}"),
            ))
        })?;
        b.enabled
    };
    let now = match wanted {
        Some(v) => {
            st.sanitizer.enabled.store(v, Ordering::Relaxed);
            v
        }
        None => !st.sanitizer.enabled.fetch_xor(true, Ordering::Relaxed),
    };
    st.writer
        .record(WriteOp::SetSetting {
            key: SANITIZER_KEY.to_owned(),
            value: now.to_string(),
        })
        .await;
    tracing::info!(enabled = now, "sanitizer switched");
    crate::audit::record(
        &st,
        &actor,
        crate::audit::Change::new("sanitizer.toggle", None)
            .before(json!({ "enabled": before }))
            .after(json!({ "enabled": now })),
        "ok",
    );
    Ok(Json(json!({ "enabled": now })))
}
