// The SQL of admin users, their login history and their tokens, and of sealed provider keys,
// kept apart from the request-path tables; `include!`d by `store.rs` for each engine.

use gatehouse_core::record::{LoginEvent, RefreshToken, Role, UserRecord};
use sqlx::Row;

use crate::{RefreshUse, StoredProviderKey};

pub(crate) async fn upsert_user(tx: &mut DbConn, u: &UserRecord) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO users (id, username, password_hash, role, blocked, created_at, updated_at,
            deleted_at, team_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (id) DO UPDATE SET username = excluded.username,
            password_hash = excluded.password_hash, role = excluded.role,
            blocked = excluded.blocked, updated_at = excluded.updated_at,
            deleted_at = excluded.deleted_at, team_id = excluded.team_id",
    )
    .bind(&u.id)
    .bind(&u.username)
    .bind(&u.password_hash)
    .bind(u.role.as_str())
    .bind(u.blocked)
    .bind(u.created_at)
    .bind(u.updated_at)
    .bind(u.deleted_at)
    .bind(&u.team_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn append_login(tx: &mut DbConn, e: &LoginEvent) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO login_history (id, at, username, user_id, ip, user_agent, outcome, reason)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (id) DO NOTHING",
    )
    .bind(&e.id)
    .bind(e.at)
    .bind(&e.username)
    .bind(&e.user_id)
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.outcome)
    .bind(&e.reason)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn insert_refresh(tx: &mut DbConn, t: &RefreshToken) -> sqlx::Result<()> {
    // Expired tokens can neither be used nor replayed to any effect: they go as new ones come.
    sqlx::query("DELETE FROM refresh_tokens WHERE expires_at < $1")
        .bind(t.issued_at)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO refresh_tokens (jti, family, user_id, issued_at, expires_at)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(&t.jti)
    .bind(&t.family)
    .bind(&t.user_id)
    .bind(t.issued_at)
    .bind(t.expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn revoke_family(tx: &mut DbConn, family: &str, at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE refresh_tokens SET revoked_at = $1 WHERE family = $2 AND revoked_at IS NULL",
    )
    .bind(at)
    .bind(family)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn revoke_token(tx: &mut DbConn, jti: &str, expires_at: i64) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO revoked_tokens (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING",
    )
    .bind(jti)
    .bind(expires_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn user_from_row(r: &DbRow) -> sqlx::Result<UserRecord> {
    let role: String = r.try_get("role")?;
    Ok(UserRecord {
        id: r.try_get("id")?,
        username: r.try_get("username")?,
        password_hash: r.try_get("password_hash")?,
        // An unknown role (a hand-edited row) grants the least.
        role: Role::parse(&role).unwrap_or(Role::Viewer),
        blocked: r.try_get("blocked")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
        team_id: r.try_get("team_id")?,
    })
}

/// A live (not deleted) user by id or by name.
pub(crate) async fn find_user(
    pool: &sqlx::Pool<Db>,
    column: &'static str,
    value: &str,
) -> sqlx::Result<Option<UserRecord>> {
    let sql = match column {
        "id" => "SELECT * FROM users WHERE id = $1 AND deleted_at IS NULL",
        "id_any" => "SELECT * FROM users WHERE id = $1",
        _ => "SELECT * FROM users WHERE username = $1 AND deleted_at IS NULL",
    };
    sqlx::query(sql)
        .bind(value)
        .fetch_optional(pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
}

pub(crate) async fn list_users(pool: &sqlx::Pool<Db>) -> sqlx::Result<Vec<UserRecord>> {
    sqlx::query("SELECT * FROM users WHERE deleted_at IS NULL ORDER BY created_at")
        .fetch_all(pool)
        .await?
        .iter()
        .map(user_from_row)
        .collect()
}

/// Exchanges refresh token `jti` once, in one transaction: a second use (or a use of a token
/// whose family was revoked) revokes the family, so a stolen token dies with its thief's first
/// try or the owner's next refresh, whichever comes second.
pub(crate) async fn use_refresh(
    pool: &sqlx::Pool<Db>,
    jti: &str,
    now_ms: i64,
) -> sqlx::Result<RefreshUse> {
    let mut conn = pool.acquire().await?;
    // The read and the update below see no other writer in between: SQLite's write lock from
    // the start, PostgreSQL's lock on the row.
    let mut tx = begin_write(&mut conn).await?;
    let row = sqlx::query(concat!(
        "SELECT * FROM refresh_tokens WHERE jti = $1",
        for_update!()
    ))
    .bind(jti)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else {
        tx.commit().await?;
        return Ok(RefreshUse::Unknown);
    };
    let token = RefreshToken {
        jti: row.try_get("jti")?,
        family: row.try_get("family")?,
        user_id: row.try_get("user_id")?,
        issued_at: row.try_get("issued_at")?,
        expires_at: row.try_get("expires_at")?,
    };
    let used: Option<i64> = row.try_get("used_at")?;
    let revoked: Option<i64> = row.try_get("revoked_at")?;
    let outcome = if used.is_some() {
        revoke_family(&mut tx, &token.family, now_ms).await?;
        RefreshUse::Replayed(token)
    } else if revoked.is_some() {
        RefreshUse::Revoked
    } else if token.expires_at <= now_ms {
        RefreshUse::Unknown
    } else {
        sqlx::query("UPDATE refresh_tokens SET used_at = $1 WHERE jti = $2")
            .bind(now_ms)
            .bind(jti)
            .execute(&mut *tx)
            .await?;
        RefreshUse::Fresh(token)
    };
    tx.commit().await?;
    Ok(outcome)
}

pub(crate) async fn revoked_tokens(
    pool: &sqlx::Pool<Db>,
    now_ms: i64,
) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query("SELECT jti, expires_at FROM revoked_tokens WHERE expires_at > $1")
        .bind(now_ms)
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| Ok((r.try_get("jti")?, r.try_get("expires_at")?)))
        .collect()
}

pub(crate) async fn login_history(
    pool: &sqlx::Pool<Db>,
    username: Option<&str>,
    before_id: Option<&str>,
    limit: u32,
) -> sqlx::Result<Vec<LoginEvent>> {
    // Ids are UUID v7: their text order is their time order, and unlike `at` they never tie,
    // so a page boundary loses nothing.
    sqlx::query(
        "SELECT * FROM login_history
         WHERE ($1 IS NULL OR username = $1) AND ($2 IS NULL OR id < $2)
         ORDER BY id DESC LIMIT $3",
    )
    .bind(username)
    .bind(before_id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?
    .iter()
    .map(|r| {
        Ok(LoginEvent {
            id: r.try_get("id")?,
            at: r.try_get("at")?,
            username: r.try_get("username")?,
            user_id: r.try_get("user_id")?,
            ip: r.try_get("ip")?,
            user_agent: r.try_get("user_agent")?,
            outcome: r.try_get("outcome")?,
            reason: r.try_get("reason")?,
        })
    })
    .collect()
}

pub(crate) async fn set_provider_key(tx: &mut DbConn, k: &StoredProviderKey) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO provider_keys (provider, sealed, last4, updated_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (provider) DO UPDATE SET sealed = excluded.sealed, last4 = excluded.last4,
            updated_at = excluded.updated_at",
    )
    .bind(&k.provider)
    .bind(&k.sealed)
    .bind(&k.last4)
    .bind(k.updated_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

pub(crate) async fn provider_keys(pool: &sqlx::Pool<Db>) -> sqlx::Result<Vec<StoredProviderKey>> {
    sqlx::query("SELECT * FROM provider_keys ORDER BY provider")
        .fetch_all(pool)
        .await?
        .iter()
        .map(|r| {
            Ok(StoredProviderKey {
                provider: r.try_get("provider")?,
                sealed: r.try_get("sealed")?,
                last4: r.try_get("last4")?,
                updated_at: r.try_get("updated_at")?,
            })
        })
        .collect()
}
