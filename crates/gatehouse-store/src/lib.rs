//! Persistence: the [`Store`] trait, its SQLite and PostgreSQL implementations with versioned
//! migrations, and the batching [`writer`] that takes accounting off the request path.
//!
//! Both engines run one body of SQL (`shared/store.rs`, written with `$N` placeholders); each
//! engine module supplies its dialect, its migrations and what only it can do.
//! Architecture invariant: the proxy path never awaits a database; it hands [`WriteOp`]s to the
//! writer's bounded queue and moves on.

pub mod copy;
pub mod postgres;
pub mod sqlite;
pub mod writer;

use futures_util::future::BoxFuture;
use gatehouse_core::SessionId;
use gatehouse_core::record::{
    AuditEntry, CompactionRecord, CompactionSettings, KeyRecord, KeySpend, LoginEvent,
    MaskedContent, MemoryRecord, RefreshToken, RequestRecord, Session, SessionStats,
    StoredResponse, TeamRecord, UserRecord,
};
use serde::Serialize;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use writer::{Writer, WriterHandle};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration {version} failed: {source}")]
    Migration { version: i64, source: sqlx::Error },
    #[error("storage url must start with sqlite:// or postgres:// (this one starts \"{scheme}\")")]
    Url { scheme: String },
    #[error("{0}")]
    Copy(String),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
}

pub type StoreResult<T> = Result<T, StoreError>;

/// Where the record lives, from `[storage] url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// A file; a relative path is inside the data directory.
    Sqlite(std::path::PathBuf),
    /// The full connection URL (it may hold a password: never logged, never echoed).
    Postgres(String),
}

impl StoreUrl {
    /// `sqlite://name.db` (in `data_dir`), `sqlite:///abs/path.db`, or `postgres://…` /
    /// `postgresql://…`.
    pub fn parse(url: &str, data_dir: &std::path::Path) -> StoreResult<Self> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Self::Postgres(url.to_owned()));
        }
        match url.strip_prefix("sqlite://") {
            Some(path) if !path.is_empty() => Ok(Self::Sqlite(data_dir.join(path))),
            _ => Err(StoreError::Url {
                // Only a scheme that reads as one: without `://`, the text may be a password.
                scheme: url
                    .split_once("://")
                    .map(|(scheme, _)| scheme)
                    .filter(|s| {
                        s.len() <= 16
                            && s.chars()
                                .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c))
                    })
                    .unwrap_or("no scheme")
                    .to_owned(),
            }),
        }
    }

    /// Where it is, for people: the file, or the server and database without user or
    /// password.
    pub fn describe(&self) -> String {
        match self {
            Self::Sqlite(file) => file.display().to_string(),
            Self::Postgres(url) => {
                let rest = url.split_once("://").map_or("", |(_, r)| r);
                let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
                let rest = rest.split_once('?').map_or(rest, |(r, _)| r);
                format!("postgres://{rest}")
            }
        }
    }

    /// The engine's name, for `/health` and logs.
    pub fn engine(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            Self::Postgres(_) => "postgres",
        }
    }

    /// Opens the store, creating and migrating it as needed; `pool_size` 0 is the engine's
    /// default.
    pub async fn open(&self, pool_size: u32) -> StoreResult<std::sync::Arc<dyn Store>> {
        Ok(match self {
            Self::Sqlite(file) => {
                let size = if pool_size == 0 {
                    sqlite::DEFAULT_POOL_SIZE
                } else {
                    pool_size
                };
                std::sync::Arc::new(SqliteStore::open_with(file, size).await?)
            }
            Self::Postgres(url) => {
                let size = if pool_size == 0 {
                    postgres::DEFAULT_POOL_SIZE
                } else {
                    pool_size
                };
                std::sync::Arc::new(PgStore::open(url, size).await?)
            }
        })
    }
}

/// A change to persist, in the order it happened.
#[derive(Debug, Clone)]
pub enum WriteOp {
    CreateSession(Session),
    RenameSession {
        id: SessionId,
        name: String,
    },
    /// A session opened without a model takes the model of its first request.
    SetSessionModel {
        id: SessionId,
        model_key: String,
        provider: String,
    },
    DeleteSession(SessionId),
    SetActiveSession(Option<SessionId>),
    InsertRequest(Box<RequestRecord>),
    /// The original of a masked message; kept once per reference.
    StoreMasked(Box<MaskedContent>),
    SetSetting {
        key: String,
        value: String,
    },
    /// A memory entry, inserted or replaced whole.
    UpsertMemory(Box<MemoryRecord>),
    DeleteMemory(Vec<String>),
    InsertCompaction(Box<CompactionRecord>),
    SetCompactionSettings {
        session: SessionId,
        settings: CompactionSettings,
    },
    /// A Responses API response kept for `previous_response_id`.
    StoreResponse(Box<StoredResponse>),
    DeleteResponse(String),
    /// A virtual key created or edited: its limits, not its spend.
    UpsertKey(Box<KeyRecord>),
    /// A key's spend in its budget period, as the gateway counts it (absolute, so writing it
    /// twice is harmless).
    SetKeySpend {
        id: String,
        spend: KeySpend,
    },
    /// A team created or edited: its limits, not its spend.
    UpsertTeam(Box<TeamRecord>),
    /// A team's spend in its budget period, as [`WriteOp::SetKeySpend`].
    SetTeamSpend {
        id: String,
        spend: KeySpend,
    },
    /// See [`Erasure`]. The user's and keys' own records come as `UpsertUser`/`UpsertKey`.
    Erase(Box<Erasure>),
    /// A state change for the audit trail; the store chains it to the row before.
    AppendAudit(Box<AuditEntry>),
    /// An admin user created or edited (a deletion sets `deleted_at`).
    UpsertUser(Box<UserRecord>),
    AppendLogin(Box<LoginEvent>),
    /// A refresh token issued: recorded before it is handed out, so it can be used at once.
    InsertRefresh(Box<RefreshToken>),
    /// Every refresh token of a login (logout, replay, password change).
    RevokeFamily {
        family: String,
        at: i64,
    },
    /// A provider key set through the API, sealed; replaces the one before.
    SetProviderKey(Box<StoredProviderKey>),
    DeleteProviderKey(String),
    /// Every refresh token of a user (blocked, deleted, new password).
    RevokeUserRefresh {
        user_id: String,
        at: i64,
    },
    /// An access token logged out before its expiry.
    RevokeToken {
        jti: String,
        expires_at: i64,
    },
}

/// A provider key as the database holds it: sealed, never in plain text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredProviderKey {
    pub provider: String,
    /// `v1:{master_key_id}:…` (AES-256-GCM).
    pub sealed: String,
    pub last4: String,
    pub updated_at: i64,
}

/// What exchanging a refresh token found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// Its first use: the caller issues the next token of the family.
    Fresh(RefreshToken),
    /// Used before: the family is revoked now.
    Replayed(RefreshToken),
    /// Its login was logged out, or its family revoked by a replay.
    Revoked,
    /// No such token, or expired.
    Unknown,
}

/// Which audit rows `list_audit` returns, newest first.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Actions starting with this (`key.` for every key change).
    pub action: Option<String>,
    pub actor: Option<String>,
    pub target: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Rows before this `seq` (the cursor of the previous page).
    pub before_seq: Option<i64>,
    pub limit: u32,
}

/// What `verify_audit` found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AuditCheck {
    pub rows: u64,
    /// Rows whose personal fields a user's erasure blanked.
    pub erased: u64,
    /// The first row whose hash or link does not match, and how.
    pub first_broken: Option<(i64, String)>,
}

/// Whose rows `spend` sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendOf<'a> {
    Key(&'a str),
    Team(&'a str),
}

/// How `spend` groups the rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpendGroup {
    Day,
    Model,
}

/// One group of a key's spend: a day (`YYYY-MM-DD`, UTC) or a model key.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SpendRow {
    pub group: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
}

/// What applying a batch did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    /// Ops dropped because they broke a constraint on their own.
    pub dropped: u64,
}

/// How big the database is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct StoreSize {
    /// Bytes of pages in use.
    pub live_bytes: u64,
    /// Bytes of the file, free pages included.
    pub file_bytes: u64,
}

/// What the compaction state is rebuilt from at start.
#[derive(Debug, Clone, Default)]
pub struct StoredCompactions {
    /// The newest compaction of each session: its point.
    pub points: Vec<CompactionRecord>,
    pub settings: Vec<(SessionId, CompactionSettings)>,
}

/// Totals of the compactions kept.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct CompactionTotals {
    pub count: u64,
    pub auto: u64,
    pub manual: u64,
    pub llm: u64,
    pub tokens_saved: u64,
    pub sessions: u64,
}

/// Totals of the masked originals kept.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct MaskedTotals {
    pub count: u64,
    pub tokens: u64,
    pub tokens_saved_per_request: u64,
}

/// A session with its headline figures, for listings.
#[derive(Debug, Clone, Serialize)]
pub struct SessionSummary {
    #[serde(flatten)]
    pub session: Session,
    pub request_count: u64,
    pub cumulative_total_tokens: u64,
    pub last_request_at: Option<i64>,
}

/// Which requests an export covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    Session(SessionId),
    /// The rows of these virtual keys (a user's export).
    Keys(Vec<String>),
    All,
}

/// A user's erasure (`DELETE /api/users/{id}?erase=true`), in one transaction: the content
/// tied to them goes, the accounting stays under `tombstone`.
#[derive(Debug, Clone, PartialEq)]
pub struct Erasure {
    /// The name their login attempts were recorded under.
    pub username: String,
    pub tombstone: String,
    /// Every key they owned, deleted ones included: their rows lose previews and error
    /// messages (cost and tokens stay), their masked originals go.
    pub key_ids: Vec<String>,
    pub user_id: String,
    /// Epoch milliseconds.
    pub at: i64,
    /// When the user was made: rows by the same name before that are another user's.
    pub since: i64,
    /// The erasure's own audit row; the store adds the sequence numbers of the rows it
    /// blanked (`after.audit_rows_blanked`).
    pub audit: Box<AuditEntry>,
    /// Sessions only their keys used: names, compactions, memory and stored responses go.
    pub sessions: Vec<SessionId>,
}

/// What the gateway persists and reads back. Implementations share `$N` SQL.
pub trait Store: Send + Sync + 'static {
    /// Applies a batch in one transaction. An op that breaks a constraint on its own is dropped
    /// (and counted in [`Applied`]), so one bad row never loses its neighbours; any other error
    /// (locked, read-only, full disk) fails the whole batch, which the caller retries: every op
    /// is idempotent (rows carry their own ids), so a batch applied twice is stored once.
    fn apply<'a>(&'a self, ops: &'a [WriteOp]) -> BoxFuture<'a, StoreResult<Applied>>;
    fn list_sessions(&self) -> BoxFuture<'_, StoreResult<Vec<SessionSummary>>>;
    /// Deletes up to `limit` request rows created before `before_ms`, oldest first, in one
    /// short transaction; returns how many went.
    fn prune_requests(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>>;
    /// Deletes up to `limit` masked originals last stored before `before_ms`.
    fn prune_masked(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>>;
    /// Deletes the `limit` oldest request rows, whatever their age (the size cap).
    /// Deletes up to `limit` stored responses older than `before_ms`; how many went.
    fn prune_responses(&self, before_ms: i64, limit: u32) -> BoxFuture<'_, StoreResult<u64>>;
    /// Deletes up to `limit` login-history rows older than `before_ms`, and the refresh and
    /// revoked token ids whose tokens have expired by `now_ms` (they can do nothing more).
    fn prune_logins(
        &self,
        before_ms: i64,
        now_ms: i64,
        limit: u32,
    ) -> BoxFuture<'_, StoreResult<u64>>;
    fn get_response<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, StoreResult<Option<StoredResponse>>>;
    fn prune_oldest_requests(&self, limit: u32) -> BoxFuture<'_, StoreResult<u64>>;
    fn size(&self) -> BoxFuture<'_, StoreResult<StoreSize>>;
    /// Copies the write-ahead log into the database and empties it, so content overwritten
    /// (an erasure) no longer lingers in the log's old page images.
    /// Whether the log could be emptied (not while a reader holds an older snapshot).
    fn checkpoint(&self) -> BoxFuture<'_, StoreResult<bool>>;
    /// Gives some free pages (about a MiB) back to the file system.
    fn reclaim(&self) -> BoxFuture<'_, StoreResult<()>>;
    fn get_session<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, StoreResult<Option<Session>>>;
    fn active_session(&self) -> BoxFuture<'_, StoreResult<Option<Session>>>;
    fn session_stats<'a>(&'a self, id: &'a SessionId) -> BoxFuture<'a, StoreResult<SessionStats>>;
    /// Newest first.
    fn list_requests<'a>(
        &'a self,
        session: &'a SessionId,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<RequestRecord>>>;
    fn count_requests<'a>(&'a self, session: &'a SessionId) -> BoxFuture<'a, StoreResult<u64>>;
    /// Requests in `scope`, oldest first, sent one by one into `tx`: memory stays bounded by the
    /// channel whatever the table's size. Returns when done, on the first error (which is sent
    /// too), or as soon as the receiver is dropped.
    fn export_requests<'a>(
        &'a self,
        scope: &'a Scope,
        tx: tokio::sync::mpsc::Sender<StoreResult<RequestRecord>>,
    ) -> BoxFuture<'a, ()>;
    fn count_scope<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, StoreResult<u64>>;
    /// The sessions holding rows of `key_ids`, each with whether only those keys used it.
    fn sessions_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<(Session, bool)>>>;
    /// Stored Responses API responses made with `key_ids`, oldest first.
    fn responses_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<StoredResponse>>>;
    /// Masked originals first stored by requests of `key_ids`, with their content.
    fn masked_of_keys<'a>(
        &'a self,
        key_ids: &'a [String],
    ) -> BoxFuture<'a, StoreResult<Vec<MaskedContent>>>;
    /// A masked original, by reference.
    fn get_masked<'a>(&'a self, hash: &'a str)
    -> BoxFuture<'a, StoreResult<Option<MaskedContent>>>;
    /// Masked originals, newest first, without their content.
    fn list_masked(
        &self,
        limit: u32,
        offset: u32,
    ) -> BoxFuture<'_, StoreResult<Vec<MaskedContent>>>;
    fn masked_totals(&self) -> BoxFuture<'_, StoreResult<MaskedTotals>>;
    /// Every memory entry, to build the in-process index at start.
    fn load_memory(&self) -> BoxFuture<'_, StoreResult<Vec<MemoryRecord>>>;
    fn get_setting<'a>(&'a self, key: &'a str) -> BoxFuture<'a, StoreResult<Option<String>>>;
    /// A session's compactions, newest first; every session's when `session` is `None`.
    fn list_compactions<'a>(
        &'a self,
        session: Option<&'a SessionId>,
        limit: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<CompactionRecord>>>;
    fn compaction_totals<'a>(
        &'a self,
        session: Option<&'a SessionId>,
    ) -> BoxFuture<'a, StoreResult<CompactionTotals>>;
    /// The newest compaction of each session (its point) and every session's settings, to
    /// rebuild the compaction state at start.
    fn load_compaction_state(&self) -> BoxFuture<'_, StoreResult<StoredCompactions>>;
    /// Virtual keys changed at or after `since_ms` (deleted ones included), with their spend.
    fn load_keys(&self, since_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(KeyRecord, KeySpend)>>>;
    /// Teams changed at or after `since_ms` (deleted ones included), with their spend.
    fn load_teams(&self, since_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(TeamRecord, KeySpend)>>>;
    /// A key's or a team's request rows in `[from_ms, to_ms)`, summed per group, in group order.
    fn spend<'a>(
        &'a self,
        of: SpendOf<'a>,
        from_ms: i64,
        to_ms: i64,
        group: SpendGroup,
    ) -> BoxFuture<'a, StoreResult<Vec<SpendRow>>>;
    fn list_audit<'a>(
        &'a self,
        filter: &'a AuditFilter,
    ) -> BoxFuture<'a, StoreResult<Vec<AuditEntry>>>;
    /// Recomputes the audit trail's chain from its first row.
    fn verify_audit(&self) -> BoxFuture<'_, StoreResult<AuditCheck>>;
    /// A live (not deleted) user by name.
    fn user_by_name<'a>(&'a self, name: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>>;
    fn user_by_id<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>>;
    /// A user by id, deleted or not (an erasure of a user deleted before).
    fn deleted_user<'a>(&'a self, id: &'a str) -> BoxFuture<'a, StoreResult<Option<UserRecord>>>;
    /// Live users, oldest first.
    fn list_users(&self) -> BoxFuture<'_, StoreResult<Vec<UserRecord>>>;
    /// Exchanges a refresh token, once (see [`RefreshUse`]); atomic against concurrent uses.
    fn use_refresh<'a>(
        &'a self,
        jti: &'a str,
        now_ms: i64,
    ) -> BoxFuture<'a, StoreResult<RefreshUse>>;
    /// Access tokens logged out that have not expired yet: `(jti, expires_at)`.
    fn revoked_tokens(&self, now_ms: i64) -> BoxFuture<'_, StoreResult<Vec<(String, i64)>>>;
    /// Login attempts, newest first; of one user name when given; older than entry `before_id`
    /// (a cursor).
    fn login_history<'a>(
        &'a self,
        username: Option<&'a str>,
        before_id: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, StoreResult<Vec<LoginEvent>>>;
    /// Provider keys set through the API, sealed.
    fn provider_keys(&self) -> BoxFuture<'_, StoreResult<Vec<StoredProviderKey>>>;
    /// Cheap liveness probe for `/health/ready`.
    fn ping(&self) -> BoxFuture<'_, StoreResult<()>>;
    /// `sqlite` or `postgres`, for `/health`.
    fn engine(&self) -> &'static str;
    /// The newest migration applied (`gatehouse migrate` reports it).
    fn schema_version(&self) -> BoxFuture<'_, StoreResult<i64>>;
}

#[cfg(test)]
mod tests {
    use super::{StoreError, StoreUrl};
    use std::path::Path;

    #[test]
    fn urls_name_an_engine_and_describe_it_without_the_password() {
        let dir = Path::new("/data");
        assert_eq!(
            StoreUrl::parse("sqlite://g.db", dir).unwrap(),
            StoreUrl::Sqlite(dir.join("g.db"))
        );
        assert_eq!(
            StoreUrl::parse("sqlite:///var/g.db", dir).unwrap(),
            StoreUrl::Sqlite("/var/g.db".into())
        );
        let pg =
            StoreUrl::parse("postgres://gh:pa@ss@db:5432/gh?options[search_path]=x", dir).unwrap();
        assert_eq!(pg.engine(), "postgres");
        assert_eq!(pg.describe(), "postgres://db:5432/gh");
        let e = StoreUrl::parse("mysql://root:hunter2@db/gh", dir).unwrap_err();
        assert!(matches!(e, StoreError::Url { .. }));
        let msg = e.to_string();
        assert!(
            msg.contains("\"mysql\"") && !msg.contains("hunter2"),
            "{msg}"
        );
        assert!(StoreUrl::parse("sqlite://", dir).is_err());
        let e = StoreUrl::parse("gh:hunter2@db", dir)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"no scheme\"") && !e.contains("hunter2"), "{e}");
    }
}
