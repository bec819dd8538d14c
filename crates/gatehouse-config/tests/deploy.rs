//! `deploy/gatehouse.toml`, the several-instances example the README points to, loads as
//! written: PostgreSQL, Redis, keys mode beyond loopback.

use gatehouse_config::{AuthMode, Env, OnError, load_text};

const DEPLOY: &str = include_str!("../../../deploy/gatehouse.toml");

#[test]
fn the_deploy_example_loads() {
    let env = Env::from_pairs([
        (
            "DATABASE_URL",
            "postgres://gatehouse:pw@db.internal:5432/gatehouse",
        ),
        ("REDIS_URL", "redis://redis.internal:6379"),
        ("METRICS_TOKEN", "a-scraper-token"),
    ]);
    let c = match load_text(DEPLOY, &env) {
        Ok(c) => c,
        Err(e) => panic!("deploy/gatehouse.toml does not load: {e}"),
    };
    assert_eq!(c.auth.mode, AuthMode::Keys);
    assert_eq!(c.server.host, "0.0.0.0");
    assert!(c.storage.url.starts_with("postgres://"));
    assert_eq!(c.redis.url, "redis://redis.internal:6379");
    assert_eq!(c.redis.on_error, OnError::Open);
    assert!(c.providers.contains_key("openai") && c.providers.contains_key("anthropic"));
}
