//! `gatehouse teams`: limits and budgets shared by several keys (`gatehouse keys create
//! --team`), written to the database; a running gateway reads them back within
//! `auth.sync_secs`, as it does keys.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gatehouse_core::record::{KeySpend, TeamRecord};
use gatehouse_core::time::now_ms;
use gatehouse_server::audit::{self, Actor, Change};
use gatehouse_services::keys::{self, TeamChange};
use gatehouse_store::{Store, WriteOp};

use super::keys::{LimitArgs, metadata};

#[derive(Args, Debug)]
pub struct TeamsArgs {
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
    command: TeamsCommand,
}

#[derive(Subcommand, Debug)]
enum TeamsCommand {
    Create {
        #[arg(long)]
        name: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Every team: id, name, limits, spend and number of keys.
    List,
    /// One team, by id or name.
    Show {
        team: String,
    },
    /// Change a team's settings; what is not given stays.
    Update {
        team: String,
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        settings: Settings,
    },
    /// Refuse every key of the team (401 `key_blocked`) until it is unblocked.
    Block {
        team: String,
    },
    Unblock {
        team: String,
    },
    /// Delete a team that has no keys left.
    Delete {
        team: String,
    },
}

#[derive(Args, Debug, Default)]
struct Settings {
    /// Models the team's keys may use, comma-separated model keys or globs; empty: all.
    #[arg(long, value_delimiter = ',')]
    models: Option<Vec<String>>,
    #[command(flatten)]
    limits: LimitArgs,
    /// Tags and notes, a JSON object.
    #[arg(long)]
    metadata: Option<String>,
    /// Remove limits: any of rpm, tpm, max_parallel, budget, budget_period, soft_budget.
    #[arg(long, value_delimiter = ',')]
    clear: Vec<String>,
}

impl Settings {
    fn change(self, name: Option<String>) -> anyhow::Result<TeamChange> {
        let (limits, rest) = self.limits.change(&self.clear);
        if let Some(other) = rest.first() {
            bail!(
                "--clear {other}: not a limit (rpm, tpm, max_parallel, budget, budget_period, soft_budget)"
            );
        }
        Ok(TeamChange {
            name,
            models: self.models,
            limits,
            metadata: metadata(self.metadata)?,
            blocked: None,
            unknown: Default::default(),
        })
    }
}

pub fn run(args: TeamsArgs) -> anyhow::Result<ExitCode> {
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

fn person(e: gatehouse_core::ApiError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

async fn command(store: &dyn Store, cmd: TeamsCommand, json: bool) -> anyhow::Result<ExitCode> {
    let now = now_ms();
    match cmd {
        TeamsCommand::Create { name, settings } => {
            let t = keys::create_team(settings.change(Some(name))?, now).map_err(person)?;
            save(store, "team.create", None, &t).await?;
            print_one(store, &t, &zero(), json).await?;
        }
        TeamsCommand::List => {
            let all = live(store).await?;
            if all.is_empty() && !json {
                println!("no teams yet: gatehouse teams create --name NAME");
            }
            let mut shown = Vec::new();
            for (t, s) in &all {
                if json {
                    shown.push(view(store, t, s).await?);
                } else {
                    println!("{}", line(store, t, s).await?);
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&shown)?);
            }
        }
        TeamsCommand::Show { team } => {
            let (t, s) = find(store, &team).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&view(store, &t, &s).await?)?
            );
        }
        TeamsCommand::Update {
            team,
            name,
            settings,
        } => {
            let (t, s) = find(store, &team).await?;
            let n = keys::update_team(&t, settings.change(name)?, now).map_err(person)?;
            save(store, "team.update", Some(&t), &n).await?;
            print_one(store, &n, &s, json).await?;
        }
        TeamsCommand::Block { team } => set_blocked(store, &team, true, json, now).await?,
        TeamsCommand::Unblock { team } => set_blocked(store, &team, false, json, now).await?,
        TeamsCommand::Delete { team } => {
            let (t, _) = find(store, &team).await?;
            let members = members(store, &t.id).await?;
            if members > 0 {
                bail!(
                    "team `{}` still has {members} key(s): move them (gatehouse keys update KEY --team OTHER or --clear team) or delete them first",
                    t.name
                );
            }
            save(store, "team.delete", Some(&t), &keys::delete_team(&t, now)).await?;
            println!("deleted {} ({})", t.id, t.name);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn zero() -> KeySpend {
    KeySpend {
        spend_usd: 0.0,
        budget_reset_at: None,
    }
}

async fn set_blocked(
    store: &dyn Store,
    team: &str,
    blocked: bool,
    json: bool,
    now: i64,
) -> anyhow::Result<()> {
    let (t, s) = find(store, team).await?;
    let change = TeamChange {
        blocked: Some(blocked),
        ..TeamChange::default()
    };
    let n = keys::update_team(&t, change, now).map_err(person)?;
    let action = if blocked {
        "team.block"
    } else {
        "team.unblock"
    };
    save(store, action, Some(&t), &n).await?;
    print_one(store, &n, &s, json).await
}

/// Writes `record` with its audit row, in one transaction.
async fn save(
    store: &dyn Store,
    action: &str,
    before: Option<&TeamRecord>,
    record: &TeamRecord,
) -> anyhow::Result<()> {
    let shown = |r: &TeamRecord| serde_json::to_value(r).unwrap_or_default();
    let mut change = Change::new(action, format!("team:{}", record.id)).after(shown(record));
    if let Some(b) = before {
        change = change.before(shown(b));
    }
    let row = audit::entry(&Actor::cli(), change, "ok");
    store
        .apply(&[
            WriteOp::UpsertTeam(Box::new(record.clone())),
            WriteOp::AppendAudit(Box::new(row)),
        ])
        .await
        .context("cannot write the team to the database")?;
    Ok(())
}

async fn live(store: &dyn Store) -> anyhow::Result<Vec<(TeamRecord, KeySpend)>> {
    Ok(store
        .load_teams(0)
        .await?
        .into_iter()
        .filter(|(t, _)| t.deleted_at.is_none())
        .collect())
}

async fn members(store: &dyn Store, team_id: &str) -> anyhow::Result<usize> {
    Ok(store
        .load_keys(0)
        .await?
        .iter()
        .filter(|(k, _)| k.deleted_at.is_none() && k.team_id.as_deref() == Some(team_id))
        .count())
}

/// A team by id, or by name when exactly one team has it.
pub(super) async fn find(store: &dyn Store, team: &str) -> anyhow::Result<(TeamRecord, KeySpend)> {
    let all = live(store).await?;
    if let Some(t) = all.iter().find(|(t, _)| t.id == team) {
        return Ok(t.clone());
    }
    let named: Vec<_> = all.iter().filter(|(t, _)| t.name == team).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => bail!("no team with id or name `{team}` (gatehouse teams list shows them)"),
        _ => bail!("{} teams are named `{team}`: give its id", named.len()),
    }
}

async fn view(
    store: &dyn Store,
    t: &TeamRecord,
    s: &KeySpend,
) -> anyhow::Result<serde_json::Value> {
    let mut v = serde_json::to_value(t)?;
    if let Some(o) = v.as_object_mut() {
        o.insert("spend_usd".into(), s.spend_usd.into());
        o.insert("budget_reset_at".into(), s.budget_reset_at.into());
        o.insert("key_count".into(), members(store, &t.id).await?.into());
    }
    Ok(v)
}

async fn print_one(
    store: &dyn Store,
    t: &TeamRecord,
    s: &KeySpend,
    json: bool,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(&view(store, t, s).await?)?);
    } else {
        println!("{}", line(store, t, s).await?);
    }
    Ok(())
}

async fn line(store: &dyn Store, t: &TeamRecord, s: &KeySpend) -> anyhow::Result<String> {
    let mut parts = vec![t.id.clone(), t.name.clone()];
    if t.blocked {
        parts.push("BLOCKED".into());
    }
    if !t.models.is_empty() {
        parts.push(format!("models={}", t.models.join(",")));
    }
    for (name, v) in [
        ("rpm", t.rpm),
        ("tpm", t.tpm),
        ("parallel", t.max_parallel_requests),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    match t.max_budget_usd {
        Some(b) => parts.push(format!("spend=${:.4}/${b:.2}", s.spend_usd)),
        None => parts.push(format!("spend=${:.4}", s.spend_usd)),
    }
    parts.push(format!("keys={}", members(store, &t.id).await?));
    Ok(parts.join("  "))
}
