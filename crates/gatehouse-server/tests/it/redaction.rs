//! Secrets never leave the machine: redacted by default, refused in block mode, passed in off.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, rows, session_of};

// Shapes of real credentials, made up for the test.
const GITHUB: &str = "ghp_A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5A1b2C3d4E5";
const AWS_ID: &str = "AKIAIOSFODNN7EXAMPLE";

fn leaky() -> Value {
    json!({"model": "mock/echo", "messages": [
        {"role": "system", "content": "You are a coding assistant."},
        {"role": "user", "content": format!("My CI fails. env:\nGITHUB_TOKEN={GITHUB}\nAWS_ACCESS_KEY_ID={AWS_ID}\nDEBUG=1\nWhy?")}
    ]})
}

#[tokio::test]
async fn secrets_are_replaced_before_the_request_leaves() {
    let app = TestApp::spawn().await;
    let r = app.chat(leaky()).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    let sent = app.mock.captured().pop().unwrap().body;
    let content = sent["messages"][1]["content"].as_str().unwrap().to_owned();
    assert!(
        !content.contains(GITHUB) && !content.contains(AWS_ID),
        "{content}"
    );
    assert!(
        content.contains("GITHUB_TOKEN=[REDACTED:github_token]"),
        "{content}"
    );
    assert!(
        content.contains("AWS_ACCESS_KEY_ID=[REDACTED:aws_access_key_id]"),
        "{content}"
    );
    assert!(
        content.contains("DEBUG=1\nWhy?"),
        "the rest is untouched: {content}"
    );
    assert_eq!(
        sent["messages"][0]["content"],
        "You are a coding assistant."
    );
    // Nothing stored holds the secret either.
    let stored = serde_json::to_string(&rows(&app, &sid).await).unwrap();
    assert!(!stored.contains(GITHUB) && !stored.contains(AWS_ID));
    let sessions = app.get_json("/api/sessions").await.to_string();
    assert!(!sessions.contains(GITHUB));
}

#[tokio::test]
async fn block_mode_refuses_and_names_the_kind_and_place_only() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[redaction]\nmode = \"block\"\n".into(),
        ..Options::default()
    })
    .await;
    let r = app.chat(leaky()).await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "secret_detected");
    assert_eq!(v["error"]["param"], "messages[1]");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("GitHub token"), "{msg}");
    assert!(!msg.contains(GITHUB) && !msg.contains("ghp_"), "{msg}");
    assert!(app.mock.captured().is_empty(), "nothing was sent upstream");
    // A clean request still goes through.
    let r = app
        .chat(json!({"model": "mock/echo", "messages": [{"role": "user", "content": "hello"}]}))
        .await;
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn off_mode_forwards_the_bytes_as_sent() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[redaction]\nmode = \"off\"\n".into(),
        ..Options::default()
    })
    .await;
    let r = app.chat(leaky()).await;
    assert_eq!(r.status(), 200);
    let sent = app.mock.captured().pop().unwrap().body;
    assert!(
        sent["messages"][1]["content"]
            .as_str()
            .unwrap()
            .contains(GITHUB)
    );
}

#[tokio::test]
async fn secrets_written_with_json_escapes_are_replaced_in_openai_and_anthropic_bodies() {
    let app = TestApp::spawn().await;
    // What the provider would read: sk-proj-…, a key after a typographic quote, a URL password.
    let content = r#"key \u0073k-proj-Abc123Def456Ghi789Jkl012Mno345 then \u201cAKIAIOSFODNN7EXAMPLE\u201d and postgres:\/\/app:s3cretPass99@db:5432\/app"#;
    let openai =
        format!(r#"{{"model":"mock/echo","messages":[{{"role":"user","content":"{content}"}}]}}"#);
    let anthropic = format!(
        r#"{{"model":"mock/echo","max_tokens":50,"messages":[{{"role":"user","content":[{{"type":"text","text":"{content}"}}]}}]}}"#
    );
    for (path, body) in [
        ("/v1/chat/completions", openai),
        ("/v1/messages", anthropic),
    ] {
        let r = app
            .http
            .post(app.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let sent = app.mock.captured().pop().unwrap().body.to_string();
        for secret in ["sk-proj-Abc123", "AKIAIOSFODNN7EXAMPLE", "s3cretPass99"] {
            assert!(
                !sent.contains(secret),
                "{path}: {secret} reached the provider: {sent}"
            );
        }
        for placeholder in [
            "[REDACTED:openai_key]",
            "[REDACTED:aws_access_key_id]",
            "[REDACTED:url_credentials]",
        ] {
            assert!(sent.contains(placeholder), "{path}: {sent}");
        }
    }
}
