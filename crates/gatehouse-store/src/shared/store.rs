// The engine-neutral half of a SQL store, `include!`d by `sqlite.rs` and `postgres.rs` and
// compiled once for each against its own sqlx types. The includer defines:
// - `Db`, `DbConn`, `DbRow`, `DbStore` (with a `pool: sqlx::Pool<Db>` field);
// - the dialect macros `json_in!`, `total!`, `least!`, `day_of!`, which expand to literals;
// - `FAILED_STATEMENT_ABORTS`, `ROWS_PER_INSERT`, `insert_sql`, `begin_write`, `lock_audit`,
//   and the `engine_*` methods of `DbStore`.
// One body of SQL for both is the point: a change to a query cannot reach one engine only.
// (Why not generic over `sqlx::Database`: every function would carry a wall of `where`
// clauses on encode/decode/executor bounds, for the same machine code.)

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use gatehouse_core::SessionId;
use gatehouse_core::record::{
    AuditEntry, CompactionRecord, CompactionSettings, KeyRecord, KeySpend, LoginEvent,
    MaskedContent, MemoryKind, MemoryRecord, RequestRecord, Session, SessionStats, StoredResponse,
    TeamRecord, UserRecord,
};
use sqlx::Row;

use crate::{
    Applied, AuditCheck, AuditFilter, CompactionTotals, Erasure, MaskedTotals, RefreshUse, Scope,
    SessionSummary, SpendGroup, SpendOf, SpendRow, Store, StoreResult, StoreSize,
    StoredCompactions, StoredProviderKey, WriteOp,
};

mod users {
    use super::{Db, DbConn, DbRow, begin_write};
    include!("users.rs");
}

const ACTIVE_KEY: &str = "active_session";

async fn apply_one(tx: &mut DbConn, op: &WriteOp) -> sqlx::Result<()> {
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
            // Several instances write the same shared total, each as of its last request:
            // within one budget period spend only grows, so an older (smaller) figure never
            // overwrites a newer one.
            sqlx::query(concat!(
                "UPDATE teams SET spend_usd = $1, budget_reset_at = $2 WHERE id = $3",
                " AND NOT (budget_reset_at IS NOT DISTINCT FROM $2 AND spend_usd > $1)"
            ))
            .bind(spend.spend_usd)
            .bind(spend.budget_reset_at)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        }
        WriteOp::AppendAudit(a) => append_audit(tx, a).await?,
        WriteOp::UpsertUser(u) => users::upsert_user(tx, u).await?,
        WriteOp::AppendLogin(e) => users::append_login(tx, e).await?,
        WriteOp::InsertRefresh(t) => users::insert_refresh(tx, t).await?,
        WriteOp::RevokeFamily { family, at } => {
            users::revoke_family(tx, family, *at).await?;
        }
        WriteOp::SetProviderKey(k) => users::set_provider_key(tx, k).await?,
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
            users::revoke_token(tx, jti, *expires_at).await?;
        }
        WriteOp::SetKeySpend { id, spend } => {
            // Several instances write the same shared total, each as of its last request:
            // within one budget period spend only grows, so an older (smaller) figure never
            // overwrites a newer one.
            sqlx::query(concat!(
                "UPDATE keys SET spend_usd = $1, budget_reset_at = $2 WHERE id = $3",
                " AND NOT (budget_reset_at IS NOT DISTINCT FROM $2 AND spend_usd > $1)"
            ))
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
            insert_requests(tx, &[r], false).await?;
        }
    }
    Ok(())
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
async fn append_audit(tx: &mut DbConn, a: &AuditEntry) -> sqlx::Result<()> {
    let exists = sqlx::query("SELECT 1 FROM audit_log WHERE id = $1")
        .bind(&a.id)
        .fetch_optional(&mut *tx)
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    // Two instances appending at once must not both chain to the same last row.
    lock_audit(tx).await?;
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
fn audit_v2(r: &DbRow) -> sqlx::Result<Option<(Option<String>, String)>> {
    if r.try_get::<i64, _>("version")? < 2 {
        return Ok(None);
    }
    Ok(Some((
        r.try_get("salt")?,
        r.try_get::<Option<String>, _>("personal_hash")?
            .unwrap_or_default(),
    )))
}

fn audit_from_row(r: &DbRow) -> sqlx::Result<AuditEntry> {
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
async fn upsert_key(tx: &mut DbConn, k: &KeyRecord) -> sqlx::Result<()> {
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

async fn erase(tx: &mut DbConn, e: &Erasure) -> sqlx::Result<()> {
    let keys = json_list(&e.key_ids);
    let sessions: Vec<&str> = e.sessions.iter().map(SessionId::as_str).collect();
    let sessions = json_list(&sessions);
    sqlx::query(concat!(
        "UPDATE requests SET preview = '', error_message = NULL WHERE key_id IN (",
        json_in!("$1"),
        ")"
    ))
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    sqlx::query(concat!(
        "DELETE FROM masked_content WHERE key_id IN (",
        json_in!("$1"),
        ")"
    ))
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    for sql in [
        concat!(
            "DELETE FROM compactions WHERE session_id IN (",
            json_in!("$1"),
            ")"
        ),
        concat!(
            "DELETE FROM memory_entries WHERE session_id IN (",
            json_in!("$1"),
            ")"
        ),
        concat!(
            "DELETE FROM responses WHERE session_id IN (",
            json_in!("$1"),
            ")"
        ),
        concat!(
            "UPDATE sessions SET name = 'erased' WHERE id IN (",
            json_in!("$1"),
            ")"
        ),
    ] {
        sqlx::query(sql).bind(&sessions).execute(&mut *tx).await?;
    }
    sqlx::query(concat!(
        "DELETE FROM responses WHERE key_id IN (",
        json_in!("$1"),
        ")"
    ))
    .bind(&keys)
    .execute(&mut *tx)
    .await?;
    // The trail's rows by them or about them (their user, their keys): version-2 rows only,
    // whose chain covers a digest of these fields rather than the fields.
    let mut targets = vec![format!("user:{}", e.user_id)];
    targets.extend(e.key_ids.iter().map(|k| format!("key:{k}")));
    // Rows of another user who had the same name before are not theirs (`since`); an
    // erasure's own rows are never blanked, since they account for the others.
    let blanked: Vec<i64> = sqlx::query_scalar(concat!(
        "UPDATE audit_log SET actor = 'erased', ip = NULL, user_agent = NULL, target = NULL,
            before = NULL, after = NULL, outcome = 'erased', salt = NULL, erased_at = $3
         WHERE version = 2 AND erased_at IS NULL AND action != 'user.erase'
           AND (((actor = $1 OR target = $1) AND at >= $4)
                OR target IN (",
        json_in!("$2"),
        ")) RETURNING seq"
    ))
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
async fn upsert_team(tx: &mut DbConn, t: &TeamRecord) -> sqlx::Result<()> {
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

fn team_from_row(r: &DbRow) -> sqlx::Result<(TeamRecord, KeySpend)> {
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

fn key_from_row(r: &DbRow) -> sqlx::Result<(KeyRecord, KeySpend)> {
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
/// Inserts request rows, `ROWS_PER_INSERT` to a statement; returns how many were refused. A
/// statement that breaks a constraint is retried row by row, so only the rows at fault are
/// refused; any other error fails the whole batch. Where a failed statement aborts the
/// transaction (PostgreSQL), the first pass gives up on such a statement and the batch is run
/// again `careful`ly: each row under a savepoint of its own.
async fn insert_requests(
    tx: &mut DbConn,
    rows: &[&RequestRecord],
    careful: bool,
) -> sqlx::Result<u64> {
    let mut dropped = 0;
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        if !(careful && FAILED_STATEMENT_ABORTS) {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(insert_sql(chunk.len())));
            for r in chunk {
                q = bind_request(q, r);
            }
            match q.execute(&mut *tx).await {
                Ok(_) => continue,
                Err(e) if is_constraint(&e) && !FAILED_STATEMENT_ABORTS => {}
                Err(e) => return Err(e),
            }
        }
        for r in chunk {
            match insert_one(tx, r).await {
                Ok(()) => {}
                Err(e) if is_constraint(&e) => {
                    dropped += 1;
                    tracing::error!(error = %e, request_id = %r.id, "dropping a request row that breaks a constraint on its own");
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(dropped)
}

type Query<'q> = sqlx::query::Query<'q, Db, <Db as sqlx::Database>::Arguments>;

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
fn sum(row: &DbRow, name: &str) -> sqlx::Result<u64> {
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

fn response_from_row(row: &DbRow) -> sqlx::Result<StoredResponse> {
    Ok(StoredResponse {
        id: row.try_get("id")?,
        session_id: SessionId::new(row.try_get::<String, _>("session_id")?),
        created_at: row.try_get("created_at")?,
        input: row.try_get("input")?,
        response: row.try_get("response")?,
        key_id: row.try_get("key_id")?,
    })
}

fn session_from_row(row: &DbRow) -> sqlx::Result<Session> {
    Ok(Session {
        id: SessionId::new(row.try_get::<String, _>("id")?),
        name: row.try_get("name")?,
        model_key: row.try_get("model_key")?,
        provider: row.try_get("provider")?,
        created_at: row.try_get("created_at")?,
    })
}

fn compaction_from_row(r: &DbRow) -> sqlx::Result<CompactionRecord> {
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

fn masked_from_row(row: &DbRow, with_content: bool) -> sqlx::Result<MaskedContent> {
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

fn request_from_row(row: &DbRow) -> sqlx::Result<RequestRecord> {
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

/// One batch in one transaction: runs of request rows in multi-row statements, the rest op by
/// op. A write that breaks a constraint on its own is dropped (and counted), so one bad row
/// cannot hold the queue back; any other error rolls the batch back for the writer to retry.
async fn apply_batch_in(
    conn: &mut DbConn,
    ops: &[WriteOp],
    careful: bool,
) -> sqlx::Result<Applied> {
    let mut tx = begin_write(conn).await?;
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
            applied.dropped += insert_requests(&mut tx, &run, careful).await?;
            continue;
        }
        i += 1;
        let r = if careful {
            guarded_op(&mut tx, op).await
        } else {
            apply_one(&mut tx, op).await
        };
        match r {
            Ok(()) => {}
            Err(e) if is_constraint(&e) && (careful || !FAILED_STATEMENT_ABORTS) => {
                applied.dropped += 1;
                tracing::error!(error = %e, op = op_name(op), "dropping a write that breaks a constraint on its own");
            }
            // Dropping `tx` rolls the batch back: the engine retries it carefully, or the
            // writer retries it whole.
            Err(e) => return Err(e),
        }
    }
    tx.commit().await?;
    Ok(applied)
}

/// Runs `op` under a savepoint where a failed statement would abort the whole transaction, so
/// its failure undoes it alone.
async fn guarded_op(tx: &mut DbConn, op: &WriteOp) -> sqlx::Result<()> {
    savepoint(tx, "SAVEPOINT op").await?;
    let r = apply_one(tx, op).await;
    savepoint(
        tx,
        if r.is_ok() {
            "RELEASE SAVEPOINT op"
        } else {
            "ROLLBACK TO SAVEPOINT op"
        },
    )
    .await?;
    r
}

/// One request row in a statement of its own, under a savepoint where the engine needs one.
async fn insert_one(tx: &mut DbConn, r: &RequestRecord) -> sqlx::Result<()> {
    savepoint(tx, "SAVEPOINT row").await?;
    let res = bind_request(sqlx::query(sqlx::AssertSqlSafe(insert_sql(1))), r)
        .execute(&mut *tx)
        .await;
    savepoint(
        tx,
        if res.is_ok() {
            "RELEASE SAVEPOINT row"
        } else {
            "ROLLBACK TO SAVEPOINT row"
        },
    )
    .await?;
    res.map(|_| ())
}

async fn savepoint(tx: &mut DbConn, sql: &'static str) -> sqlx::Result<()> {
    if FAILED_STATEMENT_ABORTS {
        sqlx::raw_sql(sql).execute(&mut *tx).await?;
    }
    Ok(())
}

impl Store for DbStore {
    fn apply<'a>(&'a self, ops: &'a [WriteOp]) -> BoxFuture<'a, StoreResult<Applied>> {
        Box::pin(self.engine_apply(ops))
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
                    "DELETE FROM {table} WHERE jti IN
                        (SELECT jti FROM {table} WHERE expires_at < $1 LIMIT $2)"
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
        Box::pin(self.engine_size())
    }

    fn checkpoint(&self) -> BoxFuture<'_, StoreResult<bool>> {
        Box::pin(self.engine_checkpoint())
    }

    fn reclaim(&self) -> BoxFuture<'_, StoreResult<()>> {
        Box::pin(self.engine_reclaim())
    }

    fn list_sessions(&self) -> BoxFuture<'_, StoreResult<Vec<SessionSummary>>> {
        Box::pin(async move {
            let sql = concat!(
                "SELECT s.id, s.name, s.model_key, s.provider, s.created_at,
                    COUNT(r.id) AS request_count, ",
                total!(concat!(
                    "CASE WHEN r.status >= 200 AND r.status < 300 THEN ",
                    least!("COALESCE(r.prompt_tokens, r.prompt_tokens_est)", "$1"),
                    " + ",
                    least!("COALESCE(r.completion_tokens, 0)", "$1"),
                    " ELSE 0 END"
                )),
                " AS total, MAX(r.created_at) AS last_at
                 FROM sessions s LEFT JOIN requests r ON r.session_id = s.id
                 GROUP BY s.id ORDER BY s.created_at DESC, s.id DESC"
            );
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
            let totals = sqlx::query(concat!(
                "SELECT COUNT(*) AS n, ",
                total!(concat!(
                    "CASE WHEN status >= 200 AND status < 300 THEN ",
                    least!("COALESCE(prompt_tokens, prompt_tokens_est)", "$2"),
                    " ELSE 0 END"
                )),
                " AS input, ",
                total!(concat!(
                    "CASE WHEN status >= 200 AND status < 300 THEN ",
                    least!("COALESCE(completion_tokens, 0)", "$2"),
                    " ELSE 0 END"
                )),
                " AS output, SUM(cost_usd) AS cost FROM requests WHERE session_id = $1"
            ))
            .bind(id.as_str())
            .bind(TOKEN_CAP)
            .fetch_one(&self.pool)
            .await?;
            let last = sqlx::query(concat!(
                "SELECT ",
                least!("COALESCE(prompt_tokens, prompt_tokens_est)", "$2"),
                " AS input, ",
                least!("COALESCE(completion_tokens, 0)", "$2"),
                " AS output, max_context
                     FROM requests WHERE session_id = $1 AND status >= 200 AND status < 300
                     ORDER BY created_at DESC, id DESC LIMIT 1"
            ))
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
                Scope::Keys(ids) => sqlx::query(concat!(
                    "SELECT * FROM requests WHERE key_id IN (",
                    json_in!("$1"),
                    ") ORDER BY created_at, id"
                ))
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
                    sqlx::query(concat!(
                        "SELECT COUNT(*) FROM requests WHERE key_id IN (",
                        json_in!("$1"),
                        ")"
                    ))
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
            let rows = sqlx::query(concat!(
                "SELECT s.*, NOT EXISTS (SELECT 1 FROM requests o WHERE o.session_id = s.id
                        AND (o.key_id IS NULL OR o.key_id NOT IN (",
                json_in!("$1"),
                "))) AS exclusive
                 FROM sessions s
                 WHERE s.id IN (SELECT DISTINCT session_id FROM requests WHERE key_id IN (",
                json_in!("$1"),
                ")) ORDER BY s.created_at"
            ))
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
            let rows = sqlx::query(concat!(
                "SELECT * FROM responses WHERE key_id IN (",
                json_in!("$1"),
                ") ORDER BY created_at, id"
            ))
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
            let rows = sqlx::query(concat!(
                "SELECT * FROM masked_content WHERE key_id IN (",
                json_in!("$1"),
                ") ORDER BY created_at, hash"
            ))
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
            let row = sqlx::query(concat!(
                "SELECT COUNT(*) AS n, ",
                total!(least!("tokens", "$1")),
                " AS t, ",
                total!(least!("tokens_saved", "$1")),
                " AS s FROM masked_content"
            ))
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
            let row = sqlx::query(concat!(
                "SELECT COUNT(*) AS n,
                        COUNT(CASE WHEN trigger = 'auto' THEN 1 END) AS auto,
                        COUNT(CASE WHEN trigger = 'manual' THEN 1 END) AS manual,
                        COUNT(CASE WHEN strategy = 'llm' THEN 1 END) AS llm, ",
                total!(least!("tokens_saved", "$2")),
                " AS saved, COUNT(DISTINCT session_id) AS sessions
                     FROM compactions WHERE ($1 IS NULL OR session_id = $1)"
            ))
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
                let auto: Option<bool> = r.try_get("auto_enabled")?;
                settings.push((
                    SessionId::new(id),
                    CompactionSettings {
                        auto_enabled: auto,
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
                SpendGroup::Day => day_of!("created_at"),
                SpendGroup::Model => "model_key",
            };
            // Spend counts every row (a failed request costs nothing, so it adds zero); tokens
            // count answered requests only, as everywhere else.
            let sql = format!(
                "SELECT {by} AS grp, COUNT(*) AS requests,
                    CAST(COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299
                        THEN COALESCE(prompt_tokens, prompt_tokens_est) END), 0) AS BIGINT) AS prompt,
                    CAST(COALESCE(SUM(CASE WHEN status BETWEEN 200 AND 299
                        THEN completion_tokens END), 0) AS BIGINT) AS completion,
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
        Box::pin(async move { Ok(users::find_user(&self.pool, "username", name).await?) })
    }

    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>> {
        Box::pin(async move { Ok(users::find_user(&self.pool, "id", id).await?) })
    }

    fn deleted_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>> {
        Box::pin(async move { Ok(users::find_user(&self.pool, "id_any", id).await?) })
    }

    fn list_users(&self) -> BoxFuture<'_, StoreResult<Vec<UserRecord>>> {
        Box::pin(async move { Ok(users::list_users(&self.pool).await?) })
    }

    fn use_refresh<'a>(
        &'a self,
        jti: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, StoreResult<RefreshUse>> {
        Box::pin(async move { Ok(users::use_refresh(&self.pool, jti, now_ms).await?) })
    }

    fn revoked_tokens(&self, now_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(String, i64)>>> {
        Box::pin(async move { Ok(users::revoked_tokens(&self.pool, now_ms).await?) })
    }

    fn login_history<'a>(
        &'a self,
        username: Option<&'a str>,
        before_id: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<LoginEvent>>> {
        Box::pin(
            async move { Ok(users::login_history(&self.pool, username, before_id, limit).await?) },
        )
    }

    fn provider_keys(&self) -> BoxFuture<'_, StoreResult<Vec<StoredProviderKey>>> {
        Box::pin(async move { Ok(users::provider_keys(&self.pool).await?) })
    }

    fn engine(&self) -> &'static str {
        ENGINE
    }

    fn schema_version(&self) -> BoxFuture<'_, StoreResult<i64>> {
        Box::pin(async move {
            Ok(
                sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _migrations")
                    .fetch_one(&self.pool)
                    .await?,
            )
        })
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
