//! The SQLite store: one file in the data directory, WAL mode, migrations applied at open.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use gatehouse_core::SessionId;
use gatehouse_core::record::{
    AuditEntry, CompactionRecord, CompactionSettings, KeyRecord, KeySpend, LoginEvent,
    MaskedContent, MemoryKind, MemoryRecord, RequestRecord, Session, SessionStats, StoredResponse,
    TeamRecord, UsageSource, UserRecord,
};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Row, Sqlite};

use crate::{
    Applied, AuditCheck, AuditFilter, CompactionTotals, Erasure, MaskedTotals, RefreshUse, Scope,
    SessionSummary, SpendGroup, SpendOf, SpendRow, Store, StoreError, StoreResult, StoreSize,
    StoredCompactions, StoredProviderKey, WriteOp,
};

/// Versioned migrations, embedded so the binary needs no files beside it.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "init",
        include_str!("../migrations/sqlite/0001_init.sql"),
    ),
    (
        2,
        "request_cost",
        include_str!("../migrations/sqlite/0002_request_cost.sql"),
    ),
    (
        3,
        "masked_content",
        include_str!("../migrations/sqlite/0003_masked_content.sql"),
    ),
    (
        4,
        "request_memory",
        include_str!("../migrations/sqlite/0004_request_memory.sql"),
    ),
    (
        5,
        "memory_entries",
        include_str!("../migrations/sqlite/0005_memory_entries.sql"),
    ),
    (
        6,
        "compactions",
        include_str!("../migrations/sqlite/0006_compactions.sql"),
    ),
    (
        7,
        "request_routing",
        include_str!("../migrations/sqlite/0007_request_routing.sql"),
    ),
    (
        8,
        "request_hardening",
        include_str!("../migrations/sqlite/0008_request_hardening.sql"),
    ),
    (
        9,
        "responses",
        include_str!("../migrations/sqlite/0009_responses.sql"),
    ),
    (
        10,
        "keys",
        include_str!("../migrations/sqlite/0010_keys.sql"),
    ),
    (
        11,
        "audit",
        include_str!("../migrations/sqlite/0011_audit.sql"),
    ),
    (
        12,
        "users",
        include_str!("../migrations/sqlite/0012_users.sql"),
    ),
    (
        13,
        "provider_keys",
        include_str!("../migrations/sqlite/0013_provider_keys.sql"),
    ),
    (
        14,
        "teams",
        include_str!("../migrations/sqlite/0014_teams.sql"),
    ),
    (
        15,
        "user_data",
        include_str!("../migrations/sqlite/0015_user_data.sql"),
    ),
    (
        16,
        "audit_erasure",
        include_str!("../migrations/sqlite/0016_audit_erasure.sql"),
    ),
    (
        17,
        "user_team",
        include_str!("../migrations/sqlite/0017_user_team.sql"),
    ),
];

const ACTIVE_KEY: &str = "active_session";

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    /// Opens (creating if needed) `file` and brings its schema up to date.
    pub async fn open(file: &Path) -> StoreResult<Self> {
        if let Some(dir) = file.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::DataDir {
                path: dir.display().to_string(),
                source,
            })?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")?
            .filename(file)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL is durable across process crashes in WAL mode; only power loss can drop the
            // last commits, which is the usual trade for a local metrics store.
            .synchronous(SqliteSynchronous::Normal)
            // A new database can give pages freed by retention back to the file system; an
            // older one reuses them (switching needs a full VACUUM).
            .auto_vacuum(sqlx::sqlite::SqliteAutoVacuum::Incremental)
            .busy_timeout(Duration::from_secs(5));
        // Migrations run on a connection of their own, closed before the working pool opens:
        // a pooled connection opened during a migration keeps the old schema until it next
        // reads, and a statement it prepares meanwhile (`SELECT *` after an `ADD COLUMN`) would
        // come back with more columns than sqlx was told of.
        let once = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        Self { pool: once.clone() }.migrate().await?;
        once.close().await;
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    async fn migrate(&self) -> StoreResult<()> {
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS _migrations (
                version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at INTEGER NOT NULL)",
        )
        .execute(&self.pool)
        .await?;
        let current: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) FROM _migrations")
            .fetch_one(&self.pool)
            .await?
            .try_get(0)?;
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
            let run = async {
                let mut tx = self.pool.begin().await?;
                sqlx::raw_sql(*sql).execute(&mut *tx).await?;
                sqlx::query(
                    "INSERT INTO _migrations (version, name, applied_at) VALUES ($1, $2, $3)",
                )
                .bind(version)
                .bind(name)
                .bind(gatehouse_core::time::now_ms())
                .execute(&mut *tx)
                .await?;
                tx.commit().await
            };
            run.await.map_err(|source| StoreError::Migration {
                version: *version,
                source,
            })?;
            tracing::info!(version, name, "applied migration");
        }
        Ok(())
    }

    async fn apply_one(tx: &mut SqliteConnection, op: &WriteOp) -> sqlx::Result<()> {
        match op {
            WriteOp::CreateSession(s) => {
                sqlx::query(
                    "INSERT INTO sessions (id, name, model_key, provider, created_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                )
                .bind(s.id.as_str())
                .bind(&s.name)
                .bind(&s.model_key)
                .bind(&s.provider)
                .bind(s.created_at)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::RenameSession { id, name } => {
                sqlx::query("UPDATE sessions SET name = $1 WHERE id = $2")
                    .bind(name)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::SetSessionModel {
                id,
                model_key,
                provider,
            } => {
                sqlx::query("UPDATE sessions SET model_key = $1, provider = $2 WHERE id = $3")
                    .bind(model_key)
                    .bind(provider)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::DeleteSession(id) => {
                for sql in [
                    "DELETE FROM requests WHERE session_id = $1",
                    "DELETE FROM compactions WHERE session_id = $1",
                    "DELETE FROM compaction_settings WHERE session_id = $1",
                    "DELETE FROM responses WHERE session_id = $1",
                ] {
                    sqlx::query(sql).bind(id.as_str()).execute(&mut *tx).await?;
                }
                sqlx::query("DELETE FROM sessions WHERE id = $1")
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM settings WHERE key = $1 AND value = $2")
                    .bind(ACTIVE_KEY)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::SetActiveSession(id) => match id {
                Some(id) => {
                    sqlx::query(
                        "INSERT INTO settings (key, value) VALUES ($1, $2)
                         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    )
                    .bind(ACTIVE_KEY)
                    .bind(id.as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                None => {
                    sqlx::query("DELETE FROM settings WHERE key = $1")
                        .bind(ACTIVE_KEY)
                        .execute(&mut *tx)
                        .await?;
                }
            },
            WriteOp::StoreMasked(m) => {
                sqlx::query(
                    "INSERT INTO masked_content (hash, role, tags, tokens, tokens_saved, content, created_at, key_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (hash) DO UPDATE SET created_at = excluded.created_at",
                )
                .bind(&m.hash)
                .bind(&m.role)
                .bind(m.tags.join(","))
                .bind(to_i64(m.tokens))
                .bind(to_i64(m.tokens_saved))
                .bind(m.content.as_deref().unwrap_or(""))
                .bind(m.created_at)
                .bind(&m.key_id)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::UpsertMemory(m) => {
                sqlx::query(
                    "INSERT INTO memory_entries (id, kind, content, tokens, session_id, access_count, created_at, last_access_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                     ON CONFLICT (id) DO UPDATE SET kind = excluded.kind,
                        access_count = excluded.access_count, last_access_at = excluded.last_access_at",
                )
                .bind(&m.id)
                .bind(m.kind.as_str())
                .bind(&m.content)
                .bind(to_i64(m.tokens))
                .bind(&m.session_id)
                .bind(to_i64(m.access_count))
                .bind(m.created_at)
                .bind(m.last_access_at)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::DeleteMemory(ids) => {
                for id in ids {
                    sqlx::query("DELETE FROM memory_entries WHERE id = $1")
                        .bind(id)
                        .execute(&mut *tx)
                        .await?;
                }
            }
            WriteOp::InsertCompaction(c) => {
                sqlx::query(
                    "INSERT INTO compactions (id, session_id, request_id, created_at, trigger, strategy,
                        summary_model, fallback_reason, model_key, max_context, tokens_before,
                        tokens_after, tokens_saved, messages_before, messages_after, summarized, cut,
                        prefix_hash, summary, summary_tokens)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16,
                        $17, $18, $19, $20) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&c.id)
                .bind(c.session_id.as_str())
                .bind(&c.request_id)
                .bind(c.created_at)
                .bind(&c.trigger)
                .bind(&c.strategy)
                .bind(&c.summary_model)
                .bind(&c.fallback_reason)
                .bind(&c.model_key)
                .bind(to_i64(c.max_context))
                .bind(to_i64(c.tokens_before))
                .bind(to_i64(c.tokens_after))
                .bind(to_i64(c.tokens_saved))
                .bind(to_i64(c.messages_before))
                .bind(to_i64(c.messages_after))
                .bind(to_i64(c.summarized))
                .bind(to_i64(c.cut))
                .bind(&c.prefix_hash)
                .bind(&c.summary)
                .bind(to_i64(c.summary_tokens))
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::SetCompactionSettings { session, settings } => {
                sqlx::query(
                    "INSERT INTO compaction_settings (session_id, auto_enabled, threshold_pct, reserved_tokens)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (session_id) DO UPDATE SET auto_enabled = excluded.auto_enabled,
                        threshold_pct = excluded.threshold_pct, reserved_tokens = excluded.reserved_tokens",
                )
                .bind(session.as_str())
                .bind(settings.auto_enabled)
                .bind(settings.threshold_pct)
                .bind(to_i64(settings.reserved_tokens))
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::SetSetting { key, value } => {
                sqlx::query(
                    "INSERT INTO settings (key, value) VALUES ($1, $2)
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(key)
                .bind(value)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::StoreResponse(r) => {
                sqlx::query(
                    "INSERT INTO responses (id, session_id, created_at, input, response, key_id)
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO NOTHING",
                )
                .bind(&r.id)
                .bind(r.session_id.as_str())
                .bind(r.created_at)
                .bind(&r.input)
                .bind(&r.response)
                .bind(&r.key_id)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::UpsertKey(k) => upsert_key(tx, k).await?,
            WriteOp::UpsertTeam(t) => upsert_team(tx, t).await?,
            WriteOp::Erase(e) => erase(tx, e).await?,
            WriteOp::SetTeamSpend { id, spend } => {
                sqlx::query("UPDATE teams SET spend_usd = $1, budget_reset_at = $2 WHERE id = $3")
                    .bind(spend.spend_usd)
                    .bind(spend.budget_reset_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::AppendAudit(a) => append_audit(tx, a).await?,
            WriteOp::UpsertUser(u) => crate::users::upsert_user(tx, u).await?,
            WriteOp::AppendLogin(e) => crate::users::append_login(tx, e).await?,
            WriteOp::InsertRefresh(t) => crate::users::insert_refresh(tx, t).await?,
            WriteOp::RevokeFamily { family, at } => {
                crate::users::revoke_family(tx, family, *at).await?;
            }
            WriteOp::SetProviderKey(k) => crate::users::set_provider_key(tx, k).await?,
            WriteOp::DeleteProviderKey(provider) => {
                sqlx::query("DELETE FROM provider_keys WHERE provider = $1")
                    .bind(provider)
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::RevokeUserRefresh { user_id, at } => {
                sqlx::query(
                    "UPDATE refresh_tokens SET revoked_at = $1 WHERE user_id = $2 AND revoked_at IS NULL",
                )
                .bind(at)
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            }
            WriteOp::RevokeToken { jti, expires_at } => {
                crate::users::revoke_token(tx, jti, *expires_at).await?;
            }
            WriteOp::SetKeySpend { id, spend } => {
                sqlx::query("UPDATE keys SET spend_usd = $1, budget_reset_at = $2 WHERE id = $3")
                    .bind(spend.spend_usd)
                    .bind(spend.budget_reset_at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            WriteOp::DeleteResponse(id) => {
                sqlx::query("DELETE FROM responses WHERE id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            // Request rows go through `insert_requests` from `apply`.
            WriteOp::InsertRequest(r) => {
                insert_requests(tx, &[r]).await?;
            }
        }
        Ok(())
    }
}

/// The `prev_hash` of the first audit row.
const AUDIT_GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn audit_hash(prev_hash: &str, e: &AuditEntry) -> String {
    sha256_hex(&[prev_hash.as_bytes(), e.canonical().as_bytes()])
}

fn sha256_hex(parts: &[&[u8]]) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    for p in parts {
        h.update(p);
    }
    hex(&h.finalize())
}

fn hex(bytes: &[u8]) -> String {
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            use std::fmt::Write;
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The salted digest of a version-2 row's personal fields.
fn personal_hash(salt: &str, e: &AuditEntry) -> String {
    sha256_hex(&[salt.as_bytes(), e.personal().as_bytes()])
}

fn audit_hash_v2(prev_hash: &str, e: &AuditEntry, personal_hash: &str) -> String {
    sha256_hex(&[
        prev_hash.as_bytes(),
        e.canonical_v2(personal_hash).as_bytes(),
    ])
}

/// 16 random bytes, hex.
fn new_salt() -> sqlx::Result<String> {
    let mut b = [0u8; 16];
    aws_lc_rs::rand::fill(&mut b)
        .map_err(|_| sqlx::Error::Protocol("the system's random number generator failed".into()))?;
    Ok(hex(&b))
}

/// Appends `a` after the newest row, chained to it; once only (a retried batch finds its id).
/// Inside the batch's transaction, so two processes appending at once are serialised by
/// SQLite's write lock and the chain stays one line.
async fn append_audit(tx: &mut SqliteConnection, a: &AuditEntry) -> sqlx::Result<()> {
    let exists = sqlx::query("SELECT 1 FROM audit_log WHERE id = $1")
        .bind(&a.id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let last = sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1")
        .fetch_optional(&mut *tx)
        .await?;
    let (seq, prev_hash) = match last {
        Some(r) => (
            r.try_get::<i64, _>("seq")? + 1,
            r.try_get::<String, _>("hash")?,
        ),
        None => (1, AUDIT_GENESIS.to_owned()),
    };
    let mut e = a.clone();
    e.seq = seq;
    let salt = new_salt()?;
    let personal = personal_hash(&salt, &e);
    e.hash = audit_hash_v2(&prev_hash, &e, &personal);
    e.prev_hash = prev_hash;
    let json = |v: &Option<serde_json::Value>| v.as_ref().map(serde_json::Value::to_string);
    sqlx::query(
        "INSERT INTO audit_log (seq, id, at, actor, ip, user_agent, action, target, before, after,
            outcome, prev_hash, hash, version, salt, personal_hash)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 2, $14, $15)",
    )
    .bind(e.seq)
    .bind(&e.id)
    .bind(e.at)
    .bind(&e.actor)
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(&e.action)
    .bind(&e.target)
    .bind(json(&e.before))
    .bind(json(&e.after))
    .bind(&e.outcome)
    .bind(&e.prev_hash)
    .bind(&e.hash)
    .bind(&salt)
    .bind(&personal)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// Whether an erased row holds exactly what an erasure leaves.
fn blank(e: &AuditEntry) -> bool {
    e.actor == "erased"
        && e.outcome == "erased"
        && e.ip.is_none()
        && e.user_agent.is_none()
        && e.target.is_none()
        && e.before.is_none()
        && e.after.is_none()
}

/// A version-2 row's salt (none once erased) and personal digest; `None` for version 1.
fn audit_v2(r: &SqliteRow) -> sqlx::Result<Option<(Option<String>, String)>> {
    if r.try_get::<i64, _>("version")? < 2 {
        return Ok(None);
    }
    Ok(Some((
        r.try_get("salt")?,
        r.try_get::<Option<String>, _>("personal_hash")?
            .unwrap_or_default(),
    )))
}

fn audit_from_row(r: &SqliteRow) -> sqlx::Result<AuditEntry> {
    let json = |name: &str| -> sqlx::Result<Option<serde_json::Value>> {
        Ok(r.try_get::<Option<String>, _>(name)?
            .map(|t| serde_json::from_str(&t).unwrap_or(serde_json::Value::String(t))))
    };
    Ok(AuditEntry {
        seq: r.try_get("seq")?,
        id: r.try_get("id")?,
        at: r.try_get("at")?,
        actor: r.try_get("actor")?,
        ip: r.try_get("ip")?,
        user_agent: r.try_get("user_agent")?,
        action: r.try_get("action")?,
        target: r.try_get("target")?,
        before: json("before")?,
        after: json("after")?,
        outcome: r.try_get("outcome")?,
        prev_hash: r.try_get("prev_hash")?,
        hash: r.try_get("hash")?,
        erased: r.try_get::<Option<i64>, _>("erased_at")?.is_some(),
    })
}

/// A key's limits, inserted or replaced; its spend columns are the gateway's and stay.
async fn upsert_key(tx: &mut SqliteConnection, k: &KeyRecord) -> sqlx::Result<()> {
    let models = serde_json::to_string(&k.models).unwrap_or_else(|_| "[]".to_owned());
    let metadata = k.metadata.to_string();
    sqlx::query(
        "INSERT INTO keys (id, name, digest, prefix, last4, owner, models, rpm, tpm,
            max_parallel_requests, max_budget_usd, budget_period_secs, soft_budget_usd, expires_at,
            blocked, metadata, previous_digest, previous_expires_at, created_at, updated_at,
            deleted_at, team_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18,
            $19, $20, $21, $22)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, digest = excluded.digest,
            prefix = excluded.prefix, last4 = excluded.last4, owner = excluded.owner,
            team_id = excluded.team_id,
            models = excluded.models, rpm = excluded.rpm, tpm = excluded.tpm,
            max_parallel_requests = excluded.max_parallel_requests,
            max_budget_usd = excluded.max_budget_usd,
            budget_period_secs = excluded.budget_period_secs,
            soft_budget_usd = excluded.soft_budget_usd, expires_at = excluded.expires_at,
            blocked = excluded.blocked, metadata = excluded.metadata,
            previous_digest = excluded.previous_digest,
            previous_expires_at = excluded.previous_expires_at,
            updated_at = excluded.updated_at, deleted_at = excluded.deleted_at",
    )
    .bind(&k.id)
    .bind(&k.name)
    .bind(&k.digest)
    .bind(&k.prefix)
    .bind(&k.last4)
    .bind(&k.owner)
    .bind(models)
    .bind(k.rpm.map(to_i64))
    .bind(k.tpm.map(to_i64))
    .bind(k.max_parallel_requests.map(to_i64))
    .bind(k.max_budget_usd)
    .bind(k.budget_period_secs.map(to_i64))
    .bind(k.soft_budget_usd)
    .bind(k.expires_at)
    .bind(k.blocked)
    .bind(metadata)
    .bind(&k.previous_digest)
    .bind(k.previous_expires_at)
    .bind(k.created_at)
    .bind(k.updated_at)
    .bind(k.deleted_at)
    .bind(&k.team_id)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// A JSON array of strings, for `json_each` (one parameter, whatever the list's length).
fn json_list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<&str> = items.iter().map(AsRef::as_ref).collect();
    serde_json::to_string(&items).unwrap_or_else(|_| "[]".to_owned())
}

async fn erase(tx: &mut SqliteConnection, e: &Erasure) -> sqlx::Result<()> {
    let keys = json_list(&e.key_ids);
    let sessions: Vec<&str> = e.sessions.iter().map(SessionId::as_str).collect();
    let sessions = json_list(&sessions);
    sqlx::query(
        "UPDATE requests SET preview = '', error_message = NULL
         WHERE key_id IN (SELECT value FROM json_each($1))",
    )
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    sqlx::query("DELETE FROM masked_content WHERE key_id IN (SELECT value FROM json_each($1))")
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    for sql in [
        "DELETE FROM compactions WHERE session_id IN (SELECT value FROM json_each($1))",
        "DELETE FROM memory_entries WHERE session_id IN (SELECT value FROM json_each($1))",
        "DELETE FROM responses WHERE session_id IN (SELECT value FROM json_each($1))",
        "UPDATE sessions SET name = 'erased' WHERE id IN (SELECT value FROM json_each($1))",
    ] {
        sqlx::query(sql).bind(&sessions).execute(&mut *tx).await?;
    }
    sqlx::query("DELETE FROM responses WHERE key_id IN (SELECT value FROM json_each($1))")
        .bind(&keys)
        .execute(&mut *tx)
        .await?;
    // The trail's rows by them or about them (their user, their keys): version-2 rows only,
    // whose chain covers a digest of these fields rather than the fields.
    let mut targets = vec![format!("user:{}", e.user_id)];
    targets.extend(e.key_ids.iter().map(|k| format!("key:{k}")));
    // Rows of another user who had the same name before are not theirs (`since`); an
    // erasure's own rows are never blanked, since they account for the others.
    let blanked: Vec<i64> = sqlx::query_scalar(
        "UPDATE audit_log SET actor = 'erased', ip = NULL, user_agent = NULL, target = NULL,
            before = NULL, after = NULL, outcome = 'erased', salt = NULL, erased_at = $3
         WHERE version = 2 AND erased_at IS NULL AND action != 'user.erase'
           AND (((actor = $1 OR target = $1) AND at >= $4)
                OR target IN (SELECT value FROM json_each($2)))
         RETURNING seq",
    )
    .bind(format!("user:{}", e.username))
    .bind(json_list(&targets))
    .bind(e.at)
    .bind(e.since)
    .fetch_all(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE login_history SET username = $1, ip = NULL, user_agent = NULL
         WHERE user_id = $2 OR (user_id IS NULL AND username = $3 AND at >= $4)",
    )
    .bind(&e.tombstone)
    .bind(&e.user_id)
    .bind(&e.username)
    .bind(e.since)
    .execute(&mut *tx)
    .await?;
    // The erasure's audit row lists what it blanked: the verifier holds every blanked row to
    // such a list, so blanking a row by hand does not pass for an erasure.
    let mut row = (*e.audit).clone();
    let mut blanked = blanked;
    blanked.sort_unstable();
    if let Some(serde_json::Value::Object(after)) = &mut row.after {
        after.insert("audit_rows_blanked".into(), serde_json::json!(blanked));
    }
    append_audit(tx, &row).await
}

/// A team's limits, inserted or replaced; its spend columns are the gateway's and stay.
async fn upsert_team(tx: &mut SqliteConnection, t: &TeamRecord) -> sqlx::Result<()> {
    let models = serde_json::to_string(&t.models).unwrap_or_else(|_| "[]".to_owned());
    sqlx::query(
        "INSERT INTO teams (id, name, models, rpm, tpm, max_parallel_requests, max_budget_usd,
            budget_period_secs, soft_budget_usd, blocked, metadata, created_at, updated_at,
            deleted_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
         ON CONFLICT (id) DO UPDATE SET name = excluded.name, models = excluded.models,
            rpm = excluded.rpm, tpm = excluded.tpm,
            max_parallel_requests = excluded.max_parallel_requests,
            max_budget_usd = excluded.max_budget_usd,
            budget_period_secs = excluded.budget_period_secs,
            soft_budget_usd = excluded.soft_budget_usd, blocked = excluded.blocked,
            metadata = excluded.metadata, updated_at = excluded.updated_at,
            deleted_at = excluded.deleted_at",
    )
    .bind(&t.id)
    .bind(&t.name)
    .bind(models)
    .bind(t.rpm.map(to_i64))
    .bind(t.tpm.map(to_i64))
    .bind(t.max_parallel_requests.map(to_i64))
    .bind(t.max_budget_usd)
    .bind(t.budget_period_secs.map(to_i64))
    .bind(t.soft_budget_usd)
    .bind(t.blocked)
    .bind(t.metadata.to_string())
    .bind(t.created_at)
    .bind(t.updated_at)
    .bind(t.deleted_at)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

fn team_from_row(r: &SqliteRow) -> sqlx::Result<(TeamRecord, KeySpend)> {
    let opt = |name: &str| -> sqlx::Result<Option<u64>> {
        Ok(r.try_get::<Option<i64>, _>(name)?.map(to_u64))
    };
    let models: String = r.try_get("models")?;
    let metadata: String = r.try_get("metadata")?;
    let team = TeamRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        rpm: opt("rpm")?,
        tpm: opt("tpm")?,
        max_parallel_requests: opt("max_parallel_requests")?,
        max_budget_usd: r.try_get("max_budget_usd")?,
        budget_period_secs: opt("budget_period_secs")?,
        soft_budget_usd: r.try_get("soft_budget_usd")?,
        blocked: r.try_get("blocked")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
    };
    let spend = KeySpend {
        spend_usd: r.try_get("spend_usd")?,
        budget_reset_at: r.try_get("budget_reset_at")?,
    };
    Ok((team, spend))
}

fn key_from_row(r: &SqliteRow) -> sqlx::Result<(KeyRecord, KeySpend)> {
    let opt = |name: &str| -> sqlx::Result<Option<u64>> {
        Ok(r.try_get::<Option<i64>, _>(name)?.map(to_u64))
    };
    let models: String = r.try_get("models")?;
    let metadata: String = r.try_get("metadata")?;
    let key = KeyRecord {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        digest: r.try_get("digest")?,
        prefix: r.try_get("prefix")?,
        last4: r.try_get("last4")?,
        owner: r.try_get("owner")?,
        team_id: r.try_get("team_id")?,
        models: serde_json::from_str(&models).unwrap_or_default(),
        rpm: opt("rpm")?,
        tpm: opt("tpm")?,
        max_parallel_requests: opt("max_parallel_requests")?,
        max_budget_usd: r.try_get("max_budget_usd")?,
        budget_period_secs: opt("budget_period_secs")?,
        soft_budget_usd: r.try_get("soft_budget_usd")?,
        expires_at: r.try_get("expires_at")?,
        blocked: r.try_get("blocked")?,
        metadata: serde_json::from_str(&metadata).unwrap_or(serde_json::Value::Null),
        previous_digest: r.try_get("previous_digest")?,
        previous_expires_at: r.try_get("previous_expires_at")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        deleted_at: r.try_get("deleted_at")?,
    };
    let spend = KeySpend {
        spend_usd: r.try_get("spend_usd")?,
        budget_reset_at: r.try_get("budget_reset_at")?,
    };
    Ok((key, spend))
}

/// The columns of a request row, in the order `bind_request` binds them.
const REQUEST_COLUMNS: &str = "id, request_id, session_id, created_at, provider, model_key,
    upstream_model, stream, status, prompt_tokens_est, prompt_tokens, completion_tokens,
    cached_tokens, reasoning_tokens, usage_source, max_context, context_pct, preview, latency_ms,
    ttfb_ms, overhead_us, attempts, finish_reason, error_type, error_message, cost_usd,
    memory_tokens, chat_tokens, memory_ratio, routing, requested_model, purpose, key_id, team_id";
const REQUEST_PARAMS: usize = 34;
/// Rows per multi-row INSERT. Measured on two cores (bench/RESULTS.md): 1 row a statement
/// wrote ~26k rows/s, 16 ~73k, 64 ~100k; but a 64-row statement is one long burst on the
/// SQLite thread that shows in the c=1 tail of requests sharing the cores, with no gain at c=64.
const ROWS_PER_INSERT: usize = 16;

/// `INSERT INTO requests … VALUES (…), (…)` for `n` rows, built once per `n`. Anonymous `?`
/// placeholders, not the `$N` of the rest of the SQL: sqlx looks each named parameter up in
/// SQLite's list of names, a linear scan, which made a 2,048-parameter statement quadratic (80 %
/// of the writer's time in a profile). This statement is SQLite's own; PostgreSQL will batch its own way.
fn insert_sql(n: usize) -> Arc<str> {
    static CACHE: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        let row = format!("({})", vec!["?"; REQUEST_PARAMS].join(", "));
        (0..=ROWS_PER_INSERT)
            .map(|n| {
                let rows: Vec<&str> = (0..n).map(|_| row.as_str()).collect();
                Arc::from(format!(
                    "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING",
                    rows.join(", ")
                ))
            })
            .collect()
    });
    cache.get(n).cloned().unwrap_or_else(|| Arc::from(""))
}

/// Inserts request rows, `ROWS_PER_INSERT` to a statement; returns how many were refused. A
/// statement that breaks a constraint is retried row by row, so only the rows at fault are
/// refused; any other error fails the whole batch.
async fn insert_requests(tx: &mut SqliteConnection, rows: &[&RequestRecord]) -> sqlx::Result<u64> {
    let mut dropped = 0;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let sql = sqlx::AssertSqlSafe(insert_sql(chunk.len()));
        let mut q = sqlx::query(sql);
        for r in chunk {
            q = bind_request(q, r);
        }
        match q.execute(&mut *tx).await {
            Ok(_) => {}
            Err(e) if is_constraint(&e) => {
                for r in chunk {
                    let one = bind_request(sqlx::query(sqlx::AssertSqlSafe(insert_sql(1))), r);
                    match one.execute(&mut *tx).await {
                        Ok(_) => {}
                        Err(e) if is_constraint(&e) => {
                            dropped += 1;
                            tracing::error!(error = %e, request_id = %r.id, "dropping a request row that breaks a constraint on its own");
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(dropped)
}

type Query<'q> = sqlx::query::Query<'q, Sqlite, sqlx::sqlite::SqliteArguments>;

fn bind_request<'q>(q: Query<'q>, r: &'q RequestRecord) -> Query<'q> {
    // The writer gives every row its id; one applied directly (tests) gets a new one.
    q.bind(if r.row_id.is_empty() {
        uuid_v7()
    } else {
        r.row_id.clone()
    })
    .bind(&r.id)
    .bind(r.session_id.as_str())
    .bind(r.created_at)
    .bind(&r.provider)
    .bind(&r.model_key)
    .bind(&r.upstream_model)
    .bind(r.stream)
    .bind(i64::from(r.status))
    .bind(to_i64(r.prompt_tokens_est))
    .bind(r.prompt_tokens.map(to_i64))
    .bind(r.completion_tokens.map(to_i64))
    .bind(r.cached_tokens.map(to_i64))
    .bind(r.reasoning_tokens.map(to_i64))
    .bind(r.usage_source.as_str())
    .bind(to_i64(r.max_context))
    .bind(r.context_pct)
    .bind(&r.preview)
    .bind(to_i64(r.latency_ms))
    .bind(r.ttfb_ms.map(to_i64))
    .bind(to_i64(r.overhead_us))
    .bind(i64::from(r.attempts))
    .bind(&r.finish_reason)
    .bind(&r.error_type)
    .bind(&r.error_message)
    .bind(r.cost_usd)
    .bind(to_i64(r.memory_tokens))
    .bind(to_i64(r.chat_tokens))
    .bind(r.memory_ratio)
    .bind(&r.routing)
    .bind(&r.requested_model)
    .bind(&r.purpose)
    .bind(&r.key_id)
    .bind(&r.team_id)
}

/// The smallest UUID v7 of millisecond `ms`, as text: every row id made before `ms` sorts
/// below it.
fn uuid_v7_floor(ms: i64) -> String {
    let ms = u64::try_from(ms).unwrap_or(0) & 0xFFFF_FFFF_FFFF;
    format!(
        "{:08x}-{:04x}-7000-8000-000000000000",
        ms >> 16,
        ms & 0xFFFF
    )
}

/// An error of this one statement's data (a duplicate key, a missing value), as opposed to one
/// of the database (locked, read-only, full, I/O) that any statement would hit.
fn is_constraint(e: &sqlx::Error) -> bool {
    use sqlx::error::ErrorKind;
    matches!(e, sqlx::Error::Database(d) if matches!(
        d.kind(),
        ErrorKind::UniqueViolation
            | ErrorKind::ForeignKeyViolation
            | ErrorKind::NotNullViolation
            | ErrorKind::CheckViolation
    ))
}

fn uuid_v7() -> String {
    gatehouse_core::SessionId::generate().as_str().to_owned()
}

/// Token figures are clamped when summed (`gatehouse_core::usage::MAX_TOKENS`): a row written
/// by an older version from a provider's absurd figure must not make every later `SUM` fail.
const TOKEN_CAP: i64 = gatehouse_core::usage::MAX_TOKENS as i64;

/// A `TOTAL(…)` column (a float, which never overflows) as a saturated count.
fn sum(row: &SqliteRow, name: &str) -> sqlx::Result<u64> {
    let v: f64 = row.try_get(name)?;
    // `as` saturates: NaN becomes 0, anything past u64::MAX becomes u64::MAX.
    Ok(v.max(0.0) as u64)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn response_from_row(row: &SqliteRow) -> sqlx::Result<StoredResponse> {
    Ok(StoredResponse {
        id: row.try_get("id")?,
        session_id: SessionId::new(row.try_get::<String, _>("session_id")?),
        created_at: row.try_get("created_at")?,
        input: row.try_get("input")?,
        response: row.try_get("response")?,
        key_id: row.try_get("key_id")?,
    })
}

fn session_from_row(row: &SqliteRow) -> sqlx::Result<Session> {
    Ok(Session {
        id: SessionId::new(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        model_key: row.try_get("model_key")?,
        provider: row.try_get("provider")?,
        created_at: row.try_get("created_at")?,
    })
}

fn compaction_from_row(r: &SqliteRow) -> sqlx::Result<CompactionRecord> {
    let n = |c: &str| -> sqlx::Result<u64> { Ok(to_u64(r.try_get(c)?)) };
    Ok(CompactionRecord {
        id: r.try_get("id")?,
        session_id: SessionId::new(r.try_get::<String, _>("session_id")?),
        request_id: r.try_get("request_id")?,
        created_at: r.try_get("created_at")?,
        trigger: r.try_get("trigger")?,
        strategy: r.try_get("strategy")?,
        summary_model: r.try_get("summary_model")?,
        fallback_reason: r.try_get("fallback_reason")?,
        model_key: r.try_get("model_key")?,
        max_context: n("max_context")?,
        tokens_before: n("tokens_before")?,
        tokens_after: n("tokens_after")?,
        tokens_saved: n("tokens_saved")?,
        messages_before: n("messages_before")?,
        messages_after: n("messages_after")?,
        summarized: n("summarized")?,
        cut: n("cut")?,
        prefix_hash: r.try_get("prefix_hash")?,
        summary: r.try_get("summary")?,
        summary_tokens: n("summary_tokens")?,
    })
}

fn masked_from_row(row: &SqliteRow, with_content: bool) -> sqlx::Result<MaskedContent> {
    let tags: String = row.try_get("tags")?;
    Ok(MaskedContent {
        hash: row.try_get("hash")?,
        role: row.try_get("role")?,
        tags: tags
            .split(',')
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect(),
        tokens: to_u64(row.try_get("tokens")?),
        tokens_saved: to_u64(row.try_get("tokens_saved")?),
        content: if with_content {
            Some(row.try_get("content")?)
        } else {
            None
        },
        created_at: row.try_get("created_at")?,
        key_id: row.try_get("key_id")?,
    })
}

fn request_from_row(row: &SqliteRow) -> sqlx::Result<RequestRecord> {
    let opt = |name: &str| -> sqlx::Result<Option<u64>> {
        Ok(row.try_get::<Option<i64>, _>(name)?.map(to_u64))
    };
    Ok(RequestRecord {
        id: row.try_get("request_id")?,
        session_id: SessionId::new(row.try_get::<String, _>("session_id")?),
        created_at: row.try_get("created_at")?,
        provider: row.try_get("provider")?,
        model_key: row.try_get("model_key")?,
        upstream_model: row.try_get("upstream_model")?,
        stream: row.try_get("stream")?,
        status: u16::try_from(row.try_get::<i64, _>("status")?).unwrap_or(0),
        prompt_tokens_est: to_u64(row.try_get("prompt_tokens_est")?),
        prompt_tokens: opt("prompt_tokens")?,
        completion_tokens: opt("completion_tokens")?,
        cached_tokens: opt("cached_tokens")?,
        reasoning_tokens: opt("reasoning_tokens")?,
        usage_source: UsageSource::parse(&row.try_get::<String, _>("usage_source")?),
        max_context: to_u64(row.try_get("max_context")?),
        context_pct: row.try_get("context_pct")?,
        preview: row.try_get("preview")?,
        latency_ms: to_u64(row.try_get("latency_ms")?),
        ttfb_ms: opt("ttfb_ms")?,
        overhead_us: to_u64(row.try_get("overhead_us")?),
        attempts: u32::try_from(row.try_get::<i64, _>("attempts")?).unwrap_or(0),
        finish_reason: row.try_get("finish_reason")?,
        error_type: row.try_get("error_type")?,
        error_message: row.try_get("error_message")?,
        cost_usd: row.try_get("cost_usd")?,
        memory_tokens: to_u64(row.try_get("memory_tokens")?),
        chat_tokens: to_u64(row.try_get("chat_tokens")?),
        memory_ratio: row.try_get("memory_ratio")?,
        routing: row.try_get("routing")?,
        row_id: row.try_get("id")?,
        requested_model: row.try_get("requested_model")?,
        purpose: row.try_get("purpose")?,
        key_id: row.try_get("key_id")?,
        team_id: row.try_get("team_id")?,
    })
}

// Token totals count answered requests only (`status` 2xx): a failed request is not billed,
// while a stream cut mid-way still answered 200 and is billed for what was sent.

/// One batch in one transaction: runs of request rows in multi-row statements, the rest op by op.
async fn apply_batch(conn: &mut SqliteConnection, ops: &[WriteOp]) -> sqlx::Result<Applied> {
    // A batch that erases a user zeroes what it overwrites and deletes, instead of leaving it
    // in free space (their prompts must not stay readable in the file); only that batch, on
    // this connection: zeroing on every write would slow the request rows' writer.
    let erasing = ops.iter().any(|o| matches!(o, WriteOp::Erase(_)));
    if erasing {
        sqlx::raw_sql("PRAGMA secure_delete = ON")
            .execute(&mut *conn)
            .await?;
    }
    let r = apply_batch_in(conn, ops).await;
    if erasing {
        sqlx::raw_sql("PRAGMA secure_delete = OFF")
            .execute(&mut *conn)
            .await?;
    }
    r
}

async fn apply_batch_in(conn: &mut SqliteConnection, ops: &[WriteOp]) -> sqlx::Result<Applied> {
    // IMMEDIATE: the write lock from the start. A deferred transaction that reads first (the
    // audit chain's last row) and then writes gets SQLITE_BUSY at once, without waiting, when
    // another connection wrote in between (a login's direct write).
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut applied = Applied::default();
    // Runs of request rows (most of every batch) go in multi-row statements.
    let mut i = 0;
    while let Some(op) = ops.get(i) {
        let run: Vec<&RequestRecord> = ops
            .iter()
            .skip(i)
            .map_while(|o| match o {
                WriteOp::InsertRequest(r) => Some(&**r),
                _ => None,
            })
            .collect();
        if !run.is_empty() {
            i += run.len();
            applied.dropped += insert_requests(&mut tx, &run).await?;
            continue;
        }
        i += 1;
        match SqliteStore::apply_one(&mut tx, op).await {
            Ok(()) => {}
            // SQLite undoes just that statement; the transaction goes on.
            Err(e) if is_constraint(&e) => {
                applied.dropped += 1;
                tracing::error!(error = %e, op = op_name(op), "dropping a write that breaks a constraint on its own");
            }
            // Dropping `tx` rolls the batch back; the writer retries it whole.
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(applied)
}

impl Store for SqliteStore {
    fn apply<'a>(&'a self, ops: &'a [WriteOp]) -> BoxFuture<'a, StoreResult<Applied>> {
        Box::pin(async move {
            let mut conn = self.pool.acquire().await?;
            let applied = apply_batch(&mut conn, ops).await;
            // A failed COMMIT or ROLLBACK (a full disk) can leave SQLite inside a transaction
            // that sqlx no longer tracks: pooled again, that connection would nest every later
            // batch in a savepoint that never commits, and hold the write lock for good.
            if applied.is_err() {
                conn.close_on_drop();
            }
            Ok(applied?)
        })
    }

    fn prune_requests(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            // Row ids are UUID v7 text: they sort by their creation time, so the primary key
            // finds the old rows (`created_at` has no index; every insert would pay for one).
            let r = sqlx::query(
                "DELETE FROM requests WHERE id IN
                    (SELECT id FROM requests WHERE id < $1 ORDER BY id LIMIT $2)",
            )
            .bind(uuid_v7_floor(before_ms))
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            Ok(r.rows_affected())
        })
    }

    fn prune_masked(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM masked_content WHERE hash IN
                    (SELECT hash FROM masked_content WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            Ok(r.rows_affected())
        })
    }

    fn prune_responses(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM responses WHERE id IN
                    (SELECT id FROM responses WHERE created_at < $1 ORDER BY created_at LIMIT $2)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            Ok(r.rows_affected())
        })
    }

    fn prune_logins(
        &self,
        before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM login_history WHERE id IN
                    (SELECT id FROM login_history WHERE at < $1 ORDER BY at LIMIT $2)",
            )
            .bind(before_ms)
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            let mut n = r.rows_affected();
            for table in ["refresh_tokens", "revoked_tokens"] {
                let sql = format!(
                    "DELETE FROM {table} WHERE rowid IN
                        (SELECT rowid FROM {table} WHERE expires_at < $1 LIMIT $2)"
                );
                n += sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(now_ms)
                    .bind(i64::from(limit))
                    .execute(&self.pool)
                    .await?
                    .rows_affected();
            }
            Ok(n)
        })
    }

    fn get_response<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StoredResponse>>> {
        Box::pin(async move {
            let Some(row) = sqlx::query("SELECT * FROM responses WHERE id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
            else {
                return Ok(None);
            };
            Ok(Some(response_from_row(&row)?))
        })
    }

    fn prune_oldest_requests(&self, limit: u32) -> BoxFuture<'_, StoreResult<u64>> {
        Box::pin(async move {
            let r = sqlx::query(
                "DELETE FROM requests WHERE id IN (SELECT id FROM requests ORDER BY id LIMIT $1)",
            )
            .bind(i64::from(limit))
            .execute(&self.pool)
            .await?;
            Ok(r.rows_affected())
        })
    }

    fn size(&self) -> BoxFuture<'_, StoreResult<StoreSize>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT page_count, freelist_count, page_size
                 FROM pragma_page_count(), pragma_freelist_count(), pragma_page_size()",
            )
            .fetch_one(&self.pool)
            .await?;
            let pages = to_u64(row.try_get("page_count")?);
            let free = to_u64(row.try_get("freelist_count")?);
            let size = to_u64(row.try_get("page_size")?);
            Ok(StoreSize {
                live_bytes: pages.saturating_sub(free).saturating_mul(size),
                file_bytes: pages.saturating_mul(size),
            })
        })
    }

    fn checkpoint(&self) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(async move {
            // A reader on an older snapshot (an export, the dashboard) makes it give up with
            // `busy` rather than fail: a few tries, then the caller says so.
            for attempt in 0..5 {
                let busy: i64 = sqlx::query_scalar("PRAGMA wal_checkpoint(TRUNCATE)")
                    .fetch_one(&self.pool)
                    .await?;
                if busy == 0 {
                    return Ok(true);
                }
                tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            }
            Ok(false)
        })
    }

    fn reclaim(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            // 256 pages (1 MiB at the default page size) a call, so the writer waits briefly.
            sqlx::raw_sql("PRAGMA incremental_vacuum(256)")
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn list_sessions(&self) -> BoxFuture<'_, StoreResult<Vec<SessionSummary>>> {
        Box::pin(async move {
            let sql = "SELECT s.id, s.name, s.model_key, s.provider, s.created_at,
                    COUNT(r.id) AS request_count,
                    TOTAL(CASE WHEN r.status >= 200 AND r.status < 300
                        THEN MIN(COALESCE(r.prompt_tokens, r.prompt_tokens_est), $1)
                        + MIN(COALESCE(r.completion_tokens, 0), $1) ELSE 0 END) AS total,
                    MAX(r.created_at) AS last_at
                 FROM sessions s LEFT JOIN requests r ON r.session_id = s.id
                 GROUP BY s.id ORDER BY s.created_at DESC, s.id DESC";
            let rows = sqlx::query(sql)
                .bind(TOKEN_CAP)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|row| {
                    Ok(SessionSummary {
                        session: session_from_row(row)?,
                        request_count: to_u64(row.try_get("request_count")?),
                        cumulative_total_tokens: sum(row, "total")?,
                        last_request_at: row.try_get("last_at")?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn get_session<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Session>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT id, name, model_key, provider, created_at FROM sessions WHERE id = $1",
            )
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.as_ref().map(session_from_row).transpose()?)
        })
    }

    fn active_session(&self) -> BoxFuture<'_, StoreResult<Option<Session>>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT s.id, s.name, s.model_key, s.provider, s.created_at
                 FROM settings k JOIN sessions s ON s.id = k.value WHERE k.key = $1",
            )
            .bind(ACTIVE_KEY)
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.as_ref().map(session_from_row).transpose()?)
        })
    }

    fn session_stats<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, StoreResult<SessionStats>> {
        Box::pin(async move {
            let totals = sqlx::query(
                "SELECT COUNT(*) AS n,
                    TOTAL(CASE WHEN status >= 200 AND status < 300 THEN MIN(COALESCE(prompt_tokens, prompt_tokens_est), $2) ELSE 0 END) AS input,
                    TOTAL(CASE WHEN status >= 200 AND status < 300 THEN MIN(COALESCE(completion_tokens, 0), $2) ELSE 0 END) AS output,
                    SUM(cost_usd) AS cost
                 FROM requests WHERE session_id = $1",
            )
            .bind(id.as_str())
            .bind(TOKEN_CAP)
            .fetch_one(&self.pool)
            .await?;
            let last = sqlx::query(
                "SELECT MIN(COALESCE(prompt_tokens, prompt_tokens_est), $2) AS input,
                    MIN(COALESCE(completion_tokens, 0), $2) AS output, max_context
                 FROM requests WHERE session_id = $1 AND status >= 200 AND status < 300
                 ORDER BY created_at DESC, id DESC LIMIT 1",
            )
            .bind(id.as_str())
            .bind(TOKEN_CAP)
            .fetch_optional(&self.pool)
            .await?;
            let mut stats = SessionStats {
                request_count: to_u64(totals.try_get("n")?),
                cumulative_input_tokens: sum(&totals, "input")?,
                cumulative_output_tokens: sum(&totals, "output")?,
                cost_usd: totals.try_get("cost")?,
                ..SessionStats::default()
            };
            stats.cumulative_total_tokens = stats
                .cumulative_input_tokens
                .saturating_add(stats.cumulative_output_tokens);
            if let Some(row) = last {
                stats.current_input_tokens = to_u64(row.try_get("input")?);
                stats.current_output_tokens = to_u64(row.try_get("output")?);
                stats.current_total_tokens = stats
                    .current_input_tokens
                    .saturating_add(stats.current_output_tokens);
                stats.max_context = to_u64(row.try_get("max_context")?);
                if stats.max_context > 0 {
                    stats.current_pct =
                        stats.current_total_tokens as f64 * 100.0 / stats.max_context as f64;
                }
            }
            Ok(stats)
        })
    }

    fn list_requests<'a>(
        &'a self,
        session: &'a SessionId,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<RequestRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM requests WHERE session_id = $1
                 ORDER BY created_at DESC, id DESC LIMIT $2 OFFSET $3",
            )
            .bind(session.as_str())
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(request_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn count_requests<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let n: i64 = sqlx::query("SELECT COUNT(*) FROM requests WHERE session_id = $1")
                .bind(session.as_str())
                .fetch_one(&self.pool)
                .await?
                .try_get(0)?;
            Ok(to_u64(n))
        })
    }

    fn export_requests<'a>(
        &'a self,
        scope: &'a Scope,
        tx: tokio::sync::mpsc::Sender<StoreResult<RequestRecord>>,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let query = match scope {
                Scope::Session(id) => sqlx::query(
                    "SELECT * FROM requests WHERE session_id = $1 ORDER BY created_at, id",
                )
                .bind(id.as_str()),
                Scope::Keys(ids) => sqlx::query(
                    "SELECT * FROM requests WHERE key_id IN (SELECT value FROM json_each($1))
                     ORDER BY created_at, id",
                )
                .bind(json_list(ids)),
                Scope::All => sqlx::query("SELECT * FROM requests ORDER BY created_at, id"),
            };
            let mut rows = query.fetch(&self.pool);
            while let Some(row) = rows.next().await {
                let item = row
                    .and_then(|r| request_from_row(&r))
                    .map_err(StoreError::from);
                let failed = item.is_err();
                if tx.send(item).await.is_err() || failed {
                    return;
                }
            }
        })
    }

    fn count_scope<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, StoreResult<u64>> {
        Box::pin(async move {
            let n: i64 = match scope {
                Scope::Session(id) => {
                    sqlx::query("SELECT COUNT(*) FROM requests WHERE session_id = $1")
                        .bind(id.as_str())
                        .fetch_one(&self.pool)
                        .await?
                }
                Scope::Keys(ids) => {
                    sqlx::query(
                        "SELECT COUNT(*) FROM requests WHERE key_id IN (SELECT value FROM json_each($1))",
                    )
                    .bind(json_list(ids))
                    .fetch_one(&self.pool)
                    .await?
                }
                Scope::All => {
                    sqlx::query("SELECT COUNT(*) FROM requests")
                        .fetch_one(&self.pool)
                        .await?
                }
            }
            .try_get(0)?;
            Ok(to_u64(n))
        })
    }

    fn sessions_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<(Session, bool)>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT s.*, NOT EXISTS (SELECT 1 FROM requests o WHERE o.session_id = s.id
                        AND (o.key_id IS NULL OR o.key_id NOT IN (SELECT value FROM json_each($1))))
                     AS exclusive
                 FROM sessions s
                 WHERE s.id IN (SELECT DISTINCT session_id FROM requests
                                WHERE key_id IN (SELECT value FROM json_each($1)))
                 ORDER BY s.created_at",
            )
            .bind(json_list(key_ids))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| Ok((session_from_row(r)?, r.try_get::<bool, _>("exclusive")?)))
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn responses_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<StoredResponse>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM responses WHERE key_id IN (SELECT value FROM json_each($1))
                 ORDER BY created_at, id",
            )
            .bind(json_list(key_ids))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(response_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn masked_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<MaskedContent>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM masked_content WHERE key_id IN (SELECT value FROM json_each($1))
                 ORDER BY created_at, hash",
            )
            .bind(json_list(key_ids))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| masked_from_row(r, true))
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn get_masked<'a>(
        &'a self,
        hash: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<MaskedContent>>> {
        Box::pin(async move {
            let row = sqlx::query("SELECT * FROM masked_content WHERE hash = $1")
                .bind(hash)
                .fetch_optional(&self.pool)
                .await?;
            row.map(|r| masked_from_row(&r, true))
                .transpose()
                .map_err(StoreError::from)
        })
    }

    fn list_masked(
        &self,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'_, StoreResult<Vec<MaskedContent>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT hash, role, tags, tokens, tokens_saved, created_at, key_id FROM masked_content
                 ORDER BY created_at DESC, hash LIMIT $1 OFFSET $2",
            )
            .bind(i64::from(limit))
            .bind(i64::from(offset))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(|r| masked_from_row(r, false))
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn masked_totals(&self) -> BoxFuture<'_, StoreResult<MaskedTotals>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n, TOTAL(MIN(tokens, $1)) AS t, TOTAL(MIN(tokens_saved, $1)) AS s
                 FROM masked_content",
            )
            .bind(TOKEN_CAP)
            .fetch_one(&self.pool)
            .await?;
            Ok(MaskedTotals {
                count: to_u64(row.try_get("n")?),
                tokens: sum(&row, "t")?,
                tokens_saved_per_request: sum(&row, "s")?,
            })
        })
    }

    fn load_memory(&self) -> BoxFuture<'_, StoreResult<Vec<MemoryRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM memory_entries")
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(MemoryRecord {
                        id: r.try_get("id")?,
                        // An unknown kind (a newer version's) reads as the least kept one.
                        kind: MemoryKind::parse(r.try_get("kind")?).unwrap_or(MemoryKind::Episodic),
                        content: r.try_get("content")?,
                        tokens: to_u64(r.try_get("tokens")?),
                        session_id: r.try_get("session_id")?,
                        access_count: to_u64(r.try_get("access_count")?),
                        created_at: r.try_get("created_at")?,
                        last_access_at: r.try_get("last_access_at")?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn get_setting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>> {
        Box::pin(async move {
            let v: Option<String> = sqlx::query("SELECT value FROM settings WHERE key = $1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?;
            Ok(v)
        })
    }

    fn list_compactions<'a>(
        &'a self,
        session: Option<&'a SessionId>,
        limit: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<CompactionRecord>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM compactions WHERE ($1 IS NULL OR session_id = $1)
                 ORDER BY created_at DESC, id DESC LIMIT $2",
            )
            .bind(session.map(SessionId::as_str))
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(compaction_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn compaction_totals<'a>(
        &'a self,
        session: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<CompactionTotals>> {
        Box::pin(async move {
            let row = sqlx::query(
                "SELECT COUNT(*) AS n,
                    COALESCE(SUM(trigger = 'auto'), 0) AS auto,
                    COALESCE(SUM(trigger = 'manual'), 0) AS manual,
                    COALESCE(SUM(strategy = 'llm'), 0) AS llm,
                    TOTAL(MIN(tokens_saved, $2)) AS saved,
                    COUNT(DISTINCT session_id) AS sessions
                 FROM compactions WHERE ($1 IS NULL OR session_id = $1)",
            )
            .bind(session.map(SessionId::as_str))
            .bind(TOKEN_CAP)
            .fetch_one(&self.pool)
            .await?;
            Ok(CompactionTotals {
                count: to_u64(row.try_get("n")?),
                auto: to_u64(row.try_get("auto")?),
                manual: to_u64(row.try_get("manual")?),
                llm: to_u64(row.try_get("llm")?),
                tokens_saved: sum(&row, "saved")?,
                sessions: to_u64(row.try_get("sessions")?),
            })
        })
    }

    fn load_compaction_state(&self) -> BoxFuture<'_, StoreResult<StoredCompactions>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT c.* FROM compactions c
                 WHERE c.id = (SELECT id FROM compactions d WHERE d.session_id = c.session_id
                               ORDER BY created_at DESC, id DESC LIMIT 1)",
            )
            .fetch_all(&self.pool)
            .await?;
            let points = rows
                .iter()
                .map(compaction_from_row)
                .collect::<sqlx::Result<Vec<_>>>()?;
            let rows = sqlx::query("SELECT * FROM compaction_settings")
                .fetch_all(&self.pool)
                .await?;
            let mut settings = Vec::with_capacity(rows.len());
            for r in &rows {
                let id: String = r.try_get("session_id")?;
                let auto: Option<i64> = r.try_get("auto_enabled")?;
                settings.push((
                    SessionId::new(id),
                    CompactionSettings {
                        auto_enabled: auto.map(|v| v != 0),
                        threshold_pct: r.try_get("threshold_pct")?,
                        reserved_tokens: to_u64(r.try_get("reserved_tokens")?),
                    },
                ));
            }
            Ok(StoredCompactions { points, settings })
        })
    }

    fn load_keys(&self, since_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(KeyRecord, KeySpend)>>> {
        Box::pin(async move {
            let rows = sqlx::query("SELECT * FROM keys WHERE updated_at >= $1 ORDER BY created_at")
                .bind(since_ms)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(key_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn load_teams(&self, since_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(TeamRecord, KeySpend)>>> {
        Box::pin(async move {
            let rows =
                sqlx::query("SELECT * FROM teams WHERE updated_at >= $1 ORDER BY created_at")
                    .bind(since_ms)
                    .fetch_all(&self.pool)
                    .await?;
            rows.iter()
                .map(team_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn spend<'a>(
        &'a self,
        of: SpendOf<'a>,
        from_ms: i64,
        to_ms: i64,
        group: SpendGroup,
    ) -> BoxFuture<'a, StoreResult<Vec<SpendRow>>> {
        Box::pin(async move {
            let (column, id) = match of {
                SpendOf::Key(id) => ("key_id", id),
                SpendOf::Team(id) => ("team_id", id),
            };
            let by = match group {
                SpendGroup::Day => "strftime('%Y-%m-%d', created_at / 1000, 'unixepoch')",
                SpendGroup::Model => "model_key",
            };
            // Spend counts every row (a failed request costs nothing, so it adds zero); tokens
            // count answered requests only, as everywhere else.
            let sql = format!(
                "SELECT {by} AS grp, COUNT(*) AS requests,
                    COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299
                        THEN COALESCE(prompt_tokens, prompt_tokens_est) END), 0) AS prompt,
                    COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299
                        THEN completion_tokens END), 0) AS completion,
                    COALESCE(SUM(cost_usd), 0.0) AS cost
                 FROM requests WHERE {column} = $1 AND created_at >= $2 AND created_at < $3
                 GROUP BY grp ORDER BY grp"
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(id)
                .bind(from_ms)
                .bind(to_ms)
                .fetch_all(&self.pool)
                .await?;
            rows.iter()
                .map(|r| {
                    Ok(SpendRow {
                        group: r.try_get::<Option<String>, _>("grp")?.unwrap_or_default(),
                        requests: to_u64(r.try_get("requests")?),
                        prompt_tokens: to_u64(r.try_get("prompt")?),
                        completion_tokens: to_u64(r.try_get("completion")?),
                        cost_usd: r.try_get("cost")?,
                    })
                })
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn list_audit<'a>(&'a self, f: &'a AuditFilter) -> BoxFuture<'a, StoreResult<Vec<AuditEntry>>> {
        Box::pin(async move {
            let rows = sqlx::query(
                "SELECT * FROM audit_log
                 WHERE ($1 IS NULL OR substr(action, 1, length($1)) = $1)
                   AND ($2 IS NULL OR actor = $2)
                   AND ($3 IS NULL OR target = $3)
                   AND ($4 IS NULL OR at >= $4)
                   AND ($5 IS NULL OR at < $5)
                   AND ($6 IS NULL OR seq < $6)
                 ORDER BY seq DESC LIMIT $7",
            )
            .bind(&f.action)
            .bind(&f.actor)
            .bind(&f.target)
            .bind(f.from_ms)
            .bind(f.to_ms)
            .bind(f.before_seq)
            .bind(i64::from(f.limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter()
                .map(audit_from_row)
                .collect::<sqlx::Result<Vec<_>>>()
                .map_err(StoreError::from)
        })
    }

    fn verify_audit(&self) -> BoxFuture<'_, StoreResult<AuditCheck>> {
        Box::pin(async move {
            let mut check = AuditCheck {
                rows: 0,
                erased: 0,
                first_broken: None,
            };
            let mut prev_hash = AUDIT_GENESIS.to_owned();
            let mut after = 0i64;
            // Blanked rows no erasure row has listed yet.
            let mut unaccounted = std::collections::BTreeSet::new();
            loop {
                let rows =
                    sqlx::query("SELECT * FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT 1000")
                        .bind(after)
                        .fetch_all(&self.pool)
                        .await?;
                if rows.is_empty() {
                    if check.first_broken.is_none()
                        && let Some(seq) = unaccounted.first()
                    {
                        check.first_broken = Some((
                            *seq,
                            "its fields were blanked, but no erasure lists it (the row was edited)"
                                .to_owned(),
                        ));
                    }
                    return Ok(check);
                }
                for row in &rows {
                    // A row that no longer reads as an entry (a column edited to another type)
                    // is as broken as one whose hash does not match.
                    let e = match audit_from_row(row) {
                        Ok(e) => e,
                        Err(err) => {
                            let seq: i64 = row.try_get("seq").unwrap_or(after + 1);
                            check.first_broken = Some((seq, format!("unreadable: {err}")));
                            return Ok(check);
                        }
                    };
                    check.rows += 1;
                    check.erased += u64::from(e.erased);
                    after = e.seq;
                    if check.first_broken.is_some() {
                        continue;
                    }
                    let expected = match audit_v2(row) {
                        Ok(None) => Ok(audit_hash(&prev_hash, &e)),
                        Ok(Some((salt, stored))) => match salt {
                            // Erased: the personal fields are gone (exactly), their digest
                            // stands for them, and a later erasure row must list the row.
                            None if e.erased && blank(&e) => {
                                unaccounted.insert(e.seq);
                                Ok(audit_hash_v2(&prev_hash, &e, &stored))
                            }
                            Some(salt) if !e.erased && personal_hash(&salt, &e) == stored => {
                                Ok(audit_hash_v2(&prev_hash, &e, &stored))
                            }
                            _ => Err(()),
                        },
                        Err(_) => Err(()),
                    };
                    if e.action == "user.erase" && !e.erased {
                        for seq in e
                            .after
                            .as_ref()
                            .and_then(|a| a.get("audit_rows_blanked"))
                            .and_then(serde_json::Value::as_array)
                            .into_iter()
                            .flatten()
                            .filter_map(serde_json::Value::as_i64)
                        {
                            unaccounted.remove(&seq);
                        }
                    }
                    if e.prev_hash != prev_hash {
                        check.first_broken = Some((
                            e.seq,
                            "its link to the row before does not match (a row was removed or inserted)"
                                .to_owned(),
                        ));
                    } else if expected.as_deref() != Ok(e.hash.as_str()) {
                        check.first_broken = Some((
                            e.seq,
                            "its content does not match its hash (the row was edited)".to_owned(),
                        ));
                    }
                    prev_hash = e.hash;
                }
            }
        })
    }

    fn user_by_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>> {
        Box::pin(async move { Ok(crate::users::find_user(&self.pool, "username", name).await?) })
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>> {
        Box::pin(async move { Ok(crate::users::find_user(&self.pool, "id", id).await?) })
    }

    fn deleted_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>> {
        Box::pin(async move { Ok(crate::users::find_user(&self.pool, "id_any", id).await?) })
    }

    fn list_users(&self) -> BoxFuture<'_, StoreResult<Vec<UserRecord>>> {
        Box::pin(async move { Ok(crate::users::list_users(&self.pool).await?) })
    }

    fn use_refresh<'a>(
        &'a self,
        jti: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, StoreResult<RefreshUse>> {
        Box::pin(async move { Ok(crate::users::use_refresh(&self.pool, jti, now_ms).await?) })
    }

    fn revoked_tokens(&self, now_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(String, i64)>>> {
        Box::pin(async move { Ok(crate::users::revoked_tokens(&self.pool, now_ms).await?) })
    }

    fn login_history<'a>(
        &'a self,
        username: Option<&'a str>,
        before_id: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<LoginEvent>>> {
        Box::pin(async move {
            Ok(crate::users::login_history(&self.pool, username, before_id, limit).await?)
        })
    }

    fn provider_keys(&self) -> BoxFuture<'_, StoreResult<Vec<StoredProviderKey>>> {
        Box::pin(async move { Ok(crate::users::provider_keys(&self.pool).await?) })
    }

    fn ping(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }
}

fn op_name(op: &WriteOp) -> &'static str {
    match op {
        WriteOp::CreateSession(_) => "create_session",
        WriteOp::RenameSession { .. } => "rename_session",
        WriteOp::SetSessionModel { .. } => "set_session_model",
        WriteOp::DeleteSession(_) => "delete_session",
        WriteOp::SetActiveSession(_) => "set_active_session",
        WriteOp::InsertRequest(_) => "insert_request",
        WriteOp::StoreMasked(_) => "store_masked",
        WriteOp::SetSetting { .. } => "set_setting",
        WriteOp::UpsertMemory(_) => "upsert_memory",
        WriteOp::DeleteMemory(_) => "delete_memory",
        WriteOp::InsertCompaction(_) => "insert_compaction",
        WriteOp::SetCompactionSettings { .. } => "set_compaction_settings",
        WriteOp::StoreResponse(_) => "store_response",
        WriteOp::DeleteResponse(_) => "delete_response",
        WriteOp::UpsertKey(_) => "upsert_key",
        WriteOp::UpsertTeam(_) => "upsert_team",
        WriteOp::Erase(_) => "erase",
        WriteOp::SetTeamSpend { .. } => "set_team_spend",
        WriteOp::SetKeySpend { .. } => "set_key_spend",
        WriteOp::AppendAudit(_) => "append_audit",
        WriteOp::UpsertUser(_) => "upsert_user",
        WriteOp::AppendLogin(_) => "append_login",
        WriteOp::InsertRefresh(_) => "insert_refresh",
        WriteOp::RevokeFamily { .. } => "revoke_family",
        WriteOp::RevokeUserRefresh { .. } => "revoke_user_refresh",
        WriteOp::SetProviderKey(_) => "set_provider_key",
        WriteOp::DeleteProviderKey(_) => "delete_provider_key",
        WriteOp::RevokeToken { .. } => "revoke_token",
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn record(
        session: &SessionId,
        status: u16,
        prompt: u64,
        completion: u64,
    ) -> RequestRecord {
        RequestRecord {
            row_id: String::new(),
            requested_model: None,
            purpose: None,
            key_id: None,
            team_id: None,
            id: "req".into(),
            session_id: session.clone(),
            created_at: gatehouse_core::time::now_ms(),
            provider: "p".into(),
            model_key: "p/m".into(),
            upstream_model: "m".into(),
            stream: false,
            status,
            prompt_tokens_est: prompt + 1,
            prompt_tokens: Some(prompt),
            completion_tokens: Some(completion),
            cached_tokens: None,
            reasoning_tokens: None,
            usage_source: UsageSource::Upstream,
            max_context: 1000,
            context_pct: prompt as f64 / 10.0,
            preview: "héllo, \"world\"".into(),
            latency_ms: 12,
            ttfb_ms: Some(3),
            overhead_us: 40,
            attempts: 1,
            finish_reason: Some("stop".into()),
            error_type: None,
            error_message: None,
            cost_usd: Some(0.001),
            memory_tokens: 0,
            chat_tokens: 0,
            memory_ratio: 0.0,
            routing: None,
        }
    }

    fn session(id: &str) -> Session {
        Session {
            id: SessionId::new(id),
            name: "first".into(),
            model_key: Some("p/m".into()),
            provider: Some("p".into()),
            created_at: 1,
        }
    }

    #[tokio::test]
    async fn round_trip_stats_and_delete() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("sub/g.db"))
            .await
            .unwrap();
        let id = SessionId::new("s1");
        store
            .apply(&[
                WriteOp::CreateSession(session("s1")),
                WriteOp::SetActiveSession(Some(id.clone())),
                WriteOp::InsertRequest(Box::new(record(&id, 200, 100, 20))),
                WriteOp::InsertRequest(Box::new(record(&id, 502, 999, 0))),
                WriteOp::InsertRequest(Box::new(record(&id, 200, 300, 50))),
                WriteOp::RenameSession {
                    id: id.clone(),
                    name: "renamed".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(
            store.active_session().await.unwrap().unwrap().name,
            "renamed"
        );
        let stats = store.session_stats(&id).await.unwrap();
        assert_eq!(stats.request_count, 3);
        assert_eq!(
            stats.cumulative_input_tokens, 400,
            "failed requests are not billed"
        );
        assert_eq!(stats.cumulative_output_tokens, 70);
        assert_eq!(stats.current_total_tokens, 350);
        assert!((stats.current_pct - 35.0).abs() < 1e-9);
        assert!((stats.cost_usd.unwrap() - 0.003).abs() < 1e-12);
        let rows = store.list_requests(&id, 2, 0).await.unwrap();
        assert_eq!(rows[0].cost_usd, Some(0.001));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].preview, "héllo, \"world\"");
        let list = store.list_sessions().await.unwrap();
        assert_eq!(list[0].request_count, 3);
        assert_eq!(list[0].cumulative_total_tokens, 470);

        store
            .apply(&[WriteOp::DeleteSession(id.clone())])
            .await
            .unwrap();
        assert!(store.get_session(&id).await.unwrap().is_none());
        assert_eq!(store.count_requests(&id).await.unwrap(), 0);
        assert!(store.active_session().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn masked_originals_and_settings() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).await.unwrap();
        let m = MaskedContent {
            hash: "0123456789abcdef".into(),
            role: "tool".into(),
            tags: vec!["tool".into(), "json".into()],
            tokens: 5000,
            tokens_saved: 4900,
            content: Some("the original".into()),
            created_at: 7,
            key_id: None,
        };
        let mut again = m.clone();
        again.content = Some("a second write of the same reference is ignored".into());
        store
            .apply(&[
                WriteOp::StoreMasked(Box::new(m.clone())),
                WriteOp::StoreMasked(Box::new(again)),
                WriteOp::SetSetting {
                    key: "sanitizer_enabled".into(),
                    value: "false".into(),
                },
            ])
            .await
            .unwrap();
        assert_eq!(store.get_masked(&m.hash).await.unwrap(), Some(m.clone()));
        assert_eq!(store.get_masked("ffffffffffffffff").await.unwrap(), None);
        let listed = store.list_masked(10, 0).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].content, None);
        assert_eq!(listed[0].tags, ["tool", "json"]);
        let totals = store.masked_totals().await.unwrap();
        assert_eq!(
            (totals.count, totals.tokens, totals.tokens_saved_per_request),
            (1, 5000, 4900)
        );
        assert_eq!(
            store
                .get_setting("sanitizer_enabled")
                .await
                .unwrap()
                .as_deref(),
            Some("false")
        );
        assert_eq!(store.get_setting("nope").await.unwrap(), None);
    }

    fn compaction(id: &str, session: &SessionId, at: i64, trigger: &str) -> CompactionRecord {
        CompactionRecord {
            id: id.into(),
            session_id: session.clone(),
            request_id: Some("r".into()),
            created_at: at,
            trigger: trigger.into(),
            strategy: "heuristic".into(),
            summary_model: None,
            fallback_reason: None,
            model_key: "p/m".into(),
            max_context: 1000,
            tokens_before: 900,
            tokens_after: 300,
            tokens_saved: 600,
            messages_before: 12,
            messages_after: 6,
            summarized: 7,
            cut: 8,
            prefix_hash: "ab".repeat(16),
            summary: format!("summary {id}"),
            summary_tokens: 40,
        }
    }

    #[tokio::test]
    async fn compactions_points_settings_and_cascade() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).await.unwrap();
        let (a, b) = (SessionId::new("a"), SessionId::new("b"));
        let settings = CompactionSettings {
            auto_enabled: Some(false),
            threshold_pct: Some(70.0),
            reserved_tokens: 128,
        };
        store
            .apply(&[
                WriteOp::CreateSession(session(a.as_str())),
                WriteOp::InsertCompaction(Box::new(compaction("c1", &a, 1, "auto"))),
                WriteOp::InsertCompaction(Box::new(compaction("c2", &a, 2, "manual"))),
                WriteOp::InsertCompaction(Box::new(compaction("c3", &b, 3, "auto"))),
                WriteOp::SetCompactionSettings {
                    session: a.clone(),
                    settings: CompactionSettings::default(),
                },
                WriteOp::SetCompactionSettings {
                    session: a.clone(),
                    settings: settings.clone(),
                },
            ])
            .await
            .unwrap();
        let list = store.list_compactions(Some(&a), 10).await.unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(
            list[0],
            compaction("c2", &a, 2, "manual"),
            "newest first, whole"
        );
        assert_eq!(store.list_compactions(None, 10).await.unwrap().len(), 3);
        let t = store.compaction_totals(None).await.unwrap();
        assert_eq!(
            (t.count, t.auto, t.manual, t.tokens_saved, t.sessions),
            (3, 2, 1, 1800, 2)
        );
        let StoredCompactions {
            mut points,
            settings: loaded,
        } = store.load_compaction_state().await.unwrap();
        points.sort_by(|x, y| x.id.cmp(&y.id));
        let ids: Vec<&str> = points.iter().map(|p| p.id.as_str()).collect();
        assert_eq!(ids, vec!["c2", "c3"], "the newest per session");
        assert_eq!(loaded, vec![(a.clone(), settings)]);

        store
            .apply(&[WriteOp::DeleteSession(a.clone())])
            .await
            .unwrap();
        assert!(
            store
                .list_compactions(Some(&a), 10)
                .await
                .unwrap()
                .is_empty()
        );
        let StoredCompactions {
            points,
            settings: loaded,
        } = store.load_compaction_state().await.unwrap();
        assert_eq!(points.len(), 1);
        assert!(loaded.is_empty());
    }

    #[test]
    fn the_v7_floor_sorts_below_every_later_id_and_above_every_earlier_one() {
        let at = 1_796_000_000_000_i64;
        let floor = uuid_v7_floor(at);
        let id_at = |ms: u64| {
            uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(
                ms / 1000,
                ((ms % 1000) * 1_000_000) as u32,
                0,
                0,
            ))
            .to_string()
        };
        assert!(id_at(at as u64 - 1) < floor);
        assert!(id_at(at as u64) >= floor);
        assert!(id_at(at as u64 + 86_400_000) > floor);
    }

    #[tokio::test]
    async fn migrations_are_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("g.db");
        drop(SqliteStore::open(&f).await.unwrap());
        let again = SqliteStore::open(&f).await.unwrap();
        again.ping().await.unwrap();
    }

    fn audit_row(id: &str, actor: &str, target: &str, name: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            id: id.into(),
            at: 1,
            actor: actor.into(),
            ip: Some("10.0.0.1".into()),
            user_agent: None,
            action: "key.create".into(),
            target: Some(target.into()),
            before: None,
            after: Some(serde_json::json!({ "name": name })),
            outcome: "ok".into(),
            prev_hash: String::new(),
            hash: String::new(),
            erased: false,
        }
    }

    #[tokio::test]
    async fn an_erasure_blanks_audit_rows_and_the_chain_still_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(&dir.path().join("g.db")).await.unwrap();
        store
            .apply(&[
                WriteOp::AppendAudit(Box::new(audit_row(
                    "a1",
                    "user:ada",
                    "key:k1",
                    "ada-laptop",
                ))),
                WriteOp::AppendAudit(Box::new(audit_row("a2", "user:root", "key:k2", "bob-box"))),
                WriteOp::AppendAudit(Box::new(audit_row(
                    "a3",
                    "user:root",
                    "key:k1",
                    "ada-laptop",
                ))),
            ])
            .await
            .unwrap();
        store
            .apply(&[WriteOp::Erase(Box::new(Erasure {
                username: "ada".into(),
                tombstone: "erased-1".into(),
                key_ids: vec!["k1".into()],
                user_id: "usr_1".into(),
                at: 5,
                since: 0,
                sessions: vec![],
                audit: Box::new(AuditEntry {
                    action: "user.erase".into(),
                    actor: "user:root".into(),
                    after: Some(serde_json::json!({})),
                    ..audit_row("e1", "user:root", "user:usr_1", "")
                }),
            }))])
            .await
            .unwrap();
        let check = store.verify_audit().await.unwrap();
        assert_eq!((check.rows, check.erased, check.first_broken), (4, 2, None));
        let erasure = store
            .list_audit(&AuditFilter {
                action: Some("user.erase".into()),
                limit: 1,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        assert_eq!(
            erasure[0].after.as_ref().unwrap()["audit_rows_blanked"],
            serde_json::json!([1, 3])
        );
        let rows = store
            .list_audit(&AuditFilter {
                limit: 10,
                ..AuditFilter::default()
            })
            .await
            .unwrap();
        let text = serde_json::to_string(&rows).unwrap();
        // Her name in any field; a bare "ada" would also match the hex of a random hash.
        for personal in ["ada-laptop", "user:ada", "\"ada\""] {
            assert!(!text.contains(personal), "{personal} in {text}");
        }
        assert!(rows.iter().any(|r| r.actor == "user:root" && !r.erased));

        // An erased row edited, or a live row passed off as erased, breaks the chain.
        sqlx::query("UPDATE audit_log SET action = 'key.delete' WHERE seq = 1")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(
            store
                .verify_audit()
                .await
                .unwrap()
                .first_broken
                .map(|b| b.0),
            Some(1)
        );
        sqlx::query("UPDATE audit_log SET action = 'key.create' WHERE seq = 1")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(store.verify_audit().await.unwrap().first_broken, None);
        sqlx::query("UPDATE audit_log SET after = '{}' , outcome = 'ok' WHERE seq = 2")
            .execute(&store.pool)
            .await
            .unwrap();
        let broken = || async {
            store
                .verify_audit()
                .await
                .unwrap()
                .first_broken
                .map(|b| b.0)
        };
        assert_eq!(broken().await, Some(2));
        // Blanked by hand, as an erasure would, but no erasure lists it.
        sqlx::query(
            "UPDATE audit_log SET actor = 'erased', ip = NULL, user_agent = NULL, target = NULL,
                before = NULL, after = NULL, outcome = 'erased', salt = NULL, erased_at = 9
             WHERE seq = 2",
        )
        .execute(&store.pool)
        .await
        .unwrap();
        assert_eq!(broken().await, Some(2));
        // Fields put back into an erased row do not pass either.
        sqlx::query("UPDATE audit_log SET actor = 'user:root' WHERE seq = 1")
            .execute(&store.pool)
            .await
            .unwrap();
        assert_eq!(broken().await, Some(1));
    }
}
