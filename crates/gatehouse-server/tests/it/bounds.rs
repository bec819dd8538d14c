//! Bounds on what clients can hold: slow headers, idle connections, connections per address,
//! streams; and refusals counted where a misbehaving client shows.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use crate::support::{Options, TestApp, raw_http, rows, session_of, streaming, user};

fn tight(server: &str) -> Options {
    Options {
        server_toml: server.to_owned(),
        ..Options::default()
    }
}

/// Whether the server closed `s` within `within` (a read returns end of file or an error).
async fn closed_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

#[tokio::test]
async fn a_slowloris_client_is_cut_and_others_are_served_meanwhile() {
    let app = TestApp::spawn_with(tight("header_read_timeout_secs = 1")).await;
    let mut slow = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {}\r\nX-Padding: {}\r\n\r\n",
        app.addr,
        "a".repeat(64)
    );
    let dripper = {
        let bytes = request.into_bytes();
        tokio::spawn(async move {
            // Headers one byte every 100 ms: never done within the timeout.
            for b in bytes {
                if slow.write_all(&[b]).await.is_err() {
                    return (slow, true);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (slow, false)
        })
    };
    // Others are served while it drips.
    for _ in 0..5 {
        let r = app.chat(user("mock/echo", "hi")).await;
        assert_eq!(r.status(), 200);
    }
    let t = Instant::now();
    let (mut slow, write_failed) = dripper.await.unwrap();
    assert!(
        write_failed || closed_within(&mut slow, Duration::from_secs(3)).await,
        "the slow connection was not closed"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn idle_connections_are_closed_after_the_timeout() {
    let app = TestApp::spawn_with(tight("header_read_timeout_secs = 1")).await;
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    // A whole keep-alive exchange first, then silence.
    let req = format!("GET /health/live HTTP/1.1\r\nHost: {}\r\n\r\n", app.addr);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    let t = Instant::now();
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "closed too early"
    );
}

#[tokio::test]
async fn two_thousand_idle_connections_do_not_stop_the_gateway() {
    let app = TestApp::spawn().await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    let t = Instant::now();
    let r = app.chat(user("mock/echo", "still here?")).await;
    assert_eq!(r.status(), 200);
    assert!(t.elapsed() < Duration::from_secs(5));
    let h = app.get_json("/health").await;
    assert!(h["connections"]["open"].as_u64().unwrap() >= 2000, "{h}");
    drop(idle);
}

#[tokio::test]
async fn past_max_connections_a_connection_gets_503_with_retry_after_and_is_counted() {
    let app =
        TestApp::spawn_with(tight("max_connections = 20\nheader_read_timeout_secs = 2")).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(app.addr).await.unwrap());
    }
    // Let the accept loop take them all.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let req = format!(
        "GET /health/live HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        app.addr
    );
    let (status, text) = raw_http(app.addr, &req).await;
    assert_eq!(status, 503, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(text.contains("overloaded"), "{text}");
    // The idle ones are closed by the header timeout; then the gateway serves again.
    drop(idle);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, _) = raw_http(app.addr, &req).await;
        if status == 200 {
            break;
        }
        assert!(Instant::now() < deadline, "never served again");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let h = app.get_json("/health").await;
    assert!(
        h["connections"]["refused_full"].as_u64().unwrap() >= 1,
        "{h}"
    );
}

#[tokio::test]
async fn one_address_cannot_take_every_connection() {
    let app = TestApp::spawn_with(tight("max_connections_per_ip = 5")).await;
    let mut theirs = Vec::new();
    for _ in 0..5 {
        let sock = TcpSocket::new_v4().unwrap();
        sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        theirs.push(sock.connect(app.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let sock = TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut sixth = sock.connect(app.addr).await.unwrap();
    let req = format!(
        "GET /health/live HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        app.addr
    );
    sixth.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), sixth.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 503"), "{text}");
    // Another address is served.
    let r = app.chat(user("mock/echo", "hi")).await;
    assert_eq!(r.status(), 200);
    let h = app.get_json("/health").await;
    assert_eq!(h["connections"]["refused_per_ip"], 1, "{h}");
    drop(theirs);
}

#[tokio::test]
async fn past_max_streams_a_stream_gets_503_before_anything_goes_upstream() {
    let app = TestApp::spawn_with(tight("max_streams = 2")).await;
    // Two slow streams hold both places.
    let mut held = Vec::new();
    for _ in 0..2 {
        let r = app.chat(streaming("mock/chunks:3+gap:1500", "slow")).await;
        assert_eq!(r.status(), 200);
        held.push(r);
    }
    let before = app.mock.captured().len();
    let r = app.chat(streaming("mock/echo", "third")).await;
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "overloaded");
    assert_eq!(app.mock.captured().len(), before, "nothing went upstream");
    // A non-streamed request is not a stream.
    assert_eq!(app.chat(user("mock/echo", "plain")).await.status(), 200);
    // Places come back when streams end.
    for r in held {
        let _ = r.bytes().await;
    }
    assert_eq!(
        app.chat(streaming("mock/echo", "again")).await.status(),
        200
    );
    let h = app.get_json("/health").await;
    assert_eq!(h["refused"]["by_code"]["overloaded"], 1, "{h}");
}

#[tokio::test]
async fn refusals_before_routing_are_counted_by_code_and_leave_rows() {
    let app = TestApp::spawn().await;
    // A gateway that has seen no request has no session to put a refusal in: counted only.
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .body("not json either")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let ok = app.chat(user("mock/echo", "hello")).await;
    let sid = session_of(&ok);
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(app.chat(user("nope/none", "hi")).await.status(), 404);
    let r = app
        .http
        .post(app.url("/v1/chat/completions"))
        .body(vec![b' '; 70_000])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let h = app.get_json("/health").await;
    assert_eq!(h["refused"]["by_code"]["invalid_json"], 2, "{h}");
    assert_eq!(h["refused"]["by_code"]["model_not_found"], 1, "{h}");
    assert_eq!(h["refused"]["by_code"]["request_too_large"], 1, "{h}");
    assert_eq!(h["refused"]["total"], 4, "{h}");
    // The three after it are rows of the active session, saying why.
    let rows = rows(&app, &sid).await;
    let mut refused: Vec<(u64, &str, &str)> = rows
        .iter()
        .filter(|r| r["status"] != 200)
        .map(|r| {
            (
                r["status"].as_u64().unwrap(),
                r["error_type"].as_str().unwrap(),
                r["model_key"].as_str().unwrap(),
            )
        })
        .collect();
    refused.sort();
    assert_eq!(
        refused,
        [
            (400, "invalid_json", ""),
            (404, "model_not_found", "nope/none"),
            (413, "request_too_large", "")
        ],
        "{rows:?}"
    );
    let unknown = rows.iter().find(|r| r["status"] == 404).unwrap();
    assert!(
        unknown["error_message"]
            .as_str()
            .unwrap()
            .contains("nope/none"),
        "{unknown}"
    );
}

/// Old rows (written here as an older gateway would have left them) are pruned by the
/// background task, recent ones stay, and idle sessions leave memory but come back when named.
#[tokio::test]
async fn retention_prunes_old_rows_and_idle_sessions_leave_memory() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[retention]\nrequests_days = 1\ninterval_secs = 1\nsession_idle_hours = 0\nbatch_rows = 7\n".into(),
        ..Options::default()
    })
    .await;
    let r = app
        .chat_with(
            &[("x-gatehouse-session", "kept")],
            user("mock/echo", "recent"),
        )
        .await;
    assert_eq!(r.status(), 200);
    app.state.writer.flush().await;
    let old = gatehouse_core::time::now_ms() - 3 * 86_400_000;
    // Row ids are UUID v7 of the time the row was written, as the writer makes them.
    let id_at = |ms: i64| {
        let ms = u64::try_from(ms).unwrap();
        uuid::Uuid::new_v7(uuid::Timestamp::from_unix_time(
            ms / 1000,
            u32::try_from((ms % 1000) * 1_000_000).unwrap(),
            0,
            0,
        ))
        .to_string()
    };
    let rows: Vec<_> = (0..50)
        .map(|i| {
            let r = crate::support::stored_row(&id_at(old + i), "kept", old + i);
            gatehouse_store::WriteOp::InsertRequest(Box::new(r))
        })
        .collect();
    app.state.store.apply(&rows).await.unwrap();
    // Idle for more than 0 hours: out of memory (the active session aside), still listed.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h = app.get_json("/health").await;
        if h["retention"]["pruned"]["requests"].as_u64() == Some(50) && h["sessions"] == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never pruned: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Named again by a request, it comes back without a second `new_session`.
    let mut ws = crate::live::connect(&app).await;
    let _init = crate::live::next(&mut ws).await;
    let r = app
        .chat_with(
            &[("x-gatehouse-session", "kept")],
            user("mock/echo", "again"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let seen = crate::live::until(&mut ws, "metric").await;
    assert!(!seen.iter().any(|e| e["type"] == "new_session"), "{seen:?}");
    // Its rows: the recent one kept, the new one added, the old ones gone; its stored name too.
    let rows = crate::support::rows(&app, "kept").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(rows.iter().all(|r| r["preview"] != "old"));
    let listed = app.get_json("/api/sessions").await;
    let kept = listed["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == "kept")
        .unwrap()
        .clone();
    assert_eq!(kept["name"], "recent", "{kept}");
}
