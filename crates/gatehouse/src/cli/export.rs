//! `gatehouse export`: a session's requests (or all of them) to CSV or JSON, from the database
//! file directly, so it works whether the gateway runs or not (SQLite WAL allows a reader beside
//! the writer). Rows are written as they are read: memory stays flat for any size, and a progress
//! bar shows how far a large export is when writing to a file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};
use gatehouse_core::SessionId;
use gatehouse_core::time::now_ms;
use gatehouse_services::export::{self, Format};
use gatehouse_store::Scope;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Json,
}

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The session to export.
    #[arg(long, conflicts_with = "all", required_unless_present = "all")]
    session: Option<String>,
    /// Export every request of every session.
    #[arg(long)]
    all: bool,
    #[arg(long, short, value_enum, default_value = "csv")]
    format: FormatArg,
    /// Output file; standard output when absent.
    #[arg(long, short)]
    out: Option<PathBuf>,
    /// Config file, to find the database (the same rules as `serve`).
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Rows between two writes of the progress bar's position.
const TICK: u64 = 1024;

pub fn run(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (_, db) = super::existing_database(args.config.as_deref(), args.data_dir.clone())?;
    let format = match args.format {
        FormatArg::Csv => Format::Csv,
        FormatArg::Json => Format::Json,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        let (scope, session) = match &args.session {
            Some(raw) => {
                let id = SessionId::parse_client(raw)
                    .with_context(|| format!("`{raw}` is not a session id"))?;
                let s = store.get_session(&id).await?.with_context(|| {
                    format!("session `{raw}` does not exist in {}", db.display())
                })?;
                (Scope::Session(id), Some(s))
            }
            None => (Scope::All, None),
        };
        let total = store.count_scope(&scope).await?;
        let mut out: Box<dyn Write> = match &args.out {
            Some(p) => Box::new(BufWriter::with_capacity(
                1 << 16,
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            )),
            None => Box::new(BufWriter::with_capacity(1 << 16, std::io::stdout().lock())),
        };
        let bar = if args.quiet || args.out.is_none() {
            ProgressBar::hidden()
        } else {
            let b = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            if let Ok(style) =
                ProgressStyle::with_template("{bar:40} {pos}/{len} rows  {per_sec}  eta {eta}")
            {
                b.set_style(style);
            }
            b.enable_steady_tick(Duration::from_millis(200));
            b
        };

        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let reader = async {
            store.export_requests(&scope, tx).await;
        };
        let writer = async {
            // Owned here, so a failed write drops it and the reader stops too.
            let mut rx = rx;
            let mut buf = String::with_capacity(1 << 16);
            match format {
                Format::Csv => export::csv_header(&mut buf),
                Format::Json => export::json_head(&mut buf, session.as_ref(), now_ms()),
            }
            let mut n = 0u64;
            while let Some(row) = rx.recv().await {
                let row = row.context("reading the database failed")?;
                match format {
                    Format::Csv => export::csv_row(&mut buf, &row),
                    Format::Json => export::json_row(&mut buf, &row, n == 0),
                }
                n += 1;
                if buf.len() >= 1 << 16 {
                    out.write_all(buf.as_bytes())?;
                    buf.clear();
                }
                if n.is_multiple_of(TICK) {
                    bar.set_position(n);
                }
            }
            if format == Format::Json {
                export::json_tail(&mut buf, None);
            }
            out.write_all(buf.as_bytes())?;
            out.flush()?;
            bar.finish_and_clear();
            Ok::<u64, anyhow::Error>(n)
        };
        let ((), written) = tokio::join!(reader, writer);
        let written = written?;
        if let Some(p) = &args.out {
            eprintln!("exported {written} requests to {}", p.display());
        }
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
