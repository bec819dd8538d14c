//! Provider keys set through the API: sealed under the master key (never in the database in
//! plain text), used from the next request on, kept across restarts, and a start without the
//! right master key refused with the reason.

use serde_json::{Value, json};

use crate::support::{Options, TestApp, user};

const MASTER: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff";
const OTHER: &str = "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100";
const PROVIDER_KEY: &str = "sk-stored-through-the-api-7731";

fn with_master(key: Option<&str>) -> Options {
    Options {
        master_key: key.map(str::to_owned),
        ..Options::default()
    }
}

async fn provider(app: &TestApp, name: &str) -> Value {
    let v = app.get_json("/api/providers").await;
    v["providers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["key"] == name)
        .unwrap()
        .clone()
}

#[tokio::test]
async fn a_key_set_through_the_api_is_sealed_used_at_once_and_kept_across_restarts() {
    let app = TestApp::spawn_with(with_master(Some(MASTER))).await;
    let r = app.chat(user("nokey/m", "hi")).await;
    assert_eq!(r.status(), 401, "no key yet");
    assert_eq!(provider(&app, "nokey").await["key_source"], Value::Null);
    assert_eq!(provider(&app, "mock").await["key_source"], "env");

    let r = app
        .http
        .put(app.url("/api/providers/nokey/key"))
        .json(&json!({"api_key": PROVIDER_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(
        v,
        json!({"provider": "nokey", "key_source": "stored", "key_last4": "7731"})
    );

    // The next request carries it upstream.
    let r = app.chat(user("nokey/m", "hi")).await;
    assert_eq!(r.status(), 200);
    let sent = app.mock.captured().last().unwrap().headers["authorization"].clone();
    assert_eq!(sent, format!("Bearer {PROVIDER_KEY}"));
    let p = provider(&app, "nokey").await;
    assert_eq!(
        (p["key_source"].clone(), p["key_configured"].clone()),
        (json!("stored"), json!(true))
    );
    let listing = app.get_json("/api/providers").await.to_string();
    assert!(!listing.contains(PROVIDER_KEY));

    // Only the sealed value reaches the disk; the trail says what changed, not the key.
    app.state.writer.flush().await;
    let trail = app.get_json("/api/audit?action=provider.").await;
    assert_eq!(trail["entries"][0]["action"], "provider.key_set");
    assert_eq!(trail["entries"][0]["after"]["last4"], "7731");
    assert!(!trail.to_string().contains(PROVIDER_KEY));
    let mut app = app.restart(with_master(Some(MASTER))).await;
    for f in std::fs::read_dir(app.dir.path()).unwrap() {
        let bytes = std::fs::read(f.unwrap().path()).unwrap();
        assert!(
            !bytes
                .windows(PROVIDER_KEY.len())
                .any(|w| w == PROVIDER_KEY.as_bytes()),
            "the plain key is in a file of the data directory"
        );
    }
    let r = app.chat(user("nokey/m", "after a restart")).await;
    assert_eq!(r.status(), 200, "the stored key is opened at start");

    // Without the master key, or with another, the gateway refuses to start and says why.
    app.shutdown().await;
    for (key, expected) in [
        (None, "set GATEHOUSE_MASTER_KEY"),
        (Some(OTHER), "but the master key given is"),
    ] {
        let mut config = gatehouse_config::load(
            None,
            &gatehouse_config::Env::default(),
            &gatehouse_config::Overrides {
                data_dir: Some(app.dir.path().to_owned()),
                ..Default::default()
            },
        )
        .unwrap();
        config.storage.url.clone_from(&app.state.config.storage.url);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let options = gatehouse_server::RunOptions {
            demo: false,
            master_key: key.map(str::to_owned),
        };
        let e =
            gatehouse_server::run_with(listener, config, options, std::future::pending(), |_| {})
                .await
                .unwrap_err()
                .to_string();
        assert!(e.contains(expected), "{e}");
    }

    // Deleting the stored key goes back to the config's (none here).
    let app = TestApp::spawn_with(Options {
        dir: Some(std::mem::replace(
            &mut app.dir,
            tempfile::tempdir().unwrap(),
        )),
        master_key: Some(MASTER.into()),
        ..Options::default()
    })
    .await;
    let r = app
        .http
        .delete(app.url("/api/providers/nokey/key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(app.chat(user("nokey/m", "hi")).await.status(), 401);
    let r = app
        .http
        .delete(app.url("/api/providers/nokey/key"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn without_a_master_key_nothing_is_stored_and_the_answer_says_how() {
    let app = TestApp::spawn_with(with_master(None)).await;
    let r = app
        .http
        .put(app.url("/api/providers/nokey/key"))
        .json(&json!({"api_key": PROVIDER_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("GATEHOUSE_MASTER_KEY"),
        "{v}"
    );
    let r = app
        .http
        .put(app.url("/api/providers/nope/key"))
        .json(&json!({"api_key": PROVIDER_KEY}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
