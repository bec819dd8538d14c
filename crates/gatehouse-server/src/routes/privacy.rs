//! A user's data, exported and erased (`GET /api/users/{id}/export`,
//! `DELETE /api/users/{id}?erase=true`), for admins.
//!
//! "Their data" is what their login and their keys (those they own, deleted ones included)
//! left: the user record (never the password hash), login attempts, their audit rows as actor,
//! the keys' records (never a key or its digest) and request rows, the masked originals their
//! requests first stored, and of the sessions only their keys used, the compactions and memory.
//! A session shared with other keys is listed but not erased: its other rows are not theirs.
//!
//! Erasure removes that content and keeps the accounting: rows keep their tokens and cost under
//! their key ids, the keys their spend; the user's name, their keys' names and owners become a
//! tombstone id, so totals stay true and nothing names the person. The trail's rows by them or
//! about them have their personal fields blanked: a version-2 row chains a salted digest of
//! those fields, so the chain still verifies once they and the salt are gone (`sqlite.rs`,
//! `audit_hash_v2`). The audit row of the erasure names the user id and the tombstone only.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, header};
use axum::response::Response;
use gatehouse_core::record::{KeyRecord, Role, UserRecord};
use gatehouse_core::time::{now_ms, rfc3339_ms};
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_services::export::Format;
use gatehouse_store::{AuditFilter, Erasure, Scope, WriteOp};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, store_failed};
use crate::login::Caller;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

/// Pages read from the store at a time.
const PAGE: u32 = 1000;

/// A user's data reads everything they sent: an admin's, not a viewer's.
fn admins_only(caller: &Caller) -> ApiResult<()> {
    match caller.0.as_deref() {
        Some(p) if p.role != Role::Admin => Err(HttpError(ApiError::new(
            ErrorKind::Forbidden,
            "only an admin may export or erase a user's data",
        ))),
        _ => Ok(()),
    }
}

async fn user(st: &AppState, id: &str) -> ApiResult<UserRecord> {
    st.store
        .user_by_id(id)
        .await
        .map_err(store_failed)?
        .ok_or_else(|| {
            HttpError(ApiError::new(
                ErrorKind::NotFound,
                format!("user `{id}` does not exist"),
            ))
        })
}

/// Every key `username` owns, deleted ones included.
async fn owned_keys(st: &AppState, username: &str) -> ApiResult<Vec<KeyRecord>> {
    Ok(st
        .store
        .load_keys(0)
        .await
        .map_err(store_failed)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.owner.as_deref() == Some(username))
        .collect())
}

/// `GET /api/users/{id}/export`: one JSON document, its request rows streamed last.
pub async fn export(
    actor: Actor,
    caller: Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Response> {
    admins_only(&caller)?;
    let u = user(&st, &id).await?;
    // Keys and rows still queued are part of the export.
    st.writer.flush().await;
    let keys = owned_keys(&st, &u.username).await?;
    let key_ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let logins = all_logins(&st, &u.username).await?;
    let trail = all_audit(&st, &u, &key_ids).await?;
    let sessions = st
        .store
        .sessions_of_keys(&key_ids)
        .await
        .map_err(store_failed)?;
    let own: Vec<&str> = sessions
        .iter()
        .filter(|(_, only)| *only)
        .map(|(s, _)| s.id.as_str())
        .collect();
    let mut compactions = Vec::new();
    for s in &own {
        let id = SessionId::new(*s);
        compactions.extend(
            st.store
                .list_compactions(Some(&id), u32::MAX)
                .await
                .map_err(store_failed)?,
        );
    }
    let memory = st
        .recall
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .of_sessions(&own);
    let masked = st
        .store
        .masked_of_keys(&key_ids)
        .await
        .map_err(store_failed)?;
    let now = now_ms();
    let key_views: Vec<Value> = keys
        .iter()
        .map(|k| match st.keys.get(&k.id) {
            Some(e) => e.view(now),
            None => serde_json::to_value(k).unwrap_or(Value::Null),
        })
        .collect();
    let sessions: Vec<Value> = sessions
        .iter()
        .map(|(s, only)| json!({"session": s, "only_this_user": only}))
        .collect();
    let doc = json!({
        "exported_at": rfc3339_ms(now),
        "user": crate::routes::users::shown(&u),
        "keys": key_views,
        "login_history": logins,
        "audit": trail,
        "sessions": sessions,
        "compactions": compactions,
        "memory": memory,
        "masked": masked,
    });
    // The document without its closing brace, then the rows as `"requests": [...]}`.
    let mut head = doc.to_string();
    head.pop();
    head.push_str(",\"requests\":[");
    audit::record(
        &st,
        &actor,
        Change::new("user.export", Some(format!("user:{}", u.id))),
        "ok",
    );
    let (tx, rx) = mpsc::channel(crate::routes::export::ROW_CHANNEL);
    let store = st.store.clone();
    let scope = Scope::Keys(key_ids);
    tokio::spawn(async move { store.export_requests(&scope, tx).await });
    let mut r = Response::new(Body::from_stream(crate::routes::export::chunks(
        rx,
        Format::Json,
        head,
    )));
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"gatehouse-user-{}.json\"",
        u.id
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

async fn all_logins(st: &AppState, username: &str) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = st
            .store
            .login_history(Some(username), before.as_deref(), PAGE)
            .await
            .map_err(store_failed)?;
        let full = page.len() == PAGE as usize;
        before = page.last().map(|e| e.id.clone());
        out.extend(
            page.iter()
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
        );
        if !full {
            return Ok(out);
        }
    }
}

/// The trail's rows by the user or about them (their user, their keys), oldest first.
async fn all_audit(st: &AppState, u: &UserRecord, key_ids: &[String]) -> ApiResult<Vec<Value>> {
    let mut filters = vec![AuditFilter {
        actor: Some(format!("user:{}", u.username)),
        ..AuditFilter::default()
    }];
    let targets = [format!("user:{}", u.id), format!("user:{}", u.username)]
        .into_iter()
        .chain(key_ids.iter().map(|k| format!("key:{k}")));
    filters.extend(targets.map(|t| AuditFilter {
        target: Some(t),
        ..AuditFilter::default()
    }));
    let mut rows = std::collections::BTreeMap::new();
    for mut filter in filters {
        filter.limit = PAGE;
        loop {
            let page = st.store.list_audit(&filter).await.map_err(store_failed)?;
            let full = page.len() == PAGE as usize;
            filter.before_seq = page.last().map(|e| e.seq);
            for e in page {
                rows.insert(e.seq, e);
            }
            if !full {
                break;
            }
        }
    }
    Ok(rows
        .into_values()
        .map(|e| serde_json::to_value(e).unwrap_or(Value::Null))
        .collect())
}

/// `DELETE /api/users/{id}?erase=true`, after the last-admin check: see the module doc.
pub async fn erase(
    st: &AppState,
    actor: &Actor,
    caller: &Caller,
    before: &UserRecord,
) -> ApiResult<Json<Value>> {
    admins_only(caller)?;
    let now = now_ms();
    let tombstone = format!("erased-{}", uuid::Uuid::now_v7().simple());
    // Keys and rows still queued are erased too.
    st.writer.flush().await;
    let keys = owned_keys(st, &before.username).await?;
    let key_ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let sessions: Vec<SessionId> = st
        .store
        .sessions_of_keys(&key_ids)
        .await
        .map_err(store_failed)?
        .into_iter()
        .filter(|(_, only)| *only)
        .map(|(s, _)| s.id)
        .collect();
    let masked = st
        .store
        .masked_of_keys(&key_ids)
        .await
        .map_err(store_failed)?;

    let mut gone = before.clone();
    gone.username.clone_from(&tombstone);
    gone.password_hash = String::new();
    gone.deleted_at = Some(now);
    gone.updated_at = now;
    let erased_keys: Vec<KeyRecord> = keys
        .iter()
        .map(|k| {
            let mut e = k.clone();
            e.name = "erased".to_owned();
            e.owner = Some(tombstone.clone());
            e.metadata = json!({});
            e.previous_digest = None;
            e.deleted_at = e.deleted_at.or(Some(now));
            e.updated_at = now;
            e
        })
        .collect();
    let mut ops = vec![
        WriteOp::UpsertUser(Box::new(gone)),
        WriteOp::RevokeUserRefresh {
            user_id: before.id.clone(),
            at: now,
        },
    ];
    ops.extend(
        erased_keys
            .iter()
            .map(|k| WriteOp::UpsertKey(Box::new(k.clone()))),
    );
    ops.push(WriteOp::Erase(Box::new(Erasure {
        username: before.username.clone(),
        tombstone: tombstone.clone(),
        key_ids: key_ids.clone(),
        user_id: before.id.clone(),
        at: now,
        sessions: sessions.clone(),
    })));
    let summary = json!({
        "tombstone": tombstone,
        "keys": key_ids,
        "sessions_erased": sessions.len(),
        "masked_erased": masked.len(),
    });
    // No name, no content: the user id, the tombstone, and counts.
    let change =
        Change::new("user.erase", Some(format!("user:{}", before.id))).after(summary.clone());
    ops.push(WriteOp::AppendAudit(Box::new(audit::entry(
        actor, change, "ok",
    ))));
    // Refused from now on, before the database is touched: no new request of theirs starts
    // while their rows are erased (one already in flight may still finish and write its row).
    for k in erased_keys {
        st.keys.apply(k, None);
    }
    st.store.apply(&ops).await.map_err(store_failed)?;

    // What this process holds in memory goes too.
    let own: Vec<&str> = sessions.iter().map(SessionId::as_str).collect();
    st.recall
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .remove_sessions(&own);
    for s in &sessions {
        // Already renamed in the database; this renames the live copy and tells dashboards.
        let _ = st.sessions.rename(s, "erased").await;
        st.compaction.forget(s);
        st.gauges.forget(s);
        st.responses.forget_session(s.as_str());
    }
    for m in &masked {
        st.sanitizer.stored.remove(&m.hash);
    }
    if let Err(e) = st.store.checkpoint().await {
        tracing::warn!(error = %e, "cannot empty the write-ahead log after an erasure; it empties at the next checkpoint");
    }
    tracing::info!(user_id = %before.id, %tombstone, "user erased");
    Ok(Json(summary))
}
