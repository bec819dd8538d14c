//! Sessions: created on the first request and on a model change, named from the first prompt,
//! switched explicitly, and managed through the API.

use serde_json::json;

use crate::support::{TestApp, rows, session_of, user};

#[tokio::test]
async fn sessions_open_on_first_request_and_on_model_change() {
    let app = TestApp::spawn().await;
    let active = app.get_json("/api/sessions/active").await;
    assert!(active["session"].is_null());

    let r = app
        .chat(user(
            "mock/echo",
            "Refactor the parser module so that errors carry spans and hints",
        ))
        .await;
    let first = session_of(&r);
    r.bytes().await.unwrap();
    let r = app.chat(user("mock/echo", "and now the tests")).await;
    assert_eq!(session_of(&r), first, "same model, same session");
    r.bytes().await.unwrap();

    let active = app.get_json("/api/sessions/active").await;
    assert_eq!(active["session"]["id"], first.as_str());
    assert_eq!(
        active["session"]["name"], "Refactor the parser module so that errors carry sp",
        "named after the first user prompt, 50 characters"
    );
    let stats = &active["stats"];
    assert_eq!(stats["request_count"], 2);
    // The mock reports 11 prompt + 3 completion tokens per request.
    assert_eq!(stats["current_total_tokens"], 14);
    assert_eq!(stats["cumulative_total_tokens"], 28);
    assert_eq!(stats["cumulative_input_tokens"], 22);
    assert_eq!(stats["max_context"], 4096);
    assert_eq!(active["recent_requests"].as_array().unwrap().len(), 2);

    let r = app.chat(user("mock/other-model", "switch")).await;
    let second = session_of(&r);
    assert_ne!(second, first, "a model change opens a new session");
    r.bytes().await.unwrap();
    let active = app.get_json("/api/sessions/active").await;
    assert_eq!(active["session"]["id"], second.as_str());

    let list = app.get_json("/api/sessions").await;
    assert_eq!(list["sessions"].as_array().unwrap().len(), 2);
    assert_eq!(list["active_id"], second.as_str());
}

#[tokio::test]
async fn explicit_session_header() {
    let app = TestApp::spawn().await;
    let r = app
        .chat_with(
            &[("x-gatehouse-session", "my-conversation")],
            user("mock/echo", "hi"),
        )
        .await;
    assert_eq!(session_of(&r), "my-conversation");
    r.bytes().await.unwrap();
    let s = app.get_json("/api/sessions/my-conversation").await;
    assert_eq!(s["stats"]["request_count"], 1);
    assert_eq!(s["session"]["model_key"], "mock/echo");
}

#[tokio::test]
async fn api_create_activate_rename_delete_and_paging() {
    let app = TestApp::spawn().await;
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .json(&json!({"name": "Work", "model": "mock/echo"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let created: serde_json::Value = r.json().await.unwrap();
    let work = created["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(created["session"]["name"], "Work");

    // Requests go to the active session while the model matches.
    for i in 0..5 {
        let r = app.chat(user("mock/echo", &format!("q{i}"))).await;
        assert_eq!(session_of(&r), work);
        r.bytes().await.unwrap();
    }
    let page = app
        .get_json(&format!("/api/sessions/{work}/requests?limit=2&offset=1"))
        .await;
    assert_eq!(page["total"], 5);
    assert_eq!(page["requests"].as_array().unwrap().len(), 2);
    assert_eq!(page["requests"][0]["preview"], "q3", "newest first");

    // An empty body opens an unnamed session and activates it.
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let other: serde_json::Value = r.json().await.unwrap();
    let other = other["session"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        app.get_json("/api/sessions/active").await["session"]["id"],
        other.as_str()
    );

    let r = app
        .http
        .post(app.url(&format!("/api/sessions/{work}/activate")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json("/api/sessions/active").await["session"]["id"],
        work.as_str()
    );

    let r = app
        .http
        .patch(app.url(&format!("/api/sessions/{work}")))
        .json(&json!({"name": "Renamed"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.get_json(&format!("/api/sessions/{work}")).await["session"]["name"],
        "Renamed"
    );
    let r = app
        .http
        .patch(app.url(&format!("/api/sessions/{work}")))
        .json(&json!({"name": ""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);

    let r = app
        .http
        .delete(app.url(&format!("/api/sessions/{work}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .http
        .get(app.url(&format!("/api/sessions/{work}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert!(app.get_json("/api/sessions/active").await["session"].is_null());
    let r = app
        .http
        .get(app.url(&format!("/api/sessions/{work}/requests")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = app
        .http
        .post(app.url("/api/sessions"))
        .json(&json!({"model": "no/such/thing"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn failed_requests_are_recorded_but_not_billed() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/echo", "ok")).await;
    let s = session_of(&r);
    r.bytes().await.unwrap();
    let r = app.chat(user("mock/echo+status:503", "fails")).await;
    // Another upstream model name is another model key: a new session.
    let s2 = session_of(&r);
    assert_ne!(s, s2);
    assert_eq!(r.status(), 503);
    let failed = rows(&app, &s2).await;
    assert_eq!(failed[0]["status"], 503);
    assert_eq!(failed[0]["attempts"], 3);
    let stats = app.get_json(&format!("/api/sessions/{s2}")).await["stats"].clone();
    assert_eq!(stats["request_count"], 1);
    assert_eq!(stats["cumulative_total_tokens"], 0);
}

/// A provider that reports usage near `u64::MAX` (and rows an older version stored with
/// `i64::MAX`) must not make the session figures fail for good.
#[tokio::test]
async fn absurd_usage_figures_are_clamped_and_every_sum_saturates() {
    let app = TestApp::spawn().await;
    let r = app.chat(user("mock/hugeusage", "count me")).await;
    assert_eq!(r.status(), 200);
    let sid = session_of(&r);
    app.state.writer.flush().await;
    // Rows as an older version wrote them: every figure at i64::MAX.
    let old: Vec<_> = (0..3)
        .map(|i| {
            let mut r = crate::support::stored_row(&format!("old-{i}"), &sid, 1);
            r.prompt_tokens_est = u64::MAX;
            r.prompt_tokens = Some(u64::MAX);
            r.completion_tokens = Some(u64::MAX);
            r.usage_source = gatehouse_core::record::UsageSource::Upstream;
            gatehouse_store::WriteOp::InsertRequest(Box::new(r))
        })
        .collect();
    app.state.store.apply(&old).await.unwrap();
    for path in [
        "/api/sessions".to_owned(),
        format!("/api/sessions/{sid}"),
        format!("/api/sessions/{sid}/requests"),
        "/api/sessions/active".to_owned(),
        "/api/export/json?all=1".to_owned(),
    ] {
        let r = app.http.get(app.url(&path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}: {}", r.text().await.unwrap());
    }
    let s = app.get_json(&format!("/api/sessions/{sid}")).await;
    let total = s["stats"]["cumulative_total_tokens"].as_u64().unwrap();
    assert!(total > 0, "{s}");
    // The row the gateway wrote itself holds the clamp, not the provider's figure.
    let rows = rows(&app, &sid).await;
    let ours = rows
        .iter()
        .find(|r| !r["id"].as_str().unwrap().starts_with("old-"))
        .unwrap();
    assert_eq!(ours["prompt_tokens"], 1u64 << 40, "{ours}");
    // The live view's init message too.
    let mut ws = crate::live::connect(&app).await;
    let init = crate::live::next(&mut ws).await;
    assert_eq!(init["type"], "init", "{init}");
}

/// A client that hangs up before the answer still leaves its row: the provider bills it.
#[tokio::test]
async fn a_client_that_leaves_before_the_answer_leaves_a_row() {
    let app = TestApp::spawn_with(crate::support::Options {
        first_byte_secs: Some(10.0),
        ..Default::default()
    })
    .await;
    let impatient = reqwest::Client::builder()
        .timeout(std::time::Duration::from_millis(400))
        .build()
        .unwrap();
    for (label, body) in [
        // A whole answer the provider is still generating.
        ("plain", user("mock/delay:3000", "left while generating")),
        // A stream whose first chunk has not come yet.
        (
            "stream",
            json!({"model": "mock/first:3000", "stream": true,
            "messages": [{"role": "user", "content": "left before the first chunk"}]}),
        ),
    ] {
        let r = impatient
            .post(app.url("/v1/chat/completions"))
            .header("x-gatehouse-session", format!("gone-{label}"))
            .json(&body)
            .send()
            .await;
        assert!(r.is_err(), "{label}: the client gave up");
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    app.state.writer.flush().await;
    for label in ["plain", "stream"] {
        let rows = rows(&app, &format!("gone-{label}")).await;
        assert_eq!(rows.len(), 1, "{label}: {rows:?}");
        assert_eq!(rows[0]["status"], 499, "{label}");
        assert_eq!(rows[0]["error_type"], "client_disconnected", "{label}");
    }
}

/// An agent's conversation, the way Cline or an SDK loop sends it: the whole history each turn,
/// side requests to a small model between turns, a model switch half-way.
#[tokio::test]
async fn a_conversation_is_one_session_whatever_its_models_and_side_requests() {
    let app = TestApp::spawn().await;
    let system = json!({"role": "system", "content": "You are a coding agent."});
    let mut history = vec![
        system.clone(),
        json!({"role": "user", "content": "Add retries to the HTTP client in src/net.rs"}),
    ];
    let mut sessions = std::collections::BTreeSet::new();
    let mut gauge_after_turn = json!(null);
    for turn in 0..15 {
        // The user switches models (`/model`) from turn 8 on.
        let model = if turn < 8 {
            "mock/echo"
        } else {
            "mock/echo-big"
        };
        let r = app
            .chat(json!({"model": model, "messages": history, "max_tokens": 4096}))
            .await;
        assert_eq!(r.status(), 200);
        sessions.insert(session_of(&r));
        let body: serde_json::Value = r.json().await.unwrap();
        let answer = body["choices"][0]["message"]["content"].clone();
        gauge_after_turn = app.get_json("/api/sessions/active").await["gauge"].clone();

        // Between turns: a title request and a one-token probe to the small model.
        for side in [
            json!({"model": "mock/small", "max_tokens": 64, "messages": [
                {"role": "system", "content": "Write a 5-word title for this task."},
                {"role": "user", "content": "Add retries to the HTTP client in src/net.rs"}]}),
            json!({"model": "mock/small", "max_tokens": 1,
                "messages": [{"role": "user", "content": "quota"}]}),
        ] {
            let r = app.chat(side).await;
            assert_eq!(r.status(), 200);
            sessions.insert(session_of(&r));
            r.bytes().await.unwrap();
        }
        let active = app.get_json("/api/sessions/active").await;
        assert_eq!(
            active["gauge"], gauge_after_turn,
            "side requests leave the gauge alone"
        );
        history.push(json!({"role": "assistant", "content": answer}));
        history.push(json!({"role": "user", "content": format!("next step {turn}")}));
    }
    assert_eq!(sessions.len(), 1, "one session: {sessions:?}");
    let sid = sessions.pop_first().unwrap();
    let active = app.get_json("/api/sessions/active").await;
    assert_eq!(active["session"]["id"], sid.as_str());
    assert_eq!(active["stats"]["request_count"], 45);
    let rows = rows(&app, &sid).await;
    let asides = rows.iter().filter(|r| r["purpose"] == "aside").count();
    assert_eq!(asides, 30, "side requests are marked");
    assert!(
        rows.iter()
            .filter(|r| r["purpose"] != "aside")
            .all(|r| r["model_key"] != "mock/small")
    );

    // A new conversation on another model is a session of its own.
    let r = app
        .chat(json!({"model": "mock/other", "messages": [system,
            {"role": "user", "content": "Write the changelog"}]}))
        .await;
    assert_ne!(session_of(&r), sid);
}
