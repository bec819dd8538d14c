//! `GET /api/audit`: the audit trail, newest first, with filters and a cursor. No route
//! changes or deletes its rows.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_store::AuditFilter;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::HttpError;
use crate::routes::sessions::store_error;
use crate::state::AppState;

const MAX_PAGE: u32 = 500;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Actions starting with this: `key.` for every key change.
    action: Option<String>,
    actor: Option<String>,
    target: Option<String>,
    /// Epoch milliseconds.
    from: Option<i64>,
    to: Option<i64>,
    /// The `next_cursor` of the previous page.
    cursor: Option<i64>,
    limit: Option<u32>,
}

pub async fn list(
    State(st): State<AppState>,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<Value>, HttpError> {
    let Query(q) = q?;
    let limit = q.limit.unwrap_or(100);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(HttpError(
            ApiError::new(
                ErrorKind::InvalidRequest,
                format!("limit must be between 1 and {MAX_PAGE}"),
            )
            .with_param("limit"),
        ));
    }
    // Changes still queued are part of the answer.
    st.writer.flush().await;
    let filter = AuditFilter {
        action: q.action,
        actor: q.actor,
        target: q.target,
        from_ms: q.from,
        to_ms: q.to,
        before_seq: q.cursor,
        limit,
    };
    let entries = st.store.list_audit(&filter).await.map_err(store_error)?;
    let next = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(json!({ "entries": entries, "next_cursor": next })))
}
