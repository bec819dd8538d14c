//! HTTP/2 upstreams: many concurrent streams to one provider, spread over a small pool of
//! connections, so none waits behind another connection's stream limit.

use serde_json::Value;

use crate::support::{Options, TestApp, streaming};

/// More streams than one HTTP/2 connection carries (the mock, like hyper, allows 200).
const STREAMS: usize = 1000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_to_one_http2_provider_are_all_open_at_once() {
    // A thousand connections' buffers would show in another test's RSS measurement.
    let _alone = crate::support::MEMORY_MEASURED.lock().await;
    let app = TestApp::spawn_with(Options {
        extra_toml: r#"
[providers.h2]
type = "openai"
base_url = "MOCK_BASE_URL"
api_key = "${MOCK_KEY}"
http2 = true
connections = 8
"#
        .into(),
        first_byte_secs: Some(20.0),
        ..Options::default()
    })
    .await;

    // A plain http:// provider without `http2` still speaks HTTP/1.1.
    let r = app.chat(streaming("mock/chunks:2", "one")).await;
    assert_eq!(r.status(), 200);
    r.text().await.unwrap();
    let stats = mock_stats(&app).await;
    assert_eq!(stats["http2_requests"], 0, "{stats}");
    let before = stats["connections"].as_u64().unwrap();

    // Each stream's answer waits until all of them are open at the mock: were any queued
    // behind a full connection, the mock would give up waiting (10 s) with fewer open.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let model = format!("h2/chunks:2+hold:{STREAMS}");
    let tasks: Vec<_> = (0..STREAMS)
        .map(|i| {
            let client = client.clone();
            let url = app.url("/v1/chat/completions");
            let body = streaming(&model, &format!("stream {i}"));
            tokio::spawn(async move {
                let r = client.post(url).json(&body).send().await.unwrap();
                let status = r.status();
                (status, r.text().await.unwrap())
            })
        })
        .collect();
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 200, "{text}");
        assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    }

    let stats = mock_stats(&app).await;
    assert_eq!(stats["max_open"], STREAMS as u64, "{stats}");
    assert_eq!(stats["http2_requests"], STREAMS as u64, "{stats}");
    // The pool's eight, and this second look at the stats (each look is a new client).
    assert_eq!(
        stats["connections"].as_u64().unwrap() - before,
        8 + 1,
        "{stats}"
    );
}

async fn mock_stats(app: &TestApp) -> Value {
    reqwest::get(format!("http://{}/mock/stats", app.mock.addr))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}
