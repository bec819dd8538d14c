//! The router-wide guard: a foreign `Host` gets 403 on every route family before any handler
//! runs (DNS rebinding), listed hosts are answered, and listed origins get CORS.

use serde_json::json;

use crate::support::{Options, TestApp, raw_http, rows, session_of, user};

const FOREIGN: &str = "rebind.attacker:8000";

/// Every route family, with a method and body that would succeed under a good `Host`.
fn routes() -> Vec<(&'static str, &'static str, String)> {
    let chat =
        json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hi"}]}).to_string();
    let anthropic = json!({"model": "mock/echo", "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}]})
    .to_string();
    vec![
        ("POST", "/v1/chat/completions", chat.clone()),
        ("POST", "/chat/completions", chat),
        ("POST", "/v1/messages", anthropic.clone()),
        ("POST", "/v1/messages/count_tokens", anthropic),
        ("GET", "/v1/models", String::new()),
        ("GET", "/models/all", String::new()),
        ("GET", "/health", String::new()),
        ("GET", "/health/ready", String::new()),
        ("GET", "/api/export/json?all=1", String::new()),
        ("GET", "/api/export/csv?all=1", String::new()),
        ("GET", "/api/sessions", String::new()),
        ("POST", "/api/sessions", "{}".to_owned()),
        ("GET", "/api/providers", String::new()),
        ("GET", "/api/mask", String::new()),
        ("GET", "/api/sanitizer/stats", String::new()),
        ("GET", "/api/memory/stats", String::new()),
        ("GET", "/api/compaction/stats", String::new()),
        ("GET", "/api/rate-limit", String::new()),
        ("GET", "/", String::new()),
        ("GET", "/assets/app.js", String::new()),
        ("GET", "/no/such/route", String::new()),
    ]
}

fn request(method: &str, path: &str, host: &str, body: &str) -> String {
    format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_every_route_before_any_handler() {
    let app = TestApp::spawn().await;
    // A row exists, so a leak would show.
    let r = app.chat(user("mock/echo", "private prompt")).await;
    let session = session_of(&r);
    app.state.writer.flush().await;
    let seen_before = app.mock.captured().len();

    for (method, path, body) in routes() {
        let (status, text) = raw_http(app.addr, &request(method, path, FOREIGN, &body)).await;
        assert_eq!(status, 403, "{method} {path}: {text}");
        assert!(
            text.contains("host_not_allowed") || text.contains("permission_error"),
            "{method} {path}: {text}"
        );
        assert!(text.contains("rebind.attacker"), "{method} {path}: {text}");
        assert!(
            !text.contains("private prompt"),
            "{method} {path} leaked a row"
        );
    }
    // The WebSocket upgrade too.
    let ws = format!(
        "GET /ws HTTP/1.1\r\nHost: {FOREIGN}\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    );
    let (status, _) = raw_http(app.addr, &ws).await;
    assert_eq!(status, 403);
    // Anthropic's clients read Anthropic's error shape.
    let (_, text) = raw_http(app.addr, &request("POST", "/v1/messages", FOREIGN, "{}")).await;
    assert!(text.contains(r#""type":"error""#), "{text}");

    // Nothing reached a handler: no request upstream, no row, no session.
    assert_eq!(app.mock.captured().len(), seen_before);
    app.state.writer.flush().await;
    assert_eq!(rows(&app, &session).await.len(), 1);
    let sessions = app.get_json("/api/sessions").await;
    assert_eq!(sessions["sessions"].as_array().unwrap().len(), 1);

    // The same requests under the gateway's own names are answered.
    for host in [
        app.addr.to_string(),
        format!("localhost:{}", app.addr.port()),
        format!("[::1]:{}", app.addr.port()),
    ] {
        let (status, text) = raw_http(app.addr, &request("GET", "/api/sessions", &host, "")).await;
        assert_eq!(status, 200, "{host}: {text}");
    }
}

#[tokio::test]
async fn listed_hosts_are_answered_and_listed_origins_get_cors() {
    let app = TestApp::spawn_with(Options {
        server_toml: r#"allowed_hosts = ["gatehouse.internal"]"#.to_owned(),
        dashboard_toml: r#"allowed_origins = ["http://localhost:5173"]"#.to_owned(),
        ..Options::default()
    })
    .await;
    let (status, _) = raw_http(
        app.addr,
        &request("GET", "/api/sessions", "gatehouse.internal:8000", ""),
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = raw_http(
        app.addr,
        &request("GET", "/api/sessions", "gatehouse.internal.attacker", ""),
    )
    .await;
    assert_eq!(status, 403);

    // The listed origin's preflight is answered, with what it asked for.
    let preflight = format!(
        "OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nOrigin: http://localhost:5173\r\nAccess-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization, content-type\r\nconnection: close\r\n\r\n",
        app.addr
    );
    let (status, text) = raw_http(app.addr, &preflight).await;
    assert_eq!(status, 204, "{text}");
    let lower = text.to_ascii_lowercase();
    assert!(
        lower.contains("access-control-allow-origin: http://localhost:5173"),
        "{text}"
    );
    assert!(
        lower.contains("access-control-allow-methods: get, post"),
        "{text}"
    );
    assert!(
        lower.contains("access-control-allow-headers: authorization, content-type"),
        "{text}"
    );

    // Its requests' answers carry the header; it may change state.
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .header("origin", "http://localhost:5173")
        .json(&json!({"name": "from the page"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    assert_eq!(
        r.headers()["access-control-allow-origin"],
        "http://localhost:5173"
    );

    // Another origin gets no CORS headers (so its page cannot read answers) and cannot write.
    let preflight = preflight.replace("http://localhost:5173", "http://evil.example");
    let (status, text) = raw_http(app.addr, &preflight).await;
    assert_ne!(status, 204);
    assert!(
        !text
            .to_ascii_lowercase()
            .contains("access-control-allow-origin"),
        "{text}"
    );
    let r = app
        .http
        .get(app.url("/api/sessions"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert!(r.headers().get("access-control-allow-origin").is_none());
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .header("origin", "http://evil.example")
        .json(&json!({"name": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
}

/// The management API's and the dashboard's answers tell browsers not to frame, sniff or leak
/// them; the proxy routes' clients are not browsers.
#[tokio::test]
async fn management_answers_carry_the_security_headers() {
    let app = TestApp::spawn().await;
    for path in ["/api/sessions", "/", "/api/keys"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        let h = r.headers();
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        assert_eq!(h["x-frame-options"], "DENY", "{path}");
        assert_eq!(h["referrer-policy"], "no-referrer", "{path}");
    }
    let r = app.http.get(app.url("/")).send().await.unwrap();
    assert!(r.headers().contains_key("content-security-policy"));
    let r = app.chat(user("mock/echo", "hi")).await;
    assert!(!r.headers().contains_key("x-frame-options"));
}
