//! Session-less passthrough: `X-Target-Base-URL` and the client's own key, only to listed
//! hosts; the features still apply and the row names the host, never the key.

use serde_json::json;

use crate::support::{Options, TestApp, rows, session_of, user};

const CLIENT_KEY: &str = "sk-client-own-key-4242";

async fn app_allowing(hosts: &str) -> TestApp {
    TestApp::spawn_with(Options {
        extra_toml: format!("[passthrough]\nallowed_hosts = [{hosts}]\n"),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn a_listed_target_gets_the_request_with_the_clients_key() {
    let app = app_allowing(r#""127.0.0.1""#).await;
    let target = app.mock.base_url();
    let secret = "AKIAIOSFODNN7EXAMPLE";
    let r = app
        .chat_with(
            &[
                ("x-target-base-url", &target),
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
            ],
            user("echo", &format!("deploy with key {secret}")),
        )
        .await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    assert_eq!(sid, "passthrough:127.0.0.1", "its own session");
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body["choices"][0]["message"]["content"].is_string());

    let got = app.mock.captured().pop().unwrap();
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {CLIENT_KEY}").as_str(),
        "the client's key, not the configured one"
    );
    assert_eq!(
        got.body["model"], "echo",
        "the client's model name as it is"
    );
    let sent = got.body["messages"][0]["content"].as_str().unwrap();
    assert!(!sent.contains(secret), "redaction applies: {sent}");

    let row = &rows(&app, &sid).await[0];
    assert_eq!(row["provider"], "passthrough:127.0.0.1", "{row}");
    assert_eq!(row["status"], 200);
    assert!(
        row["routing"]
            .as_str()
            .unwrap()
            .contains("passthrough to http://127.0.0.1"),
        "{row}"
    );
    // The key is nowhere in what the gateway keeps.
    let export = app
        .http
        .get(app.url("/api/export/json?all=1"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!export.contains(CLIENT_KEY));
    assert!(export.contains("passthrough:127.0.0.1"), "{export}");
    let stored = app.stored_bytes().await;
    assert!(!String::from_utf8_lossy(&stored).contains(CLIENT_KEY));

    // The user's active session is not the passthrough one.
    let plain = app.chat(user("mock/echo", "hello")).await;
    assert_ne!(session_of(&plain), sid);
}

#[tokio::test]
async fn an_anthropic_client_passes_through_with_its_x_api_key() {
    let app = app_allowing(r#""127.0.0.1""#).await;
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-target-base-url", app.mock.base_url())
        .header("x-api-key", CLIENT_KEY)
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-echo", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["type"], "message", "{body}");
    let got = app.mock.captured().pop().unwrap();
    assert_eq!(got.headers["x-api-key"], CLIENT_KEY);
    assert_eq!(got.body["model"], "claude-echo");
}

/// Claude Code signed in with a subscription sends an OAuth token as a Bearer token, never
/// `x-api-key`; Anthropic wants it back in the same header.
#[tokio::test]
async fn an_oauth_token_stays_a_bearer_token() {
    let app = app_allowing(r#""127.0.0.1""#).await;
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .header("x-target-base-url", app.mock.base_url())
        .header("authorization", format!("Bearer {CLIENT_KEY}"))
        .header("anthropic-beta", "oauth-2025-04-20")
        .header("anthropic-version", "2023-06-01")
        .json(&json!({"model": "claude-echo", "max_tokens": 64,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let got = app.mock.captured().pop().unwrap();
    assert_eq!(
        got.headers["authorization"],
        format!("Bearer {CLIENT_KEY}").as_str()
    );
    assert!(!got.headers.contains_key("x-api-key"), "{:?}", got.headers);
    assert_eq!(got.headers["anthropic-beta"], "oauth-2025-04-20");
}

#[tokio::test]
async fn anything_not_listed_is_refused() {
    let app = app_allowing(r#""api.example.com", "localhost""#).await;
    let key = format!("Bearer {CLIENT_KEY}");
    let cases = [
        // an address not listed
        app.mock.base_url(),
        // a listed name that resolves to loopback, whose address is not listed
        app.mock.base_url().replace("127.0.0.1", "localhost"),
        // a suffix of a listed name is not that name
        "https://evil-api.example.com/v1".to_owned(),
        "https://api.example.com.evil.net/v1".to_owned(),
        "https://user:pw@api.example.com/v1".to_owned(),
        "ftp://api.example.com/v1".to_owned(),
        "not a url".to_owned(),
    ];
    for target in cases {
        let r = app
            .chat_with(
                &[("x-target-base-url", &target), ("authorization", &key)],
                user("echo", "hi"),
            )
            .await;
        assert_eq!(r.status(), 403, "{target}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "passthrough_not_allowed", "{target}");
        let msg = e["error"]["message"].as_str().unwrap();
        assert!(!msg.contains("pw@"), "{msg}");
    }
    assert!(app.mock.captured().is_empty(), "nothing was sent");
}

#[tokio::test]
async fn passthrough_is_off_by_default_and_needs_the_clients_key() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[
                ("x-target-base-url", &app.mock.base_url()),
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
            ],
            user("echo", "hi"),
        )
        .await;
    assert_eq!(r.status(), 403);
    let e: serde_json::Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("passthrough is off"),
        "{e}"
    );

    let app = app_allowing(r#""127.0.0.1""#).await;
    let r = app
        .chat_with(
            &[("x-target-base-url", &app.mock.base_url())],
            user("echo", "hi"),
        )
        .await;
    assert_eq!(r.status(), 401);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "provider_key_missing", "{e}");
}

/// The gateway puts the endpoint's path after the base URL; a query there is not kept.
#[tokio::test]
async fn a_query_on_the_target_does_not_swallow_the_path() {
    let app = app_allowing(r#""127.0.0.1""#).await;
    let target = format!("{}/?trace=1#x", app.mock.base_url());
    let r = app
        .chat_with(
            &[
                ("x-target-base-url", &target),
                ("authorization", &format!("Bearer {CLIENT_KEY}")),
            ],
            user("echo", "hi"),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}
