//! `gatehouse secrets`: the master key that seals provider keys stored through the API.
//! `generate` prints a new one; `rotate` re-seals every stored key under a new master key in one
//! transaction (the old one from GATEHOUSE_MASTER_KEY or GATEHOUSE_MASTER_KEY_FILE), so the
//! gateway is then started with the new key.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gatehouse_core::time::now_ms;
use gatehouse_server::audit::{self, Actor, Change};
use gatehouse_services::secrets::MasterKey;
use gatehouse_store::{StoredProviderKey, WriteOp};

#[derive(Args, Debug)]
pub struct SecretsArgs {
    /// Config file, to find the database.
    #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: SecretsCommand,
}

#[derive(Subcommand, Debug)]
enum SecretsCommand {
    /// Print a new random master key (64 hex digits) for GATEHOUSE_MASTER_KEY.
    Generate,
    /// Re-seal every stored provider key under a new master key.
    Rotate {
        /// A file holding the new master key (else GATEHOUSE_NEW_MASTER_KEY).
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
}

pub fn run(args: SecretsArgs) -> anyhow::Result<ExitCode> {
    match args.command {
        SecretsCommand::Generate => {
            println!("{}", MasterKey::generate()?);
            Ok(ExitCode::SUCCESS)
        }
        SecretsCommand::Rotate { new_key_file } => {
            let (_, db) = super::existing_database(args.config.as_deref(), args.data_dir)?;
            let old = MasterKey::from_env()?.context(
                "set GATEHOUSE_MASTER_KEY (or GATEHOUSE_MASTER_KEY_FILE) to the master key in use",
            )?;
            let new = MasterKey::from_sources(
                std::env::var("GATEHOUSE_NEW_MASTER_KEY").ok(),
                new_key_file.map(|p| p.display().to_string()),
            )?
            .context("give the new master key: --new-key-file FILE or GATEHOUSE_NEW_MASTER_KEY")?;
            if new.id() == old.id() {
                bail!("the new master key is the one in use");
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            runtime.block_on(rotate(&db, &old, &new))
        }
    }
}

async fn rotate(
    db: &super::Database,
    old: &MasterKey,
    new: &MasterKey,
) -> anyhow::Result<ExitCode> {
    let store = db.open().await?;
    let stored = store.provider_keys().await?;
    let now = now_ms();
    let mut ops = Vec::with_capacity(stored.len() + 1);
    for k in &stored {
        let plain = old.open(&k.provider, &k.sealed)?;
        ops.push(WriteOp::SetProviderKey(Box::new(StoredProviderKey {
            provider: k.provider.clone(),
            sealed: new.seal(&k.provider, &plain)?,
            last4: k.last4.clone(),
            updated_at: now,
        })));
    }
    ops.push(WriteOp::AppendAudit(Box::new(audit::entry(
        &Actor::cli(),
        Change::new("secrets.rotate", None)
            .before(serde_json::json!({"master_key": old.id()}))
            .after(serde_json::json!({"master_key": new.id(), "provider_keys": stored.len()})),
        "ok",
    ))));
    // One transaction: every key moves to the new master key, or none does.
    store.apply(&ops).await?;
    println!(
        "{} provider key(s) re-sealed under master key {} (was {}); start Gatehouse with the new key",
        stored.len(),
        new.id(),
        old.id()
    );
    Ok(ExitCode::SUCCESS)
}
