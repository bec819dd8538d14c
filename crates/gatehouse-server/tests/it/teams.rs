//! Teams: limits and a budget shared by several keys; a request must fit its key's and its
//! team's, under bursts too.

use std::time::Duration;

use gatehouse_store::WriteOp;
use serde_json::{Value, json};

use crate::keys::{chat_key, create, error_code, keys_mode};
use crate::support::{TestApp, user};

async fn create_team(app: &TestApp, settings: Value) -> String {
    let r = app
        .admin
        .post(app.url("/api/teams"))
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "create team");
    let v: Value = r.json().await.unwrap();
    v["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_team_budget_holds_under_a_burst_split_across_its_keys() {
    let app = TestApp::spawn_with(keys_mode()).await;
    // One worst case is about $0.002008 (see keys.rs); the team fits 5, each key alone 25.
    let team = create_team(&app, json!({"name": "infra", "max_budget_usd": 0.0105})).await;
    let (a_id, a) = create(
        &app,
        json!({"name": "a", "team_id": team, "max_budget_usd": 0.05}),
    )
    .await;
    let (_, b) = create(
        &app,
        json!({"name": "b", "team_id": team, "max_budget_usd": 0.05}),
    )
    .await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let http = app.http.clone();
        let url = app.url("/v1/chat/completions");
        let key = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let r = http
                .post(url)
                .header("authorization", format!("Bearer {key}"))
                .json(&json!({"model": "mock/slow", "max_tokens": 1000,
                    "messages": [{"role": "user", "content": format!("team burst {i}")}]}))
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap();
            (status, body)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        match t.await.unwrap() {
            (200, _) => ok += 1,
            (429, body) => {
                assert_eq!(body["error"]["code"], "budget_exceeded");
                let message = body["error"]["message"].as_str().unwrap();
                assert!(message.contains("team `infra`"), "{message}");
            }
            (s, body) => panic!("unexpected status {s}: {body}"),
        }
    }
    assert_eq!(
        ok, 5,
        "exactly the requests the team's budget fits were forwarded"
    );
    assert_eq!(app.mock.captured().len(), 5);

    // The team's rows are its keys' rows; its live spend is what they add up to.
    let spend = app.get_json(&format!("/api/teams/{team}/spend")).await;
    assert_eq!(spend["team_id"], team.as_str());
    assert_eq!(
        spend["requests"], 50,
        "refused requests have rows too: {spend}"
    );
    let total = spend["total_cost_usd"].as_f64().unwrap();
    assert!(total > 0.0);
    assert!((total - spend["period_spend_usd"].as_f64().unwrap()).abs() < 1e-12);
    assert_eq!(spend["reserved_usd"].as_f64(), Some(0.0));
    let a_spend = app.get_json(&format!("/api/keys/{a_id}/spend")).await;
    assert!(a_spend["total_cost_usd"].as_f64().unwrap() < total);
    let shown = app.get_json(&format!("/api/teams/{team}")).await;
    assert_eq!(shown["keys"].as_array().unwrap().len(), 2, "{shown}");

    // Spend survives a restart, read back from the database.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let app = app.restart(keys_mode()).await;
    let after = app.get_json(&format!("/api/teams/{team}")).await;
    assert!(
        (after["spend_usd"].as_f64().unwrap() - total).abs() < 1e-9,
        "{after}"
    );
    // A budget just above what was spent no longer fits a worst case: the spend read back counts.
    let r = app
        .admin
        .patch(app.url(&format!("/api/teams/{team}")))
        .json(&json!({"max_budget_usd": total + 0.001}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, code) = error_code(
        chat_key(
            &app,
            &a,
            json!({"model": "mock/slow", "max_tokens": 1000,
                "messages": [{"role": "user", "content": "after restart"}]}),
        )
        .await,
    )
    .await;
    assert_eq!((status, code.as_str()), (429, "budget_exceeded"));
}

#[tokio::test]
async fn a_team_narrows_models_and_rates_and_blocks_its_keys() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let team = create_team(
        &app,
        json!({"name": "web", "models": ["mock/echo"], "rpm": 2}),
    )
    .await;
    let (_, key) = create(&app, json!({"name": "w", "team_id": team})).await;

    let models = app
        .http
        .get(app.url("/v1/models"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let ids: Vec<&str> = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["mock/echo"], "only what the team allows");
    assert_eq!(
        error_code(chat_key(&app, &key, user("mock/other", "hi")).await).await,
        (403, "model_not_allowed".to_owned())
    );

    let r = chat_key(&app, &key, user("mock/echo", "one")).await;
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["x-ratelimit-limit-requests"],
        "2",
        "the team's limit shows"
    );
    assert_eq!(r.headers()["x-ratelimit-remaining-requests"], "1");
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "two"))
            .await
            .status(),
        200
    );
    let r = chat_key(&app, &key, user("mock/echo", "three")).await;
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(error_code(r).await, (429, "rate_limit_exceeded".to_owned()));

    // Blocking the team refuses its keys; unblocking lets them through again.
    let r = app
        .admin
        .patch(app.url(&format!("/api/teams/{team}")))
        .json(&json!({"blocked": true, "rpm": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, code) = error_code(chat_key(&app, &key, user("mock/echo", "blocked")).await).await;
    assert_eq!((status, code.as_str()), (401, "key_blocked"));
    let r = app
        .admin
        .patch(app.url(&format!("/api/teams/{team}")))
        .json(&json!({"blocked": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "back"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn team_settings_are_checked_and_a_team_with_keys_is_not_deleted() {
    let app = TestApp::spawn_with(keys_mode()).await;
    for bad in [
        json!({"rpm": 3}),
        json!({"name": "x", "rpm": 0}),
        json!({"name": "x", "max_budget_usd": -1}),
        json!({"name": "x", "budget_period": "soon"}),
        json!({"name": "x", "rmp": 3}),
    ] {
        let r = app
            .admin
            .post(app.url("/api/teams"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad}");
        let v: Value = r.json().await.unwrap();
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "k", "team_id": "team_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a key's team must exist");

    let team = create_team(&app, json!({"name": "ops", "budget_period": "30d"})).await;
    let (key_id, key) = create(&app, json!({"name": "k", "team_id": team})).await;
    let r = app
        .admin
        .delete(app.url(&format!("/api/teams/{team}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a team with keys stays");
    let r = app
        .admin
        .patch(app.url(&format!("/api/keys/{key_id}")))
        .json(&json!({"team_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = app
        .admin
        .delete(app.url(&format!("/api/teams/{team}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        app.admin
            .get(app.url(&format!("/api/teams/{team}")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "free"))
            .await
            .status(),
        200
    );
    let trail = app.get_json("/api/audit?action=team.&limit=20").await;
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions.iter().filter(|a| **a == "team.create").count(),
        6,
        "five refused, one made: {actions:?}"
    );
    assert_eq!(actions.first(), Some(&"team.delete"));
}

#[tokio::test]
async fn a_soft_budget_crossed_leaves_an_event_and_an_audit_row() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let team = create_team(&app, json!({"name": "soft", "soft_budget_usd": 0.000001})).await;
    let (_, key) = create(&app, json!({"name": "s", "team_id": team})).await;
    let r = chat_key(
        &app,
        &key,
        json!({"model": "mock/slow", "max_tokens": 5, "messages": [{"role": "user", "content": "spend"}]}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let mut found = None;
    for _ in 0..40 {
        let trail = app
            .get_json("/api/audit?action=budget.soft_crossed&limit=5")
            .await;
        if let Some(e) = trail["entries"].as_array().unwrap().first() {
            found = Some(e.clone());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let e = found.expect("an audit row for the crossing");
    assert_eq!(e["target"], format!("team:{team}"));
    assert_eq!(e["actor"], "system");
}

#[tokio::test]
async fn a_team_edited_in_the_database_applies_to_a_running_gateway() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let team = create_team(&app, json!({"name": "outside"})).await;
    let (_, key) = create(&app, json!({"name": "o", "team_id": team})).await;
    assert_eq!(
        chat_key(&app, &key, user("mock/echo", "hi")).await.status(),
        200
    );
    // As `gatehouse teams block` does.
    app.state.writer.flush().await;
    let store = app.open_store().await;
    let (mut t, _) = store
        .load_teams(0)
        .await
        .unwrap()
        .into_iter()
        .find(|(t, _)| t.id == team)
        .unwrap();
    t.blocked = true;
    t.updated_at = gatehouse_core::time::now_ms();
    store
        .apply(&[WriteOp::UpsertTeam(Box::new(t))])
        .await
        .unwrap();
    let mut refused = false;
    for _ in 0..40 {
        if chat_key(&app, &key, user("mock/echo", "blocked?"))
            .await
            .status()
            == 401
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        refused,
        "a team blocked in the database applies within sync_secs"
    );
}

#[tokio::test]
async fn a_members_keys_join_their_team_and_cannot_leave_it() {
    use crate::support::{ADMIN_PASSWORD, client_with_token, login, make_user};
    let app = TestApp::spawn_with(keys_mode()).await;
    let team = create_team(&app, json!({"name": "interns", "max_budget_usd": 10.0})).await;
    let bob = make_user(&app.state, "bob", gatehouse_core::record::Role::Member).await;
    let (old_key, _) = create(&app, json!({"name": "bob-old", "owner": "bob"})).await;
    let r = app
        .admin
        .patch(app.url(&format!("/api/users/{}", bob.id)))
        .json(&json!({"team_id": team}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap()["team_id"], team.as_str());
    let moved = app.get_json(&format!("/api/keys/{old_key}")).await;
    assert_eq!(moved["team_id"], team.as_str(), "his keys moved with him");

    let member = client_with_token(&login(&app.http, app.addr, "bob", ADMIN_PASSWORD).await);
    let r = member
        .post(app.url("/api/keys"))
        .json(&json!({"name": "bob-new"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(
        r.json::<Value>().await.unwrap()["team_id"],
        team.as_str(),
        "a new key is no way out"
    );
    let r = member
        .post(app.url("/api/keys"))
        .json(&json!({"name": "bob-free", "team_id": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = app
        .admin
        .patch(app.url(&format!("/api/users/{}", bob.id)))
        .json(&json!({"team_id": "team_nope"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}
