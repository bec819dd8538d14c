//! `/api/export/csv|json`: scopes, RFC 4180 quoting, and a 100,000-row export in bounded memory.

use futures_util::StreamExt;
use gatehouse_core::SessionId;
use gatehouse_core::record::{RequestRecord, UsageSource};
use gatehouse_store::WriteOp;
use serde_json::Value;

use crate::support::{TestApp, session_of, user};

/// An RFC 4180 reader, written here so the test does not trust the writer's own idea of it.
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut row = Vec::new();
    let mut field = String::new();
    let mut chars = text.chars().peekable();
    let mut quoted = false;
    while let Some(c) = chars.next() {
        if quoted {
            match c {
                '"' if chars.peek() == Some(&'"') => {
                    chars.next();
                    field.push('"');
                }
                '"' => quoted = false,
                c => field.push(c),
            }
            continue;
        }
        match c {
            '"' => quoted = true,
            ',' => row.push(std::mem::take(&mut field)),
            '\r' if chars.peek() == Some(&'\n') => {
                chars.next();
                row.push(std::mem::take(&mut field));
                rows.push(std::mem::take(&mut row));
            }
            c => field.push(c),
        }
    }
    assert!(!quoted, "unterminated quoted field");
    if !field.is_empty() || !row.is_empty() {
        row.push(field);
        rows.push(row);
    }
    rows
}

fn record(session: &SessionId, n: usize, filler: &str) -> RequestRecord {
    RequestRecord {
        row_id: String::new(),
        requested_model: None,
        purpose: None,
        key_id: None,
        team_id: None,
        id: format!("bulk-{n:06}"),
        session_id: session.clone(),
        // Recent: retention would prune rows older than 30 days while the test runs.
        created_at: gatehouse_core::time::now_ms() - 200_000 + n as i64,
        provider: "mock".into(),
        model_key: "mock/echo".into(),
        upstream_model: "echo".into(),
        stream: n.is_multiple_of(2),
        status: 200,
        prompt_tokens_est: 100,
        prompt_tokens: Some(101),
        completion_tokens: Some(7),
        cached_tokens: None,
        reasoning_tokens: None,
        usage_source: UsageSource::Upstream,
        max_context: 4096,
        context_pct: 2.5,
        preview: format!("row {n}, with \"quotes\""),
        latency_ms: 12,
        ttfb_ms: Some(3),
        overhead_us: 40,
        attempts: 1,
        finish_reason: Some("stop".into()),
        error_type: None,
        error_message: Some(filler.to_owned()),
        cost_usd: Some(0.000_42),
        memory_tokens: 0,
        chat_tokens: 0,
        memory_ratio: 0.0,
        routing: None,
    }
}

#[tokio::test]
async fn csv_and_json_of_a_session_match_its_rows() {
    let app = TestApp::spawn().await;
    let text = "He said \"hi, there\" and left";
    let r = app.chat(user("mock/echo", text)).await;
    let sid = session_of(&r);
    app.chat(user("mock/echo", "plain second")).await;
    // Another session's request stays out of this session's export.
    app.chat_with(
        &[("x-gatehouse-session", "other")],
        user("mock/echo", "elsewhere"),
    )
    .await;

    let r = app
        .http
        .get(app.url("/api/export/csv"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    let disposition = r.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        disposition.starts_with(&format!("attachment; filename=\"gatehouse-{sid}-")),
        "{disposition}"
    );
    let body = r.text().await.unwrap();
    assert!(body.ends_with("\r\n"));
    let rows = parse_csv(&body);
    assert_eq!(rows.len(), 3, "header and two rows");
    let header = &rows[0];
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    assert_eq!(rows[1][col("preview")], text);
    assert_eq!(rows[1][col("session_id")], sid);
    assert!(rows[1][col("created_at")].ends_with('Z'));
    assert_eq!(
        rows[1][col("created_at")].len(),
        "2026-01-01T00:00:00.000Z".len()
    );
    assert_eq!(rows[2][col("preview")], "plain second");
    assert!(rows.iter().all(|r| r.len() == header.len()));

    let v: Value = app
        .get_json(&format!("/api/export/json?session={sid}"))
        .await;
    assert_eq!(v["session"]["id"], sid.as_str());
    assert!(v["exported_at"].as_str().unwrap().ends_with('Z'));
    let reqs = v["requests"].as_array().unwrap();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0]["preview"], text);
    assert_eq!(
        reqs[0]["created_at_iso"],
        rows[1][col("created_at")].as_str()
    );

    let v: Value = app.get_json("/api/export/json?all=1").await;
    assert!(v["session"].is_null());
    assert_eq!(v["requests"].as_array().unwrap().len(), 3);
}

#[tokio::test]
async fn bad_export_requests_get_clear_errors() {
    let app = TestApp::spawn().await;
    for (path, status) in [
        ("/api/export/csv", 404),
        ("/api/export/csv?session=nope", 404),
        ("/api/export/json?session=a&all=1", 400),
        ("/api/export/json?bogus=1", 400),
        ("/api/export/xml", 404),
    ] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), status, "{path}");
        let v: Value = r.json().await.unwrap();
        assert!(v["error"]["message"].as_str().is_some(), "{path}: {v}");
    }
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

#[tokio::test]
async fn a_100k_row_session_streams_in_bounded_memory() {
    let _alone = crate::support::MEMORY_MEASURED.lock().await;
    let app = TestApp::spawn().await;
    let created: Value = app
        .http
        .post(app.url("/api/sessions"))
        .json(&serde_json::json!({"name": "bulk"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sid = SessionId::parse_client(created["session"]["id"].as_str().unwrap()).unwrap();
    // ~1.2 KB per row: the whole export is ~120 MB of CSV.
    let filler = "e".repeat(1000);
    for n in 0..100_000 {
        app.state
            .writer
            .record(WriteOp::InsertRequest(Box::new(record(&sid, n, &filler))))
            .await;
    }
    app.state.writer.flush().await;
    let before = rss_bytes();
    // No overall deadline: a slow CI machine may take longer than the helper's 20 s.
    let http = reqwest::Client::new();
    let r = http
        .get(app.url(&format!("/api/export/csv?session={sid}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers().get("content-length").is_none(),
        "streamed, not buffered"
    );
    let mut body = r.bytes_stream();
    let mut lines = 0usize;
    let mut bytes = 0usize;
    let mut peak = 0u64;
    let mut tail = Vec::new();
    let mut chunks = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.unwrap();
        bytes += chunk.len();
        lines += chunk.iter().filter(|&&b| b == b'\n').count();
        tail = chunk.to_vec();
        chunks += 1;
        if chunks.is_multiple_of(64) {
            peak = peak.max(rss_bytes().saturating_sub(before));
        }
    }
    assert_eq!(lines, 100_001);
    assert!(bytes > 100_000_000, "{bytes}");
    assert!(String::from_utf8_lossy(&tail).contains("bulk-099999"));
    assert!(
        peak < 40 << 20,
        "RSS grew by {} MiB during a {} MiB export",
        peak >> 20,
        bytes >> 20
    );

    // JSON of the same session is one valid document with every row.
    let doc = http
        .get(app.url(&format!("/api/export/json?session={sid}")))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let _: Box<serde_json::value::RawValue> = serde_json::from_slice(&doc).unwrap();
    let text = String::from_utf8_lossy(&doc);
    assert_eq!(text.matches("\"id\":\"bulk-").count(), 100_000);
    assert!(text.contains(r#""preview":"row 99999, with \"quotes\"""#));
}
