//! Times the redaction scan: `cargo run --release -p gatehouse-context --example scan_speed [FILE] [--show]`
//! (`--show` prints the first findings with their surroundings instead).
//! Without FILE, the 1 KB chat body of the benchmarks. Prints microseconds per scan and MB/s.
fn main() {
    let text = match std::env::args().nth(1) {
        Some(f) => std::fs::read(f).unwrap_or_default(),
        None => {
            let prompt = "Please review this function and suggest improvements. ".repeat(20);
            format!(
                r#"{{"model":"mock/bench","stream":false,"messages":[{{"role":"system","content":"You are a helpful coding assistant."}},{{"role":"user","content":"{}"}}]}}"#,
                &prompt[..1000]
            )
            .into_bytes()
        }
    };
    let Some(r) = gatehouse_context::Redactor::shared() else {
        return;
    };
    if std::env::args().any(|a| a == "--show") {
        for f in r.scan(&text).iter().take(20) {
            let lo = f.range.start.saturating_sub(30);
            let hi = (f.range.end + 10).min(text.len());
            println!("{:?}: {}", f.kind, String::from_utf8_lossy(&text[lo..hi]));
        }
        return;
    }
    let rounds = (20_000_000 / text.len().max(1)).clamp(3, 20_000) as u32;
    let t = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..rounds {
        n += r.scan(std::hint::black_box(&text)).len();
    }
    let per = t.elapsed().as_secs_f64() / f64::from(rounds);
    println!(
        "{} bytes: {:.2} us per scan, {:.0} MB/s, {} findings",
        text.len(),
        per * 1e6,
        text.len() as f64 / per / 1e6,
        n / rounds as usize
    );
}
