//! Admin login (`[auth] mode = "keys"`): the gate on the management API, tokens that rotate and
//! revoke, the lockout and the per-address limit, roles, and the login history.

use gatehouse_core::record::Role;
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, Options, TestApp, client_with_token, login, make_user, user};

fn keys_mode(extra: &str) -> Options {
    Options {
        extra_toml: format!("[auth]\nmode = \"keys\"\nsync_secs = 1\n{extra}\n"),
        ..Options::default()
    }
}

async fn code(r: reqwest::Response) -> (u16, String, String) {
    let status = r.status().as_u16();
    let v: Value = r.json().await.unwrap_or(Value::Null);
    (
        status,
        v["error"]["code"].as_str().unwrap_or("").to_owned(),
        v["error"]["message"].as_str().unwrap_or("").to_owned(),
    )
}

async fn try_login(app: &TestApp, name: &str, password: &str) -> reqwest::Response {
    app.http
        .post(app.url("/api/auth/login"))
        .header("user-agent", "login-test/1")
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn the_management_api_needs_a_login_and_a_virtual_key_does_not_open_it() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    // Nothing, a forged token, a virtual key: 401 with a challenge, on the API, /health and /ws.
    for path in ["/api/keys", "/api/sessions", "/health", "/api/audit", "/ws"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 401, "{path}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"gatehouse\"",
            "{path}"
        );
        assert_eq!(code(r).await.1, "login_required", "{path}");
    }
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "svc"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let key = r.json::<Value>().await.unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, c, message) = code(
        app.http
            .get(app.url("/api/keys"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, c.as_str()), (401, "login_required"));
    assert!(message.contains("virtual key"), "{message}");
    let forged = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c3JfMSJ9.AAAA";
    let r = app
        .http
        .get(app.url("/api/keys"))
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // The admin's token does not open the proxy routes: those take virtual keys only.
    let token = login(&app.http, app.addr, "root", ADMIN_PASSWORD).await;
    let r = app
        .chat_with(
            &[("authorization", &format!("Bearer {token}"))],
            user("mock/echo", "hi"),
        )
        .await;
    assert_eq!(code(r).await.1, "invalid_api_key");
    assert!(app.mock.captured().is_empty());

    // Open without a login: the liveness probes, the dashboard's page (it shows the login form).
    for path in ["/health/live", "/health/ready", "/"] {
        let r = app.http.get(app.url(path)).send().await.unwrap();
        let status = r.status();
        let last_error = app.state.writer.stats().last_error();
        assert!(
            status.is_success(),
            "{path}: {status} {} (writer: {last_error:?})",
            r.text().await.unwrap()
        );
    }
    let me = app.get_json("/api/auth/me").await;
    assert_eq!(me["user"]["username"], "root");
    assert_eq!(me["user"]["role"], "admin");
}

#[tokio::test]
async fn the_dashboard_cookie_is_http_only_and_logs_in_on_its_own() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    let r = try_login(&app, "root", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["cache-control"], "no-store");
    let cookies: Vec<String> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .collect();
    let access = cookies
        .iter()
        .find(|c| c.starts_with("gh_access="))
        .unwrap();
    assert!(
        access.contains("HttpOnly") && access.contains("SameSite=Strict"),
        "{access}"
    );
    assert!(
        cookies
            .iter()
            .any(|c| c.starts_with("gh_refresh=") && c.contains("Path=/api/auth"))
    );
    let value = access.split(';').next().unwrap();
    let r = app
        .http
        .get(app.url("/api/keys"))
        .header("cookie", value)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test]
async fn a_refresh_token_works_once_and_its_replay_logs_out_the_whole_family() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    let first: Value = try_login(&app, "root", ADMIN_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(first["token_type"], "Bearer");
    assert!(first["expires_in"].as_i64().unwrap() <= 1800);
    assert!(first["refresh_expires_in"].as_i64().unwrap() > 7 * 86_400 - 60);
    let refresh = |t: &str| {
        app.http
            .post(app.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": t}))
            .send()
    };
    let r = refresh(first["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let second: Value = r.json().await.unwrap();
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    let r = client_with_token(second["access_token"].as_str().unwrap())
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "the new access token works");

    // The first refresh token again (a thief's copy): refused, and the family dies with it.
    let (status, c, message) = code(
        refresh(first["refresh_token"].as_str().unwrap())
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, c.as_str()), (401, "login_required"));
    assert!(message.contains("used already"), "{message}");
    let r = refresh(second["refresh_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the rest of the family is revoked");
    // An access token is not a refresh token.
    let r = refresh(second["access_token"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let trail = app.get_json("/api/audit?action=auth.refresh_replay").await;
    assert_eq!(trail["entries"].as_array().unwrap().len(), 1, "{trail}");
}

#[tokio::test]
async fn logout_revokes_the_access_token_at_once_and_across_a_restart() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    let pair: Value = try_login(&app, "root", ADMIN_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let token = pair["access_token"].as_str().unwrap().to_owned();
    let c = client_with_token(&token);
    assert_eq!(
        c.get(app.url("/api/keys")).send().await.unwrap().status(),
        200
    );
    let r = c
        .post(app.url("/api/auth/logout"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let (status, _, message) = code(c.get(app.url("/api/keys")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(message.contains("logged out"), "{message}");
    // Its refresh token went with it.
    let r = app
        .http
        .post(app.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Another login of the same user is not affected.
    assert_eq!(
        app.admin
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let app = app.restart(keys_mode("")).await;
    let r = client_with_token(&token)
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "the revocation outlives a restart");
}

#[tokio::test]
async fn tokens_signed_before_a_secret_rotation_verify_until_they_expire() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    let token = login(&app.http, app.addr, "root", ADMIN_PASSWORD).await;
    let secret = std::fs::read_to_string(app.dir.path().join("jwt_secret")).unwrap();
    assert!(secret.trim().len() >= 32);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(app.dir.path().join("jwt_secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the secret is readable by its owner only");
    }
    let rotated =
        "jwt_secret_file = \"jwt_secret_2\"\nprevious_jwt_secret_files = [\"jwt_secret\"]";
    let app = app.restart(keys_mode(rotated)).await;
    let r = client_with_token(&token)
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "signed with the previous secret");
    let app = app
        .restart(keys_mode("jwt_secret_file = \"jwt_secret_2\""))
        .await;
    let r = client_with_token(&token)
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status(),
        401,
        "a secret dropped from the list verifies nothing"
    );
}

#[tokio::test]
async fn five_wrong_passwords_lock_the_account_even_for_the_right_one() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    make_user(&app.state, "ada", Role::Admin).await;
    // An unknown user and a wrong password look the same from outside.
    let unknown = code(try_login(&app, "nobody", "whatever-password").await).await;
    let wrong = code(try_login(&app, "ada", "not-her-password").await).await;
    assert_eq!(
        (unknown.0, unknown.1.as_str()),
        (401, "invalid_credentials")
    );
    assert_eq!(unknown, wrong);
    for _ in 0..4 {
        assert_eq!(
            try_login(&app, "ada", "not-her-password").await.status(),
            401
        );
    }
    let r = try_login(&app, "ada", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 403);
    assert!(r.headers().contains_key("retry-after"));
    assert_eq!(code(r).await.1, "account_locked");
    // Other accounts are not locked.
    assert_eq!(try_login(&app, "root", ADMIN_PASSWORD).await.status(), 200);

    let history = app.get_json("/api/auth/login-history?username=ada").await;
    let entries = history["entries"].as_array().unwrap();
    let outcomes: Vec<&str> = entries
        .iter()
        .map(|e| e["outcome"].as_str().unwrap())
        .collect();
    // Newest first: the refused right password, the lock, five failures.
    assert_eq!(outcomes[0], "locked", "{outcomes:?}");
    assert_eq!(
        outcomes.iter().filter(|o| **o == "failed").count(),
        5,
        "{outcomes:?}"
    );
    assert!(
        entries
            .iter()
            .all(|e| e["user_agent"] == "login-test/1" && e["ip"] == "loopback")
    );
    assert!(entries.iter().any(|e| e["reason"] == "wrong password"));
    let all = app.get_json("/api/auth/login-history").await;
    let all = all["entries"].as_array().unwrap();
    assert!(
        all.iter()
            .any(|e| e["username"] == "nobody" && e["reason"] == "no such user")
    );
    assert!(
        all.iter()
            .any(|e| e["username"] == "root" && e["outcome"] == "ok")
    );
    // Paging by cursor loses nothing.
    let page = app.get_json("/api/auth/login-history?limit=3").await;
    let next = page["next_before"].as_str().unwrap();
    let rest = app
        .get_json(&format!("/api/auth/login-history?limit=1000&before={next}"))
        .await;
    assert_eq!(3 + rest["entries"].as_array().unwrap().len(), all.len());
    // The trail has every attempt, without the passwords.
    let trail = app.get_json("/api/audit?action=auth.login&limit=100").await;
    let text = trail.to_string();
    assert!(trail["entries"].as_array().unwrap().len() >= 8, "{text}");
    assert!(!text.contains("not-her-password") && !text.contains(ADMIN_PASSWORD));
}

#[tokio::test]
async fn logins_are_limited_per_address_with_rate_limit_headers() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 3")).await;
    // The harness's own login took one of the three.
    let r = try_login(&app, "root", "wrong-password-1").await;
    assert_eq!(r.headers()["x-ratelimit-limit"], "3");
    assert_eq!(r.headers()["x-ratelimit-remaining"], "1");
    assert!(r.headers().contains_key("x-ratelimit-reset"));
    try_login(&app, "root", "wrong-password-2").await;
    let r = try_login(&app, "root", ADMIN_PASSWORD).await;
    assert_eq!(r.status(), 429);
    assert!(
        r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );
    assert_eq!(r.headers()["x-ratelimit-remaining"], "0");
    assert_eq!(code(r).await.1, "rate_limit_exceeded");
}

#[tokio::test]
async fn viewers_read_only_and_members_see_their_own_keys_only() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    make_user(&app.state, "val", Role::Viewer).await;
    make_user(&app.state, "mia", Role::Member).await;
    let viewer = client_with_token(&login(&app.http, app.addr, "val", ADMIN_PASSWORD).await);
    let member = client_with_token(&login(&app.http, app.addr, "mia", ADMIN_PASSWORD).await);
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "root-key"}))
        .send()
        .await
        .unwrap();
    let root_key: Value = r.json().await.unwrap();

    // The viewer reads everything and changes nothing.
    assert_eq!(
        viewer
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        viewer
            .get(app.url("/api/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, c, _) = code(
        viewer
            .post(app.url("/api/keys"))
            .json(&json!({"name": "x"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, c.as_str()), (403, "forbidden"));
    let r = viewer
        .post(app.url("/api/sanitizer/toggle"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = viewer
        .post(app.url("/api/users"))
        .json(&json!({"username": "x", "password": "long enough pass", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // The member's keys are theirs, whatever owner they ask for; others' keys do not exist for them.
    let r = member
        .post(app.url("/api/keys"))
        .json(&json!({"name": "mine", "owner": "root"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mine: Value = r.json().await.unwrap();
    assert_eq!(mine["owner"], "mia");
    let list: Value = member
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["mine"]);
    let other = format!("/api/keys/{}", root_key["id"].as_str().unwrap());
    assert_eq!(
        member.get(app.url(&other)).send().await.unwrap().status(),
        404
    );
    assert_eq!(
        member
            .post(app.url(&format!("{other}/block")))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );
    let spend = format!("/api/keys/{}/spend", mine["id"].as_str().unwrap());
    assert_eq!(
        member.get(app.url(&spend)).send().await.unwrap().status(),
        200
    );
    for path in [
        "/api/sessions",
        "/api/audit",
        "/api/export/csv",
        "/api/users",
        "/health",
    ] {
        assert_eq!(
            member.get(app.url(path)).send().await.unwrap().status(),
            403,
            "{path}"
        );
    }
    // The admin sees both keys, and the trail names who did what.
    let all: Value = app
        .admin
        .get(app.url("/api/keys"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["count"], 2);
    let trail = app.get_json("/api/audit?action=key.create").await;
    let actors: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["actor"].as_str().unwrap())
        .collect();
    assert!(
        actors.contains(&"user:mia") && actors.contains(&"user:root"),
        "{actors:?}"
    );
}

#[tokio::test]
async fn users_are_managed_over_the_api_and_the_last_admin_stays() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    let r = app
        .admin
        .post(app.url("/api/users"))
        .json(&json!({"username": "bob", "password": "short", "role": "admin"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400, "a password has at least 12 characters");
    let r = app
        .admin
        .post(app.url("/api/users"))
        .json(&json!({"username": "bob", "password": "bob's long password", "role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let bob: Value = r.json().await.unwrap();
    assert!(bob.get("password_hash").is_none());
    let bob_id = bob["id"].as_str().unwrap().to_owned();
    let bob_client =
        client_with_token(&login(&app.http, app.addr, "bob", "bob's long password").await);
    assert_eq!(
        bob_client
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    // Blocking bob stops his token on its next request.
    let r = app
        .admin
        .patch(app.url(&format!("/api/users/{bob_id}")))
        .json(&json!({"blocked": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        bob_client
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        try_login(&app, "bob", "bob's long password").await.status(),
        401
    );

    // root is the last admin who can log in: not deleted, demoted or blocked.
    let users = app.get_json("/api/users").await;
    let root = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["username"] == "root")
        .unwrap();
    let root_url = app.url(&format!("/api/users/{}", root["id"].as_str().unwrap()));
    assert_eq!(
        app.admin.delete(&root_url).send().await.unwrap().status(),
        400
    );
    let r = app
        .admin
        .patch(&root_url)
        .json(&json!({"role": "viewer"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "bobs", "owner": "bob"}))
        .send()
        .await
        .unwrap();
    let bobs_key = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .admin
        .delete(app.url(&format!("/api/users/{bob_id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // A new "bob" does not inherit the old one's keys.
    let k = app.get_json(&format!("/api/keys/{bobs_key}")).await;
    assert_eq!(k["owner"], format!("deleted:{bob_id}"), "{k}");
    let users = app.get_json("/api/users").await;
    assert_eq!(users["count"], 1);
    let trail = app.get_json("/api/audit?action=user.").await;
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["user.delete", "user.update", "user.create"]);
    assert!(!trail.to_string().contains("bob's long password"));
}

#[tokio::test]
async fn without_keys_mode_nobody_logs_in_and_the_local_api_stays_open() {
    let app = TestApp::spawn().await;
    assert_eq!(
        app.http
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let me = app.get_json("/api/auth/me").await;
    assert_eq!(me, json!({"auth": "none", "user": null}));
    assert!(
        !app.dir.path().join("jwt_secret").exists(),
        "no secret is made for mode none"
    );
}

#[tokio::test]
async fn logout_ends_the_whole_login_from_either_token_and_clears_the_cookies() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    // With the refresh token only (an access token that expired): the family ends, its access
    // tokens with it.
    let pair: Value = try_login(&app, "root", ADMIN_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let access = client_with_token(pair["access_token"].as_str().unwrap());
    assert_eq!(
        access
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = app
        .http
        .post(app.url("/api/auth/logout"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let cleared: Vec<&str> = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    assert!(
        cleared.iter().all(|c| c.contains("Max-Age=0")) && cleared.len() == 2,
        "{cleared:?}"
    );
    assert_eq!(
        access
            .get(app.url("/api/keys"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    // With the access token only: its refresh token can no longer renew the login.
    let pair: Value = try_login(&app, "root", ADMIN_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let r = client_with_token(pair["access_token"].as_str().unwrap())
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let r = app
        .http
        .post(app.url("/api/auth/refresh"))
        .json(&json!({"refresh_token": pair["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // Nothing to log out: still 204, nothing written.
    let r = app
        .http
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    let trail = app.get_json("/api/audit?action=auth.logout").await;
    assert_eq!(trail["entries"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn a_new_password_ends_the_logins_made_before_it() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    let ada = make_user(&app.state, "ada", Role::Admin).await;
    let old = client_with_token(&login(&app.http, app.addr, "ada", ADMIN_PASSWORD).await);
    assert_eq!(
        old.get(app.url("/api/keys")).send().await.unwrap().status(),
        200
    );
    // The gate compares whole seconds: let one pass so the change is after the login.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let r = app
        .admin
        .patch(app.url(&format!("/api/users/{}", ada.id)))
        .json(&json!({"password": "a brand new passphrase"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (status, _, message) = code(old.get(app.url("/api/keys")).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert!(message.contains("changed since this login"), "{message}");
    assert_eq!(try_login(&app, "ada", ADMIN_PASSWORD).await.status(), 401);
    assert_eq!(
        try_login(&app, "ada", "a brand new passphrase")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn members_cannot_loosen_what_an_admin_set_and_odd_names_cost_nothing() {
    let app = TestApp::spawn_with(keys_mode("login_per_minute = 100")).await;
    make_user(&app.state, "mia", Role::Member).await;
    let member = client_with_token(&login(&app.http, app.addr, "mia", ADMIN_PASSWORD).await);
    let r = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "mia-key", "owner": "mia", "max_budget_usd": 10.0}))
        .send()
        .await
        .unwrap();
    let id = r.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = member
        .patch(app.url(&format!("/api/keys/{id}")))
        .json(&json!({"max_budget_usd": null}))
        .send()
        .await
        .unwrap();
    assert_eq!(code(r).await.1, "forbidden");
    assert_eq!(
        member
            .post(app.url(&format!("/api/keys/{id}/block")))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (status, c, _) = code(
        member
            .post(app.url(&format!("/api/keys/{id}/unblock")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, c.as_str()), (403, "forbidden"));

    // A huge user name (as large as this test config's body limit allows) is refused like a
    // wrong password and leaves no trace.
    let huge = "x".repeat(60_000);
    let (status, c, _) = code(try_login(&app, &huge, "whatever-password").await).await;
    assert_eq!((status, c.as_str()), (401, "invalid_credentials"));
    let history = app.get_json("/api/auth/login-history?limit=1000").await;
    assert!(history.to_string().len() < 100_000);
}

#[tokio::test]
async fn a_live_socket_closes_when_its_login_ends() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;

    let app = TestApp::spawn_with(keys_mode("")).await;
    let pair: Value = try_login(&app, "root", ADMIN_PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    let token = pair["access_token"].as_str().unwrap().to_owned();
    let mut req = format!("ws://{}/ws", app.addr)
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let first = ws.next().await.unwrap().unwrap();
    assert!(matches!(first, Message::Text(_)), "init first");

    let r = client_with_token(&token)
        .post(app.url("/api/auth/logout"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204);
    // The next event is not sent: the socket closes with the login's code instead.
    let key = app
        .admin
        .post(app.url("/api/keys"))
        .json(&json!({"name": "wake"}))
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = app
        .chat_with(
            &[("authorization", &format!("Bearer {key}"))],
            user("mock/echo", "after logout"),
        )
        .await;
    assert_eq!(r.status(), 200);
    let closed = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(t))) => {
                    assert!(
                        !t.contains("after logout"),
                        "an event reached a logged-out socket: {t}"
                    );
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the socket closes");
    assert_eq!(closed, Some(4401));
}
