//! The SQLite store: one file in the data directory, WAL mode, migrations applied at open.

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use gatehouse_core::record::UsageSource;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteRow, SqliteSynchronous,
};
use sqlx::{Connection, Sqlite};

use crate::StoreError;

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

#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(crate) pool: SqlitePool,
}

type Db = Sqlite;
type DbConn = SqliteConnection;
type DbRow = SqliteRow;
type DbStore = SqliteStore;

// The dialect: each expands to a literal, for `concat!` in the shared SQL.
/// The elements of a JSON array of strings bound as parameter `$p`.
macro_rules! json_in {
    ($p:literal) => {
        concat!("SELECT value FROM json_each(", $p, ")")
    };
}
/// A float sum that is 0 on no rows and never overflows.
macro_rules! total {
    ($e:expr) => {
        concat!("TOTAL(", $e, ")")
    };
}
/// The smaller of two values (not the aggregate).
macro_rules! least {
    ($a:expr, $b:expr) => {
        concat!("MIN(", $a, ", ", $b, ")")
    };
}
/// The UTC day (`YYYY-MM-DD`) of a millisecond timestamp column.
macro_rules! day_of {
    ($c:literal) => {
        concat!("strftime('%Y-%m-%d', ", $c, " / 1000, 'unixepoch')")
    };
}
/// Locks the rows a transaction reads for update; SQLite's write transaction already has.
macro_rules! for_update {
    () => {
        ""
    };
}

include!("shared/store.rs");

const ENGINE: &str = "sqlite";

/// SQLite undoes just the failed statement; the transaction goes on.
const FAILED_STATEMENT_ABORTS: bool = false;

/// Rows per multi-row INSERT. Measured on two cores (bench/RESULTS.md): 1 row a statement
/// wrote ~26k rows/s, 16 ~73k, 64 ~100k; but a 64-row statement is one long burst on the
/// SQLite thread that shows in the c=1 tail of requests sharing the cores, with no gain at c=64.
const ROWS_PER_INSERT: usize = 16;

/// The connections of the working pool unless told otherwise: SQLite has one writer, and a
/// few readers are all the dashboard and the exports need.
pub const DEFAULT_POOL_SIZE: u32 = 4;

/// IMMEDIATE: the write lock from the start. A deferred transaction that reads first (the
/// audit chain's last row) and then writes gets SQLITE_BUSY at once, without waiting, when
/// another connection wrote in between (a login's direct write).
async fn begin_write(conn: &mut SqliteConnection) -> sqlx::Result<sqlx::Transaction<'_, Sqlite>> {
    conn.begin_with("BEGIN IMMEDIATE").await
}

/// The write lock `begin_write` took already serialises appends.
async fn lock_audit(_tx: &mut SqliteConnection) -> sqlx::Result<()> {
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) `file` and brings its schema up to date.
    pub async fn open(file: &Path) -> StoreResult<Self> {
        Self::open_with(file, DEFAULT_POOL_SIZE).await
    }

    /// [`open`](Self::open) with a working pool of `pool_size` connections.
    pub async fn open_with(file: &Path, pool_size: u32) -> StoreResult<Self> {
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
            .max_connections(pool_size.max(1))
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

    async fn engine_apply(&self, ops: &[WriteOp]) -> StoreResult<Applied> {
        let mut conn = self.pool.acquire().await?;
        let applied = apply_batch(&mut conn, ops).await;
        // A failed COMMIT or ROLLBACK (a full disk) can leave SQLite inside a transaction
        // that sqlx no longer tracks: pooled again, that connection would nest every later
        // batch in a savepoint that never commits, and hold the write lock for good.
        if applied.is_err() {
            conn.close_on_drop();
        }
        Ok(applied?)
    }

    async fn engine_size(&self) -> StoreResult<StoreSize> {
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
    }

    async fn engine_checkpoint(&self) -> StoreResult<bool> {
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
    }

    async fn engine_reclaim(&self) -> StoreResult<()> {
        // 256 pages (1 MiB at the default page size) a call, so the writer waits briefly.
        sqlx::raw_sql("PRAGMA incremental_vacuum(256)")
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

/// `INSERT INTO requests … VALUES (…), (…)` for `n` rows, built once per `n`. Anonymous `?`
/// placeholders, not the `$N` of the rest of the SQL: sqlx looks each named parameter up in
/// SQLite's list of names, a linear scan, which made a 2,048-parameter statement quadratic (80 %
/// of the writer's time in a profile).
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

/// [`apply_batch_in`], zeroing what an erasure removes.
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
    let r = apply_batch_in(conn, ops, false).await;
    if erasing {
        sqlx::raw_sql("PRAGMA secure_delete = OFF")
            .execute(&mut *conn)
            .await?;
    }
    r
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
