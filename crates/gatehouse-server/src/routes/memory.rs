//! `/api/memory/*`: the memory store (store, similar, frequent, promote, cleanup, stats).
//! The index lives in process (`gatehouse_context::recall`); every change is persisted through
//! the writer, and the index is rebuilt from the database at start. Content is redacted like a
//! request before it is stored (`redaction.mode`: placeholders, refused, or as is), and every
//! route that changes state (`similar` counts accesses and promotes) is a POST behind the
//! origin check.

use std::sync::MutexGuard;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use bytes::Bytes;
use gatehouse_context::recall::Recall;
use gatehouse_context::sanitize;
use gatehouse_core::record::{MemoryKind, MemoryRecord};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, Encoding, ErrorKind};
use gatehouse_store::WriteOp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::{HttpError, bad_request, json_body};
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

/// Largest entry accepted, in bytes.
const MAX_CONTENT: usize = 64 * 1024;
const DAY_MS: i64 = 86_400_000;

fn lock(st: &AppState) -> MutexGuard<'_, Recall> {
    st.recall.lock().unwrap_or_else(|p| p.into_inner())
}

fn kind_of(s: Option<&str>, default: MemoryKind) -> ApiResult<MemoryKind> {
    match s {
        None => Ok(default),
        Some(k) => MemoryKind::parse(k).ok_or_else(|| {
            bad_request(format!(
                "unknown kind `{k}`: use frequent, episodic or semantic"
            ))
        }),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreBody {
    content: String,
    kind: Option<String>,
    session_id: Option<String>,
}

/// `POST /api/memory/store`: adds an entry; the same content again counts as an access.
pub async fn store(
    _: SameOrigin,
    State(st): State<AppState>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let b: StoreBody = json_body(
        &raw,
        r#"{"content": "...", "kind"?: "episodic", "session_id"?: "..."}"#,
    )?;
    let content = b.content.trim();
    if content.is_empty() || content.len() > MAX_CONTENT {
        return Err(bad_request(format!(
            "content must be 1 to {MAX_CONTENT} bytes of text"
        )));
    }
    let kind = kind_of(b.kind.as_deref(), MemoryKind::Episodic)?;
    let (content, redacted) = redact(&st, content)?;
    let now = now_ms();
    let entry = MemoryRecord {
        id: sanitize::reference(&content),
        kind,
        tokens: Encoding::Cl100k.count(&content),
        content,
        session_id: b.session_id,
        access_count: 0,
        created_at: now,
        last_access_at: now,
    };
    let (stored, new) = lock(&st).store(entry, now);
    st.writer
        .record(WriteOp::UpsertMemory(Box::new(stored.clone())))
        .await;
    Ok(Json(
        json!({ "entry": stored, "duplicate": !new, "redacted": redacted }),
    ))
}

/// `text` with its secrets handled as `redaction.mode` says, and the kinds replaced.
fn redact(st: &AppState, text: &str) -> ApiResult<(String, Vec<&'static str>)> {
    let mode = st.config.redaction.mode;
    if mode == gatehouse_config::RedactionMode::Off {
        return Ok((text.to_owned(), Vec::new()));
    }
    let found = st.redactor.scan(text.as_bytes());
    let Some(first) = found.first() else {
        return Ok((text.to_owned(), Vec::new()));
    };
    if mode == gatehouse_config::RedactionMode::Block {
        return Err(HttpError(
            ApiError::new(
                ErrorKind::SecretDetected,
                format!(
                    "the content holds {} ({}); remove it, or set redaction.mode = \"redact\" to store a placeholder instead",
                    first.kind.describe(),
                    first.kind.as_str()
                ),
            )
            .with_param("content"),
        ));
    }
    let out = gatehouse_context::Redactor::redact(text.as_bytes(), &found);
    let mut kinds: Vec<&'static str> = found.iter().map(|f| f.kind.as_str()).collect();
    kinds.dedup();
    Ok((String::from_utf8_lossy(&out).into_owned(), kinds))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimilarQuery {
    q: String,
    limit: Option<usize>,
}

/// `POST /api/memory/similar` (`{"q", "limit"?: 5}`): BM25 best matches; each counts as an
/// access (and may promote its entry), so it changes state and is not a GET.
pub async fn similar(
    _: SameOrigin,
    State(st): State<AppState>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let q: SimilarQuery = json_body(&raw, r#"{"q": "text", "limit"?: 5}"#)?;
    let hits = lock(&st).similar(&q.q, q.limit.unwrap_or(5).clamp(1, 100), now_ms());
    for h in &hits {
        st.writer
            .record(WriteOp::UpsertMemory(Box::new(h.entry.clone())))
            .await;
    }
    Ok(Json(json!({ "query": q.q, "results": hits })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    limit: Option<usize>,
}

/// `GET /api/memory/frequent?limit=20`
pub async fn frequent(
    State(st): State<AppState>,
    q: Result<Query<Limit>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| bad_request(e.body_text()))?;
    let entries = lock(&st).frequent(q.limit.unwrap_or(20).clamp(1, 500));
    Ok(Json(json!({ "entries": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteBody {
    id: String,
    kind: Option<String>,
}

/// `POST /api/memory/promote` (`{"id", "kind"?: "semantic"}`)
pub async fn promote(
    _: SameOrigin,
    State(st): State<AppState>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let b: PromoteBody = json_body(&raw, r#"{"id": "...", "kind"?: "semantic"}"#)?;
    let kind = kind_of(b.kind.as_deref(), MemoryKind::Semantic)?;
    let e = lock(&st).set_kind(&b.id, kind).ok_or_else(|| {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("no memory entry `{}`", b.id),
        ))
    })?;
    st.writer
        .record(WriteOp::UpsertMemory(Box::new(e.clone())))
        .await;
    Ok(Json(json!({ "entry": e })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CleanupBody {
    max_age_days: Option<u32>,
    min_access: Option<u64>,
}

/// `POST /api/memory/cleanup` (`{"max_age_days"?: 30, "min_access"?: 2}`): removes episodic
/// entries older than that and used less than that.
pub async fn cleanup(
    _: SameOrigin,
    State(st): State<AppState>,
    raw: Bytes,
) -> ApiResult<Json<Value>> {
    let b: CleanupBody = json_body(&raw, r#"{"max_age_days"?: 30, "min_access"?: 2}"#)?;
    let days = i64::from(b.max_age_days.unwrap_or(30));
    let cutoff = now_ms() - days * DAY_MS;
    let gone = lock(&st).cleanup(cutoff, b.min_access.unwrap_or(2));
    if !gone.is_empty() {
        st.writer.record(WriteOp::DeleteMemory(gone.clone())).await;
    }
    Ok(Json(json!({ "removed": gone.len(), "ids": gone })))
}

/// `GET /api/memory/stats`
pub async fn stats(State(st): State<AppState>) -> Json<Value> {
    let r = lock(&st);
    let by_kind: serde_json::Map<String, Value> = r
        .stats()
        .into_iter()
        .map(|(k, (n, t))| (k.to_owned(), json!({ "entries": n, "tokens": t })))
        .collect();
    Json(
        json!({ "entries": r.len(), "by_kind": by_kind, "promote_after": gatehouse_context::recall::PROMOTE_AFTER }),
    )
}
