//! Command-line interface: `serve`, `init`, `check`, `keys`, `teams`, `users`, `secrets`, `audit`, `export`, `prune`, `scan`,
//! `version`.

mod audit;
mod check;
mod demo;
mod export;
mod init;
mod keys;
mod prune;
mod scan;
mod secrets;
mod serve;
mod teams;
mod users;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "gatehouse", version, about = "A single-binary LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway.
    Serve(serve::ServeArgs),
    /// Write a commented config.toml holding the built-in catalogue.
    Init {
        /// Where to write it.
        #[arg(long, short, default_value = "config.toml")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Validate a config file; exit code 1 if it has mistakes.
    Check {
        /// The file to check.
        #[arg(long, short, env = "GATEHOUSE_CONFIG", default_value = "config.toml")]
        config: PathBuf,
    },
    /// Virtual keys for `[auth] mode = "keys"`: create, list, show, update, block, unblock,
    /// rotate, delete.
    Keys(Box<keys::KeysArgs>),
    /// Teams: limits and a budget shared by several keys (create, list, show, update, block,
    /// unblock, delete).
    Teams(Box<teams::TeamsArgs>),
    /// Admin users who log in with `[auth] mode = "keys"`: create, list, passwd, role, block,
    /// unblock, delete.
    Users(users::UsersArgs),
    /// The master key of stored provider keys: `generate`, `rotate`.
    Secrets(secrets::SecretsArgs),
    /// The audit trail: `verify` recomputes its hash chain.
    Audit(audit::AuditArgs),
    /// Export recorded requests to CSV or JSON.
    Export(export::ExportArgs),
    /// Delete old rows now, as the server's retention does every few minutes.
    Prune(prune::PruneArgs),
    /// Show what redaction would replace in files (places and kinds, never the secrets).
    Scan(scan::ScanArgs),
    /// Print the version.
    Version,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve::run(args),
        Command::Init { out, force } => init::run(&out, force),
        Command::Check { config } => check::run(&config),
        Command::Keys(args) => keys::run(*args),
        Command::Teams(args) => teams::run(*args),
        Command::Users(args) => users::run(args),
        Command::Secrets(args) => secrets::run(args),
        Command::Audit(args) => audit::run(args),
        Command::Export(args) => export::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Scan(args) => scan::run(args),
        Command::Version => {
            println!("gatehouse {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The configuration the database commands read (`--config`, else `./config.toml` when there
/// is one), with `--data-dir` over it, and the SQLite file it names.
fn database(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(gatehouse_config::Config, PathBuf)> {
    let default = std::path::Path::new("config.toml");
    let file = config.or_else(|| default.exists().then_some(default));
    let overrides = gatehouse_config::Overrides {
        data_dir,
        ..gatehouse_config::Overrides::default()
    };
    let config = gatehouse_config::load(
        file,
        &gatehouse_config::Env::from_pairs(std::env::vars()),
        &overrides,
    )?;
    let db = config.server.data_dir.join(&config.storage.sqlite_file);
    Ok((config, db))
}

/// [`database`], refusing when the file is not there yet (commands that only read it).
fn existing_database(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(gatehouse_config::Config, PathBuf)> {
    let (config, db) = database(config, data_dir)?;
    if !db.exists() {
        anyhow::bail!(
            "no database at {}: pass --data-dir (or --config) pointing where `gatehouse serve` keeps it",
            db.display()
        );
    }
    Ok((config, db))
}
