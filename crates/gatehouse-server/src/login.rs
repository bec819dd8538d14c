//! The admin login gate of the management API, the dashboard's data and `/ws`: with
//! `[auth] mode = "keys"` every such request carries an access token (`Authorization: Bearer`,
//! or the dashboard's HttpOnly cookie), signed by this gateway, not logged out, of a user who
//! still exists and is not blocked, whose role allows the request. The proxy routes never pass
//! through here (a virtual key opens them, a login does not), and with `mode = "none"` this
//! gate is open, as before.
//!
//! A layer on the management routes only (`routes.rs`), so the proxy path pays nothing for it.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_config::{AuthMode, Config};
use gatehouse_core::record::Role;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::users::{self, Logins, Revoked, Signer, TokenType};

use crate::error::HttpError;
use crate::state::AppState;

/// The cookie that carries the access token for the dashboard.
pub const ACCESS_COOKIE: &str = "gh_access";
/// The refresh token's cookie, sent only to `/api/auth/*`.
pub const REFRESH_COOKIE: &str = "gh_refresh";

/// Who is logged in on this request (set by [`require`]).
#[derive(Debug, Clone)]
pub struct Principal {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    /// The access token's id and expiry (epoch ms), for logout.
    pub jti: String,
    pub expires_at_ms: i64,
    /// The login's refresh family, and when the token was issued (epoch seconds).
    pub family: Option<String>,
    pub issued_at: i64,
}

impl Principal {
    /// Whether this login ended since it was checked (logout, its family revoked, expiry): in
    /// memory, for a connection that outlives the request that opened it (`/ws`).
    pub fn ended(&self, st: &AppState, now_ms: i64) -> bool {
        now_ms >= self.expires_at_ms || logged_out(st, &self.jti, self.family.as_deref())
    }

    /// As [`Principal::ended`], and the user's record still lets them in with the same role
    /// (not blocked, deleted or changed since the token was issued).
    pub async fn still_holds(&self, st: &AppState) -> bool {
        if self.ended(st, gatehouse_core::time::now_ms()) {
            return false;
        }
        match st.store.user_by_id(&self.user_id).await {
            Ok(Some(u)) => !u.blocked && u.role == self.role && unchanged_since(&u, self.issued_at),
            Ok(None) => false,
            // A database hiccup does not end a login; the next check decides.
            Err(_) => true,
        }
    }
}

/// The login state: the signer, logouts, the limiter and lockout.
#[derive(Debug)]
pub struct LoginState {
    pub signer: Signer,
    pub revoked: Revoked,
    pub logins: Logins,
    /// A hash to check unknown users' passwords against, so they take as long as known ones.
    pub decoy_hash: String,
    /// Password checks running at once, at most (each holds ~19 MiB and a core).
    pub hashing: tokio::sync::Semaphore,
}

/// The entry in [`Revoked`] that ends every access token of a login's family.
pub fn family_mark(family: &str) -> String {
    format!("fam:{family}")
}

/// Why the login state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error(
        "GATEHOUSE_JWT_SECRET (and each of GATEHOUSE_JWT_PREVIOUS_SECRETS) must have at least 32 characters"
    )]
    ShortEnv,
    #[error("the token signing secret {path} cannot be read or made: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("the token signing secret {0} has fewer than 32 characters")]
    ShortFile(String),
    #[error("{0}")]
    Crypto(String),
}

impl LoginState {
    /// From the config: the signing secret from `GATEHOUSE_JWT_SECRET` or its file (made on
    /// first start, owner-readable only). With `mode = "none"` nobody logs in, so a random
    /// secret of this process will do and no file is made.
    pub fn from_config(config: &Config) -> Result<Self, SecretError> {
        let a = &config.auth;
        let (current, previous) = if a.mode == AuthMode::Keys {
            secrets(config)?
        } else {
            let s = users::random_bytes::<32>().map_err(|e| SecretError::Crypto(e.message))?;
            (s.to_vec(), Vec::new())
        };
        Ok(Self {
            signer: Signer::new(&current, &previous, a.access_ttl_secs, a.refresh_ttl_secs)
                .map_err(|e| SecretError::Crypto(e.message))?,
            revoked: Revoked::default(),
            logins: Logins::new(a.login_per_minute, a.lockout_attempts, a.lockout_secs),
            decoy_hash: users::decoy_hash().map_err(|e| SecretError::Crypto(e.message))?,
            hashing: tokio::sync::Semaphore::new(
                std::thread::available_parallelism().map_or(2, |n| n.get() * 2),
            ),
        })
    }
}

fn secrets(config: &Config) -> Result<(Vec<u8>, Vec<Vec<u8>>), SecretError> {
    let dir = &config.server.data_dir;
    let current = match std::env::var("GATEHOUSE_JWT_SECRET") {
        Ok(s) if s.len() >= 32 => s.into_bytes(),
        Ok(_) => return Err(SecretError::ShortEnv),
        Err(_) => read_or_make(&dir.join(&config.auth.jwt_secret_file))?,
    };
    let mut previous = Vec::new();
    for f in &config.auth.previous_jwt_secret_files {
        let path = dir.join(f);
        let text = std::fs::read_to_string(&path).map_err(|source| SecretError::File {
            path: path.display().to_string(),
            source,
        })?;
        if text.trim().len() < 32 {
            return Err(SecretError::ShortFile(path.display().to_string()));
        }
        previous.push(text.trim().as_bytes().to_vec());
    }
    if let Ok(list) = std::env::var("GATEHOUSE_JWT_PREVIOUS_SECRETS") {
        previous.extend(
            list.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| s.as_bytes().to_vec()),
        );
        if previous.iter().any(|s| s.len() < 32) {
            return Err(SecretError::ShortEnv);
        }
    }
    Ok((current, previous))
}

fn read_or_make(path: &std::path::Path) -> Result<Vec<u8>, SecretError> {
    let err = |source| SecretError::File {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let s = text.trim();
            if s.len() < 32 {
                return Err(SecretError::ShortFile(path.display().to_string()));
            }
            Ok(s.as_bytes().to_vec())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            use base64::Engine;
            let bytes = users::random_bytes::<32>().map_err(|e| SecretError::Crypto(e.message))?;
            let text = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
            write_private(path, &text).map_err(err)?;
            // Another instance starting on the same directory may have made it first: the
            // file's secret is the one, whoever wrote it (read again until it is whole).
            for _ in 0..100 {
                let stored = std::fs::read_to_string(path).map_err(err)?;
                if stored.trim().len() >= 32 {
                    return Ok(stored.trim().as_bytes().to_vec());
                }
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(SecretError::ShortFile(path.display().to_string()))
        }
        Err(e) => Err(err(e)),
    }
}

/// Creates `path` readable by its owner only (it must not exist: two instances starting at once
/// on one data directory keep the first one's secret).
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(0o600);
    }
    match o.open(path) {
        Ok(mut f) => f.write_all(text.as_bytes()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Routes that answer without a login: the login itself, the refresh (its own token is its
/// credential), the logout (an expired login must still be able to end its family), and the
/// dashboard's page and files (the page shows the login form).
fn is_public(path: &str) -> bool {
    matches!(
        path,
        "/" | "/api/auth/login" | "/api/auth/refresh" | "/api/auth/logout"
    ) || path.starts_with("/assets/")
}

/// The token of a request: `Authorization: Bearer …`, else the access cookie.
pub fn access_token(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    bearer.or_else(|| cookie(headers, ACCESS_COOKIE))
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim())
}

fn refusal(e: ApiError) -> Response {
    let mut r = HttpError(e).into_response();
    if r.status() == axum::http::StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"gatehouse\""),
        );
    }
    r
}

/// The gate (an `axum::middleware::from_fn_with_state` layer on the management routes).
pub async fn require(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    if st.config.auth.mode == AuthMode::None || is_public(req.uri().path()) {
        return next.run(req).await;
    }
    match principal(&st, req.headers(), req.method(), req.uri().path()).await {
        Ok(p) => {
            req.extensions_mut().insert(Arc::new(p));
            next.run(req).await
        }
        Err(e) => refusal(e),
    }
}

/// The access token `jti`, or its whole login (`family`), was logged out.
fn logged_out(st: &AppState, jti: &str, family: Option<&str>) -> bool {
    st.login.revoked.is_revoked(jti)
        || family.is_some_and(|f| st.login.revoked.is_revoked(&family_mark(f)))
}

/// The user's record did not change (password, role, block) after a token issued at
/// `issued_at` (epoch seconds); seconds on both sides, so a login in the second the user was
/// made still holds.
fn unchanged_since(user: &gatehouse_core::record::UserRecord, issued_at: i64) -> bool {
    issued_at >= user.updated_at.div_euclid(1000)
}

async fn principal(
    st: &AppState,
    headers: &HeaderMap,
    method: &Method,
    path: &str,
) -> Result<Principal, ApiError> {
    let Some(token) = access_token(headers) else {
        return Err(users::login_required(
            "this needs an admin login: POST /api/auth/login, then send the access token as `Authorization: Bearer …`",
        ));
    };
    if token.starts_with(gatehouse_services::keys::KEY_PREFIX) {
        return Err(users::login_required(
            "a virtual key opens the proxy routes (/v1/…) only; the management API needs an admin login",
        ));
    }
    let claims = st.login.signer.verify(token, TokenType::Access)?;
    if logged_out(st, &claims.jti, claims.fam.as_deref()) {
        return Err(users::login_required(
            "this login was logged out; log in again",
        ));
    }
    // The record, not the token, says whether the user may still act and with which role: a
    // block, a deletion or a role change applies to the next request.
    let user = st
        .store
        .user_by_id(&claims.sub)
        .await
        .map_err(|e| crate::error::store_failed(e).0)?
        .filter(|u| !u.blocked)
        .ok_or_else(|| users::login_required("this user no longer exists or is blocked"))?;
    // A new password (or role, or a block lifted) ends the logins made before it; seconds on
    // both sides, so a login in the second the user was made still holds.
    if !unchanged_since(&user, claims.iat) {
        return Err(users::login_required(
            "this account changed since this login (password, role or block); log in again",
        ));
    }
    let write = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    if !users::role_allows(user.role, write, path) {
        return Err(ApiError::new(
            ErrorKind::Forbidden,
            format!(
                "the role `{}` may not {} {path}",
                user.role.as_str(),
                if write { "change" } else { "read" }
            ),
        ));
    }
    Ok(Principal {
        user_id: user.id,
        username: user.username,
        role: user.role,
        jti: claims.jti,
        expires_at_ms: claims.exp.saturating_mul(1000),
        family: claims.fam,
        issued_at: claims.iat,
    })
}

/// The logged-in user of a request, if any (`None` with `mode = "none"` and on public routes).
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Arc<Principal>>);

impl Caller {
    /// Whether the caller may see and change a key owned by `owner`: admins and viewers see every
    /// key (viewers' writes stop at the gate), members only their own.
    pub fn may_use_key(&self, owner: Option<&str>) -> bool {
        match &self.0 {
            Some(p) if p.role == Role::Member => owner == Some(p.username.as_str()),
            _ => true,
        }
    }

    /// The member's own name, which their new keys get as owner.
    pub fn member(&self) -> Option<&str> {
        self.0
            .as_deref()
            .filter(|p| p.role == Role::Member)
            .map(|p| p.username.as_str())
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Self(parts.extensions.get::<Arc<Principal>>().cloned()))
    }
}

/// Ends a login token (or, with a family mark, a login's family) here at once, and on every
/// other instance as soon as Redis carries the news (the database has it for the others
/// within `auth.sync_secs` otherwise).
pub fn revoke(st: &AppState, jti: &str, expires_at: i64, now: i64) {
    st.login.revoked.revoke(jti, expires_at, now);
    if let Some(sh) = &st.shared {
        sh.publish(gatehouse_services::shared::Change::Revoke {
            jti: jti.to_owned(),
            expires_at,
        });
    }
}
