//! `gatehouse audit verify`: recomputes the audit trail's hash chain from its first row, and
//! names the first row that was edited, removed or inserted behind the gateway's back.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

#[derive(Args, Debug)]
pub struct AuditArgs {
    /// Config file, to find the database.
    #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: AuditCommand,
}

#[derive(Subcommand, Debug)]
enum AuditCommand {
    /// Check every row's hash and its link to the row before; exit 1 at the first broken one.
    Verify,
}

pub fn run(args: AuditArgs) -> anyhow::Result<ExitCode> {
    let (_, db) = super::existing_database(args.config.as_deref(), args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        match args.command {
            AuditCommand::Verify => {
                let check = store.verify_audit().await?;
                match check.first_broken {
                    None => {
                        println!(
                            "audit trail intact: {} rows, every hash matches",
                            check.rows
                        );
                        if check.erased > 0 {
                            println!(
                                "{} rows had their personal fields erased with a user (their digests stand in the chain)",
                                check.erased
                            );
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    Some((seq, why)) => {
                        println!(
                            "audit trail broken at row {seq}: {why} ({} rows read)",
                            check.rows
                        );
                        Ok(ExitCode::FAILURE)
                    }
                }
            }
        }
    })
}
