//! Every fuzz target, a thousand executions each: what CI runs. The long campaign is
//! `cargo run --release -p gatehouse-fuzz -- --execs N` (bench/RESULTS.md has its figures).

use gatehouse_fuzz::{run, targets};

#[test]
fn every_target_runs_without_a_finding() {
    for t in targets::ALL {
        let r = run(t, 1_000, 7, 5);
        assert!(
            r.findings.is_empty(),
            "{}: {} findings, first: {:?}",
            t.name,
            r.findings.len(),
            r.findings
                .first()
                .map(|f| (&f.message, String::from_utf8_lossy(&f.input)))
        );
    }
}

#[test]
fn generated_inputs_reach_past_the_parsers() {
    // Structured mutation keeps most inputs parseable JSON, so decoders see wrong types per
    // field rather than a syntax error at the first byte.
    let t = targets::ALL
        .iter()
        .find(|t| t.name == "openai_response")
        .unwrap();
    let mut rng = gatehouse_fuzz::Rng::new(3);
    let parseable = (0..1000)
        .filter(|_| serde_json::from_slice::<serde_json::Value>(&(t.generate)(&mut rng)).is_ok())
        .count();
    assert!(parseable > 600, "{parseable} of 1000");
}
