//! Admin users: passwords (Argon2id), login tokens (JWT, HS256: an access token for requests, a
//! refresh token that works once), logouts, the lockout after wrong passwords, and the per-address
//! login limiter.
//!
//! Everything here is in memory and synchronous; the store is the record (users, login history,
//! refresh tokens, revocations) and is written by the API routes. Login is not on the proxy path:
//! `/v1/*` never accepts these tokens.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use gatehouse_core::record::{Role, UserRecord};
use gatehouse_core::{ApiError, ErrorKind};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// `iss` of every token this gateway signs.
pub const ISSUER: &str = "gatehouse";
/// `aud`: the management API (never the proxy routes).
pub const AUDIENCE: &str = "gatehouse-management";

fn internal(what: &str) -> ApiError {
    ApiError::new(ErrorKind::Internal, what.to_owned())
}

/// `n` random bytes from the system.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| internal("the system's random number generator failed"))?;
    Ok(b)
}

/// A random id in base64url: token ids, families, generated passwords.
pub fn random_token() -> Result<String, ApiError> {
    use base64::Engine;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<24>()?))
}

/// The Argon2id PHC string of `password` (the crate's defaults: 19 MiB, 2 passes, the OWASP
/// minimum). Slow on purpose: callers run it off the async threads.
pub fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::encode_b64(&random_bytes::<16>()?)
        .map_err(|_| internal("cannot encode a password salt"))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|_| internal("cannot hash the password"))
}

/// A hash for unknown users' passwords to be checked against, so their check costs one Argon2
/// run like a real user's: the same algorithm and parameters as [`hash_password`], a random
/// salt and a random output, which no password produces. Made without running Argon2 (19 MiB
/// and tens of milliseconds at every start, for a login that may never come).
pub fn decoy_hash() -> Result<String, ApiError> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let p = argon2::Params::default();
    Ok(format!(
        "${}$v={}$m={},t={},p={}${}${}",
        argon2::Algorithm::default(),
        u32::from(argon2::Version::default()),
        p.m_cost(),
        p.t_cost(),
        p.p_cost(),
        b64.encode(random_bytes::<16>()?),
        b64.encode(random_bytes::<32>()?),
    ))
}

/// Whether `password` matches `hash`; a hash that does not parse matches nothing.
pub fn verify_password(hash: &str, password: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        argon2::Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

/// What a password must be: long enough to resist guessing; no composition rules (NIST 800-63B).
pub fn check_password(password: &str) -> Result<(), ApiError> {
    let n = password.chars().count();
    if !(12..=256).contains(&n) {
        return Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "a password has 12 to 256 characters",
        )
        .with_param("password"));
    }
    Ok(())
}

/// What a user name may be: what fits in a log line and a URL unescaped.
pub fn check_username(name: &str) -> Result<(), ApiError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorKind::InvalidRequest,
            "a user name has 1 to 64 characters among letters, digits and . _ - @",
        )
        .with_param("username"))
    }
}

/// A new user, password hashed.
pub fn new_user(
    username: &str,
    password: &str,
    role: Role,
    now_ms: i64,
) -> Result<UserRecord, ApiError> {
    check_username(username)?;
    check_password(password)?;
    Ok(UserRecord {
        id: format!("usr_{}", uuid::Uuid::now_v7().simple()),
        username: username.to_owned(),
        password_hash: hash_password(password)?,
        role,
        blocked: false,
        created_at: now_ms,
        updated_at: now_ms,
        deleted_at: None,
        team_id: None,
    })
}

/// Whether the users, with `changed` as it would become, still have an admin who can log in.
pub fn keeps_an_admin(all: &[UserRecord], changed: &UserRecord) -> bool {
    let others = all
        .iter()
        .any(|u| u.id != changed.id && u.role == Role::Admin && !u.blocked);
    others || (changed.role == Role::Admin && !changed.blocked && changed.deleted_at.is_none())
}

/// Which of the two tokens a JWT is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    Access,
    Refresh,
}

/// The claims of both tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user's id.
    pub sub: String,
    pub name: String,
    pub role: Role,
    #[serde(rename = "type")]
    pub kind: TokenType,
    pub jti: String,
    /// The login a token descends from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fam: Option<String>,
    pub iss: String,
    pub aud: String,
    /// Seconds since the epoch, as JWT has it.
    pub iat: i64,
    pub exp: i64,
}

/// A token just signed.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
}

impl Issued {
    pub fn expires_at_ms(&self) -> i64 {
        self.claims.exp.saturating_mul(1000)
    }
}

/// Signs with the current secret; verifies with it and the previous ones, so a rotation logs
/// nobody out before their tokens expire.
pub struct Signer {
    encoding: EncodingKey,
    decoding: Vec<DecodingKey>,
    access_ttl_secs: i64,
    refresh_ttl_secs: i64,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("secrets", &self.decoding.len())
            .finish_non_exhaustive()
    }
}

impl Signer {
    pub fn new(
        current: &[u8],
        previous: &[Vec<u8>],
        access_ttl_secs: u64,
        refresh_ttl_secs: u64,
    ) -> Result<Self, ApiError> {
        let bad = |_| internal("a token signing secret is not usable (empty?)");
        let mut decoding = vec![DecodingKey::from_secret(current).map_err(bad)?];
        for s in previous {
            decoding.push(DecodingKey::from_secret(s).map_err(bad)?);
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(current).map_err(bad)?,
            decoding,
            access_ttl_secs: i64::try_from(access_ttl_secs).unwrap_or(i64::MAX),
            refresh_ttl_secs: i64::try_from(refresh_ttl_secs).unwrap_or(i64::MAX),
        })
    }

    /// Signs a token of `kind` for `user` in `family` (a refresh token without one starts a new
    /// login's).
    pub fn issue(
        &self,
        user: &UserRecord,
        kind: TokenType,
        family: Option<&str>,
        now_ms: i64,
    ) -> Result<Issued, ApiError> {
        let iat = now_ms.div_euclid(1000);
        let ttl = match kind {
            TokenType::Access => self.access_ttl_secs,
            TokenType::Refresh => self.refresh_ttl_secs,
        };
        // An access token names its login's family too, so a logout or a replay ends it with
        // the refresh tokens.
        let fam = match (kind, family) {
            (_, Some(f)) => Some(f.to_owned()),
            (TokenType::Refresh, None) => Some(random_token()?),
            (TokenType::Access, None) => None,
        };
        let claims = Claims {
            sub: user.id.clone(),
            name: user.username.clone(),
            role: user.role,
            kind,
            jti: random_token()?,
            fam,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat,
            exp: iat.saturating_add(ttl),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| internal("cannot sign a login token"))?;
        Ok(Issued { token, claims })
    }

    /// The claims of `token` if one of our secrets signed it, it has not expired, and it is a
    /// token of `kind` for the management API.
    pub fn verify(&self, token: &str, kind: TokenType) -> Result<Claims, ApiError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[AUDIENCE]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.leeway = 0;
        let mut expired = false;
        for key in &self.decoding {
            match jsonwebtoken::decode::<Claims>(token, key, &v) {
                Ok(d) if d.claims.kind == kind => return Ok(d.claims),
                Ok(_) => return Err(login_required("this token is not an access token")),
                Err(e) => {
                    expired |=
                        matches!(e.kind(), jsonwebtoken::errors::ErrorKind::ExpiredSignature);
                }
            }
        }
        Err(login_required(if expired {
            "the login has expired; log in again (or refresh it)"
        } else {
            "the login token is not valid here; log in again"
        }))
    }
}

pub fn login_required(message: &str) -> ApiError {
    ApiError::new(ErrorKind::LoginRequired, message.to_owned())
}

/// Access tokens logged out before they expire: one entry each, with its own expiry, so a logout
/// never extends another token's entry (GW2's one set, whose TTL every logout renewed).
#[derive(Debug, Default)]
pub struct Revoked(Mutex<HashMap<String, i64>>);

impl Revoked {
    pub fn revoke(&self, jti: &str, expires_at_ms: i64, now_ms: i64) {
        let mut m = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // Expired tokens fail verification anyway: their entries go.
        m.retain(|_, exp| *exp > now_ms);
        m.insert(jti.to_owned(), expires_at_ms);
    }

    pub fn is_revoked(&self, jti: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(jti)
    }
}

/// Why a login is refused before its password is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// This address tried too often; seconds until it may again.
    Limited { retry_after_secs: u64 },
    /// The account is locked until this instant (epoch ms).
    Locked { until_ms: i64 },
}

/// A fixed window per address, reset when it ends.
#[derive(Debug, Clone, Copy)]
struct Window {
    start_ms: i64,
    count: u32,
}

#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    locked_until_ms: i64,
}

/// The login limiter (attempts per address per minute) and the lockout (wrong passwords in a
/// row per user name, whether or not the user exists, so a lockout does not tell who exists).
#[derive(Debug)]
pub struct Logins {
    per_minute: u32,
    attempts: u32,
    lockout_ms: i64,
    by_ip: Mutex<HashMap<String, Window>>,
    by_name: Mutex<HashMap<String, Failures>>,
}

/// Addresses and names remembered at most; beyond, the oldest windows are forgotten (an attacker
/// spraying addresses cannot grow memory without bound).
const MAX_TRACKED: usize = 100_000;

impl Logins {
    pub fn new(per_minute: u32, attempts: u32, lockout_secs: u64) -> Self {
        Self {
            per_minute: per_minute.max(1),
            attempts: attempts.max(1),
            lockout_ms: i64::try_from(lockout_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            by_ip: Mutex::new(HashMap::new()),
            by_name: Mutex::new(HashMap::new()),
        }
    }

    /// Counts an attempt from `ip` and says whether it may go on: first the address's window,
    /// then the account's lockout.
    pub fn admit(&self, ip: &str, username: &str, now_ms: i64) -> Result<(), Gate> {
        {
            let mut m = self
                .by_ip
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if m.len() >= MAX_TRACKED {
                m.retain(|_, w| now_ms - w.start_ms < 60_000);
            }
            let w = m.entry(ip.to_owned()).or_insert(Window {
                start_ms: now_ms,
                count: 0,
            });
            if now_ms - w.start_ms >= 60_000 {
                *w = Window {
                    start_ms: now_ms,
                    count: 0,
                };
            }
            if w.count >= self.per_minute {
                let left_ms = 60_000 - (now_ms - w.start_ms);
                return Err(Gate::Limited {
                    retry_after_secs: u64::try_from(left_ms.div_euclid(1000) + 1).unwrap_or(60),
                });
            }
            w.count += 1;
        }
        let m = self
            .by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(username) {
            Some(f) if f.locked_until_ms > now_ms => Err(Gate::Locked {
                until_ms: f.locked_until_ms,
            }),
            _ => Ok(()),
        }
    }

    /// The address's remaining attempts in its window and the seconds until it resets.
    pub fn remaining(&self, ip: &str, now_ms: i64) -> (u32, u32, u64) {
        let m = self
            .by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match m.get(ip) {
            Some(w) if now_ms - w.start_ms < 60_000 => (
                self.per_minute,
                self.per_minute.saturating_sub(w.count),
                u64::try_from((60_000 - (now_ms - w.start_ms)).div_euclid(1000) + 1).unwrap_or(60),
            ),
            _ => (self.per_minute, self.per_minute, 60),
        }
    }

    /// A wrong password for `username`; returns the lockout's end when this one starts it.
    pub fn failed(&self, username: &str, now_ms: i64) -> Option<i64> {
        let mut m = self
            .by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if m.len() >= MAX_TRACKED {
            m.retain(|_, f| f.locked_until_ms > now_ms);
        }
        let f = m.entry(username.to_owned()).or_default();
        if f.locked_until_ms != 0 && f.locked_until_ms <= now_ms {
            *f = Failures::default();
        }
        f.count += 1;
        if f.count >= self.attempts {
            f.locked_until_ms = now_ms.saturating_add(self.lockout_ms);
            f.count = 0;
            return Some(f.locked_until_ms);
        }
        None
    }

    /// The right password: the count of wrong ones starts again.
    pub fn succeeded(&self, username: &str) {
        self.by_name
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(username);
    }
}

/// Whether `role` may make a request to `path` of the management API; `write` for every method
/// but `GET`, `HEAD` and `OPTIONS`. The routes a member reaches also check that the key is theirs.
pub fn role_allows(role: Role, write: bool, path: &str) -> bool {
    let own_session = path.starts_with("/api/auth/");
    match role {
        Role::Admin => true,
        Role::Viewer => own_session || !write,
        Role::Member => own_session || path == "/api/keys" || path.starts_with("/api/keys/"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(role: Role) -> UserRecord {
        UserRecord {
            id: "usr_1".into(),
            username: "ada".into(),
            password_hash: String::new(),
            role,
            blocked: false,
            created_at: 0,
            updated_at: 0,
            deleted_at: None,
            team_id: None,
        }
    }

    fn now() -> i64 {
        gatehouse_core::time::now_ms()
    }

    #[test]
    fn passwords_hash_with_argon2id_and_verify() {
        let decoy = decoy_hash().unwrap();
        assert!(!verify_password(&decoy, "correct horse battery"));
        let (real, fake) = (
            PasswordHash::new(&hash_password("x").unwrap())
                .unwrap()
                .to_string(),
            PasswordHash::new(&decoy).unwrap().to_string(),
        );
        let params = |h: &str| h.rsplitn(3, '$').nth(2).unwrap().to_owned();
        assert_eq!(params(&fake), params(&real), "the same algorithm and cost");
        let h = hash_password("correct horse battery").unwrap();
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, "correct horse battery"));
        assert!(!verify_password(&h, "correct horse battery!"));
        assert!(!verify_password("not a hash", "x"));
        assert_ne!(h, hash_password("correct horse battery").unwrap(), "salted");
    }

    #[test]
    fn tokens_verify_by_type_and_under_previous_secrets() {
        let old = Signer::new(b"old-secret-0123456789abcdef", &[], 1800, 604_800).unwrap();
        let new = Signer::new(
            b"new-secret-0123456789abcdef",
            &[b"old-secret-0123456789abcdef".to_vec()],
            1800,
            604_800,
        )
        .unwrap();
        let t = old
            .issue(&user(Role::Admin), TokenType::Access, None, now())
            .unwrap();
        let c = new.verify(&t.token, TokenType::Access).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.role, c.iss.as_str()),
            ("usr_1", Role::Admin, ISSUER)
        );
        assert_eq!(c.exp - c.iat, 1800);
        // A refresh token is not an access token, and the other way round.
        let r = new
            .issue(&user(Role::Admin), TokenType::Refresh, None, now())
            .unwrap();
        assert!(r.claims.fam.is_some());
        assert!(new.verify(&r.token, TokenType::Access).is_err());
        assert!(new.verify(&t.token, TokenType::Refresh).is_err());
        // Another gateway's secret, a tampered token, an expired one: refused.
        let other = Signer::new(b"someone-else-0123456789abc", &[], 1800, 604_800).unwrap();
        assert!(other.verify(&t.token, TokenType::Access).is_err());
        let mut bad = t.token.clone();
        bad.push('x');
        assert!(new.verify(&bad, TokenType::Access).is_err());
        let e = new
            .issue(
                &user(Role::Admin),
                TokenType::Access,
                None,
                now() - 3_600_000,
            )
            .unwrap();
        let err = new.verify(&e.token, TokenType::Access).unwrap_err();
        assert!(err.message.contains("expired"), "{}", err.message);
    }

    #[test]
    fn five_wrong_passwords_lock_an_account_for_its_window() {
        let l = Logins::new(100, 5, 900);
        let t = 1_000_000;
        for i in 0..4 {
            assert_eq!(l.admit("1.1.1.1", "ada", t + i), Ok(()));
            assert_eq!(l.failed("ada", t + i), None);
        }
        assert_eq!(l.failed("ada", t + 5), Some(t + 5 + 900_000));
        assert_eq!(
            l.admit("1.1.1.1", "ada", t + 10),
            Err(Gate::Locked {
                until_ms: t + 5 + 900_000
            })
        );
        // Another name is not locked; after the window the account opens again.
        assert_eq!(l.admit("1.1.1.1", "bob", t + 10), Ok(()));
        assert_eq!(l.admit("1.1.1.1", "ada", t + 5 + 900_000), Ok(()));
    }

    #[test]
    fn an_address_gets_its_attempts_per_minute() {
        let l = Logins::new(5, 5, 900);
        let t = 1_000_000;
        for i in 0..5 {
            assert_eq!(l.admit("2.2.2.2", &format!("u{i}"), t), Ok(()));
        }
        assert!(matches!(
            l.admit("2.2.2.2", "u9", t + 1000),
            Err(Gate::Limited {
                retry_after_secs: 60
            })
        ));
        assert_eq!(l.admit("3.3.3.3", "u9", t + 1000), Ok(()));
        assert_eq!(l.admit("2.2.2.2", "u9", t + 60_000), Ok(()));
    }

    #[test]
    fn roles_read_write_and_own_keys() {
        assert!(role_allows(Role::Admin, true, "/api/sessions"));
        assert!(role_allows(Role::Viewer, false, "/api/sessions"));
        assert!(!role_allows(Role::Viewer, true, "/api/keys"));
        assert!(role_allows(Role::Viewer, true, "/api/auth/logout"));
        assert!(role_allows(Role::Member, true, "/api/keys"));
        assert!(!role_allows(Role::Member, false, "/api/sessions"));
        assert!(!role_allows(Role::Member, false, "/api/audit"));
    }

    #[test]
    fn revocations_keep_their_own_expiry() {
        let r = Revoked::default();
        r.revoke("a", 2_000, 1_000);
        r.revoke("b", 9_000, 1_500);
        assert!(r.is_revoked("a") && r.is_revoked("b"));
        r.revoke("c", 9_000, 3_000);
        assert!(!r.is_revoked("a"), "expired entries go");
        assert!(r.is_revoked("b"));
    }
}
