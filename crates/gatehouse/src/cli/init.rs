//! `gatehouse init`: writes the built-in catalogue as a commented config file.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, bail};

pub fn run(out: &Path, force: bool) -> anyhow::Result<ExitCode> {
    if out.exists() && !force {
        bail!(
            "{} already exists; pass --force to overwrite it",
            out.display()
        );
    }
    std::fs::write(out, gatehouse_config::CATALOGUE_TOML)
        .with_context(|| format!("cannot write {}", out.display()))?;
    println!(
        "wrote {}: the built-in catalogue with every setting commented. Check it with `gatehouse check --config {}`.",
        out.display(),
        out.display()
    );
    Ok(ExitCode::SUCCESS)
}
