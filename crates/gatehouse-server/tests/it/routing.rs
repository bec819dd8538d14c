//! Routing: fallback chains (on 5xx, 429, silent streams; across formats; never on a client
//! error; skipping models whose window is too small) and the circuit breaker per provider.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::{Options, TestApp, rows, session_of, user};

fn options(failures: u32, open_secs: u64) -> Options {
    Options {
        extra_toml: format!(
            r#"
[proxy.circuit_breaker]
failures = {failures}
open_secs = {open_secs}

[providers.mock2]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[models."mock/flaky"]
provider = "mock"
model = "status:503"
max_context_size = 4096
fallbacks = ["mock2/good", "anth/claude"]

[models."mock/ok"]
provider = "mock"
model = "chunks:1"
max_context_size = 4096

[models."mock2/good"]
provider = "mock2"
model = "chunks:2"
max_context_size = 4096

[models."anth/claude"]
provider = "anth"
model = "claude-x"
max_context_size = 4096

[models."mock/ratelimited"]
provider = "mock"
model = "status:429"
max_context_size = 4096
fallbacks = ["anth/claude"]

[models."mock/bad"]
provider = "mock"
model = "status:400"
max_context_size = 4096
fallbacks = ["mock2/good"]

[models."mock/silent"]
provider = "mock"
model = "silent:9"
max_context_size = 4096
fallbacks = ["mock2/good"]

[models."mock/narrow"]
provider = "mock2"
model = "chunks:1"
max_context_size = 5

[models."mock/wide-only"]
provider = "mock"
model = "status:500"
max_context_size = 4096
fallbacks = ["mock/narrow"]
"#
        ),
        retries: Some(0),
        ..Options::default()
    }
}

fn upstream_models(app: &TestApp) -> Vec<String> {
    app.mock
        .captured()
        .iter()
        .map(|c| c.body["model"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn fallbacks_in_order_across_formats_but_not_on_client_errors() {
    let app = TestApp::spawn_with(options(10, 60)).await;
    let r = app.chat(user("mock/flaky", "hello")).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from");
    assert_eq!(upstream_models(&app), ["status:503", "chunks:2"]);
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["provider"], "mock2", "the row names who answered");
    assert_eq!(row["model_key"], "mock2/good");
    assert_eq!(row["attempts"], 2);
    let routing = row["routing"].as_str().unwrap();
    assert!(
        routing.contains("`mock/flaky` failed") && routing.contains("fell back to `mock2/good`"),
        "{routing}"
    );

    // 429 from an OpenAI-compatible provider, answered by an Anthropic one, in OpenAI's format.
    let r = app.chat(user("mock/ratelimited", "hello")).await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    assert_eq!(
        app.mock.captured().last().unwrap().body["max_tokens"],
        8192,
        "an Anthropic body"
    );

    // A 400 is the request's fault: no fallback.
    let before = app.mock.captured().len();
    let r = app.chat(user("mock/bad", "hello")).await;
    assert_eq!(r.status(), 400);
    assert_eq!(app.mock.captured().len(), before + 1);

    // A fallback whose window cannot hold the prompt is skipped, and the row says so.
    let r = app
        .chat(user(
            "mock/wide-only",
            "a prompt longer than five tokens, surely",
        ))
        .await;
    assert_eq!(r.status(), 500);
    let sid = session_of(&r);
    let row = &rows(&app, &sid).await[0];
    assert!(
        row["routing"]
            .as_str()
            .unwrap()
            .contains("`mock/narrow` skipped"),
        "{row}"
    );
}

#[tokio::test]
async fn a_silent_stream_falls_back_before_the_client_sees_a_byte() {
    let app = TestApp::spawn_with(options(10, 60)).await;
    let r = app
        .chat(json!({"model": "mock/silent", "stream": true, "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(
        text.contains(" Hello") && text.ends_with("data: [DONE]\n\n"),
        "{text}"
    );
    assert_eq!(upstream_models(&app), ["silent:9", "chunks:2"]);
}

#[tokio::test]
async fn the_breaker_opens_skips_the_provider_probes_and_closes() {
    let app = TestApp::spawn_with(options(2, 1)).await;
    for _ in 0..2 {
        assert_eq!(app.chat(user("mock/flaky", "x")).await.status(), 200);
    }
    let providers = app.get_json("/api/providers").await;
    let mock = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "mock")
        .unwrap();
    assert_eq!(mock["circuit_breaker"]["state"], "open", "{mock}");
    assert_eq!(mock["circuit_breaker"]["consecutive_failures"], 2);
    let health = app.get_json("/health").await;
    assert_eq!(
        health["providers"]["circuit_breakers_open"][0]["provider"],
        "mock"
    );

    // Open: the provider is skipped, straight to the fallback; without one, a clear 503 with
    // its own code, and when to try again.
    let sent = app.mock.captured().len();
    assert_eq!(app.chat(user("mock/flaky", "x")).await.status(), 200);
    assert_eq!(upstream_models(&app)[sent..], ["chunks:2"]);
    let r = app.chat(user("mock/ok", "x")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "circuit_open", "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("circuit breaker is open"),
        "{e}"
    );

    // After the open period one probe goes through; it fails, so the breaker reopens.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = app.mock.captured().len();
    assert_eq!(app.chat(user("mock/flaky", "x")).await.status(), 200);
    assert_eq!(upstream_models(&app)[sent..], ["status:503", "chunks:2"]);
    let b = &app.get_json("/api/providers").await["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "mock")
        .unwrap()["circuit_breaker"]
        .clone();
    assert_eq!(b["state"], "open");
    assert_eq!(b["opened_total"], 2);

    // Next probe succeeds: closed again.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(app.chat(user("mock/ok", "x")).await.status(), 200);
    let b = &app.get_json("/api/providers").await["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "mock")
        .unwrap()["circuit_breaker"]
        .clone();
    assert_eq!(b["state"], "closed");
}

#[tokio::test]
async fn a_probe_whose_client_leaves_hands_the_probe_to_the_next_request() {
    let app = TestApp::spawn_with(Options {
        extra_toml: r#"
[proxy.circuit_breaker]
failures = 1
open_secs = 1

[models."mock/down"]
provider = "mock"
model = "status:503"
max_context_size = 4096

[models."mock/slow"]
provider = "mock"
model = "delay:2500"
max_context_size = 4096
"#
        .to_owned(),
        retries: Some(0),
        first_byte_secs: Some(5.0),
        ..Options::default()
    })
    .await;
    assert_eq!(app.chat(user("mock/down", "x")).await.status(), 503);
    assert_eq!(app.chat(user("mock/echo", "x")).await.status(), 503, "open");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // The probe: a slow answer whose client gives up before it arrives.
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let r = impatient
        .post(app.url("/v1/chat/completions"))
        .json(&user("mock/slow", "x"))
        .send()
        .await;
    assert!(r.is_err(), "the client timed out");
    tokio::time::sleep(Duration::from_millis(100)).await;
    // The next request probes (and closes the breaker) instead of being refused forever.
    let r = app.chat(user("mock/echo", "x")).await;
    assert_eq!(r.status(), 200);
    let b = &app.get_json("/api/providers").await["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "mock")
        .unwrap()["circuit_breaker"]
        .clone();
    assert_eq!(b["state"], "closed", "{b}");
}

#[tokio::test]
async fn over_the_providers_rpm_a_request_waits_instead_of_failing() {
    let app = TestApp::spawn_with(Options {
        extra_toml: r#"
[providers.slow]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"
rpm = 3

[models."slow/m"]
provider = "slow"
model = "chunks:1"
max_context_size = 4096
"#
        .to_owned(),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(app.chat(user("slow/m", "x")).await.status(), 200);
    }
    let v = app.get_json("/api/rate-limit").await;
    let slow = &v["providers"][0];
    assert_eq!(slow["provider"], "slow");
    assert_eq!(slow["rpm"], 3);
    assert_eq!(slow["last_minute"], 3);
    assert_eq!(slow["level"], "critical");
    assert_eq!(v["warning_pct"], 87.5);

    // The fourth waits for its turn (about a minute): not refused, not sent yet.
    let sent = app.mock.captured().len();
    let waiting = app
        .http
        .post(app.url("/v1/chat/completions"))
        .timeout(Duration::from_millis(700))
        .json(&user("slow/m", "x"))
        .send()
        .await;
    assert!(waiting.unwrap_err().is_timeout(), "held, not answered");
    assert_eq!(
        app.mock.captured().len(),
        sent,
        "nothing sent over the limit"
    );
    let v = app.get_json("/api/rate-limit").await;
    assert_eq!(v["providers"][0]["waits"], 1);
    let p = app.get_json("/api/providers").await;
    let slow = p["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "slow")
        .unwrap();
    assert_eq!(slow["rpm"], 3);
}

fn heavy(when_none: &str) -> Options {
    Options {
        extra_toml: format!(
            r#"
[proxy.heavy_duty]
enabled = true
threshold_pct = 90
when_none = "{when_none}"

[providers.hd]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[models."hd/small"]
provider = "hd"
model = "small"
max_context_size = 100

[models."hd/mid"]
provider = "hd"
model = "mid"
max_context_size = 400

[models."hd/big"]
provider = "hd"
model = "big"
max_context_size = 1000
"#
        ),
        ..Options::default()
    }
}

/// About `n` tokens of text.
fn words(n: usize) -> String {
    " the".repeat(n)
}

#[tokio::test]
async fn heavy_duty_moves_a_full_prompt_to_the_smallest_larger_model() {
    let app = TestApp::spawn_with(heavy("forward")).await;
    // ~95 tokens on a 100-token model: to hd/mid (400), not hd/big.
    let r = app.chat(user("hd/small", &words(88))).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    assert_eq!(app.mock.captured().last().unwrap().body["model"], "mid");
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["model_key"], "hd/mid");
    let note = row["routing"].as_str().unwrap();
    assert!(
        note.starts_with("heavy-duty: the prompt") && note.contains("moved to `hd/mid`"),
        "{note}"
    );
    // Under 90 %: stays.
    app.chat(user("hd/small", &words(40))).await;
    assert_eq!(app.mock.captured().last().unwrap().body["model"], "small");
    // At 95 % of the largest: forwarded, with the warning on the row.
    let r = app.chat(user("hd/big", &words(945))).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    assert_eq!(app.mock.captured().last().unwrap().body["model"], "big");
    let row = &rows(&app, &sid).await[0];
    assert!(
        row["routing"]
            .as_str()
            .unwrap()
            .contains("has no larger model"),
        "{row}"
    );

    let app = TestApp::spawn_with(heavy("refuse")).await;
    let r = app.chat(user("hd/big", &words(945))).await;
    assert_eq!(r.status(), 413);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no larger model"),
        "{e}"
    );
}

fn balanced_and_auto() -> Options {
    Options {
        extra_toml: r#"
[providers.mock2]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"

[models."lb/main"]
provider = "mock"
model = "chunks:1+delay:80"
max_context_size = 4096
deployments = [{ model = "lb/second" }]

[models."lb/second"]
provider = "mock2"
model = "chunks:2"
max_context_size = 4096

[models."sr/cheap"]
provider = "mock"
model = "cheap"
max_context_size = 100000
pricing = { input = 1.0, output = 1.0 }

[models."sr/pricey"]
provider = "mock2"
model = "pricey"
max_context_size = 100000
pricing = { input = 10.0, output = 30.0 }

[models."sr/small"]
provider = "mock"
model = "small"
max_context_size = 8

[auto.coding]
candidates = ["sr/small", "sr/pricey", "sr/cheap"]
"#
        .to_owned(),
        ..Options::default()
    }
}

#[tokio::test]
async fn deployments_are_balanced_towards_the_faster_one_in_one_session() {
    let app = TestApp::spawn_with(balanced_and_auto()).await;
    let mut session = None;
    for _ in 0..40 {
        let r = app.chat(user("lb/main", "x")).await;
        assert_eq!(r.status(), 200);
        let sid = session_of(&r);
        assert_eq!(
            *session.get_or_insert(sid.clone()),
            sid,
            "one session for the model"
        );
        r.bytes().await.unwrap();
    }
    let models = upstream_models(&app);
    let fast = models.iter().filter(|m| *m == "chunks:2").count();
    let slow = models.len() - fast;
    assert!(slow >= 1, "both deployments were tried");
    assert!(
        fast >= 30,
        "latency-aware: the 80 ms deployment gets little ({fast} fast, {slow} slow)"
    );
    let sid = session.unwrap();
    let row = &rows(&app, &sid).await[0];
    assert!(
        row["routing"]
            .as_str()
            .unwrap()
            .starts_with("balanced across 2 deployments"),
        "{row}"
    );
    let s = app.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(s["session"]["model_key"], "lb/main");
}

#[tokio::test]
async fn auto_models_score_their_candidates_and_say_why() {
    let app = TestApp::spawn_with(balanced_and_auto()).await;
    let r = app
        .chat(user("auto/coding", "Refactor this function, please."))
        .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    r.bytes().await.unwrap();
    assert_eq!(
        upstream_models(&app),
        ["cheap"],
        "same headroom, a tenth of the price"
    );
    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["model_key"], "sr/cheap");
    let note = row["routing"].as_str().unwrap();
    assert!(
        note.starts_with("auto/coding chose `sr/cheap`: sr/cheap "),
        "{note}"
    );
    assert!(note.contains("sr/pricey"), "{note}");
    assert!(
        note.contains("skipped sr/small: window too small"),
        "{note}"
    );
    let s = app.get_json(&format!("/api/sessions/{sid}")).await;
    assert_eq!(
        s["session"]["model_key"], "auto/coding",
        "the session keeps the virtual model"
    );
    // An answer bigger than every window: no candidate, a clear error (and no overflow).
    let r = app
        .chat(json!({"model": "auto/coding", "max_tokens": u64::MAX, "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!(r.status(), 502);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("window too small"),
        "{e}"
    );
    let models = app.get_json("/v1/models").await;
    assert!(
        models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "auto/coding")
    );
    let r = app.chat(user("auto/nothing", "x")).await;
    assert_eq!(
        r.status(),
        404,
        "an undefined auto model is an unknown model"
    );
}

/// `proxy.default_model` (the seed's `default_model`): a request that names no model goes there.
#[tokio::test]
async fn a_request_without_a_model_goes_to_the_default_model() {
    let app = crate::support::TestApp::spawn_with(crate::support::Options {
        proxy_toml: "default_model = \"mock/echo\"".to_owned(),
        ..crate::support::Options::default()
    })
    .await;
    for body in [
        serde_json::json!({"messages": [{"role": "user", "content": "hi"}]}),
        serde_json::json!({"model": "", "messages": [{"role": "user", "content": "hi"}]}),
    ] {
        let r = app.chat(body).await;
        assert_eq!(r.status(), 200);
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["choices"][0]["message"]["content"], " Hello from the");
    }
    assert_eq!(app.mock.captured().pop().unwrap().body["model"], "echo");
}
