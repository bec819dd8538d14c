//! A user's data: exported as one JSON document, erased with the accounting kept.

use gatehouse_core::record::Role;
use serde_json::{Value, json};

use crate::keys::{chat_key, create, keys_mode};
use crate::support::{ADMIN_PASSWORD, TestApp, client_with_token, login, make_user, session_of};

/// ~1,400 tokens of a log only this user sent: masked by the sanitizer.
fn private_log() -> String {
    (0..170)
        .map(|i| format!("diary-of-ada line {i}: the private detail number {i}\n"))
        .collect()
}

fn with_tool_output(log: &str) -> Value {
    json!({"model": "mock/echo", "messages": [
        {"role": "user", "content": "ada's private question about her diary"},
        {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
            "function": {"name": "read", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": log},
        {"role": "user", "content": "Summarise."}
    ]})
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn a_users_data_is_exported_then_erased_with_the_accounting_kept() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let ada = make_user(&app.state, "ada", Role::Member).await;
    let _ = login(&app.http, app.addr, "ada", ADMIN_PASSWORD).await;
    let (key_id, key) = create(
        &app,
        json!({"name": "ada-laptop", "owner": "ada",
        "metadata": {"email": "ada@example.com"}}),
    )
    .await;
    let (_, other) = create(&app, json!({"name": "bob"})).await;

    // Ada's own session, with a masked tool output, and a memory entry in it.
    let r = app
        .chat_with(
            &[
                ("authorization", &format!("Bearer {key}")),
                ("x-gatehouse-session", "ada-work"),
            ],
            with_tool_output(&private_log()),
        )
        .await;
    assert_eq!(r.status(), 200);
    let own_session = session_of(&r);
    let r = app
        .admin
        .post(app.url("/api/memory/store"))
        .json(&json!({"content": "ada prefers the diary-of-ada format", "session_id": own_session}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    // A session shared with Bob: listed, not erased.
    for (k, text) in [
        (&key, "ada in the shared room"),
        (&other, "bob in the shared room"),
    ] {
        let r = app
            .chat_with(
                &[
                    ("authorization", &format!("Bearer {k}")),
                    ("x-gatehouse-session", "shared"),
                ],
                json!({"model": "mock/echo", "messages": [{"role": "user", "content": text}]}),
            )
            .await;
        assert_eq!(r.status(), 200);
    }
    let shared_session = session_of(&r_last(&app, &other).await);
    // A stored Responses API response of hers in the shared session.
    let r = app
        .http
        .post(app.url("/v1/responses"))
        .bearer_auth(&key)
        .header("x-gatehouse-session", "shared")
        .json(&json!({"model": "mock/echo", "input": "ada's stored question"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let response_id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();

    let r = app
        .admin
        .get(app.url(&format!("/api/users/{}/export", ada.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains(".json")
    );
    let text = r.text().await.unwrap();
    let doc: Value = serde_json::from_str(&text).expect("one JSON document");
    assert_eq!(doc["user"]["username"], "ada");
    assert!(
        !text.contains("password_hash") && !text.contains("$argon2"),
        "no password hash"
    );
    assert!(!text.contains(&key), "never the key");
    assert_eq!(doc["keys"][0]["id"], key_id.as_str());
    assert!(doc["keys"][0].get("digest").is_none());
    assert!(!doc["login_history"].as_array().unwrap().is_empty());
    assert_eq!(
        doc["requests"].as_array().unwrap().len(),
        3,
        "ada's rows, not bob's"
    );
    assert!(
        doc["requests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["key_id"] == key_id.as_str())
    );
    assert!(
        doc["masked"][0]["content"]
            .as_str()
            .unwrap()
            .contains("diary-of-ada line 3")
    );
    assert_eq!(doc["memory"][0]["session_id"], own_session.as_str());
    assert_eq!(doc["responses"][0]["id"], response_id.as_str());
    let sessions = doc["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    let only = |id: &str| {
        sessions
            .iter()
            .find(|s| s["session"]["id"] == id)
            .map(|s| s["only_this_user"].clone())
    };
    assert_eq!(only(&own_session), Some(json!(true)));
    assert_eq!(only(&shared_session), Some(json!(false)));

    // A member may not export anyone's data, their own included.
    let member = client_with_token(&login(&app.http, app.addr, "ada", ADMIN_PASSWORD).await);
    let r = member
        .get(app.url(&format!("/api/users/{}/export", ada.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    let totals = |doc: Value| {
        let rows = doc["requests"].as_array().unwrap().clone();
        let of_key: Vec<&Value> = rows
            .iter()
            .filter(|r| r["key_id"] == key_id.as_str())
            .collect();
        let cost: f64 = of_key
            .iter()
            .map(|r| r["cost_usd"].as_f64().unwrap_or(0.0))
            .sum();
        let tokens: u64 = of_key
            .iter()
            .map(|r| r["prompt_tokens_est"].as_u64().unwrap())
            .sum();
        (of_key.len(), cost, tokens)
    };
    let before = totals(app.get_json("/api/export/json?all=1").await);
    let r = app
        .admin
        .delete(app.url(&format!("/api/users/{}?erase=true", ada.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let summary: Value = r.json().await.unwrap();
    let tombstone = summary["tombstone"].as_str().unwrap().to_owned();
    assert!(tombstone.starts_with("erased-"));
    assert_eq!(summary["sessions_erased"], 1);
    assert_eq!(summary["masked_erased"], 1);

    // Her key stops working; its accounting stays, under the tombstone.
    assert_eq!(
        chat_key(&app, &key, crate::support::user("mock/echo", "hi"))
            .await
            .status(),
        401
    );
    assert_eq!(
        totals(app.get_json("/api/export/json?all=1").await),
        before,
        "rows, cost and tokens stay"
    );
    let r = app
        .admin
        .post(app.url("/api/auth/login"))
        .json(&json!({"username": "ada", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no login left");
    let stats = app
        .get_json(&format!("/api/sessions/{own_session}/requests"))
        .await;
    let rows = stats["requests"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "the row stays");
    assert_eq!(rows[0]["preview"], "");
    assert!(
        rows[0]["prompt_tokens"]
            .as_u64()
            .unwrap_or(rows[0]["prompt_tokens_est"].as_u64().unwrap())
            > 0
    );
    let shared = app
        .get_json(&format!("/api/sessions/{shared_session}/requests"))
        .await;
    let previews: Vec<&str> = shared["requests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["preview"].as_str().unwrap())
        .collect();
    assert!(
        previews
            .iter()
            .any(|p| p.contains("bob in the shared room")),
        "bob's row is his: {previews:?}"
    );
    assert!(
        !previews.iter().any(|p| p.contains("ada in")),
        "{previews:?}"
    );
    let r = app
        .http
        .get(app.url(&format!("/v1/responses/{response_id}")))
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        404,
        "her stored response in the shared session went too"
    );
    let memory = app.get_json("/api/memory/frequent").await.to_string();
    assert!(!memory.contains("diary-of-ada"), "{memory}");

    // The audit row names neither her nor her key's name.
    let trail = app.get_json("/api/audit?action=user.erase").await;
    let entry = trail["entries"][0].to_string();
    assert!(entry.contains(&tombstone) && entry.contains(&ada.id));
    assert!(
        !entry.contains("\"ada\"") && !entry.contains("ada-laptop"),
        "{entry}"
    );

    // Her rows on the trail are blanked, and the chain still verifies.
    app.state.writer.flush().await;
    let check = app.state.store.verify_audit().await.unwrap();
    assert_eq!(check.first_broken, None, "{check:?}");
    assert!(
        check.erased >= 3,
        "her login, her key's creation, her member login: {check:?}"
    );

    // Nothing of her content is left in the database's files.
    app.state.writer.flush().await;
    app.state.store.checkpoint().await.unwrap();
    let stored = app.stored_bytes().await;
    for (name, bytes) in [("database", &stored)] {
        for needle in [
            "diary-of-ada",
            "ada's private",
            "ada's stored",
            "ada-laptop",
            "ada@example.com",
        ] {
            assert!(
                !contains(bytes, needle),
                "`{needle}` still in the {name} file"
            );
        }
    }
}

/// The last answer Bob got (its session header names the shared session).
async fn r_last(app: &TestApp, key: &str) -> reqwest::Response {
    app.chat_with(
        &[
            ("authorization", &format!("Bearer {key}")),
            ("x-gatehouse-session", "shared"),
        ],
        json!({"model": "mock/echo", "messages": [{"role": "user", "content": "bob again"}]}),
    )
    .await
}

#[tokio::test]
async fn a_deleted_user_can_be_erased_and_a_reused_name_is_not_theirs() {
    let app = TestApp::spawn_with(keys_mode()).await;
    let old = make_user(&app.state, "ada", Role::Member).await;
    let _ = login(&app.http, app.addr, "ada", ADMIN_PASSWORD).await;
    let (key_id, key) = create(&app, json!({"name": "old-ada", "owner": "ada"})).await;
    assert_eq!(
        chat_key(
            &app,
            &key,
            crate::support::user("mock/echo", "old ada's words")
        )
        .await
        .status(),
        200
    );
    let r = app
        .admin
        .delete(app.url(&format!("/api/users/{}", old.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The key no longer names her (a new `ada` must not inherit it) but still leads to her.
    let shown = app
        .admin
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let k = shown["keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == key_id.as_str())
        .unwrap()
        .clone();
    assert_eq!(k["owner"], format!("deleted:{}", old.id));

    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let new = make_user(&app.state, "ada", Role::Member).await;
    let _ = login(&app.http, app.addr, "ada", ADMIN_PASSWORD).await;
    let doc: Value = app
        .admin
        .get(app.url(&format!("/api/users/{}/export", new.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        doc["login_history"].as_array().unwrap().len(),
        1,
        "her login only: {doc}"
    );
    assert!(doc["keys"].as_array().unwrap().is_empty());
    assert!(doc["requests"].as_array().unwrap().is_empty());
    assert!(
        doc["audit"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["at"].as_i64().unwrap() >= new.created_at),
        "no earlier ada's rows: {}",
        doc["audit"]
    );

    let r = app
        .admin
        .delete(app.url(&format!("/api/users/{}?erase=true", old.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let summary: Value = r.json().await.unwrap();
    assert_eq!(summary["keys"], json!([key_id]));
    let again = app
        .admin
        .delete(app.url(&format!("/api/users/{}?erase=true", old.id)))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 400, "erased once");
    // The new ada's own trail is untouched.
    let history = app
        .get_json("/api/auth/login-history?username=ada")
        .await
        .to_string();
    assert!(history.contains(&new.id), "{history}");
    assert!(!history.contains(&old.id), "{history}");
    app.state.writer.flush().await;
    assert_eq!(
        app.state.store.verify_audit().await.unwrap().first_broken,
        None
    );
}
