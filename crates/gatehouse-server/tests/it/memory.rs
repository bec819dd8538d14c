//! `/api/memory/*` round trips: store (deduplicated), similar (BM25), promotion after three
//! accesses, manual promotion, cleanup, stats, and persistence.

use serde_json::{Value, json};

use crate::support::TestApp;

async fn post(app: &TestApp, path: &str, body: Value) -> (u16, Value) {
    let r = app
        .http
        .post(app.url(path))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

#[tokio::test]
async fn memory_round_trips() {
    let app = TestApp::spawn().await;
    let (s, tabs) = post(
        &app,
        "/api/memory/store",
        json!({"content": "The user prefers tabs over spaces in Rust code"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(tabs["duplicate"], false);
    assert_eq!(tabs["entry"]["kind"], "episodic");
    let tabs_id = tabs["entry"]["id"].as_str().unwrap().to_owned();
    assert_eq!(tabs_id.len(), 16);
    post(
        &app,
        "/api/memory/store",
        json!({"content": "The project stores data in SQLite, WAL mode", "kind": "semantic"}),
    )
    .await;
    post(
        &app,
        "/api/memory/store",
        json!({"content": "Yesterday we fixed the tokenizer's parser bug"}),
    )
    .await;
    let (_, again) = post(
        &app,
        "/api/memory/store",
        json!({"content": "  The user prefers tabs over spaces in Rust code  "}),
    )
    .await;
    assert_eq!(again["duplicate"], true, "the same content is one entry");
    assert_eq!(again["entry"]["id"], tabs_id.as_str());
    assert_eq!(again["entry"]["access_count"], 1);

    let (_, hits) = post(
        &app,
        "/api/memory/similar",
        json!({"q": "which database storage? sqlite", "limit": 2}),
    )
    .await;
    assert_eq!(
        hits["results"][0]["content"],
        "The project stores data in SQLite, WAL mode"
    );
    assert!(hits["results"][0]["score"].as_f64().unwrap() > 0.0);

    // Two more accesses make three: the episodic entry is promoted to frequent.
    post(&app, "/api/memory/similar", json!({"q": "tabs spaces"})).await;
    let (_, hits) = post(&app, "/api/memory/similar", json!({"q": "tabs"})).await;
    assert_eq!(hits["results"][0]["kind"], "frequent");
    let frequent = app.get_json("/api/memory/frequent").await;
    assert_eq!(frequent["entries"][0]["id"], tabs_id.as_str());

    let (s, promoted) = post(
        &app,
        "/api/memory/promote",
        json!({"id": tabs_id, "kind": "semantic"}),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(promoted["entry"]["kind"], "semantic");
    let (s, _) = post(&app, "/api/memory/promote", json!({"id": "nope"})).await;
    assert_eq!(s, 404);

    // Cleanup: episodic entries older than 0 days and used fewer than 5 times go.
    let (_, gone) = post(
        &app,
        "/api/memory/cleanup",
        json!({"max_age_days": 0, "min_access": 5}),
    )
    .await;
    assert_eq!(gone["removed"], 1);
    let stats = app.get_json("/api/memory/stats").await;
    assert_eq!(stats["entries"], 2);
    assert_eq!(stats["by_kind"]["semantic"]["entries"], 2);

    // Persisted: the database holds what the index holds.
    app.state.writer.flush().await;
    let stored = app.state.store.load_memory().await.unwrap();
    assert_eq!(stored.len(), 2);
    let tabs_row = stored.iter().find(|r| r.id == tabs_id).unwrap();
    assert_eq!(
        (tabs_row.kind.as_str(), tabs_row.access_count),
        ("semantic", 3)
    );

    // Bad input gets clear errors.
    let (s, v) = post(&app, "/api/memory/store", json!({"content": "   "})).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = post(
        &app,
        "/api/memory/store",
        json!({"content": "x", "kind": "weird"}),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(&app, "/api/memory/similar", json!({})).await;
    assert_eq!(s, 400);
    // Searching changes state (accesses, promotion): not a GET, and not for foreign pages.
    let r = app
        .http
        .get(app.url("/api/memory/similar?q=tabs"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    let r = app
        .http
        .post(app.url("/api/memory/similar"))
        .header("origin", "http://evil.example")
        .json(&json!({"q": "tabs"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

#[tokio::test]
async fn memory_content_is_redacted_like_a_request() {
    let app = TestApp::spawn().await;
    let key = "sk-proj-Abc123Def456Ghi789Jkl012Mno345";
    let (s, v) = post(
        &app,
        "/api/memory/store",
        json!({"content": format!("deploy with OPENAI key {key} from CI")}),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let content = v["entry"]["content"].as_str().unwrap();
    assert!(!content.contains(key), "{content}");
    assert!(content.contains("[REDACTED:openai_key]"), "{content}");
    assert_eq!(v["redacted"][0], "openai_key");
    app.state.writer.flush().await;
    let stored = app.state.store.load_memory().await.unwrap();
    assert!(stored.iter().all(|r| !r.content.contains(key)));
}
