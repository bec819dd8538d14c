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
    /// Bring the store's schema up to date (`serve` does too, at start); safe to run from
    /// several instances at once.
    Migrate(StoreArgs),
    /// Copy every row of a SQLite store into an empty PostgreSQL one (the audit chain still
    /// verifies there): `--from sqlite://gatehouse.db --to postgres://…`.
    MigrateData {
        /// The SQLite store: `sqlite://FILE` (relative to `--data-dir`) or a path.
        #[arg(long)]
        from: String,
        /// The PostgreSQL store, empty (a new database or schema).
        #[arg(long)]
        to: String,
        /// Where a relative `sqlite://` file is.
        #[arg(long, env = "GATEHOUSE_DATA_DIR", default_value = ".")]
        data_dir: PathBuf,
    },
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
        Command::Migrate(args) => migrate(args),
        Command::MigrateData { from, to, data_dir } => migrate_data(&from, &to, &data_dir),
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
/// is one), with `--data-dir` over it, and the store it names.
fn database(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(gatehouse_config::Config, Database)> {
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
    let db = Database {
        url: gatehouse_server::store_url(&config)?,
        pool_size: config.storage.pool_size,
    };
    Ok((config, db))
}

/// [`database`], refusing when a SQLite file is not there yet (commands that only read it).
fn existing_database(
    config: Option<&std::path::Path>,
    data_dir: Option<PathBuf>,
) -> anyhow::Result<(gatehouse_config::Config, Database)> {
    let (config, db) = database(config, data_dir)?;
    if let gatehouse_store::StoreUrl::Sqlite(file) = &db.url
        && !file.exists()
    {
        anyhow::bail!(
            "no database at {}: pass --data-dir (or --config) pointing where `gatehouse serve` keeps it",
            file.display()
        );
    }
    Ok((config, db))
}

#[derive(clap::Args, Debug)]
struct StoreArgs {
    /// Config file, to find the store (`[storage] url`, or the SQLite file in `data_dir`).
    #[arg(long, short, env = "GATEHOUSE_CONFIG")]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR")]
    data_dir: Option<PathBuf>,
}

fn migrate(args: StoreArgs) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    let (_, db) = database(args.config.as_deref(), args.data_dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        let version = store.schema_version().await?;
        println!(
            "the {} store at {} is at schema version {version}",
            db.url.engine(),
            db.display()
        );
        Ok(ExitCode::SUCCESS)
    })
}

fn migrate_data(from: &str, to: &str, data_dir: &std::path::Path) -> anyhow::Result<ExitCode> {
    use anyhow::Context;
    use gatehouse_store::StoreUrl;
    let from_url = if from.contains("://") {
        StoreUrl::parse(from, data_dir)?
    } else {
        StoreUrl::Sqlite(data_dir.join(from))
    };
    let to_url = StoreUrl::parse(to, data_dir)?;
    let target = to_url.describe();
    let (StoreUrl::Sqlite(file), StoreUrl::Postgres(url)) = (&from_url, &to_url) else {
        anyhow::bail!("migrate-data copies a sqlite:// store into a postgres:// one");
    };
    if !file.exists() {
        anyhow::bail!("no database at {}", file.display());
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let copied = gatehouse_store::copy::sqlite_to_postgres(file, url)
            .await
            .with_context(|| format!("cannot copy {} into {target}", file.display()))?;
        for (table, n) in &copied {
            println!("{table}: {n} rows");
        }
        let store = to_url.open(1).await?;
        let check = store.verify_audit().await?;
        match check.first_broken {
            None => {
                println!(
                    "copied into {target}; the audit trail verifies there ({} rows)",
                    check.rows
                );
                Ok(ExitCode::SUCCESS)
            }
            Some((seq, why)) => {
                println!("copied into {target}, but its audit trail breaks at row {seq}: {why}");
                Ok(ExitCode::FAILURE)
            }
        }
    })
}

/// The store a command works on: the one `gatehouse serve` uses with the same configuration.
pub(crate) struct Database {
    pub(crate) url: gatehouse_store::StoreUrl,
    pool_size: u32,
}

impl Database {
    /// Opens it, bringing its schema up to date.
    pub(crate) async fn open(&self) -> anyhow::Result<std::sync::Arc<dyn gatehouse_store::Store>> {
        use anyhow::Context;
        self.url
            .open(self.pool_size)
            .await
            .with_context(|| format!("cannot open the database at {}", self.display()))
    }

    /// Where it is, without any password.
    pub(crate) fn display(&self) -> String {
        self.url.describe()
    }
}
