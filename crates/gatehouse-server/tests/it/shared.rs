//! Two instances sharing one database and one Redis (`[redis]`): limits and budgets that hold
//! across both, key and login changes seen by the other at once, and what `on_error` does
//! while Redis is gone. Each test has its own Redis namespace, so tests run in parallel.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::keys::{chat_key, create, error_code, keys_mode};
use crate::support::{Cuttable, Options, TestApp, user};

fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// The keys-mode config with a Redis section; `sync_secs` high, so what reaches the other
/// instance within a second came through Redis, not the database.
fn shared_mode(url: &str, prefix: &str, on_error: &str) -> Options {
    let mut o = keys_mode();
    o.extra_toml = o.extra_toml.replace("sync_secs = 1", "sync_secs = 60")
        + &format!(
            "\n[redis]\nurl = \"{url}\"\nprefix = \"{prefix}\"\non_error = \"{on_error}\"\ntimeout_ms = 300\n"
        );
    o
}

fn prefix() -> String {
    format!("t-{}", uuid::Uuid::now_v7().simple())
}

/// A and B: two gateways on one data directory (one database) and one Redis namespace.
async fn pair_on(url: &str, on_error: &str) -> (TestApp, TestApp) {
    let p = prefix();
    let a = TestApp::spawn_with(shared_mode(url, &p, on_error)).await;
    let b = TestApp::spawn_with(Options {
        data_dir: Some(a.dir.path().to_path_buf()),
        ..shared_mode(url, &p, on_error)
    })
    .await;
    (a, b)
}

async fn pair() -> (TestApp, TestApp) {
    pair_on(&redis_url(), "open").await
}

/// Waits until `key` is known to `app` (a key made on the other instance reaches this one
/// through Redis).
async fn known_on(app: &TestApp, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(2);
    while app.state.keys.get(id).is_none() {
        assert!(
            Instant::now() < deadline,
            "key {id} never reached the other instance"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn an_rpm_limit_holds_across_two_instances() {
    let (a, b) = pair().await;
    let (id, key) = create(&a, json!({"name": "ten", "rpm": 10})).await;
    known_on(&b, &id).await;
    let mut ok = 0;
    for i in 0..20 {
        let app = if i % 2 == 0 { &a } else { &b };
        let r = chat_key(app, &key, user("mock/echo", &format!("r{i}"))).await;
        if i < 10 {
            // The headers count what both instances took.
            let h = |n: &str| r.headers()[n].to_str().unwrap().to_owned();
            assert_eq!(h("x-ratelimit-remaining-requests"), (9 - i).to_string());
            assert_eq!(h("x-ratelimit-limit-requests"), "10");
            let reset: u64 = h("x-ratelimit-reset-requests")
                .trim_end_matches('s')
                .parse()
                .unwrap();
            assert!((1..=60).contains(&reset), "{reset}");
        }
        match error_code(r).await {
            (200, _) => ok += 1,
            (429, code) => assert_eq!(code, "rate_limit_exceeded"),
            other => panic!("unexpected answer {other:?}"),
        }
    }
    assert_eq!(
        ok, 10,
        "exactly rpm requests succeed, whichever instance they reach"
    );
    let h = b.get_json("/health").await;
    assert_eq!(h["shared"]["engine"], "redis", "{h}");
    assert_eq!(h["shared"]["state"], "ok", "{h}");
}

#[tokio::test]
async fn a_budget_burst_split_across_instances_cannot_overshoot() {
    let (a, b) = pair().await;
    // One request's worst case is about $0.002008 (see keys.rs); the budget fits 5.
    let (id, key) = create(&a, json!({"name": "burst", "max_budget_usd": 0.0105})).await;
    known_on(&b, &id).await;
    let mut tasks = Vec::new();
    for i in 0..40 {
        let app = if i % 2 == 0 { &a } else { &b };
        let (http, url, key) = (
            app.http.clone(),
            app.url("/v1/chat/completions"),
            key.clone(),
        );
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
    for t in tasks {
        match t.await.unwrap() {
            200 => ok += 1,
            429 => {}
            s => panic!("unexpected status {s}"),
        }
    }
    assert_eq!(
        ok, 5,
        "the two instances together forwarded what the budget fits"
    );
    assert_eq!(a.mock.captured().len() + b.mock.captured().len(), 5);

    // Spend is one figure, Redis's: the instance that settled last shows all of it.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let va = a.get_json(&format!("/api/keys/{id}")).await;
        let vb = b.get_json(&format!("/api/keys/{id}")).await;
        let (sa, sb) = (
            va["spend_usd"].as_f64().unwrap(),
            vb["spend_usd"].as_f64().unwrap(),
        );
        let reserved = va["reserved_usd"].as_f64().unwrap() + vb["reserved_usd"].as_f64().unwrap();
        // Five answers of the echo mock: each a few tokens, far under the worst case.
        if sa.max(sb) > 0.0 && reserved == 0.0 {
            assert!(sa.max(sb) < 0.0105, "{va} {vb}");
            break;
        }
        assert!(Instant::now() < deadline, "spend never settled: {va} {vb}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn spend_is_shared_and_each_instance_shows_the_total() {
    let (a, b) = pair().await;
    let (id, key) = create(&a, json!({"name": "spender", "max_budget_usd": 10.0})).await;
    known_on(&b, &id).await;
    for app in [&a, &b, &a] {
        let r = chat_key(app, &key, user("mock/echo", "a few tokens")).await;
        assert_eq!(r.status(), 200);
    }
    let r = chat_key(&b, &key, user("mock/echo", "the last one")).await;
    assert_eq!(r.status(), 200);
    // The rows say what each request cost; B settled last, so B shows their sum.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        a.state.writer.flush().await;
        b.state.writer.flush().await;
        let rows = a.get_json(&format!("/api/keys/{id}/spend")).await;
        let total = rows["total_cost_usd"].as_f64().unwrap();
        let shown = b.get_json(&format!("/api/keys/{id}")).await["spend_usd"]
            .as_f64()
            .unwrap();
        if rows["requests"] == 4 && (total - shown).abs() < 1e-8 && total > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "B shows {shown}, the rows add up to {total}: {rows}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_key_blocked_on_one_instance_is_refused_on_the_other_at_once() {
    let (a, b) = pair().await;
    let (id, key) = create(&a, json!({"name": "soon-blocked"})).await;
    known_on(&b, &id).await;
    assert_eq!(
        chat_key(&b, &key, user("mock/echo", "hi")).await.status(),
        200
    );

    // A request in flight on B while A blocks the key: when it ends, B must not have written
    // the key as it was back into its registry.
    let in_flight = {
        let (http, url, key) = (b.http.clone(), b.url("/v1/chat/completions"), key.clone());
        tokio::spawn(async move {
            http.post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&user("mock/slow", "slow"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(150)).await;
    let t0 = Instant::now();
    let r = a
        .admin
        .post(a.url(&format!("/api/keys/{id}/block")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    loop {
        let (status, code) = error_code(chat_key(&b, &key, user("mock/echo", "hi")).await).await;
        if status == 401 {
            assert_eq!(code, "key_blocked");
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "B still accepts a key blocked on A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the request already admitted ends"
    );
    let (status, code) = error_code(chat_key(&b, &key, user("mock/echo", "after")).await).await;
    assert_eq!((status, code.as_str()), (401, "key_blocked"));

    // Rotated on B: the old key is refused on A once its grace is over (none here), the new
    // one works there at once.
    let r = b
        .admin
        .post(b.url(&format!("/api/keys/{id}/unblock")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = b
        .admin
        .post(b.url(&format!("/api/keys/{id}/rotate")))
        .json(&json!({"grace": "0s"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let v: Value = r.json().await.unwrap();
    let new_key = v["key"].as_str().unwrap().to_owned();
    let t0 = Instant::now();
    while chat_key(&a, &new_key, user("mock/echo", "new"))
        .await
        .status()
        != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "A never took the rotated key"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        chat_key(&a, &key, user("mock/echo", "old")).await.status(),
        401
    );
}

#[tokio::test]
async fn a_logout_on_one_instance_ends_the_login_on_the_other() {
    let (a, b) = pair().await;
    let token =
        crate::support::login(&a.http, a.addr, "root", crate::support::ADMIN_PASSWORD).await;
    let on_b = crate::support::client_with_token(&token);
    let r = on_b.get(b.url("/api/keys")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the same login works on both");
    let r = a
        .http
        .post(a.url("/api/auth/logout"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let t0 = Instant::now();
    while on_b.get(b.url("/api/keys")).send().await.unwrap().status() != 401 {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "B still accepts a token logged out on A"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis gone: `closed` refuses limited keys (503 `limiter_unavailable`) and serves the
/// others; back, it shares again by itself.
#[tokio::test]
async fn redis_down_with_on_error_closed_refuses_limited_keys_and_recovers() {
    let target = redis_url();
    let hostport = target.trim_start_matches("redis://").trim_end_matches('/');
    let link = Cuttable::to(hostport).await;
    let (a, _b) = pair_on(&format!("redis://127.0.0.1:{}", link.port), "closed").await;
    let (_, limited) = create(&a, json!({"name": "limited", "rpm": 100})).await;
    let (_, free) = create(&a, json!({"name": "free"})).await;
    assert_eq!(
        chat_key(&a, &limited, user("mock/echo", "hi"))
            .await
            .status(),
        200
    );

    link.cut();
    let (status, code) = error_code(chat_key(&a, &limited, user("mock/echo", "hi")).await).await;
    assert_eq!((status, code.as_str()), (503, "limiter_unavailable"));
    let r = chat_key(&a, &free, user("mock/echo", "hi")).await;
    assert_eq!(r.status(), 200, "a key without limits has nothing to count");
    let h = a.get_json_any("/health").await;
    assert_eq!(h["shared"]["state"], "degraded", "{h}");
    assert_eq!(h["status"], "degraded", "{h}");

    link.restore();
    let t0 = Instant::now();
    while chat_key(&a, &limited, user("mock/echo", "back"))
        .await
        .status()
        != 200
    {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the limiter never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(a.get_json("/health").await["shared"]["state"], "ok");
}

/// Redis gone: `open` serves under this instance's own limits, and says so.
#[tokio::test]
async fn redis_down_with_on_error_open_counts_locally() {
    let target = redis_url();
    let hostport = target.trim_start_matches("redis://").trim_end_matches('/');
    let link = Cuttable::to(hostport).await;
    let (a, _b) = pair_on(&format!("redis://127.0.0.1:{}", link.port), "open").await;
    let (_, key) = create(&a, json!({"name": "three", "rpm": 3})).await;
    link.cut();
    let mut statuses = Vec::new();
    for i in 0..5 {
        let r = chat_key(&a, &key, user("mock/echo", &format!("r{i}"))).await;
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429],
        "the local meter holds the limit"
    );
    let h = a.get_json_any("/health").await;
    assert_eq!(h["shared"]["state"], "degraded", "{h}");
}

#[tokio::test]
async fn an_instance_without_redis_says_it_stands_alone() {
    let app = TestApp::spawn().await;
    let h = app.get_json("/health").await;
    assert_eq!(h["shared"]["state"], "standalone", "{h}");
}

/// A dashboard on B sees A's requests: each once, in A's order, named by instance.
#[tokio::test]
async fn a_dashboard_on_one_instance_sees_the_others_requests_once_in_order() {
    let p = prefix();
    let plain = || Options {
        extra_toml: format!("\n[redis]\nurl = \"{}\"\nprefix = \"{p}\"\n", redis_url()),
        ..Options::default()
    };
    let a = TestApp::spawn_with(plain()).await;
    let b = TestApp::spawn_with(Options {
        data_dir: Some(a.dir.path().to_path_buf()),
        ..plain()
    })
    .await;
    assert!(
        !a.state.bus.has_subscribers(),
        "nobody watches: A builds no events"
    );
    let mut ws = crate::live::connect(&b).await;
    assert_eq!(crate::live::next(&mut ws).await["type"], "init");
    // A learns within a second or two that a dashboard elsewhere listens.
    let t0 = Instant::now();
    while !a.state.bus.has_subscribers() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "A never saw B's listener"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let a_id = a.state.shared.as_ref().unwrap().instance().to_owned();
    let n = 200;
    for i in 0..n {
        let r = a.chat(user("mock/echo", &format!("seen from B {i}"))).await;
        assert_eq!(r.status(), 200);
    }
    let mut ids = std::collections::HashSet::new();
    let mut last_seq = 0;
    while ids.len() < n {
        let v = crate::live::next(&mut ws).await;
        if v["instance"] != a_id.as_str() {
            continue;
        }
        let seq = v["instance_seq"].as_u64().unwrap();
        assert!(seq > last_seq, "A's events arrive in A's order");
        last_seq = seq;
        if v["type"] == "metric" {
            let id = v["request"]["id"].as_str().unwrap().to_owned();
            assert!(ids.insert(id), "an event arrived twice");
        }
    }
}

fn breaker_of(providers: &Value, key: &str) -> Value {
    providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == key)
        .unwrap()["circuit_breaker"]
        .clone()
}

/// A provider failing on A is skipped by B at once; closed again on A, closed on B.
#[tokio::test]
async fn a_breaker_opened_on_one_instance_is_followed_by_the_other() {
    let p = prefix();
    let opts = || Options {
        extra_toml: format!(
            r#"
[redis]
url = "{}"
prefix = "{p}"

[proxy.circuit_breaker]
failures = 2
open_secs = 1

[providers.mock2]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[models."mock/flaky"]
provider = "mock"
model = "status:503"
max_context_size = 4096
fallbacks = ["mock2/good"]

[models."mock/ok"]
provider = "mock"
model = "chunks:1"
max_context_size = 4096

[models."mock2/good"]
provider = "mock2"
model = "chunks:2"
max_context_size = 4096
"#,
            redis_url()
        ),
        ..Options::default()
    };
    let a = TestApp::spawn_with(opts()).await;
    let b = TestApp::spawn_with(Options {
        data_dir: Some(a.dir.path().to_path_buf()),
        ..opts()
    })
    .await;
    for _ in 0..2 {
        assert_eq!(a.chat(user("mock/flaky", "x")).await.status(), 200);
    }
    assert_eq!(
        breaker_of(&a.get_json("/api/providers").await, "mock")["state"],
        "open"
    );
    let t0 = Instant::now();
    while breaker_of(&b.get_json("/api/providers").await, "mock")["state"] != "open" {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "B never followed A's breaker"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // B skips the provider without trying it: its mock sees the fallback only.
    assert_eq!(b.chat(user("mock/flaky", "x")).await.status(), 200);
    let sent: Vec<String> = b
        .mock
        .captured()
        .iter()
        .map(|c| c.body["model"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(sent, ["chunks:2"]);

    // A's probe succeeds after the open second: closed on A, then on B.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(a.chat(user("mock/ok", "x")).await.status(), 200);
    let t0 = Instant::now();
    while breaker_of(&b.get_json("/api/providers").await, "mock")["state"] != "closed" {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "B never followed A's close"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A session compacted on A is served from that point on B, which does not compact itself.
#[tokio::test]
async fn a_compaction_point_made_on_one_instance_holds_on_the_other() {
    use crate::compaction::{history, is_summary};
    let p = prefix();
    let opts = |auto: bool| Options {
        extra_toml: format!(
            r#"
[redis]
url = "{}"
prefix = "{p}"

[models."mock/small"]
provider = "mock"
model = "echo"
max_context_size = 2000

[proxy.heavy_duty]
enabled = false
threshold_pct = 90
when_none = "forward"

[compaction.auto]
enabled = {auto}
"#,
            redis_url()
        ),
        retries: Some(0),
        ..Options::default()
    };
    let a = TestApp::spawn_with(opts(true)).await;
    let b = TestApp::spawn_with(Options {
        data_dir: Some(a.dir.path().to_path_buf()),
        ..opts(false)
    })
    .await;
    let header = [("x-gatehouse-session", "shared-conversation")];
    let summarised = |app: &TestApp| {
        app.mock.captured().last().is_some_and(|c| {
            c.body["messages"]
                .as_array()
                .is_some_and(|m| m.iter().any(is_summary))
        })
    };
    let mut turns = 0;
    loop {
        let r = a
            .chat_with(
                &header,
                json!({"model": "mock/small", "messages": history(turns, 100)}),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        if summarised(&a) {
            break;
        }
        turns += 1;
        assert!(turns < 20, "A never compacted");
    }
    let t0 = Instant::now();
    loop {
        let r = b
            .chat_with(
                &header,
                json!({"model": "mock/small", "messages": history(turns + 1, 100)}),
            )
            .await;
        assert_eq!(r.status(), 200);
        r.bytes().await.unwrap();
        if summarised(&b) {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "B never used A's compaction point"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request that ends while Redis is away gives its place back once Redis answers again, not
/// only when its lease ends (15 minutes by default).
#[tokio::test]
async fn a_settle_missed_while_redis_was_away_is_sent_when_it_is_back() {
    let target = redis_url();
    let hostport = target.trim_start_matches("redis://").trim_end_matches('/');
    let link = Cuttable::to(hostport).await;
    let (a, _b) = pair_on(&format!("redis://127.0.0.1:{}", link.port), "open").await;
    let (_, key) = create(
        &a,
        json!({"name": "one-at-a-time", "max_parallel_requests": 1}),
    )
    .await;
    let slow = {
        let (http, url, key) = (a.http.clone(), a.url("/v1/chat/completions"), key.clone());
        tokio::spawn(async move {
            http.post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&user("mock/slow", "in flight while Redis goes"))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    link.cut();
    assert_eq!(slow.await.unwrap(), 200);
    link.restore();
    let t0 = Instant::now();
    while a.get_json_any("/health").await["shared"]["state"] != "ok" {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "Redis never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted in Redis again: the place is free there, or every request is refused.
    let t0 = Instant::now();
    loop {
        let (status, code) = error_code(chat_key(&a, &key, user("mock/echo", "next")).await).await;
        if status == 200 {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(3),
            "the place was never given back in Redis: {status} {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
