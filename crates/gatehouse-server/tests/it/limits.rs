//! Per-endpoint limits (`[rate_limits.endpoints]`): every default pattern against its real
//! route, the headers on every answer, per user once logged in, else per address.

use gatehouse_core::record::Role;
use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, Options, TestApp, client_with_token, login, make_user};

fn keys_mode(extra: &str) -> Options {
    Options {
        extra_toml: format!("[auth]\nmode = \"keys\"\nlogin_per_minute = 1000\n{extra}\n"),
        ..Options::default()
    }
}

fn header(r: &reqwest::Response, name: &str) -> String {
    r.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

async fn assert_limited(r: reqwest::Response, what: &str) {
    assert_eq!(r.status(), 429, "{what}");
    let retry: u64 = header(&r, "retry-after").parse().unwrap();
    assert!((1..=3600).contains(&retry), "{what}: retry-after {retry}");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "0", "{what}");
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{what}");
}

#[tokio::test]
async fn the_default_table_limits_login_refresh_users_and_the_api_per_hour() {
    let app = TestApp::spawn_with(keys_mode("")).await;
    // Login: 10 an hour per address; the harness's own login was the first.
    for i in 2..=10 {
        let r = app
            .http
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "root", "password": ADMIN_PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "login {i}");
    }
    let r = app
        .http
        .post(app.url("/api/auth/login"))
        .json(&json!({"username": "root", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit"), "10");
    assert_limited(r, "the 11th login").await;

    // Refresh: 20 an hour per address (it has no login yet: its token is its credential).
    for i in 1..=21 {
        let r = app
            .http
            .post(app.url("/api/auth/refresh"))
            .json(&json!({"refresh_token": "not-a-token"}))
            .send()
            .await
            .unwrap();
        if i <= 20 {
            assert_eq!(r.status(), 401, "refresh {i}");
            assert_eq!(header(&r, "x-ratelimit-remaining"), (20 - i).to_string());
        } else {
            assert_limited(r, "the 21st refresh").await;
        }
    }

    // Users: 20 an hour per logged-in user; another user has a window of their own.
    for i in 1..=20 {
        let r = app.admin.get(app.url("/api/users")).send().await.unwrap();
        assert_eq!(r.status(), 200, "users {i}");
        assert_eq!(header(&r, "x-ratelimit-limit"), "20");
    }
    assert_limited(
        app.admin.get(app.url("/api/users")).send().await.unwrap(),
        "the 21st /api/users",
    )
    .await;
    assert_limited(
        app.admin
            .patch(app.url("/api/users/usr_x"))
            .json(&json!({}))
            .send()
            .await
            .unwrap(),
        "/api/users/{id} shares the pattern",
    )
    .await;

    // Everything else under /api: 3,600 an hour, counted on every answer.
    let r = app
        .admin
        .get(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(header(&r, "x-ratelimit-limit"), "3600");
    assert_eq!(header(&r, "x-ratelimit-remaining"), "3599");
    let reset: u64 = header(&r, "x-ratelimit-reset").parse().unwrap();
    assert!((3590..=3600).contains(&reset), "{reset}");
    let r = app.admin.get(app.url("/api/keys")).send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-remaining"), "3598");

    // The proxy routes are limited per virtual key, not by this table.
    let r = app.http.get(app.url("/health/live")).send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit"), "");
}

#[tokio::test]
async fn limits_count_each_user_apart_and_overrides_apply() {
    let app = TestApp::spawn_with(keys_mode(
        "[rate_limits.endpoints]\n\"/api/sessions\" = { requests = 2, window = \"60s\" }\n",
    ))
    .await;
    make_user(&app.state, "val", Role::Viewer).await;
    let viewer = client_with_token(&login(&app.http, app.addr, "val", ADMIN_PASSWORD).await);
    for c in [&app.admin, &app.admin] {
        assert_eq!(
            c.get(app.url("/api/sessions"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    let r = app
        .admin
        .get(app.url("/api/sessions"))
        .send()
        .await
        .unwrap();
    assert!(header(&r, "retry-after").parse::<u64>().unwrap() <= 60);
    assert_limited(r, "the admin's third").await;
    assert_eq!(
        viewer
            .get(app.url("/api/sessions"))
            .send()
            .await
            .unwrap()
            .status(),
        200,
        "the viewer's own window"
    );
    // /api/keys still falls under the default /api/* line.
    let r = app.admin.get(app.url("/api/keys")).send().await.unwrap();
    assert_eq!(header(&r, "x-ratelimit-limit"), "3600");
}

#[tokio::test]
async fn without_keys_the_address_is_the_subject() {
    let app = TestApp::spawn_with(Options {
        extra_toml: "[rate_limits.endpoints]\n\"/api/*\" = { requests = 3, window = \"1h\" }\n"
            .into(),
        ..Options::default()
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.http
                .get(app.url("/api/sessions"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_limited(
        app.http.get(app.url("/api/mask")).send().await.unwrap(),
        "the 4th",
    )
    .await;
    // The proxy path is untouched.
    let r = app.chat(crate::support::user("mock/echo", "hi")).await;
    assert_eq!(r.status(), 200);
}
