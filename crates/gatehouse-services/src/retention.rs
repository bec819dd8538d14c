//! Retention: the database is bounded. Request rows older than `[retention] requests_days`
//! and masked originals not stored again for `masked_days` are deleted, and past `max_db_mb`
//! the oldest request rows go until the live data is under the cap; freed pages are given back
//! to the file system where the database allows it.
//!
//! Every delete is one statement of at most `batch_rows` rows, a short transaction of its own,
//! with a pause between two so the accounting writer, which shares the file's one write lock,
//! never waits longer than one batch. The server runs [`prune`] every `interval_secs`;
//! `gatehouse prune` runs it once by hand.

use std::time::Duration;

use gatehouse_config::RetentionConfig;
use gatehouse_store::{Store, StoreResult, StoreSize};
use serde::Serialize;

const DAY_MS: i64 = 86_400_000;
/// Between two batches: room for the writer's transactions.
const PAUSE: Duration = Duration::from_millis(5);
/// Free space below this is not worth reclaiming.
const SLACK_BYTES: u64 = 1 << 20;
/// Reclaim calls per run at most (each about a MiB).
const MAX_RECLAIMS: u32 = 256;

/// What one run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Pruned {
    /// Request rows past their age.
    pub requests: u64,
    pub masked: u64,
    /// Stored Responses API responses removed by age (with the requests').
    pub responses: u64,
    /// Login-history rows past their age, and expired token ids.
    pub logins: u64,
    /// Request rows removed to bring the database under `max_db_mb`.
    pub over_size: u64,
    pub size: StoreSize,
}

/// One pruning run at time `now_ms`; `go_on` is asked between batches (false at shutdown).
pub async fn prune(
    store: &dyn Store,
    cfg: &RetentionConfig,
    now_ms: i64,
    go_on: &(dyn Fn() -> bool + Sync),
) -> StoreResult<Pruned> {
    let mut out = Pruned::default();
    let batch = cfg.batch_rows.max(1);
    if cfg.requests_days > 0 {
        let before = now_ms.saturating_sub(i64::from(cfg.requests_days) * DAY_MS);
        out.requests = batches(|| store.prune_requests(before, batch), go_on).await?;
        out.responses = batches(|| store.prune_responses(before, batch), go_on).await?;
        // Login history ages with the requests; expired token ids go whatever the age.
        out.logins = batches(|| store.prune_logins(before, now_ms, batch), go_on).await?;
    }
    if cfg.masked_days > 0 {
        let before = now_ms.saturating_sub(i64::from(cfg.masked_days) * DAY_MS);
        out.masked = batches(|| store.prune_masked(before, batch), go_on).await?;
    }
    out.size = store.size().await?;
    if cfg.max_db_mb > 0 {
        let cap = cfg.max_db_mb.saturating_mul(1 << 20);
        while out.size.live_bytes > cap && go_on() {
            let n = store.prune_oldest_requests(batch).await?;
            if n == 0 {
                break;
            }
            out.over_size += n;
            tokio::time::sleep(PAUSE).await;
            out.size = store.size().await?;
        }
    }
    if out.requests + out.masked + out.responses + out.over_size > 0 {
        for _ in 0..MAX_RECLAIMS {
            if !go_on() || out.size.file_bytes.saturating_sub(out.size.live_bytes) < SLACK_BYTES {
                break;
            }
            store.reclaim().await?;
            tokio::time::sleep(PAUSE).await;
            let after = store.size().await?;
            // A database made before incremental vacuum reuses its free pages instead.
            if after.file_bytes >= out.size.file_bytes {
                out.size = after;
                break;
            }
            out.size = after;
        }
    }
    Ok(out)
}

/// Runs `step` until it deletes nothing (or `go_on` says stop), pausing between batches; the
/// total deleted.
async fn batches<F, Fut>(mut step: F, go_on: &(dyn Fn() -> bool + Sync)) -> StoreResult<u64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = StoreResult<u64>>,
{
    let mut total = 0;
    while go_on() {
        let n = step().await?;
        total += n;
        if n == 0 {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use gatehouse_core::SessionId;
    use gatehouse_core::record::{MaskedContent, RequestRecord, UsageSource};
    use gatehouse_store::{SqliteStore, WriteOp};

    use super::*;

    /// A row as the writer stores it: its id is a UUID v7 of (about) its creation time.
    fn row(session: &SessionId, created_at: i64, preview: &str) -> WriteOp {
        let ms = u64::try_from(created_at).unwrap();
        let row_id = uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(
            ms / 1000,
            u32::try_from((ms % 1000) * 1_000_000).unwrap(),
            0,
            0,
        ))
        .to_string();
        WriteOp::InsertRequest(Box::new(RequestRecord {
            row_id,
            id: uuid(),
            session_id: session.clone(),
            created_at,
            provider: "p".into(),
            model_key: "p/m".into(),
            upstream_model: "m".into(),
            stream: false,
            status: 200,
            prompt_tokens_est: 1,
            prompt_tokens: Some(1),
            completion_tokens: Some(1),
            cached_tokens: None,
            reasoning_tokens: None,
            usage_source: UsageSource::Upstream,
            max_context: 10,
            context_pct: 10.0,
            preview: preview.to_owned(),
            latency_ms: 1,
            ttfb_ms: None,
            overhead_us: 1,
            attempts: 1,
            finish_reason: None,
            error_type: None,
            error_message: None,
            cost_usd: None,
            memory_tokens: 0,
            chat_tokens: 1,
            memory_ratio: 0.0,
            routing: None,
            requested_model: None,
            purpose: None,
            key_id: None,
            team_id: None,
        }))
    }

    fn uuid() -> String {
        SessionId::generate().as_str().to_owned()
    }

    fn cfg(requests_days: u32, max_db_mb: u64) -> RetentionConfig {
        RetentionConfig {
            requests_days,
            masked_days: 30,
            max_db_mb,
            session_idle_hours: 24,
            interval_secs: 300,
            batch_rows: 100,
        }
    }

    #[tokio::test]
    async fn old_rows_and_originals_go_recent_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let s = SessionId::new("s");
        let now = 100 * DAY_MS;
        let mut ops: Vec<WriteOp> = (0..450)
            .map(|i| row(&s, now - 40 * DAY_MS + i, "old"))
            .collect();
        ops.extend((0..50).map(|i| row(&s, now - DAY_MS + i, "new")));
        for (hash, at) in [("aaaa", now - 40 * DAY_MS), ("bbbb", now)] {
            ops.push(WriteOp::StoreMasked(Box::new(MaskedContent {
                hash: hash.into(),
                role: "tool".into(),
                tags: vec![],
                tokens: 1,
                tokens_saved: 1,
                content: Some("x".into()),
                created_at: at,
                key_id: None,
            })));
        }
        store.apply(&ops).await.unwrap();
        let p = prune(&*store, &cfg(30, 0), now, &|| true).await.unwrap();
        assert_eq!(p.requests, 450);
        assert_eq!(p.masked, 1);
        assert_eq!(store.count_requests(&s).await.unwrap(), 50);
        assert!(store.get_masked("bbbb").await.unwrap().is_some());
        assert!(store.get_masked("aaaa").await.unwrap().is_none());
        // Nothing more to do: a second run deletes nothing.
        let again = prune(&*store, &cfg(30, 0), now, &|| true).await.unwrap();
        assert_eq!((again.requests, again.masked), (0, 0));
    }

    #[tokio::test]
    async fn old_logins_and_expired_token_ids_go() {
        use gatehouse_core::record::{LoginEvent, RefreshToken};
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let now = 100 * DAY_MS;
        let login = |id: &str, at: i64| {
            WriteOp::AppendLogin(Box::new(LoginEvent {
                id: id.into(),
                at,
                username: "ada".into(),
                user_id: None,
                ip: None,
                user_agent: None,
                outcome: "failed".into(),
                reason: None,
            }))
        };
        let refresh = |jti: &str, expires_at: i64| {
            WriteOp::InsertRefresh(Box::new(RefreshToken {
                jti: jti.into(),
                family: "f".into(),
                user_id: "u".into(),
                issued_at: expires_at - DAY_MS,
                expires_at,
            }))
        };
        store
            .apply(&[
                login("a", now - 40 * DAY_MS),
                login("b", now - DAY_MS),
                // In this order: inserting a token also clears those expired before it was issued.
                refresh("live", now + DAY_MS),
                refresh("expired", now - DAY_MS),
                WriteOp::RevokeToken {
                    jti: "gone".into(),
                    expires_at: now - 1,
                },
                WriteOp::RevokeToken {
                    jti: "kept".into(),
                    expires_at: now + 1,
                },
            ])
            .await
            .unwrap();
        let p = prune(&*store, &cfg(30, 0), now, &|| true).await.unwrap();
        assert_eq!(
            p.logins, 3,
            "one old login, one expired refresh id, one expired revocation"
        );
        let left = store.login_history(None, None, 10).await.unwrap();
        assert_eq!(
            left.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(
            store.revoked_tokens(now).await.unwrap(),
            [("kept".to_owned(), now + 1)]
        );
    }

    #[tokio::test]
    async fn a_size_cap_removes_the_oldest_rows_and_gives_the_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("g.db")).await.unwrap());
        let s = SessionId::new("s");
        let preview = "p".repeat(2000);
        for chunk in 0..10 {
            let ops: Vec<WriteOp> = (0..500)
                .map(|i| row(&s, chunk * 1000 + i, &preview))
                .collect();
            store.apply(&ops).await.unwrap();
        }
        let before = store.size().await.unwrap();
        assert!(before.live_bytes > 8 << 20, "{before:?}");
        let p = prune(&*store, &cfg(0, 4), 1_000_000, &|| true)
            .await
            .unwrap();
        assert!(p.over_size > 0);
        assert!(p.size.live_bytes <= 4 << 20, "{p:?}");
        assert!(
            p.size.file_bytes < before.file_bytes,
            "space given back: {p:?}"
        );
        // The newest rows are the ones kept.
        let newest = store.list_requests(&s, 1, 0).await.unwrap();
        assert_eq!(newest[0].created_at, 9 * 1000 + 499);
    }
}
