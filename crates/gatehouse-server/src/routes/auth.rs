//! Admin login (`/api/auth/*`): log in, refresh (each refresh token once), log out, who am I,
//! and the login history. Every attempt, failed or not, leaves a login-history row and an
//! audit row; the tokens themselves are never stored or logged.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use gatehouse_core::record::{LoginEvent, RefreshToken, UserRecord};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::users::{self, Gate, Issued, TokenType};
use gatehouse_store::{RefreshUse, WriteOp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, json_body, store_failed};
use crate::login::{ACCESS_COOKIE, Caller, Principal, REFRESH_COOKIE, cookie};
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

fn internal(what: &str) -> HttpError {
    HttpError(ApiError::new(ErrorKind::Internal, what.to_owned()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginBody {
    username: String,
    password: String,
}

/// Writes `ops` now (not through the writer's queue): a refresh token must exist before its
/// holder can use it, and a login's rows must not wait behind a burst of request rows.
async fn write(st: &AppState, ops: &[WriteOp]) -> ApiResult<()> {
    st.store.apply(ops).await.map(|_| ()).map_err(store_failed)
}

fn login_event(
    actor: &Actor,
    username: &str,
    user: Option<&UserRecord>,
    outcome: &str,
    reason: Option<&str>,
) -> WriteOp {
    WriteOp::AppendLogin(Box::new(LoginEvent {
        id: uuid::Uuid::now_v7().to_string(),
        at: now_ms(),
        username: username.chars().take(64).collect(),
        user_id: user.map(|u| u.id.clone()),
        ip: actor.ip.clone(),
        user_agent: actor.user_agent.clone(),
        outcome: outcome.to_owned(),
        reason: reason.map(str::to_owned),
    }))
}

fn login_audit(actor: &Actor, username: &str, outcome: &str) -> WriteOp {
    // The actor of a login is the name it claims; the password never appears.
    let who = Actor {
        name: format!("user:{}", username.chars().take(64).collect::<String>()),
        ..actor.clone()
    };
    let entry = audit::entry(
        &who,
        Change::new("auth.login", Some(format!("user:{username}"))),
        outcome,
    );
    WriteOp::AppendAudit(Box::new(entry))
}

/// `X-RateLimit-*` of the login route for this address.
fn limit_headers(st: &AppState, ip: &str, h: &mut HeaderMap) {
    let (limit, remaining, reset) = st.login.logins.remaining(ip, now_ms());
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
}

/// A login cookie: HttpOnly and SameSite=Strict always, Secure when the gateway serves HTTPS.
fn cookie_header(
    secure: bool,
    name: &str,
    value: &str,
    path: &str,
    max_age_secs: i64,
) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; HttpOnly; SameSite=Strict; Path={path}; Max-Age={max_age_secs}{secure}"
    ))
    .ok()
}

/// The answer that carries a new pair of tokens, as JSON and as cookies.
fn tokens_response(secure: bool, user: &UserRecord, access: &Issued, refresh: &Issued) -> Response {
    let now_s = now_ms().div_euclid(1000);
    let body = json!({
        "access_token": access.token,
        "refresh_token": refresh.token,
        "token_type": "Bearer",
        "expires_in": access.claims.exp - now_s,
        "refresh_expires_in": refresh.claims.exp - now_s,
        "user": {"id": user.id, "username": user.username, "role": user.role},
    });
    let mut r = (StatusCode::OK, Json(body)).into_response();
    let h = r.headers_mut();
    for c in [
        cookie_header(
            secure,
            ACCESS_COOKIE,
            &access.token,
            "/",
            access.claims.exp - now_s,
        ),
        cookie_header(
            secure,
            REFRESH_COOKIE,
            &refresh.token,
            "/api/auth",
            refresh.claims.exp - now_s,
        ),
    ]
    .into_iter()
    .flatten()
    {
        h.append(header::SET_COOKIE, c);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Signs an access token and the next refresh token of `family` (a new one for a login), and
/// records the refresh token so it can be used, once.
async fn issue_pair(
    st: &AppState,
    https: bool,
    user: &UserRecord,
    family: Option<&str>,
    extra: Vec<WriteOp>,
) -> ApiResult<Response> {
    let now = now_ms();
    let signer = &st.login.signer;
    let refresh = signer.issue(user, TokenType::Refresh, family, now)?;
    let access = signer.issue(user, TokenType::Access, refresh.claims.fam.as_deref(), now)?;
    let mut ops = extra;
    ops.push(WriteOp::InsertRefresh(Box::new(RefreshToken {
        jti: refresh.claims.jti.clone(),
        family: refresh.claims.fam.clone().unwrap_or_default(),
        user_id: user.id.clone(),
        issued_at: now,
        expires_at: refresh.expires_at_ms(),
    })));
    write(st, &ops).await?;
    Ok(tokens_response(https, user, &access, &refresh))
}

pub async fn login(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    body: Bytes,
) -> ApiResult<Response> {
    let b: LoginBody = json_body(&body, "{\"username\": …, \"password\": …}")?;
    let ip = actor.ip.clone().unwrap_or_default();
    let now = now_ms();
    // A name no user can have is refused like a wrong password, before it is counted, stored
    // or kept in the lockout table (an attacker's 30 MiB "name" must cost nothing).
    if users::check_username(&b.username).is_err() || b.password.len() > 1024 {
        let mut r = HttpError(ApiError::new(
            ErrorKind::InvalidCredentials,
            "wrong user name or password",
        ))
        .into_response();
        limit_headers(&st, &ip, r.headers_mut());
        return Ok(r);
    }
    let gate = st.login.logins.admit(&ip, &b.username, now);
    if let Err(g) = gate {
        let (outcome, e) = match g {
            Gate::Limited { retry_after_secs } => (
                "limited",
                ApiError::new(
                    ErrorKind::RateLimitExceeded,
                    format!(
                        "too many login attempts from this address; try again in {retry_after_secs} s"
                    ),
                )
                .with_retry_after(retry_after_secs),
            ),
            Gate::Locked { until_ms } => (
                "locked",
                ApiError::new(
                    ErrorKind::AccountLocked,
                    format!(
                        "this account is locked after too many wrong passwords, until {}",
                        gatehouse_core::time::rfc3339_ms(until_ms)
                    ),
                )
                .with_retry_after(u64::try_from((until_ms - now).div_euclid(1000) + 1).unwrap_or(1)),
            ),
        };
        write(
            &st,
            &[
                login_event(&actor, &b.username, None, outcome, Some(&e.message)),
                login_audit(&actor, &b.username, &format!("refused: {outcome}")),
            ],
        )
        .await?;
        let mut r = HttpError(e).into_response();
        limit_headers(&st, &ip, r.headers_mut());
        return Ok(r);
    }
    let user = st
        .store
        .user_by_name(&b.username)
        .await
        .map_err(store_failed)?;
    // An unknown user's password is checked against a decoy, so both take one Argon2 run.
    let hash = user
        .as_ref()
        .map_or_else(|| st.login.decoy_hash.clone(), |u| u.password_hash.clone());
    // Each check takes ~19 MiB and a core for tens of milliseconds: a few at a time, the rest
    // told to come back, so a login flood from many addresses cannot exhaust memory.
    let Ok(_permit) = st.login.hashing.try_acquire() else {
        return Err(HttpError(
            ApiError::new(
                ErrorKind::Overloaded,
                "too many logins are being checked at once; try again in a moment",
            )
            .with_retry_after(1),
        ));
    };
    let password = b.password;
    let matches = tokio::task::spawn_blocking(move || users::verify_password(&hash, &password))
        .await
        .unwrap_or(false);
    let reason = match &user {
        None => Some("no such user"),
        Some(_) if !matches => Some("wrong password"),
        Some(u) if u.blocked => Some("user blocked"),
        Some(_) => None,
    };
    if let Some(reason) = reason {
        let mut ops = vec![
            login_event(&actor, &b.username, user.as_ref(), "failed", Some(reason)),
            login_audit(&actor, &b.username, &format!("refused: {reason}")),
        ];
        if let Some(until) = st.login.logins.failed(&b.username, now) {
            tracing::warn!(user = %b.username.chars().take(64).collect::<String>(), ip = %ip, "account locked after repeated wrong passwords");
            ops.push(login_event(
                &actor,
                &b.username,
                user.as_ref(),
                "locked",
                Some(&format!(
                    "locked until {}",
                    gatehouse_core::time::rfc3339_ms(until)
                )),
            ));
        }
        write(&st, &ops).await?;
        let mut r = HttpError(ApiError::new(
            ErrorKind::InvalidCredentials,
            "wrong user name or password",
        ))
        .into_response();
        limit_headers(&st, &ip, r.headers_mut());
        return Ok(r);
    }
    let Some(user) = user else {
        return Err(internal("the user vanished"));
    };
    st.login.logins.succeeded(&b.username);
    let ops = vec![
        login_event(&actor, &user.username, Some(&user), "ok", None),
        login_audit(&actor, &user.username, "ok"),
    ];
    let mut r = issue_pair(&st, actor.https, &user, None, ops).await?;
    limit_headers(&st, &ip, r.headers_mut());
    Ok(r)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RefreshBody {
    refresh_token: Option<String>,
}

/// The refresh token of a request: in the body, else the dashboard's cookie.
fn refresh_token(headers: &HeaderMap, body: &Bytes) -> ApiResult<Option<String>> {
    let b: RefreshBody = json_body(body, "{\"refresh_token\": …}")?;
    Ok(b.refresh_token
        .or_else(|| cookie(headers, REFRESH_COOKIE).map(str::to_owned)))
}

pub async fn refresh(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let Some(token) = refresh_token(&headers, &body)? else {
        return Err(HttpError(users::login_required(
            "send the refresh token as {\"refresh_token\": …}",
        )));
    };
    let claims = st.login.signer.verify(&token, TokenType::Refresh)?;
    let now = now_ms();
    match st
        .store
        .use_refresh(&claims.jti, now)
        .await
        .map_err(store_failed)?
    {
        RefreshUse::Fresh(t) => {
            let user = st
                .store
                .user_by_id(&t.user_id)
                .await
                .map_err(store_failed)?
                .filter(|u| !u.blocked)
                .ok_or_else(|| {
                    HttpError(users::login_required(
                        "this user no longer exists or is blocked",
                    ))
                })?;
            issue_pair(&st, actor.https, &user, Some(&t.family), Vec::new()).await
        }
        RefreshUse::Replayed(t) => {
            let ttl_ms = i64::try_from(st.config.auth.access_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX);
            crate::login::revoke(
                &st,
                &crate::login::family_mark(&t.family),
                now.saturating_add(ttl_ms),
                now,
            );
            tracing::warn!(user = %claims.name, "a used refresh token was presented again; its login family is revoked");
            let who = Actor {
                name: format!("user:{}", claims.name),
                ..actor
            };
            audit::record(
                &st,
                &who,
                Change::new("auth.refresh_replay", Some(format!("user:{}", claims.name)))
                    .after(json!({"family_revoked": true, "user_id": t.user_id})),
                "refused: replayed refresh token",
            );
            Err(HttpError(users::login_required(
                "this refresh token was used already; every session of that login is logged out — log in again",
            )))
        }
        RefreshUse::Revoked => Err(HttpError(users::login_required(
            "this login was logged out (or its refresh token was stolen and replayed); log in again",
        ))),
        RefreshUse::Unknown => Err(HttpError(users::login_required(
            "this refresh token is not known here or has expired; log in again",
        ))),
    }
}

/// Logs out whatever login the request names: its access token (bearer or cookie) if it still
/// verifies, and its refresh token (body or cookie); both end their login's family. Open
/// without a login, so an expired access token can still log out (else the refresh cookie
/// would log the user straight back in), and it always clears the cookies.
pub async fn logout(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let now = now_ms();
    let secure = actor.https;
    let signer = &st.login.signer;
    let mut ops = Vec::new();
    let mut who: Option<String> = None;
    if let Some(t) = crate::login::access_token(&headers)
        && let Ok(c) = signer.verify(t, TokenType::Access)
    {
        let exp = c.exp.saturating_mul(1000);
        crate::login::revoke(&st, &c.jti, exp, now);
        ops.push(WriteOp::RevokeToken {
            jti: c.jti,
            expires_at: exp,
        });
        if let Some(family) = c.fam {
            revoke_family(&st, &family, now, &mut ops);
        }
        who = Some(c.name);
    }
    if let Some(t) = refresh_token(&headers, &body)?
        && let Ok(c) = signer.verify(&t, TokenType::Refresh)
    {
        if let Some(family) = c.fam {
            revoke_family(&st, &family, now, &mut ops);
        }
        who.get_or_insert(c.name);
    }
    if let Some(name) = &who {
        let me = Actor {
            name: format!("user:{name}"),
            ..actor
        };
        ops.push(WriteOp::AppendAudit(Box::new(audit::entry(
            &me,
            Change::new("auth.logout", Some(format!("user:{name}"))),
            "ok",
        ))));
    }
    if !ops.is_empty() {
        write(&st, &ops).await?;
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    for c in [
        cookie_header(secure, ACCESS_COOKIE, "", "/", 0),
        cookie_header(secure, REFRESH_COOKIE, "", "/api/auth", 0),
    ]
    .into_iter()
    .flatten()
    {
        r.headers_mut().append(header::SET_COOKIE, c);
    }
    Ok(r)
}

/// Ends a login's family: its refresh tokens in the store, its access tokens here at once
/// (for as long as any of them can live).
fn revoke_family(st: &AppState, family: &str, now: i64, ops: &mut Vec<WriteOp>) {
    let ttl_ms =
        i64::try_from(st.config.auth.access_ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    crate::login::revoke(
        st,
        &crate::login::family_mark(family),
        now.saturating_add(ttl_ms),
        now,
    );
    if !ops
        .iter()
        .any(|o| matches!(o, WriteOp::RevokeFamily { family: f, .. } if f == family))
    {
        ops.push(WriteOp::RevokeFamily {
            family: family.to_owned(),
            at: now,
        });
    }
}

pub async fn me(State(st): State<AppState>, caller: Caller) -> Json<Value> {
    let mode = st.config.auth.mode.as_str();
    Json(match caller.0.as_deref() {
        Some(Principal {
            user_id,
            username,
            role,
            expires_at_ms,
            ..
        }) => json!({
            "auth": mode,
            "user": {"id": user_id, "username": username, "role": role},
            "expires_at": expires_at_ms,
        }),
        None => json!({"auth": mode, "user": null}),
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    username: Option<String>,
    /// Entries older than this one (the previous page's `next_before`).
    before: Option<String>,
    limit: Option<u32>,
}

pub async fn history(
    State(st): State<AppState>,
    caller: Caller,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<Json<Value>> {
    let Query(q) = q.map_err(|e| crate::error::bad_request(e.body_text()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    // A member sees their own attempts only.
    let username = match caller.member() {
        Some(own) => Some(own.to_owned()),
        None => q.username,
    };
    let rows = st
        .store
        .login_history(username.as_deref(), q.before.as_deref(), limit)
        .await
        .map_err(store_failed)?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.id.clone()))
        .flatten();
    Ok(Json(json!({"entries": rows, "next_before": next})))
}
