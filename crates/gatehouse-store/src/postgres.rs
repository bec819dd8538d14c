//! The PostgreSQL store: one database of record for many instances. The same SQL as SQLite's
//! (`shared/store.rs`), its own schema migrations, applied once under an advisory lock.

use std::str::FromStr;
use std::sync::{Arc, OnceLock};

use gatehouse_core::record::UsageSource;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions, PgRow};
use sqlx::{Connection, Postgres};

use crate::StoreError;

/// Versioned migrations, embedded so the binary needs no files beside it. PostgreSQL starts at
/// the schema SQLite reached by its migration 17; later migrations share their numbers.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    17,
    "schema",
    include_str!("../migrations/postgres/0017_schema.sql"),
)];

#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

type Db = Postgres;
type DbConn = PgConnection;
type DbRow = PgRow;
type DbStore = PgStore;

// The dialect: each expands to a literal, for `concat!` in the shared SQL.
/// The elements of a JSON array of strings bound as parameter `$p`.
macro_rules! json_in {
    ($p:literal) => {
        concat!("SELECT json_array_elements_text(", $p, "::json)")
    };
}
/// A float sum that is 0 on no rows and never overflows (`SUM` of a BIGINT is a NUMERIC).
macro_rules! total {
    ($e:expr) => {
        concat!("COALESCE(SUM(CAST(", $e, " AS DOUBLE PRECISION)), 0)")
    };
}
/// The smaller of two values.
macro_rules! least {
    ($a:expr, $b:expr) => {
        concat!("LEAST(", $a, ", ", $b, ")")
    };
}
/// The UTC day (`YYYY-MM-DD`) of a millisecond timestamp column.
macro_rules! day_of {
    ($c:literal) => {
        concat!(
            "to_char(to_timestamp(",
            $c,
            " / 1000.0) AT TIME ZONE 'UTC', 'YYYY-MM-DD')"
        )
    };
}
/// Locks the rows a transaction reads until it ends, so a concurrent one waits for them.
macro_rules! for_update {
    () => {
        " FOR UPDATE"
    };
}

include!("shared/store.rs");

const ENGINE: &str = "postgres";

/// A failed statement aborts the whole transaction: constraint failures are retried under
/// savepoints (`apply_batch_in`'s careful pass).
const FAILED_STATEMENT_ABORTS: bool = true;

/// Rows per multi-row INSERT: 34 parameters a row, well inside PostgreSQL's 65,535; one
/// round trip per 64 rows.
const ROWS_PER_INSERT: usize = 64;

/// The working pool unless told otherwise: the writer, the dashboard's reads, the exports.
pub const DEFAULT_POOL_SIZE: u32 = 8;

async fn begin_write(conn: &mut PgConnection) -> sqlx::Result<sqlx::Transaction<'_, Postgres>> {
    conn.begin().await
}

/// Serialises appends to the chain across instances until the transaction ends: two writers
/// reading the same last row would fork it. Keyed by schema, so stores in different schemas of
/// one database do not wait for each other.
async fn lock_audit(tx: &mut PgConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext(current_schema() || '.gatehouse.audit'))")
        .execute(&mut *tx)
        .await?;
    Ok(())
}

/// `INSERT INTO requests … VALUES (…), (…)` for `n` rows, built once per `n`.
fn insert_sql(n: usize) -> Arc<str> {
    static CACHE: OnceLock<Vec<Arc<str>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| {
        (0..=ROWS_PER_INSERT)
            .map(|n| {
                let rows: Vec<String> = (0..n)
                    .map(|r| {
                        let params: Vec<String> = (1..=REQUEST_PARAMS)
                            .map(|p| format!("${}", r * REQUEST_PARAMS + p))
                            .collect();
                        format!("({})", params.join(", "))
                    })
                    .collect();
                Arc::from(format!(
                    "INSERT INTO requests ({REQUEST_COLUMNS}) VALUES {} ON CONFLICT (id) DO NOTHING",
                    rows.join(", ")
                ))
            })
            .collect()
    });
    cache.get(n).cloned().unwrap_or_else(|| Arc::from(""))
}

/// The first schema of the connection's `search_path`, when it is a plain name: the store
/// creates it, so `options[search_path]=gatehouse` in the URL is all an operator sets.
fn wanted_schema(search_path: &str) -> Option<&str> {
    let first = search_path.split(',').next()?.trim().trim_matches('"');
    let plain = !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !first.starts_with(|c: char| c.is_ascii_digit());
    plain.then_some(first)
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/database?options[search_path]=…`)
    /// and brings its schema up to date. Instances starting at once on an empty database
    /// apply each migration once: the first takes an advisory lock, the others wait for it
    /// and then find nothing left to do.
    pub async fn open(url: &str, pool_size: u32) -> StoreResult<Self> {
        let options = PgConnectOptions::from_str(url)?;
        let mut conn = PgConnection::connect_with(&options).await?;
        let migrated = migrate(&mut conn).await;
        // A lock a failed migration leaves behind goes with its connection.
        let _ = conn.close().await;
        migrated?;
        let pool = PgPoolOptions::new()
            .max_connections(pool_size.max(1))
            // With the server gone, a caller hears so in seconds (the writer keeps its rows
            // queued and retries; `/health` says the database is down) rather than after
            // sqlx's default 30 s.
            .acquire_timeout(std::time::Duration::from_secs(3))
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    /// The migrations that [`open`](Self::open) would apply, and whether any remain.
    pub async fn pending(url: &str) -> StoreResult<Vec<(i64, &'static str)>> {
        let options = PgConnectOptions::from_str(url)?;
        let mut conn = PgConnection::connect_with(&options).await?;
        let current = current_version(&mut conn).await.unwrap_or(0);
        let _ = conn.close().await;
        Ok(MIGRATIONS
            .iter()
            .filter(|(v, _, _)| *v > current)
            .map(|(v, n, _)| (*v, *n))
            .collect())
    }

    async fn engine_apply(&self, ops: &[WriteOp]) -> StoreResult<Applied> {
        let mut conn = self.pool.acquire().await?;
        let mut applied = apply_batch_in(&mut conn, ops, false).await;
        if matches!(&applied, Err(e) if is_constraint(e)) {
            applied = apply_batch_in(&mut conn, ops, true).await;
        }
        // A connection that failed mid-batch (the server went away) is not pooled again.
        if applied.is_err() {
            conn.close_on_drop();
        }
        Ok(applied?)
    }

    async fn engine_size(&self) -> StoreResult<StoreSize> {
        let bytes: i64 = sqlx::query_scalar(
            "SELECT CAST(COALESCE(SUM(pg_total_relation_size(c.oid)), 0) AS BIGINT)
             FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = current_schema() AND c.relkind = 'r'",
        )
        .fetch_one(&self.pool)
        .await?;
        let bytes = to_u64(bytes);
        Ok(StoreSize {
            live_bytes: bytes,
            file_bytes: bytes,
        })
    }

    /// PostgreSQL checkpoints its own log.
    async fn engine_checkpoint(&self) -> StoreResult<bool> {
        Ok(true)
    }

    /// Autovacuum gives freed space back.
    async fn engine_reclaim(&self) -> StoreResult<()> {
        Ok(())
    }
}

async fn current_version(conn: &mut PgConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM _migrations")
        .fetch_one(&mut *conn)
        .await
}

async fn migrate(conn: &mut PgConnection) -> StoreResult<()> {
    let path: String = sqlx::query_scalar("SELECT current_setting('search_path')")
        .fetch_one(&mut *conn)
        .await?;
    let schema = wanted_schema(&path).unwrap_or("public").to_owned();
    // Session-level, so it spans the migrations' own transactions; released below or with
    // the connection.
    sqlx::query("SELECT pg_advisory_lock(hashtext($1 || '.gatehouse.migrate'))")
        .bind(&schema)
        .execute(&mut *conn)
        .await?;
    let run = async {
        // `schema` is a plain identifier (`wanted_schema`), safe to quote into the statement.
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS \"{schema}\""
        )))
        .execute(&mut *conn)
        .await?;
        sqlx::raw_sql(
            "CREATE TABLE IF NOT EXISTS _migrations (
                version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
        )
        .execute(&mut *conn)
        .await?;
        let current = current_version(conn).await?;
        for (version, name, sql) in MIGRATIONS.iter().filter(|(v, _, _)| *v > current) {
            let one = async {
                let mut tx = conn.begin().await?;
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
            one.await.map_err(|source| StoreError::Migration {
                version: *version,
                source,
            })?;
            tracing::info!(version, name, "applied migration");
        }
        Ok::<_, StoreError>(())
    };
    let r = run.await;
    // A migration's own error comes first; a failed unlock only means the lock goes with the
    // connection, which `open` closes next.
    let unlocked = sqlx::query("SELECT pg_advisory_unlock(hashtext($1 || '.gatehouse.migrate'))")
        .bind(&schema)
        .execute(&mut *conn)
        .await;
    r?;
    unlocked?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh schema in the machine's PostgreSQL (`GATEHOUSE_TEST_STORAGE` or the default
    /// `test` database): a real server, as in CI.
    fn fresh_url() -> String {
        let base = std::env::var("GATEHOUSE_TEST_STORAGE")
            .ok()
            .filter(|v| !v.is_empty())
            .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/test".to_owned());
        let sep = if base.contains('?') { '&' } else { '?' };
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        format!("{base}{sep}options[search_path]={schema}")
    }

    fn audit_row(id: &str) -> AuditEntry {
        AuditEntry {
            seq: 0,
            id: id.into(),
            at: 1,
            actor: "user:root".into(),
            ip: None,
            user_agent: None,
            action: "key.create".into(),
            target: Some(format!("key:{id}")),
            before: None,
            after: None,
            outcome: "ok".into(),
            prev_hash: String::new(),
            hash: String::new(),
            erased: false,
        }
    }

    #[tokio::test]
    async fn instances_starting_together_migrate_once_and_share_one_audit_chain() {
        let url = fresh_url();
        let opened = futures_util::future::join_all((0..4).map(|_| PgStore::open(&url, 2))).await;
        let stores: Vec<PgStore> = opened.into_iter().map(|s| s.unwrap()).collect();
        let applied: Vec<i64> = sqlx::query_scalar("SELECT version FROM _migrations")
            .fetch_all(&stores[0].pool)
            .await
            .unwrap();
        assert_eq!(applied, vec![17], "each migration once");
        assert_eq!(stores[1].schema_version().await.unwrap(), 17);
        assert!(PgStore::pending(&url).await.unwrap().is_empty());

        // Appends from every instance at once: one chain, no fork, no gap.
        let writes = stores.iter().enumerate().flat_map(|(i, s)| {
            (0..10).map(move |n| {
                let op = WriteOp::AppendAudit(Box::new(audit_row(&format!("a{i}-{n}"))));
                async move { s.apply(std::slice::from_ref(&op)).await }
            })
        });
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
        let check = stores[2].verify_audit().await.unwrap();
        assert_eq!((check.rows, &check.first_broken), (40, &None), "{check:?}");
    }

    #[tokio::test]
    async fn a_row_that_breaks_a_constraint_is_dropped_alone() {
        let store = PgStore::open(&fresh_url(), 2).await.unwrap();
        let session = gatehouse_core::SessionId::new("s".to_owned());
        let row = |id: &str| RequestRecord {
            row_id: id.into(),
            id: id.into(),
            session_id: session.clone(),
            created_at: 1,
            provider: "p".into(),
            model_key: "p/m".into(),
            upstream_model: "m".into(),
            stream: true,
            status: 200,
            prompt_tokens_est: 3,
            prompt_tokens: Some(2),
            completion_tokens: Some(1),
            cached_tokens: None,
            reasoning_tokens: None,
            usage_source: UsageSource::Upstream,
            max_context: 10,
            context_pct: 30.0,
            preview: "hi".into(),
            latency_ms: 1,
            ttfb_ms: None,
            overhead_us: 1,
            attempts: 1,
            finish_reason: None,
            error_type: None,
            error_message: None,
            cost_usd: Some(0.5),
            memory_tokens: 0,
            chat_tokens: 0,
            memory_ratio: 0.0,
            routing: None,
            requested_model: None,
            purpose: None,
            key_id: None,
            team_id: None,
        };
        let key = |id: &str, digest: &str| KeyRecord {
            digest: digest.into(),
            ..serde_json::from_value(serde_json::json!({
                "id": id, "name": id, "digest": "", "prefix": "gh-", "last4": "abcd",
                "created_at": 1, "updated_at": 1, "models": [], "blocked": false, "metadata": {}
            }))
            .unwrap()
        };
        // The second key reuses the first's digest (UNIQUE): it alone is refused; the rows on
        // either side of it, in the same batch, are written.
        let ops = vec![
            WriteOp::InsertRequest(Box::new(row("r1"))),
            WriteOp::UpsertKey(Box::new(key("k1", "d1"))),
            WriteOp::UpsertKey(Box::new(key("k2", "d1"))),
            WriteOp::InsertRequest(Box::new(row("r2"))),
        ];
        let applied = store.apply(&ops).await.unwrap();
        assert_eq!(applied.dropped, 1);
        assert_eq!(store.count_requests(&session).await.unwrap(), 2);
        assert_eq!(store.load_keys(0).await.unwrap().len(), 1);
        let stats = store.session_stats(&session).await.unwrap();
        assert_eq!(
            (stats.cumulative_input_tokens, stats.cost_usd),
            (4, Some(1.0))
        );
    }

    #[test]
    fn the_first_plain_schema_of_the_search_path_is_created() {
        assert_eq!(wanted_schema("gatehouse"), Some("gatehouse"));
        assert_eq!(wanted_schema("t_01ab, public"), Some("t_01ab"));
        assert_eq!(wanted_schema("\"$user\", public"), None);
        assert_eq!(wanted_schema("a;drop"), None);
        assert_eq!(wanted_schema("9x"), None);
    }
}
