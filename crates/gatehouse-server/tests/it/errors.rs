//! Bad input gets a clear OpenAI-style error with the right status, never a panic.

use serde_json::{Value, json};

use crate::support::{TestApp, user};

async fn error_of(r: reqwest::Response) -> (u16, Value) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap();
    assert!(v["error"]["message"].is_string(), "{v}");
    assert!(v["error"]["type"].is_string(), "{v}");
    assert!(v["error"]["code"].is_string(), "{v}");
    assert!(v["error"].get("param").is_some(), "{v}");
    (status, v)
}

async fn raw(app: &TestApp, body: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/chat/completions"))
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn malformed_bodies_are_400_naming_the_field() {
    let app = TestApp::spawn().await;
    let cases = [
        ("", None),
        ("{", None),
        ("[]", None),
        ("\"model\"", None),
        (
            r#"{"messages":[{"role":"user","content":"x"}]}"#,
            Some("model"),
        ),
        (
            r#"{"model":7,"messages":[{"role":"user","content":"x"}]}"#,
            Some("model"),
        ),
        (r#"{"model":"mock/echo"}"#, Some("messages")),
        (r#"{"model":"mock/echo","messages":{}}"#, Some("messages")),
        (
            r#"{"model":"mock/echo","messages":[{"role":"user","content":{"a":1}}]}"#,
            Some("messages[0].content"),
        ),
        (
            r#"{"model":"mock/echo","messages":[{"role":"user","content":[{"type":"text"}]}]}"#,
            Some("messages[0].content[0].text"),
        ),
        (
            r#"{"model":"mock/echo","stream":1,"messages":[{"role":"user","content":"x"}]}"#,
            Some("stream"),
        ),
        (
            r#"{"model":"mock/echo","max_tokens":"10","messages":[{"role":"user","content":"x"}]}"#,
            Some("max_tokens"),
        ),
    ];
    for (body, param) in cases {
        let (status, v) = error_of(raw(&app, body).await).await;
        assert_eq!(status, 400, "{body} -> {v}");
        match param {
            Some(p) => assert_eq!(v["error"]["param"], p, "{body}"),
            None => assert_eq!(v["error"]["code"], "invalid_json", "{body}"),
        }
    }
    assert!(
        app.mock.captured().is_empty(),
        "nothing malformed reaches upstream"
    );
}

#[tokio::test]
async fn unknown_model_is_404_with_suggestions() {
    let app = TestApp::spawn().await;
    let (status, v) = error_of(app.chat(user("echo", "hi")).await).await;
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "model_not_found");
    assert_eq!(v["error"]["param"], "model");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mock/echo"),
        "{v}"
    );
}

#[tokio::test]
async fn body_over_the_limit_is_413() {
    let app = TestApp::spawn().await;
    let big = "x".repeat(70_000);
    let (status, v) = error_of(app.chat(user("mock/echo", &big)).await).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "request_too_large");
}

#[tokio::test]
async fn prompt_over_the_window_is_413_saying_by_how_much() {
    // Without heavy-duty fallback, which would move it to mock/echo (routing.rs tests that).
    let app = TestApp::spawn_with(crate::support::Options {
        extra_toml:
            "[proxy.heavy_duty]\nenabled = false\nthreshold_pct = 90\nwhen_none = \"forward\"\n"
                .to_owned(),
        ..Default::default()
    })
    .await;
    // mock/tiny has a 20-token window; 25 words are well over it.
    let text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty twentyone twentytwo twentythree twentyfour twentyfive";
    let (status, v) = error_of(app.chat(user("mock/tiny", text)).await).await;
    assert_eq!(status, 413);
    assert_eq!(v["error"]["code"], "context_length_exceeded");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("20-token window"), "{msg}");
    assert!(msg.contains("more than"), "{msg}");
    assert!(app.mock.captured().is_empty());
}

#[tokio::test]
async fn loops_are_refused() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[("x-gatehouse-hop", "gatehouse/other")],
            user("mock/echo", "hi"),
        )
        .await;
    let (status, v) = error_of(r).await;
    assert_eq!(status, 508);
    assert_eq!(v["error"]["code"], "loop_detected");

    // A provider whose base URL is the gateway itself.
    let (status, v) = error_of(app.chat(user("self/loop", "hi")).await).await;
    assert_eq!(status, 508, "{v}");
    assert!(app.mock.captured().is_empty());
}

#[tokio::test]
async fn bad_session_header_unknown_routes_and_methods() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[("x-gatehouse-session", "has spaces")],
            user("mock/echo", "hi"),
        )
        .await;
    let (status, v) = error_of(r).await;
    assert_eq!(status, 400);
    assert_eq!(v["error"]["param"], "X-Gatehouse-Session");

    let (status, _) = error_of(app.http.get(app.url("/nope")).send().await.unwrap()).await;
    assert_eq!(status, 404);
    let (status, _) = error_of(
        app.http
            .get(app.url("/v1/chat/completions"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    let (status, _) = error_of(
        app.http
            .get(app.url("/api/sessions/does-not-exist"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    let r = app
        .http
        .patch(app.url("/api/sessions/x"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn upstream_unreachable_is_502() {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = dead.local_addr().unwrap().port();
    drop(dead);
    let app = TestApp::spawn_with(crate::support::Options {
        extra_toml: format!(
            "[providers.dead]\ntype = \"openai\"\nbase_url = \"http://127.0.0.1:{port}/v1\"\n"
        ),
        retries: Some(1),
        ..Default::default()
    })
    .await;
    let (status, v) = error_of(
        app.chat(json!({"model": "dead/x", "messages": [{"role": "user", "content": "hi"}]}))
            .await,
    )
    .await;
    assert_eq!(status, 502);
    assert_eq!(v["error"]["code"], "upstream_unreachable");
}
