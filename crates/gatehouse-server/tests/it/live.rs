//! The live view: `/ws` (init, events in order, alerts, log figures, slow clients, origins,
//! shutdown) and the dashboard's files.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use gatehouse_services::events::Event;
use gatehouse_services::logwatch::LogMetric;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::support::{Options, TestApp, session_of, streaming, user};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

pub(crate) async fn connect(app: &TestApp) -> Ws {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{}/ws", app.addr))
        .await
        .unwrap();
    ws
}

/// The next JSON message, skipping pings; fails after 5 s.
pub(crate) async fn next(ws: &mut Ws) -> Value {
    loop {
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
        assert!(got.is_ok(), "no WebSocket message within 5 s");
        let msg = got.unwrap().unwrap().unwrap();
        if let Message::Text(t) = msg {
            return serde_json::from_str(&t).unwrap();
        }
    }
}

/// Messages until one of type `ty` arrives (that one included).
pub(crate) async fn until(ws: &mut Ws, ty: &str) -> Vec<Value> {
    let mut seen = Vec::new();
    loop {
        let v = next(ws).await;
        let done = v["type"] == ty;
        seen.push(v);
        if done {
            return seen;
        }
    }
}

fn types(v: &[Value]) -> Vec<&str> {
    v.iter().map(|m| m["type"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn init_then_every_event_in_order() {
    let app = TestApp::spawn().await;
    let mut ws = connect(&app).await;
    let init = next(&mut ws).await;
    assert_eq!(init["type"], "init");
    assert!(init["active_session"].is_null());
    assert_eq!(init["recent_requests"], json!([]));
    assert_eq!(init["log_watcher"][0]["state"], "waiting");

    let r = app.chat(user("mock/echo", "first question")).await;
    assert_eq!(r.status(), 200);
    let request_id = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    let sid = session_of(&r);
    let seen = until(&mut ws, "metric").await;
    assert_eq!(types(&seen), ["new_session", "request_started", "metric"]);
    assert_eq!(seen[0]["session"]["id"], sid.as_str());
    assert_eq!(seen[0]["active"], true);
    assert_eq!(seen[1]["request_id"], request_id.as_str());
    assert_eq!(seen[1]["model"], "mock/echo");
    let metric = &seen[2];
    assert_eq!(metric["request"]["id"], request_id.as_str());
    assert_eq!(metric["request"]["status"], 200);
    let used = metric["request"]["prompt_tokens"].as_u64().unwrap()
        + metric["request"]["completion_tokens"].as_u64().unwrap();
    assert_eq!(metric["gauge"]["tokens"], used);
    assert_eq!(metric["gauge"]["max_context"], 4096);
    assert_eq!(metric["gauge"]["source"], "proxy");
    // $1 / $2 / $0.5 per million for input / output / cached input; the mock reports 4 cached.
    let completion = metric["request"]["completion_tokens"].as_f64().unwrap();
    let expected = ((11.0 - 4.0) * 1.0 + 4.0 * 0.5 + completion * 2.0) / 1e6;
    let cost = metric["request"]["cost_usd"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-15, "{cost} != {expected}");
    let seqs: Vec<u64> = seen.iter().map(|m| m["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs[0] > init["seq"].as_u64().unwrap());

    // A stream: its metric comes when the stream ends.
    let r = app.chat(streaming("mock/echo", "again")).await;
    r.text().await.unwrap();
    let seen = until(&mut ws, "metric").await;
    assert_eq!(types(&seen), ["request_started", "metric"]);
    assert_eq!(seen[1]["request"]["stream"], true);

    // Session management is live too.
    let r = app
        .http
        .patch(app.url(&format!("/api/sessions/{sid}")))
        .json(&json!({"name": "renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v = next(&mut ws).await;
    assert_eq!(
        (v["type"].as_str(), v["session"]["name"].as_str()),
        (Some("session_renamed"), Some("renamed"))
    );

    // A new client sees what happened in its init.
    let mut ws2 = connect(&app).await;
    let init = next(&mut ws2).await;
    assert_eq!(init["active_session"]["id"], sid.as_str());
    assert_eq!(init["stats"]["request_count"], 2);
    assert_eq!(init["recent_requests"].as_array().unwrap().len(), 2);
    assert_eq!(init["gauge"]["source"], "proxy");
    // Priced model: each row has its cost and the session sums them.
    let costs: Vec<f64> = init["recent_requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cost_usd"].as_f64().unwrap())
        .collect();
    assert!(costs.iter().all(|c| *c > 0.0));
    let total = init["stats"]["cost_usd"].as_f64().unwrap();
    assert!((total - costs.iter().sum::<f64>()).abs() < 1e-12);
}

#[tokio::test]
async fn alerts_fire_when_the_level_changes_only() {
    // Mock usage: 11 prompt tokens + one completion token per chunk, in a 20-token window.
    let extra = ["4", "5", "6", "8"]
        .iter()
        .map(|n| {
            format!(
                "[models.\"mock/w{n}\"]\nprovider = \"mock\"\nmodel = \"chunks:{n}\"\nmax_context_size = 20\n"
            )
        })
        .collect::<String>();
    let app = TestApp::spawn_with(Options {
        extra_toml: extra,
        ..Options::default()
    })
    .await;
    let mut ws = connect(&app).await;
    next(&mut ws).await;
    let mut alerts = Vec::new();
    for n in ["4", "5", "6", "8", "4"] {
        let r = app
            .chat_with(
                &[("x-gatehouse-session", "alerting")],
                user(&format!("mock/w{n}"), "hi"),
            )
            .await;
        assert_eq!(r.status(), 200);
        for m in until(&mut ws, "metric").await {
            if m["type"] == "alert" {
                alerts.push((m["level"].clone(), m["color"].clone(), m["pct"].clone()));
            }
        }
    }
    // 75 % (none), 80 % caution, 85 % (same level: silent), 95 % critical, 75 % cleared.
    assert_eq!(
        alerts,
        [
            (json!("caution"), json!("#eab308"), json!(80.0)),
            (json!("critical"), json!("#ef4444"), json!(95.0)),
            (Value::Null, Value::Null, json!(75.0)),
        ]
    );
}

#[tokio::test]
async fn log_figures_reach_the_active_sessions_gauge() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .json(&json!({"name": "ide"}))
        .send()
        .await
        .unwrap();
    let sid = r.json::<Value>().await.unwrap()["session"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut ws = connect(&app).await;
    next(&mut ws).await;
    // The file appears after the start: it is read from its beginning.
    std::fs::write(
        app.dir.path().join("core.log"),
        "Request had the following token counts\n- contextLength: 10000\n- counted tokens: 9000\n- tools: 300\n- system message: 200\n\n",
    )
    .unwrap();
    let seen = until(&mut ws, "log_metric").await;
    let alert = seen.iter().find(|m| m["type"] == "alert").unwrap();
    assert_eq!(alert["level"], "critical");
    let m = seen.last().unwrap();
    assert_eq!(m["metric"]["kind"], "compile_chat");
    assert_eq!(m["gauge"]["session_id"], sid.as_str());
    assert_eq!(m["gauge"]["tokens"], 9500);
    assert_eq!(m["gauge"]["source"], "compile_chat");
    assert_eq!(m["gauge"]["band"], "red");
    let h = app.get_json("/health").await;
    assert_eq!(h["log_watcher"]["paths"][0]["state"], "following");
    assert_eq!(h["log_watcher"]["paths"][0]["metrics"], 1);
    // The session API shows the merged gauge as well.
    let s = app.get_json("/api/sessions/active").await;
    assert_eq!(s["gauge"]["source"], "compile_chat");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[tokio::test]
async fn a_client_that_never_reads_is_bounded_then_resynchronised() {
    let _alone = crate::support::MEMORY_MEASURED.lock().await;
    let app = TestApp::spawn_with(Options {
        event_buffer: Some(64),
        ..Options::default()
    })
    .await;
    let mut ws = connect(&app).await;
    assert_eq!(next(&mut ws).await["type"], "init");
    let before = rss_bytes();
    // 100,000 events of ~1 KiB each: 100 MiB if anything buffered them per client.
    let raw = "x".repeat(1000);
    for _ in 0..100_000 {
        app.state.bus.publish(Event::LogMetric {
            path: "core.log".into(),
            metric: LogMetric {
                raw: raw.clone(),
                ..LogMetric::default()
            },
            gauge: None,
        });
        if app.state.bus.stats().published % 1000 == 0 {
            tokio::task::yield_now().await;
        }
    }
    let grown = rss_bytes().saturating_sub(before);
    assert!(
        grown < 48 << 20,
        "RSS grew by {} MiB while a client did not read",
        grown >> 20
    );
    // Reading again: what fits in the socket buffers, then the notice and a fresh init.
    let mut got_lagged = false;
    loop {
        let v = next(&mut ws).await;
        match v["type"].as_str().unwrap() {
            "log_metric" => continue,
            "lagged" => {
                assert!(v["missed"].as_u64().unwrap() > 0);
                got_lagged = true;
            }
            "init" => {
                assert!(got_lagged, "init came without a lagged notice");
                break;
            }
            other => panic!("unexpected {other}"),
        }
    }
    let h = app.get_json("/health").await;
    assert!(h["websocket"]["resyncs"].as_u64().unwrap() >= 1);
    // And it is live again.
    app.chat(user("mock/echo", "after the flood")).await;
    let seen = until(&mut ws, "metric").await;
    assert!(types(&seen).contains(&"request_started"));
}

#[tokio::test]
async fn foreign_pages_are_refused_on_the_socket_and_on_changes() {
    let app = TestApp::spawn().await;
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", "http://evil.example".parse().unwrap());
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    match err {
        tokio_tungstenite::tungstenite::Error::Http(r) => assert_eq!(r.status(), 403),
        other => panic!("expected a 403, got {other:?}"),
    }
    // The gateway's own page may connect.
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("origin", format!("http://{}", app.addr).parse().unwrap());
    tokio_tungstenite::connect_async(req).await.unwrap();

    let r = app
        .http
        .post(app.url("/api/sessions"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "origin_not_allowed");
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .header("origin", "http://evil.example")
        .json(&user("mock/echo", "spend my tokens"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(app.mock.captured().len(), 0);
    // Reads stay open (the browser's same-origin policy keeps them private).
    let r = app
        .http
        .get(app.url("/api/sessions"))
        .header("origin", "http://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn shutdown_closes_sockets_instead_of_waiting_for_them() {
    let mut app = TestApp::spawn().await;
    let mut ws = connect(&app).await;
    next(&mut ws).await;
    tokio::time::timeout(Duration::from_secs(5), app.shutdown())
        .await
        .expect("an open WebSocket held the shutdown");
    // The client is told.
    let end = tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .unwrap();
    assert!(
        matches!(end, None | Some(Ok(Message::Close(_))) | Some(Err(_))),
        "{end:?}"
    );
}

#[tokio::test]
async fn pings_keep_quiet_clients_connected() {
    let app = TestApp::spawn().await;
    let mut ws = connect(&app).await;
    next(&mut ws).await;
    // The test config pings every 5 s; answer like a browser would (the library does).
    let msg = tokio::time::timeout(Duration::from_secs(8), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(msg, Message::Ping(_)), "{msg:?}");
    ws.send(Message::Pong(Default::default())).await.unwrap();
}

#[tokio::test]
async fn the_dashboard_is_served_from_the_binary() {
    let app = TestApp::spawn().await;
    let r = app.http.get(app.url("/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("default-src 'self'"));
    let html = r.text().await.unwrap();
    assert!(html.contains("/assets/app.js"));
    // Every file the page references exists; nothing points elsewhere.
    for name in [
        "app.js",
        "chart.js",
        "live.js",
        "format.js",
        "style.css",
        "favicon.svg",
    ] {
        let r = app
            .http
            .get(app.url(&format!("/assets/{name}")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{name}");
        let body = r.text().await.unwrap();
        assert!(!body.is_empty(), "{name} is empty");
        // The SVG namespace is a name, not an address.
        let body = body.replace("http://www.w3.org/2000/svg", "");
        {
            assert!(
                !body.contains("https://") && !body.contains("http://"),
                "{name} refers to another site"
            );
        }
    }
    let r = app
        .http
        .get(app.url("/assets/nope.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
