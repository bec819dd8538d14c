//! `gatehouse check`: reports every mistake of a config file with its key path, line and hint.

use std::path::Path;
use std::process::ExitCode;

use gatehouse_config::{Env, Overrides, SeedKey, check_file, load, seed_keys_of};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let env = Env::from_pairs(std::env::vars());
    let issues = check_file(path, &env)?;
    if let Ok(text) = std::fs::read_to_string(path) {
        print_seed_keys(&seed_keys_of(&text));
    }
    if !issues.is_empty() {
        eprintln!("{}: {} problem(s)", path.display(), issues.len());
        for i in &issues {
            eprintln!("  {}:{i}", path.display());
        }
        return Ok(ExitCode::FAILURE);
    }
    let config = load(Some(path), &env, &Overrides::default())?;
    let with_key = config
        .providers
        .values()
        .filter(|p| !p.key_missing())
        .count();
    println!(
        "{} is valid: {} providers ({} ready to use), {} models, listening on {}:{}",
        path.display(),
        config.providers.len(),
        with_key,
        config.models.len(),
        config.server.host,
        config.server.port
    );
    for (key, p) in config.providers.iter().filter(|(_, p)| p.key_missing()) {
        if let Some(var) = &p.api_key_env {
            println!("  note: provider `{key}` has no key yet: set {var} to use it");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The Kimi Proxy keys of the file, as a table: what each became in Gatehouse.
fn print_seed_keys(keys: &[SeedKey]) {
    if keys.is_empty() {
        return;
    }
    let width = keys.iter().map(|k| k.seed.len()).max().unwrap_or(0);
    let mapped = keys.iter().filter(|k| k.mapped).count();
    println!(
        "Kimi Proxy settings: {mapped} mapped to Gatehouse's, {} accepted without effect",
        keys.len() - mapped
    );
    println!("  {:<width$}  {:<8}  Gatehouse", "seed key", "");
    for k in keys {
        let what = if k.mapped { "mapped" } else { "accepted" };
        println!("  {:<width$}  {what:<8}  {}", k.seed, k.gatehouse);
    }
}
