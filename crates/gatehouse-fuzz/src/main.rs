//! `gatehouse-fuzz`: runs the fuzz targets for a number of executions each, prints what ran and
//! what it found, and writes every input that made a target panic to `--out`.
//!
//!   cargo run --release -p gatehouse-fuzz -- [--target NAME] [--execs N] [--seed S] [--out DIR]

use std::io::Write;
use std::process::ExitCode;

use gatehouse_fuzz::{Report, run, targets};

struct Args {
    target: Option<String>,
    execs: u64,
    seed: u64,
    out: std::path::PathBuf,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        target: None,
        execs: 100_000,
        seed: 1,
        out: std::path::PathBuf::from("target/fuzz-findings"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--target" => a.target = Some(value()?),
            "--execs" => a.execs = value()?.parse().map_err(|_| "--execs takes a number")?,
            "--seed" => a.seed = value()?.parse().map_err(|_| "--seed takes a number")?,
            "--out" => a.out = value()?.into(),
            "--list" => {
                for t in targets::ALL {
                    println!("{}", t.name);
                }
                std::process::exit(0);
            }
            other => {
                return Err(format!(
                    "unknown argument `{other}`: use --target NAME, --execs N, --seed S, --out DIR or --list"
                ));
            }
        }
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Panics are findings, reported below; the default hook would print each one.
    std::panic::set_hook(Box::new(|_| {}));
    let chosen: Vec<_> = targets::ALL
        .iter()
        .filter(|t| args.target.as_deref().is_none_or(|n| n == t.name))
        .collect();
    if chosen.is_empty() {
        eprintln!("error: no target named that; --list shows them");
        return ExitCode::FAILURE;
    }
    let mut total = 0u64;
    let mut found = 0usize;
    println!("target,execs,seconds,execs_per_second,findings");
    for t in chosen {
        let r: Report = run(t, args.execs, args.seed, 20);
        total += r.execs;
        found += r.findings.len();
        let secs = r.elapsed.as_secs_f64();
        println!(
            "{},{},{:.1},{:.0},{}",
            r.target,
            r.execs,
            secs,
            r.execs as f64 / secs.max(1e-9),
            r.findings.len()
        );
        for (i, f) in r.findings.iter().enumerate() {
            let _ = std::fs::create_dir_all(&args.out);
            let path = args.out.join(format!("{}-{i}.bin", f.target));
            if let Ok(mut file) = std::fs::File::create(&path) {
                let _ = file.write_all(&f.input);
            }
            eprintln!(
                "  finding in {} at exec {}: {} (input in {})",
                f.target,
                f.exec,
                f.message,
                path.display()
            );
        }
    }
    println!("total,{total},,,{found}");
    if found == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
