//! `GET /metrics`: counters move by exactly what was sent, histograms count every row, labels
//! never carry what a client wrote, and the endpoint is closed like the management API
//! (the admin login under `mode = "keys"`, or the scraper's token).

use serde_json::Value;

use crate::keys::{chat_key, create, keys_mode};
use crate::support::{Options, TestApp, rows, session_of, streaming, user};

async fn scrape(app: &TestApp, client: &reqwest::Client) -> String {
    let r = client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    r.text().await.unwrap()
}

/// The value of the one sample named exactly `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test]
async fn counters_move_by_exactly_what_was_sent() {
    let app = TestApp::spawn().await;
    let before = scrape(&app, &app.http).await;
    assert_eq!(
        sample(
            &before,
            r#"gatehouse_requests_total{model="mock/echo",provider="mock",status_class="2xx"}"#
        ),
        None
    );
    let mut session = String::new();
    for i in 0..3 {
        let r = app
            .chat(user("mock/echo", &format!("hello number {i}")))
            .await;
        assert_eq!(r.status(), 200);
        session = session_of(&r);
    }
    let r = app.chat(streaming("mock/echo", "a streamed one")).await;
    assert_eq!(r.status(), 200);
    let _ = r.text().await.unwrap();
    // A model nobody configured: a row, counted as unrouted, its name never a label.
    let r = app.chat(user("made-up/model-name-xyz", "hi")).await;
    assert_eq!(r.status(), 404);

    // The stream's row is written when its last byte is read; wait for every row.
    let mut rs = Vec::new();
    for _ in 0..100 {
        rs = rows(&app, &session).await;
        if rs.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let ok: Vec<&Value> = rs
        .iter()
        .filter(|r| r["model_key"] == "mock/echo")
        .collect();
    assert_eq!(ok.len(), 4, "{rs:?}");
    let text = scrape(&app, &app.http).await;
    let l = r#"model="mock/echo",provider="mock""#;
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_requests_total{{{l},status_class=\"2xx\"}}")
        ),
        Some(4.0),
        "{text}"
    );
    let sum = |field: &str| {
        ok.iter()
            .map(|r| r[field].as_u64().unwrap_or(0))
            .sum::<u64>() as f64
    };
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_tokens_total{{{l},type=\"prompt\"}}")
        ),
        Some(sum("prompt_tokens"))
    );
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_tokens_total{{{l},type=\"completion\"}}")
        ),
        Some(sum("completion_tokens"))
    );
    let cost: f64 = ok.iter().map(|r| r["cost_usd"].as_f64().unwrap()).sum();
    let counted = sample(&text, &format!("gatehouse_cost_usd_total{{{l}}}")).unwrap();
    assert!((counted - cost).abs() < 1e-9, "{counted} against {cost}");
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_request_duration_seconds_count{{{l}}}")
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_request_duration_seconds_bucket{{{l},le=\"+Inf\"}}")
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            &format!("gatehouse_time_to_first_byte_seconds_count{{{l}}}")
        ),
        Some(4.0)
    );
    assert!(sample(&text, "gatehouse_overhead_seconds_count").unwrap() >= 5.0);
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_requests_total{model="unrouted",provider="none",status_class="4xx"}"#
        ),
        Some(1.0)
    );
    assert!(
        !text.contains("made-up"),
        "a client's model name became a label"
    );
    assert!(!text.contains("hello number"), "a prompt became a label");
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_responses_total{route="/v1/chat/completions",status_class="2xx"}"#
        ),
        Some(4.0)
    );
    assert_eq!(
        sample(
            &text,
            r#"gatehouse_http_responses_total{route="/v1/chat/completions",status_class="4xx"}"#
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "gatehouse_streams_open"), Some(0.0));
    assert_eq!(
        sample(&text, r#"gatehouse_breaker_state{provider="mock"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"gatehouse_rows_total{outcome="lost"}"#),
        Some(0.0)
    );
}

#[tokio::test]
async fn with_keys_the_login_or_the_token_opens_it_and_spend_is_by_key_id() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 401, "closed without a login");
    let (id, key) = create(
        &app,
        serde_json::json!({"name": "ci-bot", "max_budget_usd": 10.0}),
    )
    .await;
    let r = chat_key(&app, &key, user("mock/echo", "spend something")).await;
    assert_eq!(r.status(), 200);
    // A key is not a login.
    let r = app
        .http
        .get(app.url("/metrics"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let text = scrape(&app, &app.admin).await;
    let spend = sample(
        &text,
        &format!("gatehouse_key_spend_usd{{key_id=\"{id}\"}}"),
    )
    .unwrap();
    assert!(spend > 0.0, "{text}");
    let left = sample(
        &text,
        &format!("gatehouse_key_budget_remaining_usd{{key_id=\"{id}\"}}"),
    )
    .unwrap();
    assert!((left - (10.0 - spend)).abs() < 1e-9);
    assert!(!text.contains("ci-bot"), "a key's name became a label");
    assert!(!text.contains(&key), "the key itself is shown");

    let mut opts = keys_mode();
    opts.extra_toml
        .push_str("\n[metrics]\ntoken = \"scrape-token-1234\"\n");
    let app = app.restart(opts).await;
    let token_client = |t: &str| {
        reqwest::Client::builder()
            .default_headers(
                [(
                    reqwest::header::AUTHORIZATION,
                    format!("Bearer {t}").parse().unwrap(),
                )]
                .into_iter()
                .collect(),
            )
            .build()
            .unwrap()
    };
    let r = token_client("wrong-token-0000")
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let text = scrape(&app, &token_client("scrape-token-1234")).await;
    assert!(text.contains("gatehouse_build_info"), "{text}");
}

#[tokio::test]
async fn metrics_can_be_turned_off() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[metrics]\nenabled = false\n".into(),
        ..Options::default()
    })
    .await;
    let r = app.http.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

/// `deploy/grafana-dashboard.json` reads only names the gateway exposes.
#[tokio::test]
async fn the_grafana_dashboard_uses_exactly_these_names() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/echo", "one row")).await;
    assert_eq!(r.status(), 200);
    let text = scrape(&app, &app.http).await;
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana-dashboard.json"
    ))
    .unwrap();
    let mut names: Vec<&str> = dashboard
        .match_indices("gatehouse_")
        .map(|(i, _)| {
            let rest = &dashboard[i..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect();
    names.sort_unstable();
    names.dedup();
    assert!(names.len() >= 10, "{names:?}");
    for name in names {
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name);
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "the dashboard reads {name}, which /metrics does not expose"
        );
    }
}
