//! Token-counting throughput on a corpus: cold counts per encoding, and the incremental case
//! (turn 200 of a growing conversation, earlier turns cached).

use std::time::Instant;

use gatehouse_core::{ChatRequestView, Encoding, TokenCounter};
use serde_json::json;

use crate::flag;

pub fn main(args: &[String]) -> Result<(), String> {
    let dir = flag(args, "--corpus").ok_or("--corpus is required")?;
    let rounds: u32 = flag(args, "--rounds")
        .unwrap_or("20")
        .parse()
        .map_err(|_| "bad --rounds")?;
    let mut texts = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| format!("cannot read {dir}: {e}"))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    for p in entries {
        texts.push(std::fs::read_to_string(&p).map_err(|e| format!("{}: {e}", p.display()))?);
    }
    let bytes: usize = texts.iter().map(String::len).sum();
    TokenCounter::warm(&[Encoding::Cl100k, Encoding::O200k]);
    let mut out = serde_json::Map::new();
    for enc in [Encoding::Cl100k, Encoding::O200k] {
        let mut tokens = 0;
        let t = Instant::now();
        for _ in 0..rounds {
            tokens = texts.iter().map(|s| enc.count(s)).sum::<u64>();
        }
        let secs = t.elapsed().as_secs_f64();
        out.insert(
            enc.name().to_owned(),
            json!({
                "bytes": bytes,
                "tokens": tokens,
                "mb_per_s": bytes as f64 * f64::from(rounds) / secs / 1e6,
                "us_per_pass": secs * 1e6 / f64::from(rounds),
            }),
        );
    }

    // A 200-turn coding conversation built from the corpus, counted turn by turn.
    let mut messages = Vec::new();
    for i in 0..200 {
        let text = &texts[i % texts.len()];
        let role = if i % 2 == 0 { "user" } else { "assistant" };
        messages.push(json!({"role": role, "content": format!("turn {i}: {}", &text[..text.len().min(2000)])}));
    }
    let body = serde_json::to_vec(&json!({"model": "m", "messages": messages}))
        .map_err(|e| e.to_string())?;
    let prefix = serde_json::to_vec(&json!({"model": "m", "messages": &messages[..199]}))
        .map_err(|e| e.to_string())?;
    let view = ChatRequestView::parse(&body).map_err(|e| format!("{e:?}"))?;
    let prefix_view = ChatRequestView::parse(&prefix).map_err(|e| format!("{e:?}"))?;
    let cold = {
        let t = Instant::now();
        for _ in 0..rounds {
            let _ = TokenCounter::new(1024).count_prompt(Encoding::Cl100k, &view);
        }
        t.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
    };
    let counter = TokenCounter::new(4096);
    let _ = counter.count_prompt(Encoding::Cl100k, &prefix_view);
    let t = Instant::now();
    let incremental = counter.count_prompt(Encoding::Cl100k, &view);
    let first_turn200 = t.elapsed().as_secs_f64() * 1e6;
    out.insert(
        "turn_200".into(),
        json!({
            "body_bytes": body.len(),
            "tokens": incremental.tokens,
            "cold_us": cold,
            "incremental_us": first_turn200,
            "messages_from_cache": incremental.cached_messages,
        }),
    );
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}
