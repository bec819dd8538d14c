//! The seed project's own configuration file (Kimi Proxy's `config.toml`, copied unchanged into
//! `tests/fixtures`) loads: each of its settings lands on Gatehouse's equivalent, and the
//! built-in catalogue survives beside it.

use gatehouse_config::{Env, load_text};

const SEED: &str = include_str!("fixtures/kimi_proxy_config.toml");

#[test]
fn the_kimi_proxy_file_loads_with_its_settings_mapped() {
    let c = load_text(SEED, &Env::from_pairs(Vec::<(String, String)>::new())).unwrap();
    assert_eq!(
        c.proxy.default_model.as_deref(),
        Some("kimi-code/kimi-for-coding")
    );
    assert_eq!(c.proxy.retries, 2);
    assert_eq!(c.proxy.retry_backoff.as_millis(), 1000);
    assert!(c.proxy.heavy_duty.enabled);
    assert!((c.proxy.heavy_duty.threshold_pct - 90.0).abs() < 1e-9);
    let kimi = &c.providers["managed:kimi-code"].timeouts;
    assert_eq!(kimi.connect.as_secs(), 10);
    assert_eq!(kimi.idle.as_secs(), 120);
    assert_eq!(c.providers["gemini"].timeouts.first_byte.as_secs(), 180);
    assert_eq!(c.providers["groq"].timeouts.idle.as_secs(), 60);
    assert_eq!(c.providers["nvidia"].timeouts.idle.as_secs(), 150);
    assert_eq!(c.compaction.keep_exchanges, 2);
    assert_eq!(c.compaction.min_tokens, 500);
    assert_eq!(c.compaction.reserved_tokens, 5000);
    assert!(c.compaction.auto.enabled);
    assert!((c.compaction.auto.threshold_pct - 85.0).abs() < 1e-9);
    assert_eq!(c.compaction.auto.cooldown_secs, 300);
    assert_eq!(c.compaction.auto.max_consecutive, 3);
    assert!(c.sanitizer.enabled);
    assert_eq!(c.sanitizer.threshold_tokens, 1000);
    // The seed's models and the built-in catalogue's, side by side.
    for m in [
        "kimi-code/kimi-for-coding",
        "nvidia/kimi-k2.5",
        "gemini/gemini-2.5-pro",
        "openai/gpt-4o",
        "ollama/llama3.1",
    ] {
        assert!(c.models.contains_key(m), "{m} is missing");
    }
    let accepted: Vec<&str> = c
        .seed_keys
        .iter()
        .filter(|k| !k.mapped)
        .map(|k| k.seed.as_str())
        .collect();
    for k in [
        "default_thinking",
        "loop_control",
        "services",
        "mcp",
        "compaction.ui",
        "providers.\"managed:kimi-code\".oauth",
    ] {
        assert!(
            accepted.contains(&k),
            "{k} not accepted with a note: {accepted:?}"
        );
    }
    assert!(c.seed_keys.iter().all(|k| !k.gatehouse.is_empty()));
}

#[test]
fn one_bad_section_leaves_the_catalogue_standing() {
    // A mistake in `[proxy]` is reported once; the built-in providers are not reported missing.
    let e = load_text(
        "[proxy]\nretries = \"many\"\n",
        &Env::from_pairs(Vec::<(String, String)>::new()),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("proxy.retries"), "{e}");
    assert!(!e.contains("is not configured"), "{e}");
}
