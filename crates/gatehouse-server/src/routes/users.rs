//! Admin users (`/api/users`, admins only past the login gate): list, create, change (role,
//! password, blocked) and delete. The last admin cannot be demoted, blocked or deleted, so the
//! gateway never locks its owners out. Passwords never leave: not in answers, logs or the trail.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::record::{Role, UserRecord};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::users;
use gatehouse_store::WriteOp;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, bad_request, json_body, store_failed};
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

fn internal(what: &str) -> HttpError {
    HttpError(ApiError::new(ErrorKind::Internal, what.to_owned()))
}

pub(crate) fn shown(u: &UserRecord) -> Value {
    json!({
        "id": u.id,
        "username": u.username,
        "role": u.role,
        "blocked": u.blocked,
        "team_id": u.team_id,
        "created_at": u.created_at,
        "updated_at": u.updated_at,
    })
}

fn parse_role(s: &str) -> ApiResult<Role> {
    Role::parse(s)
        .ok_or_else(|| bad_request(format!("unknown role `{s}`: use admin, viewer or member")))
}

async fn find(st: &AppState, id: &str) -> ApiResult<UserRecord> {
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

/// Hashes off the async threads: Argon2 takes tens of milliseconds on purpose.
async fn hash(password: String) -> ApiResult<String> {
    tokio::task::spawn_blocking(move || users::hash_password(&password))
        .await
        .map_err(|_| internal("the password hashing task failed"))?
        .map_err(HttpError)
}

/// The writes of a user change, shared with `gatehouse users`: the record, the end of its
/// refresh tokens when `revoke`, and the audit row (never the password or its hash).
pub fn change_ops(
    actor: &Actor,
    action: &str,
    before: Option<&UserRecord>,
    user: &UserRecord,
    revoke: bool,
) -> Vec<WriteOp> {
    let mut change = Change::new(action, Some(format!("user:{}", user.id))).after(shown(user));
    if let Some(b) = before {
        change = change.before(shown(b));
    }
    let mut ops = vec![WriteOp::UpsertUser(Box::new(user.clone()))];
    if revoke {
        ops.push(WriteOp::RevokeUserRefresh {
            user_id: user.id.clone(),
            at: now_ms(),
        });
    }
    ops.push(WriteOp::AppendAudit(Box::new(audit::entry(
        actor, change, "ok",
    ))));
    ops
}

async fn save(
    st: &AppState,
    actor: &Actor,
    action: &str,
    before: Option<&UserRecord>,
    user: &UserRecord,
    revoke: bool,
) -> ApiResult<()> {
    let ops = change_ops(actor, action, before, user, revoke);
    st.store.apply(&ops).await.map_err(store_failed)?;
    Ok(())
}

/// Refuses a change that would leave no admin who can log in.
async fn keep_an_admin(st: &AppState, changed: &UserRecord) -> ApiResult<()> {
    let all = st.store.list_users().await.map_err(store_failed)?;
    if !users::keeps_an_admin(&all, changed) {
        return Err(bad_request(
            "this is the last admin who can log in: make another admin first",
        ));
    }
    Ok(())
}

pub async fn list(State(st): State<AppState>) -> ApiResult<Json<Value>> {
    let all = st.store.list_users().await.map_err(store_failed)?;
    let users: Vec<Value> = all.iter().map(shown).collect();
    Ok(Json(json!({"count": users.len(), "users": users})))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    username: String,
    password: String,
    role: String,
}

pub async fn create(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: CreateBody = json_body(
        &body,
        "{\"username\": …, \"password\": …, \"role\": \"admin\" | \"viewer\" | \"member\"}",
    )?;
    let role = parse_role(&b.role)?;
    users::check_username(&b.username)?;
    users::check_password(&b.password)?;
    if st
        .store
        .user_by_name(&b.username)
        .await
        .map_err(store_failed)?
        .is_some()
    {
        return Err(bad_request(format!(
            "a user named `{}` exists already",
            b.username
        )));
    }
    let password = b.password;
    let username = b.username;
    let user =
        tokio::task::spawn_blocking(move || users::new_user(&username, &password, role, now_ms()))
            .await
            .map_err(|_| internal("the password hashing task failed"))??;
    save(&st, &actor, "user.create", None, &user, false).await?;
    Ok((StatusCode::CREATED, Json(shown(&user))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateBody {
    role: Option<String>,
    password: Option<String>,
    blocked: Option<bool>,
    /// The team a member's keys join (their keys move with it); `null` takes them out.
    #[serde(default)]
    team_id: Option<Value>,
}

pub async fn update(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let b: UpdateBody = json_body(
        &body,
        "{\"role\": …, \"password\": …, \"blocked\": …, \"team_id\": …}",
    )?;
    let before = find(&st, &id).await?;
    let mut user = before.clone();
    let team_changed = match &b.team_id {
        None => false,
        Some(Value::Null) => {
            user.team_id = None;
            true
        }
        Some(Value::String(t)) if st.keys.team(t).is_some() => {
            user.team_id = Some(t.clone());
            true
        }
        Some(Value::String(t)) => {
            return Err(bad_request(format!(
                "team `{t}` does not exist; GET /api/teams lists them"
            )));
        }
        Some(_) => return Err(bad_request("team_id must be a team's id or null")),
    };
    if let Some(r) = &b.role {
        user.role = parse_role(r)?;
    }
    if let Some(blocked) = b.blocked {
        user.blocked = blocked;
    }
    let new_password = b.password.is_some();
    if let Some(p) = b.password {
        users::check_password(&p)?;
        user.password_hash = hash(p).await?;
    }
    keep_an_admin(&st, &user).await?;
    user.updated_at = now_ms();
    // A new password or a block ends the user's refresh tokens; their access tokens stop at
    // the gate on the next request (it reads the record).
    let revoke = new_password || user.blocked;
    save(&st, &actor, "user.update", Some(&before), &user, revoke).await?;
    if team_changed {
        move_keys(&st, &actor, &user);
    }
    Ok(Json(shown(&user)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteQuery {
    /// `true`: erase the user's data too (`routes/privacy.rs`).
    erase: Option<bool>,
}

/// The user's live keys follow them into (or out of) their team.
fn move_keys(st: &AppState, actor: &Actor, user: &UserRecord) {
    for k in st.keys.list() {
        let r = k.record();
        if r.owner.as_deref() == Some(user.username.as_str()) && r.team_id != user.team_id {
            let change = gatehouse_services::keys::KeyChange {
                team_id: Some(user.team_id.clone()),
                ..Default::default()
            };
            let before = json!({"team_id": r.team_id});
            change_key(st, actor, &r, change, before, "its owner's team changed");
        }
    }
}

/// A key changed because its owner was: applied here, queued with its audit row (`why`).
fn change_key(
    st: &AppState,
    actor: &Actor,
    r: &gatehouse_core::record::KeyRecord,
    change: gatehouse_services::keys::KeyChange,
    before: Value,
    why: &str,
) {
    let Ok(updated) = gatehouse_services::keys::update(r, change, now_ms()) else {
        return;
    };
    let after = json!({"owner": updated.owner, "team_id": updated.team_id, "why": why});
    let entry = audit::entry(
        actor,
        Change::new("key.update", Some(format!("key:{}", r.id)))
            .before(before)
            .after(after),
        "ok",
    );
    st.writer.record_now(WriteOp::AppendAudit(Box::new(entry)));
    st.writer
        .record_now(WriteOp::UpsertKey(Box::new(updated.clone())));
    st.keys.apply(updated, None);
}

pub async fn delete(
    _: SameOrigin,
    actor: Actor,
    caller: crate::login::Caller,
    State(st): State<AppState>,
    Path(id): Path<String>,
    q: Result<Query<DeleteQuery>, QueryRejection>,
) -> ApiResult<Response> {
    let Query(q) = q?;
    let erase = q.erase == Some(true);
    let before = match find(&st, &id).await {
        Ok(u) => u,
        // A user deleted before can still be erased.
        Err(e) if erase => st
            .store
            .deleted_user(&id)
            .await
            .map_err(store_failed)?
            .ok_or(e)?,
        Err(e) => return Err(e),
    };
    let mut user = before.clone();
    let now = now_ms();
    user.deleted_at = Some(now);
    user.updated_at = now;
    if before.deleted_at.is_none() {
        keep_an_admin(&st, &user).await?;
    }
    if erase {
        return Ok(crate::routes::privacy::erase(&st, &actor, &caller, &before)
            .await?
            .into_response());
    }
    // The name is freed for a new user; the row stays for the trail.
    user.username = format!("{}#deleted-{now}", before.username);
    save(&st, &actor, "user.delete", Some(&before), &user, true).await?;
    // Keys are owned by name: a new user of the same name must not inherit these, and an
    // erasure later still finds them (deleted ones too).
    st.writer.flush().await;
    let all = st.store.load_keys(0).await.map_err(store_failed)?;
    for (r, _) in all {
        if r.owner.as_deref() != Some(before.username.as_str()) {
            continue;
        }
        let r = st.keys.get(&r.id).map_or(r, |e| (*e.record()).clone());
        let change = gatehouse_services::keys::KeyChange {
            owner: Some(Some(format!("deleted:{}", before.id))),
            ..Default::default()
        };
        let was = json!({"owner": before.username});
        change_key(&st, &actor, &r, change, was, "owner deleted");
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
