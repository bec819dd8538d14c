//! Scripted faults on every kind of upstream (Anthropic, Gemini, Ollama mocks, and a port that
//! resets every connection): what the gateway retries, where it falls back, what the breaker
//! counts, and what the client sees.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, rows, session_of, streaming, user};

/// A port that accepts connections and drops them before any byte: a reset before headers.
async fn dead_port() -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            drop(s);
        }
    });
    addr
}

fn options(dead: std::net::SocketAddr) -> Options {
    let mut toml = format!(
        r#"
[providers.mock2]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[providers.dead]
type = "openai"
base_url = "http://{dead}/v1"
api_key = "${{MOCK_KEY}}"

[models."mock2/good"]
provider = "mock2"
model = "chunks:2"
max_context_size = 4096

[models."dead/x"]
provider = "dead"
model = "x"
max_context_size = 4096
fallbacks = ["mock2/good"]

[providers.anth]
type = "anthropic"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[providers.gem]
type = "gemini"
base_url = "MOCK_BASE_URL"
api_key = "${{MOCK_KEY}}"

[providers.ol]
type = "ollama"
base_url = "MOCK_BASE_URL"

[models."gem/stall"]
provider = "gem"
model = "chunks:3+gap:1500"
max_context_size = 4096
"#
    );
    for p in PROVIDERS {
        for (name, script, fallback) in [
            ("flaky", "fail:1", false),
            ("busy", "status:429+retryafter:0", true),
            ("silent", "silent:1", true),
            ("empty", "empty:1", true),
            ("cut", "chunks:6+cut:3+gap:30", false),
        ] {
            toml.push_str(&format!(
                "\n[models.\"{p}/{name}\"]\nprovider = \"{p}\"\nmodel = \"{script}\"\nmax_context_size = 4096\n{}",
                if fallback { "fallbacks = [\"mock2/good\"]\n" } else { "" }
            ));
        }
    }
    Options {
        extra_toml: toml,
        retries: Some(1),
        first_byte_secs: Some(1.0),
        ..Options::default()
    }
}

const PROVIDERS: [&str; 3] = ["anth", "gem", "ol"];

async fn last_row(app: &TestApp, r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let sid = session_of(&r);
    let body = r.text().await.unwrap();
    let row = rows(app, &sid).await.remove(0);
    (status, body, row)
}

#[tokio::test]
async fn each_fault_on_each_kind_of_upstream() {
    let app = TestApp::spawn_with(options(dead_port().await)).await;
    for p in PROVIDERS {
        // Overloaded (503) once: retried, answered; the row says why.
        let (status, body, row) =
            last_row(&app, app.chat(user(&format!("{p}/flaky"), "x")).await).await;
        assert_eq!(status, 200, "{p}: {body}");
        assert_eq!(row["attempts"], 2, "{p}");
        assert!(
            row["routing"].as_str().unwrap().starts_with(&format!(
                "`{p}/flaky` attempt 1 retried: provider `{p}` answered 503"
            )),
            "{p}: {row}"
        );

        // 429 with Retry-After, twice: the fallback answers.
        let (status, body, row) =
            last_row(&app, app.chat(user(&format!("{p}/busy"), "x")).await).await;
        assert_eq!(status, 200, "{p}: {body}");
        assert_eq!(row["provider"], "mock2", "{p}");
        assert_eq!(row["attempts"], 3, "{p}: two 429s and the fallback");
        assert!(
            row["routing"]
                .as_str()
                .unwrap()
                .contains("fell back to `mock2/good`"),
            "{p}: {row}"
        );

        // A stream that stalls before its first byte, then one that ends empty: the provider
        // had the request, so it is not sent to it again; the fallback answers.
        for fault in ["silent", "empty"] {
            let (status, body, row) = last_row(
                &app,
                app.chat(streaming(&format!("{p}/{fault}"), "x")).await,
            )
            .await;
            assert_eq!(status, 200, "{p}/{fault}: {body}");
            assert!(
                body.contains(" Hello") && body.ends_with("data: [DONE]\n\n"),
                "{p}/{fault}: {body}"
            );
            assert_eq!(row["attempts"], 2, "{p}/{fault}");
            assert_eq!(row["provider"], "mock2", "{p}/{fault}");
            assert!(row["error_type"].is_null(), "{p}/{fault}: {row}");
        }

        // A stream cut mid-way: the client has bytes, so no retry; it gets an error event.
        let (status, body, row) =
            last_row(&app, app.chat(streaming(&format!("{p}/cut"), "x")).await).await;
        assert_eq!(status, 200, "{p}");
        assert!(
            body.contains("\"code\":\"stream_interrupted\""),
            "{p}: {body}"
        );
        assert_eq!(row["error_type"], "stream_interrupted", "{p}: {row}");
    }
    // A stream that stalls mid-way (no byte for longer than the idle timeout, 1 s here).
    let (status, body, row) = last_row(&app, app.chat(streaming("gem/stall", "x")).await).await;
    assert_eq!(status, 200);
    assert!(body.contains("no data for 1.0 s"), "{body}");
    assert_eq!(row["error_type"], "stream_interrupted", "{row}");

    // Anthropic's client sees the cut in its own format.
    let r = app
        .http
        .post(app.url("/v1/messages"))
        .json(&json!({"model": "gem/cut", "max_tokens": 9, "stream": true, "messages": [{"role": "user", "content": "x"}]}))
        .send()
        .await
        .unwrap();
    let body = r.text().await.unwrap();
    assert!(
        body.contains("event: error") && body.contains("\"type\":\"api_error\""),
        "{body}"
    );

    // Connections reset before any header: the request may have been read, so not resent;
    // the fallback answers and the breaker counts it.
    let (status, _, row) = last_row(&app, app.chat(user("dead/x", "x")).await).await;
    assert_eq!(status, 200);
    assert_eq!(row["provider"], "mock2");
    let providers = app.get_json("/api/providers").await;
    let dead = providers["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == "dead")
        .unwrap();
    assert_eq!(dead["circuit_breaker"]["consecutive_failures"], 1);
    assert_eq!(dead["circuit_breaker"]["state"], "closed");
}
