//! Accounting writer throughput: rows pushed through the bounded queue into a fresh SQLite file
//! (or, with `--url postgres://…`, a fresh schema there), with the gateway's default queue,
//! batch size and commit delay.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_core::SessionId;
use gatehouse_core::record::{RequestRecord, UsageSource};
use gatehouse_store::{Store, StoreUrl, WriteOp, Writer};
use serde_json::json;

use crate::flag;

pub fn main(args: &[String]) -> Result<(), String> {
    let rows: u64 = flag(args, "--rows")
        .unwrap_or("200000")
        .parse()
        .map_err(|_| "bad --rows")?;
    // `--keep DIR` leaves the database at DIR/gatehouse.db (session `bench`), e.g. to time exports.
    let keep = flag(args, "--keep").map(std::path::PathBuf::from);
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("gatehouse-writer-bench-{}", std::process::id()))
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = runtime.block_on(async {
        let url = match flag(args, "--url") {
            Some(u) => StoreUrl::parse(u, &dir).map_err(|e| e.to_string())?,
            None => StoreUrl::Sqlite(dir.join("gatehouse.db")),
        };
        let store: Arc<dyn Store> = url.open(0).await.map_err(|e| e.to_string())?;
        let (writer, task) = Writer::spawn(store.clone(), 65_536, 512, Duration::from_millis(20));
        let session = SessionId::new("bench");
        store
            .apply(&[WriteOp::CreateSession(gatehouse_core::record::Session {
                id: session.clone(),
                name: "writer bench".into(),
                model_key: None,
                provider: None,
                created_at: 0,
            })])
            .await
            .map_err(|e| e.to_string())?;
        let t = Instant::now();
        for i in 0..rows {
            writer.record(WriteOp::InsertRequest(Box::new(row(&session, i)))).await;
        }
        writer.close().await;
        let _ = task.await;
        let secs = t.elapsed().as_secs_f64();
        let stored = store.count_requests(&session).await.map_err(|e| e.to_string())?;
        Ok::<_, String>(json!({"engine": url.engine(), "rows": rows, "stored": stored, "seconds": secs, "rows_per_s": rows as f64 / secs}))
    });
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("{}", result?);
    Ok(())
}

fn row(session: &SessionId, i: u64) -> RequestRecord {
    RequestRecord {
        row_id: String::new(),
        requested_model: None,
        purpose: None,
        key_id: None,
        team_id: None,
        id: format!("req-{i}"),
        session_id: session.clone(),
        created_at: gatehouse_core::time::now_ms(),
        provider: "mock".into(),
        model_key: "mock/bench".into(),
        upstream_model: "bench".into(),
        stream: i.is_multiple_of(2),
        status: 200,
        prompt_tokens_est: 250,
        prompt_tokens: Some(248),
        completion_tokens: Some(42),
        cached_tokens: Some(0),
        reasoning_tokens: None,
        usage_source: UsageSource::Upstream,
        max_context: 131_072,
        context_pct: 0.19,
        preview: "Please review this function and suggest improvements.".into(),
        latency_ms: 3,
        ttfb_ms: Some(1),
        overhead_us: 40,
        attempts: 1,
        finish_reason: Some("stop".into()),
        error_type: None,
        error_message: None,
        cost_usd: None,
        memory_tokens: 0,
        chat_tokens: 0,
        memory_ratio: 0.0,
        routing: None,
    }
}
