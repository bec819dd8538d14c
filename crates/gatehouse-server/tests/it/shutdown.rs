//! Graceful shutdown: in-flight requests finish and every accepted request has its row.

use std::time::Duration;

use gatehouse_core::SessionId;

use crate::support::{TestApp, streaming, user};

#[tokio::test]
async fn shutdown_under_load_loses_no_rows() {
    let mut app = TestApp::spawn_with(crate::support::Options {
        first_byte_secs: Some(5.0),
        ..Default::default()
    })
    .await;
    let session = "load-test";
    let mut tasks = Vec::new();
    for i in 0..60 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        // Half slow streams (1.8 s), half slow plain requests (1.8 s): long enough that all 60
        // are in flight together even on a slow machine, well inside the 10 s grace period.
        let body = if i % 2 == 0 {
            streaming("mock/chunks:6+delay:300", "stream under load")
        } else {
            user("mock/chunks:2+delay:1800", "plain under load")
        };
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-gatehouse-session", session)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.bytes().await.unwrap()
        }));
    }
    // Wait until every request is being proxied, so shutdown starts with all 60 in flight.
    for _ in 0..500 {
        if app.get_json("/health").await["in_flight"] == 60 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.get_json("/health").await["in_flight"], 60);
    app.shutdown().await;
    for t in tasks {
        let body = t.await.unwrap();
        assert!(!body.is_empty());
    }
    // New connections are refused once the server has stopped.
    assert!(app.http.get(app.url("/health")).send().await.is_err());

    let store = app.open_store().await;
    let n = store
        .count_requests(&SessionId::new(session))
        .await
        .unwrap();
    assert_eq!(n, 60, "every accepted request has its row");
    let rows = store
        .list_requests(&SessionId::new(session), 100, 0)
        .await
        .unwrap();
    assert!(rows.iter().all(|r| r.error_type.is_none()), "{rows:?}");
}

#[tokio::test]
async fn requests_still_running_when_the_grace_period_ends_are_cut_and_recorded() {
    let mut app = TestApp::spawn_with(crate::support::Options {
        first_byte_secs: Some(30.0),
        grace_secs: Some(0.5),
        ..Default::default()
    })
    .await;
    let session = "cut-at-shutdown";
    let http = app.http.clone();
    let url = app.url("/v1/chat/completions");
    // A stream that has started (one chunk every 3 s) and a whole answer 20 s away.
    let stream = {
        let (http, url) = (http.clone(), url.clone());
        tokio::spawn(async move {
            let r = http
                .post(url)
                .header("x-gatehouse-session", session)
                .json(&streaming("mock/chunks:10+gap:3000", "long stream"))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.text().await.is_ok()
        })
    };
    let plain = tokio::spawn(async move {
        http.post(url)
            .header("x-gatehouse-session", session)
            .json(&user("mock/delay:20000", "slow answer"))
            .send()
            .await
            .is_ok()
    });
    for _ in 0..500 {
        if app.get_json("/health").await["in_flight"] == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.get_json("/health").await["in_flight"], 2);
    let t = std::time::Instant::now();
    app.shutdown().await;
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "shutdown waited for the requests instead of cutting them"
    );
    // Their connections were aborted: neither client got a whole answer.
    assert!(!stream.await.unwrap(), "the stream's body was cut");
    assert!(
        !plain.await.unwrap(),
        "the waiting request's connection was cut"
    );

    let store = app.open_store().await;
    let rows = store
        .list_requests(&SessionId::new(session), 10, 0)
        .await
        .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r.error_type.as_deref() == Some("shutdown")),
        "{rows:?}"
    );
}
