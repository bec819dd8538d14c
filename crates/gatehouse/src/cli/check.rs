//! `gatehouse check`: reports every mistake of a config file with its key path, line and hint.

use std::path::Path;
use std::process::ExitCode;

use gatehouse_config::{Env, Overrides, check_file, load};

pub fn run(path: &Path) -> anyhow::Result<ExitCode> {
    let env = Env::from_pairs(std::env::vars());
    let issues = check_file(path, &env)?;
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
