//! `gatehouse keys`: virtual keys for `[auth] mode = "keys"`, written to the database. A
//! running gateway reads the change back within `auth.sync_secs`; `/api/keys` does the same
//! through the gateway itself.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gatehouse_core::record::{KeyRecord, KeySpend};
use gatehouse_core::time::{now_ms, rfc3339_ms};
use gatehouse_server::audit::{self, Actor, Change};
use gatehouse_services::keys::{self, KeyChange, LimitChange};
use gatehouse_store::{Store, WriteOp};

#[derive(Args, Debug)]
pub struct KeysArgs {
    /// Config file, to find the database.
    #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand, Debug)]
enum KeysCommand {
    /// Create a key; it is printed once and never again.
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        limits: Limits,
    },
    /// Every key: id, name, the key's first and last characters, limits and spend.
    List,
    /// One key, by id or name.
    Show {
        key: String,
    },
    /// Change a key's settings; what is not given stays.
    Update {
        key: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: Limits,
    },
    /// Refuse the key (401 `key_blocked`) until it is unblocked.
    Block {
        key: String,
    },
    Unblock {
        key: String,
    },
    /// A new key with the same id, limits and spend; the old one works for `--grace`.
    Rotate {
        key: String,
        /// How long the old key keeps working: 60s, 15m, 1h (default: it stops at once).
        #[arg(long)]
        grace: Option<String>,
    },
    /// Delete the key: refused from then on; its rows and spend stay.
    Delete {
        key: String,
    },
}

/// The limits keys and teams share.
#[derive(Args, Debug, Default)]
pub(super) struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute (prompt + max_tokens reserved, settled to what was used).
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_parallel: Option<u64>,
    /// Budget in US dollars.
    #[arg(long)]
    budget: Option<f64>,
    /// How often spend starts again from zero: 30d, 7d, 24h.
    #[arg(long)]
    budget_period: Option<String>,
    /// Spend that raises one `budget_alert` per period.
    #[arg(long)]
    soft_budget: Option<f64>,
}

impl LimitArgs {
    /// The change, with the limits `clear` names removed; what `clear` names beside them is
    /// returned for the caller.
    pub(super) fn change(self, clear: &[String]) -> (LimitChange, Vec<String>) {
        let mut c = LimitChange {
            rpm: self.rpm.map(Some),
            tpm: self.tpm.map(Some),
            max_parallel_requests: self.max_parallel.map(Some),
            max_budget_usd: self.budget.map(Some),
            budget_period: self.budget_period.map(Some),
            soft_budget_usd: self.soft_budget.map(Some),
        };
        let mut rest = Vec::new();
        for field in clear {
            match field.trim() {
                "rpm" => c.rpm = Some(None),
                "tpm" => c.tpm = Some(None),
                "max_parallel" => c.max_parallel_requests = Some(None),
                "budget" => c.max_budget_usd = Some(None),
                "budget_period" => c.budget_period = Some(None),
                "soft_budget" => c.soft_budget_usd = Some(None),
                other => rest.push(other.to_owned()),
            }
        }
        (c, rest)
    }
}

pub(super) fn metadata(m: Option<String>) -> anyhow::Result<Option<serde_json::Value>> {
    m.map(|m| serde_json::from_str(&m).context("--metadata is not JSON"))
        .transpose()
}

#[derive(Args, Debug, Default)]
struct Limits {
    #[arg(long)]
    owner: Option<String>,
    /// The team (id or name) whose limits and budget the key counts against too.
    #[arg(long)]
    team: Option<String>,
    /// Models the key may use, comma-separated model keys or globs (`groq/*`); empty: all.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    #[command(flatten)]
    limits: LimitArgs,
    /// The key stops working after this long: 90d, 12h.
    #[arg(long)]
    expires_in: Option<String>,
    /// Tags and notes, a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Remove limits: any of rpm, tpm, max_parallel, budget, budget_period, soft_budget,
    /// expires, owner, team (comma-separated).
    #[arg(long, value_delimiter = ',')]
    clear: Vec<String>,
}

impl Limits {
    async fn change(self, store: &dyn Store, name: Option<String>) -> anyhow::Result<KeyChange> {
        let (limits, rest) = self.limits.change(&self.clear);
        let team = match self.team {
            Some(t) => Some(Some(super::teams::find(store, &t).await?.0.id)),
            None => None,
        };
        let mut c = KeyChange {
            name,
            owner: self.owner.map(Some),
            team_id: team,
            models: self.models,
            limits,
            expires_at: None,
            expires_in: self.expires_in,
            metadata: metadata(self.metadata)?,
            blocked: None,
            unknown: Default::default(),
        };
        for field in &rest {
            match field.as_str() {
                "expires" => c.expires_at = Some(None),
                "owner" => c.owner = Some(None),
                "team" => c.team_id = Some(None),
                other => bail!(
                    "--clear {other}: not a limit (rpm, tpm, max_parallel, budget, budget_period, soft_budget, expires, owner, team)"
                ),
            }
        }
        Ok(c)
    }
}

pub fn run(args: KeysArgs) -> anyhow::Result<ExitCode> {
    let (_, db) = super::database(args.config.as_deref(), args.data_dir.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        command(&*store, args.command, args.json).await
    })
}

async fn command(store: &dyn Store, cmd: KeysCommand, json: bool) -> anyhow::Result<ExitCode> {
    let now = now_ms();
    match cmd {
        KeysCommand::Create { name, limits } => {
            let (raw, record) = keys::create(limits.change(store, Some(name)).await?, now)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            save(store, "key.create", None, &record).await?;
            shown_once(&record, &raw, json);
        }
        KeysCommand::List => {
            let all: Vec<(KeyRecord, KeySpend)> = live(store).await?;
            if json {
                let v: Vec<_> = all.iter().map(|(k, s)| keys::view(k, s, 0.0, 0)).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if all.is_empty() {
                println!("no keys yet: gatehouse keys create --name NAME");
            } else {
                for (k, s) in &all {
                    println!("{}", line(k, s));
                }
            }
        }
        KeysCommand::Show { key } => {
            let (k, s) = find(store, &key).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&keys::view(&k, &s, 0.0, 0))?
            );
        }
        KeysCommand::Update { key, name, limits } => {
            let (k, s) = find(store, &key).await?;
            let n = keys::update(&k, limits.change(store, name).await?, now)
                .map_err(|e| anyhow::anyhow!("{}", e.message))?;
            save(store, "key.update", Some(&k), &n).await?;
            print_one(&n, &s, json)?;
        }
        KeysCommand::Block { key } => set_blocked(store, &key, true, json, now).await?,
        KeysCommand::Unblock { key } => set_blocked(store, &key, false, json, now).await?,
        KeysCommand::Rotate { key, grace } => {
            let (k, _) = find(store, &key).await?;
            let grace = match grace.as_deref() {
                None | Some("0" | "0s") => 0,
                Some(g) => keys::parse_duration(g).map_err(|m| anyhow::anyhow!("--grace: {m}"))?,
            };
            let (raw, n) =
                keys::rotate(&k, grace, now).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            save(store, "key.rotate", Some(&k), &n).await?;
            shown_once(&n, &raw, json);
            if grace > 0 && !json {
                println!(
                    "the old key keeps working until {}",
                    rfc3339_ms(now + grace as i64 * 1000)
                );
            }
        }
        KeysCommand::Delete { key } => {
            let (k, _) = find(store, &key).await?;
            save(store, "key.delete", Some(&k), &keys::delete(&k, now)).await?;
            println!("deleted {} ({})", k.id, k.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_blocked(
    store: &dyn Store,
    key: &str,
    blocked: bool,
    json: bool,
    now: i64,
) -> anyhow::Result<()> {
    let (k, s) = find(store, key).await?;
    let change = KeyChange {
        blocked: Some(blocked),
        ..KeyChange::default()
    };
    let n = keys::update(&k, change, now).map_err(|e| anyhow::anyhow!("{}", e.message))?;
    let action = if blocked { "key.block" } else { "key.unblock" };
    save(store, action, Some(&k), &n).await?;
    print_one(&n, &s, json)
}

/// Writes `record` with its audit row, in one transaction: the trail holds exactly the
/// changes that were made.
async fn save(
    store: &dyn Store,
    action: &str,
    before: Option<&KeyRecord>,
    record: &KeyRecord,
) -> anyhow::Result<()> {
    let shown = |r: &KeyRecord| serde_json::to_value(r).unwrap_or_default();
    let mut change = Change::new(action, format!("key:{}", record.id)).after(shown(record));
    if let Some(b) = before {
        change = change.before(shown(b));
    }
    let row = audit::entry(&Actor::cli(), change, "ok");
    store
        .apply(&[
            WriteOp::UpsertKey(Box::new(record.clone())),
            WriteOp::AppendAudit(Box::new(row)),
        ])
        .await
        .context("cannot write the key to the database")?;
    Ok(())
}

async fn live(store: &dyn Store) -> anyhow::Result<Vec<(KeyRecord, KeySpend)>> {
    Ok(store
        .load_keys(0)
        .await?
        .into_iter()
        .filter(|(k, _)| k.deleted_at.is_none())
        .collect())
}

/// A key by id, or by name when exactly one key has it.
async fn find(store: &dyn Store, key: &str) -> anyhow::Result<(KeyRecord, KeySpend)> {
    let all = live(store).await?;
    if let Some(k) = all.iter().find(|(k, _)| k.id == key) {
        return Ok(k.clone());
    }
    let named: Vec<_> = all.iter().filter(|(k, _)| k.name == key).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no key with id or name `{key}` (gatehouse keys list shows them)"),
        _ => bail!("{} keys are named `{key}`: give its id", named.len()),
    }
}

fn shown_once(k: &KeyRecord, raw: &str, json: bool) {
    if json {
        let mut v = keys::view(
            k,
            &KeySpend {
                spend_usd: 0.0,
                budget_reset_at: None,
            },
            0.0,
            0,
        );
        if let Some(o) = v.as_object_mut() {
            o.insert("key".into(), raw.into());
        }
        println!("{v}");
    } else {
        println!("{}  {}", k.id, k.name);
        println!("{raw}");
        println!("This is the only time the key is shown: store it now.");
    }
}

fn print_one(k: &KeyRecord, s: &KeySpend, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&keys::view(k, s, 0.0, 0))?);
    } else {
        println!("{}", line(k, s));
    }
    Ok(())
}

fn line(k: &KeyRecord, s: &KeySpend) -> String {
    let mut parts = vec![
        k.id.clone(),
        k.name.clone(),
        format!("{}…{}", k.prefix, k.last4),
    ];
    if k.blocked {
        parts.push("BLOCKED".into());
    }
    if !k.models.is_empty() {
        parts.push(format!("models={}", k.models.join(",")));
    }
    for (name, v) in [
        ("rpm", k.rpm),
        ("tpm", k.tpm),
        ("parallel", k.max_parallel_requests),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    match k.max_budget_usd {
        Some(b) => parts.push(format!("spend=${:.4}/${b:.2}", s.spend_usd)),
        None => parts.push(format!("spend=${:.4}", s.spend_usd)),
    }
    if let Some(at) = k.expires_at {
        parts.push(format!("expires={}", rfc3339_ms(at)));
    }
    parts.join("  ")
}
