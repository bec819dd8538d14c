//! `gatehouse prune`: the retention the server runs every `[retention] interval_secs`, once and
//! by hand: request rows past their age, masked originals not seen for a while, the oldest rows
//! past a size cap, and the freed space given back. Safe while the gateway runs (each delete is
//! a short transaction of its own; the gateway's writer waits at most one batch).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use gatehouse_core::time::now_ms;

#[derive(Args, Debug)]
pub struct PruneArgs {
    /// Config file, to find the database and the `[retention]` settings.
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Delete request rows older than this many days (overrides `requests_days`; 0 keeps them).
    #[arg(long)]
    requests_days: Option<u32>,
    /// Delete masked originals not stored again for this many days (0 keeps them).
    #[arg(long)]
    masked_days: Option<u32>,
    /// Delete the oldest request rows until the database holds less than this (0: no cap).
    #[arg(long)]
    max_db_mb: Option<u64>,
}

pub fn run(args: PruneArgs) -> anyhow::Result<ExitCode> {
    let (config, db) = super::existing_database(args.config.as_deref(), args.data_dir.clone())?;
    let mut cfg = config.retention;
    if let Some(d) = args.requests_days {
        cfg.requests_days = d;
    }
    if let Some(d) = args.masked_days {
        cfg.masked_days = d;
    }
    if let Some(m) = args.max_db_mb {
        cfg.max_db_mb = m;
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        let p = gatehouse_services::retention::prune(&*store, &cfg, now_ms(), &|| true).await?;
        println!(
            "pruned {} request rows past {} days, {} masked originals past {} days, {} rows over the size cap; the database holds {:.1} MiB ({:.1} MiB file)",
            p.requests,
            cfg.requests_days,
            p.masked,
            cfg.masked_days,
            p.over_size,
            p.size.live_bytes as f64 / 1_048_576.0,
            p.size.file_bytes as f64 / 1_048_576.0,
        );
        Ok(ExitCode::SUCCESS)
    })
}
