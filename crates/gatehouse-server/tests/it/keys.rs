//! Virtual keys (`[auth] mode = "keys"`): refusals in each client's shape, model lists,
//! limits, budgets that hold under a burst, rotation, and keys never stored or sent upstream.

use std::time::Duration;

use gatehouse_store::WriteOp;
use serde_json::{Value, json};

use crate::support::{Options, TestApp, user};

pub(crate) fn keys_mode() -> Options {
    Options {
        extra_toml: r#"
[auth]
mode = "keys"
default_max_tokens = 1000
sync_secs = 1

[models."mock/slow"]
provider = "mock"
model = "delay:600"
max_context_size = 4096
pricing = { input = 1.0, output = 2.0 }

[models."mock/other"]
provider = "mock"
model = "echo"
max_context_size = 4096

[models."mock/failing"]
provider = "mock"
model = "status:503"
max_context_size = 4096
fallbacks = ["mock/other", "mock/echo"]
"#
        .to_owned(),
        ..Options::default()
    }
}

/// Creates a key through the API; returns (id, key).
pub(crate) async fn create(app: &TestApp, settings: Value) -> (String, String) {
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create key");
    let v: Value = r.json().await.unwrap();
    assert!(v.get("digest").is_none(), "the digest is never shown");
    (
        v["id"].as_str().unwrap().to_owned(),
        v["key"].as_str().unwrap().to_owned(),
    )
}

pub(crate) async fn chat_key(app: &TestApp, key: &str, body: Value) -> reqwest::Response {
    app.chat_with(&[("authorization", &format!("Bearer {key}"))], body)
        .await
}

pub(crate) async fn error_code(r: reqwest::Response) -> (u16, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    (status, v["error"]["code"].as_str().unwrap_or("").to_owned())
}

#[tokio::test]
async fn requests_without_a_valid_key_are_refused_in_the_clients_shape() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (id, key) = create(&app, json!({"name": "alice"})).await;

    assert_eq!(
        error_code(app.chat(user("mock/echo", "hi")).await).await,
        (401, "invalid_api_key".to_owned())
    );
    assert_eq!(
        error_code(chat_key(&app, "gh_not-a-real-key", user("mock/echo", "hi")).await).await,
        (401, "invalid_api_key".to_owned())
    );
    // Anthropic's clients get Anthropic's shape, and x-api-key works as the credential.
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", "gh_wrong")
        .json(&json!({"model": "mock/echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-api-key", &key)
        .json(&json!({"model": "mock/echo", "max_tokens": 10, "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The other proxy routes need the key too.
    let r = app.http.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = app
        .http
        .post(app.url("/v1/messages/count_tokens"))
        .json(&json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    let ok = chat_key(&app, &key, user("mock/echo", "hi")).await;
    assert_eq!(ok.status(), 200);

    let r = app
        .admin
        .post(app.url(&format!("/api/keys/{id}/block")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        error_code(chat_key(&app, &key, user("mock/echo", "hi")).await).await,
        (401, "key_blocked".to_owned())
    );
    app.admin
        .post(app.url(&format!("/api/keys/{id}/unblock")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "hi")).await.status(),
        200
    );

    let r = app
        .admin
        .patch(app.url(&format!("/api/keys/{id}")))
        .json(&json!({"expires_at": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        error_code(chat_key(&app, &key, user("mock/echo", "hi")).await).await,
        (401, "key_expired".to_owned())
    );
    // Only the three accepted requests reached the provider, and none carried the key.
    let captured = app.mock.captured();
    assert_eq!(captured.len(), 3);
    for c in &captured {
        let all = format!("{:?}", c.headers);
        assert!(!all.contains(&key), "the virtual key went upstream");
    }
}

#[tokio::test]
async fn a_key_sees_and_uses_only_its_models() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (_, key) = create(
        &app,
        json!({"name": "echo-only", "models": ["mock/echo", "mock/fail*"]}),
    )
    .await;
    let auth = format!("Bearer {key}");
    let r = app
        .http
        .get(app.url("/v1/models"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    let v: Value = r.json().await.unwrap();
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, ["mock/echo", "mock/failing"]);

    let (status, code) = error_code(chat_key(&app, &key, user("mock/other", "hi")).await).await;
    assert_eq!((status, code.as_str()), (403, "model_not_allowed"));

    // The first fallback is not the key's: skipped, the second answers.
    let r = chat_key(&app, &key, user("mock/failing", "hi")).await;
    assert_eq!(r.status(), 200);
    let session = crate::support::session_of(&r);
    app.state.writer.flush().await;
    let rows = crate::support::rows(&app, &session).await;
    assert_eq!(rows[0]["model_key"], "mock/echo");
    let routing = rows[0]["routing"].as_str().unwrap();
    assert!(
        routing.contains("fallback `mock/other` skipped: not allowed for this key"),
        "{routing}"
    );
}

#[tokio::test]
async fn rpm_answers_429_with_headers_and_retry_after() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (_, key) = create(&app, json!({"name": "rpm", "rpm": 3, "tpm": 100000})).await;
    for remaining in [2, 1, 0] {
        let r = chat_key(&app, &key, user("mock/echo", "hi")).await;
        assert_eq!(r.status(), 200);
        let h = r.headers();
        assert_eq!(h["x-ratelimit-limit-requests"], "3");
        assert_eq!(
            h["x-ratelimit-remaining-requests"],
            remaining.to_string().as_str()
        );
        assert!(h.contains_key("x-ratelimit-reset-requests"));
        assert_eq!(h["x-ratelimit-limit-tokens"], "100000");
    }
    let r = chat_key(&app, &key, user("mock/echo", "hi")).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=61).contains(&retry), "{retry}");
    assert_eq!(error_code(r).await.1, "rate_limit_exceeded");
    assert_eq!(app.mock.captured().len(), 3);
}

#[tokio::test]
async fn a_request_larger_than_the_tpm_is_refused_before_upstream() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (_, key) = create(&app, json!({"name": "tpm", "tpm": 500})).await;
    let mut body = user("mock/echo", "hi");
    body["max_tokens"] = json!(2000);
    let r = chat_key(&app, &key, body).await;
    assert_eq!(r.status(), 429);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lower max_tokens"),
        "{v}"
    );
    let mut body = user("mock/echo", "hi");
    body["max_tokens"] = json!(100);
    assert_eq!(chat_key(&app, &key, body).await.status(), 200);
    assert_eq!(app.mock.captured().len(), 1);
}

/// 50 concurrent requests against a budget that fits 5 worst cases: exactly 5 reach the
/// provider (the rest are refused while those are in flight), and spend is what the rows say.
#[tokio::test]
async fn a_budget_holds_under_a_burst() {
    let app = TestApp::spawn_with(keys_mode()).await;
    // The worst case of one request: its prompt (~8 tokens) at $1/M and max_tokens 1000 at
    // $2/M, about $0.002008; the budget fits 5 of them, not 6.
    let (id, key) = create(&app, json!({"name": "burst", "max_budget_usd": 0.0105})).await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            http.post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&json!({"model": "mock/slow", "max_tokens": 1000,
                    "messages": [{"role": "user", "content": format!("burst {i}")}]}))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }));
    }
    let mut ok = 0;
    let mut refused = 0;
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => refused += 1,
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(ok, 5, "exactly the requests the budget fits were forwarded");
    assert_eq!(refused, 45);
    assert_eq!(app.mock.captured().len(), 5);

    // Reservations settled to the real cost: spend is what the rows add up to.
    let spend = app.get_json(&format!("/api/keys/{id}/spend")).await;
    let total = spend["total_cost_usd"].as_f64().unwrap();
    let period = spend["period_spend_usd"].as_f64().unwrap();
    assert!(total > 0.0);
    assert!((total - period).abs() < 1e-12, "{spend}");
    assert_eq!(spend["reserved_usd"].as_f64(), Some(0.0));
    assert_eq!(
        spend["requests"], 50,
        "refused requests have rows too: {spend}"
    );
    let by_model = app
        .get_json(&format!("/api/keys/{id}/spend?group_by=model"))
        .await;
    assert_eq!(by_model["groups"][0]["group"], "mock/slow");
    // Refused ones released their reservations: a small request fits again.
    let r = chat_key(
        &app,
        &key,
        json!({"model": "mock/echo", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn max_parallel_requests_holds() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (_, key) = create(&app, json!({"name": "par", "max_parallel_requests": 2})).await;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&user("mock/slow", "p"))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            (s, v["error"]["code"].as_str().unwrap_or("").to_owned())
        }));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap());
    }
    let ok = statuses.iter().filter(|(s, _)| *s == 200).count();
    assert_eq!(ok, 2, "{statuses:?}");
    assert!(
        statuses
            .iter()
            .filter(|(s, _)| *s != 200)
            .all(|(s, c)| *s == 429 && c == "too_many_concurrent_requests"),
        "{statuses:?}"
    );
    // Places free up when requests end.
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "after"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_its_grace_and_spend_carries_over() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (id, old) = create(&app, json!({"name": "rot", "max_budget_usd": 10.0})).await;
    assert_eq!(
        chat_key(&app, &old, user("mock/echo", "one"))
            .await
            .status(),
        200
    );
    let r = app
        .admin
        .post(app.url(&format!("/api/keys/{id}/rotate")))
        .json(&json!({"grace": "60s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    let new = v["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(v["id"], id.as_str());
    assert!(
        v["spend_usd"].as_f64().unwrap() > 0.0,
        "spend carries over: {v}"
    );
    assert_eq!(
        chat_key(&app, &new, user("mock/echo", "two"))
            .await
            .status(),
        200
    );
    assert_eq!(
        chat_key(&app, &old, user("mock/echo", "three"))
            .await
            .status(),
        200
    );
    // Without grace the old key stops at once.
    let r = app
        .admin
        .post(app.url(&format!("/api/keys/{id}/rotate")))
        .send()
        .await
        .unwrap();
    let newest = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        error_code(chat_key(&app, &new, user("mock/echo", "four")).await)
            .await
            .0,
        401
    );
    assert_eq!(
        chat_key(&app, &newest, user("mock/echo", "five"))
            .await
            .status(),
        200
    );
}

/// Rows carry the key's id; the key itself is nowhere in the database file; a key changed
/// in the database (the CLI, another instance) applies within `sync_secs`, and survives a
/// restart with its spend.
#[tokio::test]
async fn keys_live_in_the_database_as_digests_and_changes_there_apply() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (id, key) = create(&app, json!({"name": "stored", "max_budget_usd": 5.0})).await;
    let r = chat_key(&app, &key, user("mock/echo", "remember me")).await;
    assert_eq!(r.status(), 200);
    let session = crate::support::session_of(&r);
    app.state.writer.flush().await;
    let rows = crate::support::rows(&app, &session).await;
    assert_eq!(rows[0]["key_id"], id.as_str());
    let stored = app.stored_bytes().await;
    assert!(
        !stored.windows(key.len()).any(|w| w == key.as_bytes()),
        "the raw key is in the database"
    );

    // Blocked from outside the process, as `gatehouse keys block` does.
    let store = app.open_store().await;
    let (record, _) = store
        .load_keys(0)
        .await
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.id == id)
        .unwrap();
    let mut blocked = record.clone();
    blocked.blocked = true;
    blocked.updated_at = gatehouse_core::time::now_ms();
    store
        .apply(&[WriteOp::UpsertKey(Box::new(blocked))])
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if chat_key(&app, &key, user("mock/echo", "blocked?"))
            .await
            .status()
            == 401
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a block written to the database applies within sync_secs"
    );
    let mut unblocked = record;
    unblocked.blocked = false;
    unblocked.updated_at = gatehouse_core::time::now_ms() + 1;
    store
        .apply(&[WriteOp::UpsertKey(Box::new(unblocked))])
        .await
        .unwrap();
    drop(store);
    let before = app.get_json(&format!("/api/keys/{id}")).await["spend_usd"]
        .as_f64()
        .unwrap();
    assert!(before > 0.0);
    let app = app.restart(keys_mode()).await;
    let after = app.get_json(&format!("/api/keys/{id}")).await;
    assert_eq!(after["spend_usd"].as_f64(), Some(before), "{after}");
    assert_eq!(after["blocked"], false);
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "back"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn key_settings_are_checked() {
    let app = TestApp::spawn_with(keys_mode()).await;
    for bad in [
        json!({}),
        json!({"name": ""}),
        json!({"name": "x", "rpm": 0}),
        json!({"name": "x", "max_budget_usd": -1}),
        json!({"name": "x", "budget_period": "monthly"}),
        json!({"name": "x", "metadata": [1]}),
        json!({"name": "x", "unknown": 1}),
    ] {
        let r = app
            .admin
            .post(app.url("/api/keys"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = app
        .admin
        .get(app.url("/api/keys/key_nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let (_, _) = create(
        &app,
        json!({"name": "full", "owner": "ops", "models": ["mock/*"], "rpm": 10, "tpm": 1000,
            "max_parallel_requests": 3, "max_budget_usd": 1.5, "budget_period": "30d",
            "soft_budget_usd": 1.0, "expires_in": "90d", "metadata": {"team": "infra"}}),
    )
    .await;
    let list = app.get_json("/api/keys").await;
    let k = &list["keys"][0];
    assert_eq!(k["budget_period_secs"], 30 * 86_400);
    assert!(k["budget_reset_at"].as_i64().unwrap() > gatehouse_core::time::now_ms());
    assert!(k["shown"].as_str().unwrap().starts_with("gh_"));
    assert!(k.get("key").is_none(), "listings never show the key");
}

/// With auth off nothing changes: no key needed, no rate headers.
#[tokio::test]
async fn mode_none_needs_no_key() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/echo", "hi")).await;
    assert_eq!(r.status(), 200);
    assert!(!r.headers().contains_key("x-ratelimit-limit-requests"));
}

#[tokio::test]
async fn key_changes_leave_an_audit_trail_with_a_cursor_and_an_intact_chain() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let (id, _) = create(&app, json!({"name": "audited", "rpm": 5})).await;
    let r = app
        .admin
        .patch(app.url(&format!("/api/keys/{id}")))
        .json(&json!({"rpm": "many"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a bad change is refused");
    let r = app
        .admin
        .post(app.url(&format!("/api/keys/{id}/block")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let page = |q: &str| {
        let url = app.url(&format!("/api/audit?action=key.&{q}"));
        let http = app.admin.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let all = page("limit=10").await;
    let entries = all["entries"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["key.block", "key.update", "key.create"],
        "newest first"
    );
    let block = &entries[0];
    assert_eq!(block["target"], format!("key:{id}"));
    assert_eq!(block["actor"], "user:root", "the logged-in admin");
    assert_eq!(block["outcome"], "ok");
    assert_eq!(block["before"]["blocked"], false);
    assert_eq!(block["after"]["blocked"], true);
    assert!(
        entries[1]["outcome"]
            .as_str()
            .unwrap()
            .starts_with("refused: "),
        "{}",
        entries[1]
    );
    let text = all.to_string();
    assert!(!text.contains("digest"), "no digest on the trail: {text}");

    // One row per page, following the cursor, gives the same rows in the same order.
    let mut seen = Vec::new();
    let mut q = "limit=1".to_owned();
    loop {
        let p = page(&q).await;
        for e in p["entries"].as_array().unwrap() {
            seen.push(e["action"].as_str().unwrap().to_owned());
        }
        match p["next_cursor"].as_i64() {
            Some(c) => q = format!("limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, actions);

    let r = app
        .admin
        .get(app.url("/api/audit?limit=0"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "limit out of range is the caller's error");

    let store = app.open_store().await;
    let check = store.verify_audit().await.unwrap();
    assert_eq!(check.first_broken, None);
    assert!(check.rows >= 3, "{check:?}");
}
