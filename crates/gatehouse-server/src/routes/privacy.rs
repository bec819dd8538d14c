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
use std::time::Duration;

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

/// Every key `username` owns, deleted ones included, and those a deletion of the user left
/// as `deleted:<user_id>`.
async fn owned_keys(st: &AppState, username: &str, user_id: &str) -> ApiResult<Vec<KeyRecord>> {
    let left = format!("deleted:{user_id}");
    Ok(st
        .store
        .load_keys(0)
        .await
        .map_err(store_failed)?
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.owner.as_deref() == Some(username) || k.owner.as_deref() == Some(&left))
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
    let keys = owned_keys(&st, original_name(&u), &u.id).await?;
    let key_ids: Vec<String> = keys.iter().map(|k| k.id.clone()).collect();
    let logins = all_logins(&st, &u).await?;
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
    let responses: Vec<Value> = st
        .store
        .responses_of_keys(&key_ids)
        .await
        .map_err(store_failed)?
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "session_id": r.session_id,
                "created_at": r.created_at,
                "input": serde_json::from_str::<Value>(&r.input).unwrap_or(Value::String(r.input)),
                "response": serde_json::from_str::<Value>(&r.response).unwrap_or(Value::String(r.response)),
            })
        })
        .collect();
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
        "responses": responses,
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

/// The user's login attempts: theirs by id, or by name (an unknown user's) since they were
/// made, never those of an earlier user of the same name.
async fn all_logins(st: &AppState, u: &UserRecord) -> ApiResult<Vec<Value>> {
    let mut out = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let page = st
            .store
            .login_history(Some(original_name(u)), before.as_deref(), PAGE)
            .await
            .map_err(store_failed)?;
        let full = page.len() == PAGE as usize;
        before = page.last().map(|e| e.id.clone());
        out.extend(
            page.iter()
                .filter(|e| match &e.user_id {
                    Some(id) => *id == u.id,
                    None => e.at >= u.created_at,
                })
                .map(|e| serde_json::to_value(e).unwrap_or(Value::Null)),
        );
        if !full {
            return Ok(out);
        }
    }
}

/// The trail's rows by the user or about them (their user, their keys), oldest first.
async fn all_audit(st: &AppState, u: &UserRecord, key_ids: &[String]) -> ApiResult<Vec<Value>> {
    // Rows by the same name before the user was made are an earlier user's.
    let mut filters = vec![AuditFilter {
        actor: Some(format!("user:{}", original_name(u))),
        from_ms: Some(u.created_at),
        ..AuditFilter::default()
    }];
    // Login attempts name the user as target: since they were made, too.
    filters.push(AuditFilter {
        target: Some(format!("user:{}", original_name(u))),
        from_ms: Some(u.created_at),
        ..AuditFilter::default()
    });
    let targets = [format!("user:{}", u.id)]
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

/// How long an erasure waits for the user's requests in flight to finish, so their rows are
/// erased with the rest; one still running after that is erased when it ends.
const IN_FLIGHT_WAIT: Duration = Duration::from_secs(30);
/// How long the follow-up waits for requests still running after [`IN_FLIGHT_WAIT`].
const FOLLOW_UP_WAIT: Duration = Duration::from_secs(3600);

/// The name a user had: a deleted user's row carries it as `name#deleted-…`.
fn original_name(u: &UserRecord) -> &str {
    u.username
        .split_once("#deleted-")
        .map_or(u.username.as_str(), |(name, _)| name)
}

/// `DELETE /api/users/{id}?erase=true`, after the last-admin check (a user deleted before
/// can be erased too): see the module doc.
pub async fn erase(
    st: &AppState,
    actor: &Actor,
    caller: &Caller,
    before: &UserRecord,
) -> ApiResult<Json<Value>> {
    admins_only(caller)?;
    if before.username.starts_with("erased-") {
        return Err(HttpError(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("user `{}` was erased already", before.id),
        )));
    }
    let name = original_name(before).to_owned();
    let now = now_ms();
    let tombstone = format!("erased-{}", uuid::Uuid::now_v7().simple());
    // The user's keys are refused before anything is read, so nothing new of theirs starts;
    // keys and rows still queued are part of what is erased.
    st.writer.flush().await;
    let keys = owned_keys(st, &name, &before.id).await?;
    let live: Vec<_> = keys.iter().filter_map(|k| st.keys.get(&k.id)).collect();
    let erased_keys = erased(&keys, &tombstone, now);
    for k in &erased_keys {
        st.keys.apply(k.clone(), None);
    }
    let in_flight = || live.iter().map(|k| k.in_flight()).sum::<u64>();
    let waited = tokio::time::Instant::now();
    while in_flight() > 0 && waited.elapsed() < IN_FLIGHT_WAIT {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    st.writer.flush().await;

    let mut gone = before.clone();
    gone.username.clone_from(&tombstone);
    gone.password_hash = String::new();
    gone.deleted_at = gone.deleted_at.or(Some(now));
    gone.updated_at = now;
    let user_ops = vec![
        WriteOp::UpsertUser(Box::new(gone)),
        WriteOp::RevokeUserRefresh {
            user_id: before.id.clone(),
            at: now,
        },
    ];
    let pass = Pass {
        name: &name,
        user: before,
        tombstone: &tombstone,
        actor,
        now,
    };
    let summary = pass.erase_rows(st, &erased_keys, user_ops).await?;
    // A key made for them while this ran (an admin's, between the read and now).
    let late: Vec<KeyRecord> = owned_keys(st, &name, &before.id)
        .await?
        .into_iter()
        .filter(|k| !keys.iter().any(|o| o.id == k.id))
        .collect();
    if !late.is_empty() {
        let late = erased(&late, &tombstone, now);
        for k in &late {
            st.keys.apply(k.clone(), None);
        }
        pass.erase_rows(st, &late, Vec::new()).await?;
    }
    let still = in_flight();
    if still > 0 {
        // Their rows are written when they end: erased then, by a second pass.
        let (st2, actor2, before2, tomb2, name2) = (
            st.clone(),
            actor.clone(),
            before.clone(),
            tombstone.clone(),
            name.clone(),
        );
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            while live.iter().map(|k| k.in_flight()).sum::<u64>() > 0
                && started.elapsed() < FOLLOW_UP_WAIT
            {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            st2.writer.flush().await;
            let pass = Pass {
                name: &name2,
                user: &before2,
                tombstone: &tomb2,
                actor: &actor2,
                now: now_ms(),
            };
            if let Err(e) = pass.erase_rows(&st2, &erased_keys, Vec::new()).await {
                tracing::error!(error = %e.0.message, user_id = %before2.id, "the follow-up of an erasure failed; erase the user again");
            }
        });
    }
    tracing::info!(user_id = %before.id, %tombstone, still_in_flight = still, "user erased");
    let mut summary = summary;
    if let Some(o) = summary.as_object_mut() {
        o.insert("still_in_flight".into(), still.into());
    }
    Ok(Json(summary))
}

/// The keys as an erasure leaves them: deleted, named `erased`, owned by the tombstone.
fn erased(keys: &[KeyRecord], tombstone: &str, now: i64) -> Vec<KeyRecord> {
    keys.iter()
        .map(|k| {
            let mut e = k.clone();
            e.name = "erased".to_owned();
            e.owner = Some(tombstone.to_owned());
            e.metadata = json!({});
            e.previous_digest = None;
            e.deleted_at = e.deleted_at.or(Some(now));
            e.updated_at = now;
            e
        })
        .collect()
}

/// One erasure of a user's rows; an erasure makes one, and more for late keys and requests
/// that were still running.
struct Pass<'a> {
    name: &'a str,
    user: &'a UserRecord,
    tombstone: &'a str,
    actor: &'a Actor,
    now: i64,
}

impl Pass<'_> {
    /// Erases what `keys` left, after `first` (the user's own records), in one batch; then the
    /// copies this process holds in memory. What it did, for the answer.
    async fn erase_rows(
        &self,
        st: &AppState,
        keys: &[KeyRecord],
        first: Vec<WriteOp>,
    ) -> ApiResult<Value> {
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
        let summary = json!({
            "tombstone": self.tombstone,
            "keys": key_ids,
            "sessions_erased": sessions.len(),
            "masked_erased": masked.len(),
        });
        // No name, no content: the user id, the tombstone, and counts.
        let change = Change::new("user.erase", Some(format!("user:{}", self.user.id)))
            .after(summary.clone());
        let mut ops = first;
        ops.extend(keys.iter().map(|k| WriteOp::UpsertKey(Box::new(k.clone()))));
        ops.push(WriteOp::Erase(Box::new(Erasure {
            username: self.name.to_owned(),
            tombstone: self.tombstone.to_owned(),
            key_ids,
            user_id: self.user.id.clone(),
            at: self.now,
            since: self.user.created_at,
            sessions: sessions.clone(),
            audit: Box::new(audit::entry(self.actor, change, "ok")),
        })));
        st.store.apply(&ops).await.map_err(store_failed)?;

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
        st.responses.forget_keys(keys.iter().map(|k| k.id.as_str()));
        for m in &masked {
            st.sanitizer.stored.remove(&m.hash);
        }
        match st.store.checkpoint().await {
            Ok(true) => {}
            Ok(false) => tracing::warn!(
                "a reader kept the write-ahead log from emptying after an erasure; the erased pages leave it at the next checkpoint"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "cannot empty the write-ahead log after an erasure")
            }
        }
        Ok(summary)
    }
}
