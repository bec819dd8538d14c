//! Models, providers and health endpoints; secrets never leave.

use crate::support::{TestApp, UPSTREAM_KEY};

#[tokio::test]
async fn model_lists() {
    let app = TestApp::spawn().await;
    for path in ["/v1/models", "/models"] {
        let v = app.get_json(path).await;
        assert_eq!(v["object"], "list");
        let m = v["data"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == "mock/echo")
            .unwrap()
            .clone();
        assert_eq!(m["owned_by"], "mock");
        // The built-in catalogue is there too.
        assert!(
            v["data"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m["id"] == "mistral/codestral-2501")
        );
    }
    for path in ["/models/all", "/api/models"] {
        let v = app.get_json(path).await;
        let m = v["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["key"] == "kimi-code/kimi-for-coding")
            .unwrap()
            .clone();
        assert_eq!(m["provider"], "managed:kimi-code");
        assert_eq!(m["model"], "kimi-for-coding");
        assert_eq!(m["max_context_size"], 262_144);
        assert!(
            m["capabilities"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c == "tool_use")
        );
    }
}

#[tokio::test]
async fn providers_show_key_status_never_the_key() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .get(app.url("/api/providers"))
        .send()
        .await
        .unwrap();
    let text = r.text().await.unwrap();
    assert!(!text.contains(UPSTREAM_KEY), "the provider key leaked");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let find = |k: &str| {
        v["providers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["key"] == k)
            .unwrap()
            .clone()
    };
    assert_eq!(find("mock")["key_configured"], true);
    assert_eq!(find("nokey")["key_configured"], false);
    assert_eq!(find("nokey")["key_env"], "NOKEY_API_KEY");
    assert_eq!(find("mistral")["key_env"], "MISTRAL_API_KEY");
    assert!(
        find("mock")["models"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m == "mock/echo")
    );
    assert_eq!(find("gemini")["timeouts_s"]["total"], 180.0);
}

#[tokio::test]
async fn health_endpoints() {
    let app = TestApp::spawn().await;
    let v = app.get_json("/health").await;
    assert_eq!(v["status"], "ok");
    assert_eq!(v["database"]["ok"], true);
    let engine = if app.on_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(v["database"]["engine"], engine);
    assert_eq!(app.get_json("/health/live").await["status"], "alive");
    assert_eq!(app.get_json("/health/ready").await["status"], "ready");
}

#[tokio::test]
async fn the_database_survives_restart_in_wal_mode() {
    let mut app = TestApp::spawn().await;
    let r = app
        .chat(crate::support::user("mock/echo", "persist me"))
        .await;
    r.bytes().await.unwrap();
    app.shutdown().await;
    if app.on_postgres() {
        return; // SQLite's own file format
    }
    assert!(app.db_path().exists());
    let wal = std::fs::read(app.db_path()).unwrap();
    assert_eq!(
        wal[18], 2,
        "WAL mode is recorded in the header's write version"
    );
}
