//! `gatehouse-bench`: the load driver behind `bench/run.sh`.
//!
//! `load` runs a closed loop: N connections (one per worker, HTTP/1.1 keep-alive, TCP_NODELAY),
//! each sending the same body back to back until the duration is over, and prints one JSON line:
//! requests, errors, RPS, latency percentiles, and for streams the time to first byte and the
//! gaps between chunks. The driver runs on one thread, so it never takes more than one core
//! from the process under test.
//!
//! `tokens` times Gatehouse's token counter on a corpus, cold and incremental.
//!
//! `writer` times the accounting writer: request rows through the queue into SQLite.
//!
//! `watch` listens on `/ws` like an open dashboard.

mod load;
mod tokens;
mod watch;
mod writer;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("load") => load::main(&args[1..]),
        Some("tokens") => tokens::main(&args[1..]),
        Some("writer") => writer::main(&args[1..]),
        Some("watch") => watch::main(&args[1..]),
        _ => Err(
            "usage: gatehouse-bench load --url URL --body FILE [--concurrency N] [--duration S] \
             [--stream] [--requests-per-conn K] [--stall-ms MS] [--auth TOKEN] [--label L]\n       \
             gatehouse-bench tokens --corpus DIR [--rounds N]\n       \
             gatehouse-bench writer [--rows N] [--keep DIR] [--url postgres://…]\n       \
             gatehouse-bench watch --url ws://HOST:PORT/ws [--duration S]"
                .to_owned(),
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gatehouse-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--name value` lookup over raw arguments.
pub(crate) fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

pub(crate) fn has(args: &[String], name: &str) -> bool {
    args.iter().any(|a| a == name)
}

/// Percentiles of a sample, in the sample's unit.
pub(crate) fn percentiles(samples: &mut [u64]) -> serde_json::Value {
    if samples.is_empty() {
        return serde_json::Value::Null;
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 - 1.0) * q).round() as usize;
        samples[i.min(samples.len() - 1)]
    };
    serde_json::json!({
        "p50": at(0.50),
        "p90": at(0.90),
        "p99": at(0.99),
        "p999": at(0.999),
        "max": samples[samples.len() - 1],
        "mean": samples.iter().sum::<u64>() / samples.len() as u64,
    })
}
