//! `gatehouse users`: the admin users who log in to the management API and the dashboard with
//! `[auth] mode = "keys"`. There is no default user or password: `users create --role admin`
//! makes the first one. Written to the database directly, with an audit row each; a running
//! gateway sees the change on the next login or request.

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use gatehouse_core::record::{Role, UserRecord};
use gatehouse_core::time::{now_ms, rfc3339_ms};
use gatehouse_server::audit::Actor;
use gatehouse_services::users;
use gatehouse_store::{Store, WriteOp};

#[derive(Args, Debug)]
pub struct UsersArgs {
    /// Config file, to find the database.
    #[arg(long, short, env = "GATEHOUSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Directory of the SQLite database, overriding the config.
    #[arg(long, env = "GATEHOUSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: UsersCommand,
}

#[derive(Subcommand, Debug)]
enum UsersCommand {
    /// Create a user. The password is read from stdin with --password-stdin; otherwise a
    /// random one is made and printed once.
    Create {
        username: String,
        /// admin (everything), viewer (read only) or member (own keys and spend).
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Every user: id, name, role, whether blocked.
    List,
    /// Set a new password (from stdin with --password-stdin, else a random one, printed once);
    /// the user's refresh tokens end.
    Passwd {
        username: String,
        #[arg(long)]
        password_stdin: bool,
    },
    /// Change a user's role.
    /// Put the user in a team (id or name): the keys they own move to it, and a member's new
    /// keys join it. Without TEAM: out of their team.
    Team {
        username: String,
        team: Option<String>,
    },
    Role {
        username: String,
        role: String,
    },
    /// Refuse the user's logins and tokens until unblocked.
    Block {
        username: String,
    },
    Unblock {
        username: String,
    },
    /// Delete a user (the row stays for the audit trail).
    Delete {
        username: String,
    },
}

pub fn run(args: UsersArgs) -> anyhow::Result<ExitCode> {
    let (_, db) = super::database(args.config.as_deref(), args.data_dir.clone())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let store = db.open().await?;
        command(&*store, args.command).await
    })
}

fn role(s: &str) -> anyhow::Result<Role> {
    Role::parse(s).with_context(|| format!("unknown role `{s}`: use admin, viewer or member"))
}

/// The password from stdin's first line, or a new random one (and whether it was made here).
fn password(from_stdin: bool) -> anyhow::Result<(String, bool)> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("cannot read the password from stdin")?;
        let p = line.trim_end_matches(['\r', '\n']).to_owned();
        users::check_password(&p).map_err(|e| anyhow::anyhow!(e.message))?;
        Ok((p, false))
    } else {
        Ok((
            users::random_token().map_err(|e| anyhow::anyhow!(e.message))?,
            true,
        ))
    }
}

async fn find(store: &dyn Store, username: &str) -> anyhow::Result<UserRecord> {
    store
        .user_by_name(username)
        .await?
        .with_context(|| format!("no user named `{username}`"))
}

async fn save(
    store: &dyn Store,
    action: &str,
    before: Option<&UserRecord>,
    user: &UserRecord,
    revoke: bool,
) -> anyhow::Result<()> {
    let ops =
        gatehouse_server::routes::users::change_ops(&Actor::cli(), action, before, user, revoke);
    store.apply(&ops).await?;
    Ok(())
}

/// Refuses a change that leaves no admin able to log in.
async fn keep_an_admin(store: &dyn Store, changed: &UserRecord) -> anyhow::Result<()> {
    if !users::keeps_an_admin(&store.list_users().await?, changed) {
        bail!(
            "`{}` is the last admin who can log in: make another admin first",
            changed.username
        );
    }
    Ok(())
}

async fn command(store: &dyn Store, cmd: UsersCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        UsersCommand::Create {
            username,
            role: r,
            password_stdin,
        } => {
            let role = role(&r)?;
            if store.user_by_name(&username).await?.is_some() {
                bail!("a user named `{username}` exists already");
            }
            let (pw, made) = password(password_stdin)?;
            let user = users::new_user(&username, &pw, role, now_ms())
                .map_err(|e| anyhow::anyhow!(e.message))?;
            save(store, "user.create", None, &user, false).await?;
            println!(
                "created {} `{}` ({})",
                role.as_str(),
                user.username,
                user.id
            );
            if made {
                println!("password (shown once): {pw}");
            }
        }
        UsersCommand::List => {
            for u in store.list_users().await? {
                println!(
                    "{}  {:<24} {:<7} {}created {}",
                    u.id,
                    u.username,
                    u.role.as_str(),
                    if u.blocked { "BLOCKED  " } else { "" },
                    rfc3339_ms(u.created_at)
                );
            }
        }
        UsersCommand::Passwd {
            username,
            password_stdin,
        } => {
            let before = find(store, &username).await?;
            let (pw, made) = password(password_stdin)?;
            let mut user = before.clone();
            user.password_hash =
                users::hash_password(&pw).map_err(|e| anyhow::anyhow!(e.message))?;
            user.updated_at = now_ms();
            save(store, "user.password", Some(&before), &user, true).await?;
            println!("new password set for `{username}`");
            if made {
                println!("password (shown once): {pw}");
            }
        }
        UsersCommand::Role { username, role: r } => {
            let before = find(store, &username).await?;
            let mut user = before.clone();
            user.role = role(&r)?;
            user.updated_at = now_ms();
            keep_an_admin(store, &user).await?;
            save(store, "user.update", Some(&before), &user, false).await?;
            println!("`{username}` is now {}", user.role.as_str());
        }
        UsersCommand::Team { username, team } => {
            let before = find(store, &username).await?;
            let mut user = before.clone();
            user.team_id = match &team {
                Some(t) => Some(super::teams::find(store, t).await?.0.id),
                None => None,
            };
            let now = now_ms();
            user.updated_at = now;
            save(store, "user.update", Some(&before), &user, false).await?;
            let mut ops = Vec::new();
            for (k, _) in store.load_keys(0).await? {
                if k.owner.as_deref() == Some(username.as_str())
                    && k.deleted_at.is_none()
                    && k.team_id != user.team_id
                {
                    let change = gatehouse_services::keys::KeyChange {
                        team_id: Some(user.team_id.clone()),
                        ..Default::default()
                    };
                    let updated = gatehouse_services::keys::update(&k, change, now)
                        .map_err(|e| anyhow::anyhow!(e.message))?;
                    let row = gatehouse_server::audit::entry(
                        &gatehouse_server::audit::Actor::cli(),
                        gatehouse_server::audit::Change::new("key.update", Some(format!("key:{}", k.id)))
                            .before(serde_json::json!({"team_id": k.team_id}))
                            .after(serde_json::json!({"team_id": updated.team_id, "why": "its owner's team changed"})),
                        "ok",
                    );
                    ops.push(WriteOp::UpsertKey(Box::new(updated)));
                    ops.push(WriteOp::AppendAudit(Box::new(row)));
                }
            }
            let moved = ops.len() / 2;
            if !ops.is_empty() {
                store.apply(&ops).await?;
            }
            match team {
                Some(t) => println!("`{username}` is in team `{t}`; {moved} key(s) moved"),
                None => println!("`{username}` is in no team; {moved} key(s) moved"),
            }
        }
        UsersCommand::Block { username } => set_blocked(store, &username, true).await?,
        UsersCommand::Unblock { username } => set_blocked(store, &username, false).await?,
        UsersCommand::Delete { username } => {
            let before = find(store, &username).await?;
            let mut user = before.clone();
            let now = now_ms();
            user.deleted_at = Some(now);
            user.updated_at = now;
            keep_an_admin(store, &user).await?;
            user.username = format!("{}#deleted-{now}", before.username);
            save(store, "user.delete", Some(&before), &user, true).await?;
            // Keys are owned by name: a new user of the same name must not inherit these, and
            // an erasure later still finds them.
            let mut ops = Vec::new();
            for (k, _) in store.load_keys(0).await? {
                if k.owner.as_deref() == Some(username.as_str()) {
                    let change = gatehouse_services::keys::KeyChange {
                        owner: Some(Some(format!("deleted:{}", before.id))),
                        ..Default::default()
                    };
                    let updated = gatehouse_services::keys::update(&k, change, now)
                        .map_err(|e| anyhow::anyhow!(e.message))?;
                    ops.push(WriteOp::UpsertKey(Box::new(updated)));
                }
            }
            if !ops.is_empty() {
                store.apply(&ops).await?;
            }
            println!("deleted `{username}`");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn set_blocked(store: &dyn Store, username: &str, blocked: bool) -> anyhow::Result<()> {
    let before = find(store, username).await?;
    let mut user = before.clone();
    user.blocked = blocked;
    user.updated_at = now_ms();
    keep_an_admin(store, &user).await?;
    let action = if blocked {
        "user.block"
    } else {
        "user.unblock"
    };
    save(store, action, Some(&before), &user, blocked).await?;
    println!(
        "`{username}` {}",
        if blocked { "blocked" } else { "unblocked" }
    );
    Ok(())
}
