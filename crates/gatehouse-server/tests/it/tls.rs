//! `[server.tls]`: HTTPS in the binary, HTTP/2 by ALPN, HSTS on every answer, Secure login
//! cookies; and `trusted_proxies` deciding whose `X-Forwarded-For` is believed.

use std::process::Command;

use serde_json::{Value, json};

use crate::support::{ADMIN_PASSWORD, Options, TestApp, make_user};

/// A test CA and a server certificate for 127.0.0.1 it signed, in `dir`, made by the
/// system's openssl (webpki refuses a CA certificate as the server's own); the CA's PEM.
fn certificate(dir: &std::path::Path) -> Vec<u8> {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/CN=gatehouse test CA",
        ],
    ]
    .concat());
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "key.pem",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=localhost",
        ],
    ]
    .concat());
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "cert.pem",
        "-days",
        "1",
        "-extfile",
        "leaf.ext",
    ]);
    std::fs::read(dir.join("ca.pem")).unwrap()
}

#[tokio::test]
async fn https_with_http2_hsts_and_secure_cookies() {
    let dir = tempfile::tempdir().unwrap();
    let cert = certificate(dir.path());
    let app = TestApp::spawn_with(Options {
        server_toml: "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n".into(),
        extra_toml: "[auth]\nmode = \"keys\"\n".into(),
        dir: Some(dir),
        ..Options::default()
    })
    .await;
    make_user(&app.state, "root", gatehouse_core::record::Role::Admin).await;
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&cert).unwrap())
        .build()
        .unwrap();
    let base = format!("https://127.0.0.1:{}", app.addr.port());
    let r = https
        .get(format!("{base}/health/live"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN picks HTTP/2");
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");

    let r = https
        .post(format!("{base}/api/auth/login"))
        .json(&json!({"username": "root", "password": ADMIN_PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("strict-transport-security"));
    for c in r.headers().get_all("set-cookie") {
        let c = c.to_str().unwrap();
        assert!(c.contains("; Secure") && c.contains("HttpOnly"), "{c}");
    }
    let token = r.json::<Value>().await.unwrap()["access_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = https
        .get(format!("{base}/api/keys"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Plain HTTP to the TLS port gets no answer; a client that does not trust the certificate
    // does not connect.
    assert!(app.http.get(app.url("/health/live")).send().await.is_err());
    assert!(
        reqwest::Client::new()
            .get(format!("{base}/health/live"))
            .send()
            .await
            .is_err()
    );
}

#[tokio::test]
async fn a_missing_or_mismatched_certificate_refuses_to_start_and_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let mut config =
        gatehouse_config::load(None, &gatehouse_config::Env::default(), &Default::default())
            .unwrap();
    config.server.data_dir = dir.path().to_owned();
    config.server.tls = Some(gatehouse_config::TlsConfig {
        cert: "nope.pem".into(),
        key: "nope-key.pem".into(),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let e = gatehouse_server::run(listener, config, std::future::pending(), |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot serve HTTPS") && e.contains("nope.pem"),
        "{e}"
    );
}

#[tokio::test]
async fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let app = TestApp::spawn_with(Options {
        server_toml: "trusted_proxies = [\"127.0.0.1\"]".into(),
        ..Options::default()
    })
    .await;
    // The test client is on loopback, a trusted proxy here: the audit row names its client.
    let r = app
        .http
        .post(app.url("/api/sessions"))
        .header("x-forwarded-for", "198.51.100.4, 127.0.0.1")
        .json(&json!({"name": "via proxy"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    app.state.writer.flush().await;
    let trail = app.get_json("/api/audit?action=session.create").await;
    assert_eq!(trail["entries"][0]["ip"], "198.51.100.4", "{trail}");

    let plain = TestApp::spawn().await;
    let r = plain
        .http
        .post(plain.url("/api/sessions"))
        .header("x-forwarded-for", "198.51.100.4")
        .json(&json!({"name": "direct"}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    plain.state.writer.flush().await;
    let trail = plain.get_json("/api/audit?action=session.create").await;
    assert_eq!(
        trail["entries"][0]["ip"], "loopback",
        "a client's own claim is ignored"
    );
}

#[tokio::test]
async fn behind_a_trusted_https_proxy_the_login_cookies_are_secure() {
    let app = TestApp::spawn_with(Options {
        server_toml: "trusted_proxies = [\"127.0.0.1\"]".into(),
        extra_toml: "[auth]\nmode = \"keys\"\n".into(),
        ..Options::default()
    })
    .await;
    let login = |proto: Option<&'static str>| {
        let mut r = app
            .http
            .post(app.url("/api/auth/login"))
            .json(&json!({"username": "root", "password": ADMIN_PASSWORD}));
        if let Some(p) = proto {
            r = r.header("x-forwarded-proto", p);
        }
        r.send()
    };
    let r = login(Some("https")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| c.to_str().unwrap().contains("; Secure"))
    );
    let r = login(None).await.unwrap();
    assert!(
        r.headers()
            .get_all("set-cookie")
            .iter()
            .all(|c| !c.to_str().unwrap().contains("Secure"))
    );
}

/// An https provider is spoken to over TLS and its certificate is checked against the
/// platform's roots: one signed by an unknown CA is refused, with a message that says so.
#[tokio::test]
async fn https_provider_with_an_untrusted_certificate_is_refused() {
    let upstream = tls_upstream().await;
    let app = TestApp::spawn_with(Options {
        extra_toml: format!(
            "[providers.tlsup]\ntype = \"openai\"\nbase_url = \"https://127.0.0.1:{}/v1\"\napi_key = \"sk-x\"\n",
            upstream.addr.port()
        ),
        ..Options::default()
    })
    .await;
    let r = app
        .chat(json!({"model": "tlsup/x", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "upstream_unreachable", "{v}");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
    assert!(message.contains("provider `tlsup`"), "{message}");
}

/// A gateway serving TLS with a certificate from a test CA the platform does not trust: an
/// https provider whose certificate must be refused.
pub(crate) async fn tls_upstream() -> TestApp {
    let dir = tempfile::tempdir().unwrap();
    certificate(dir.path());
    TestApp::spawn_with(Options {
        server_toml: "[server.tls]\ncert = \"cert.pem\"\nkey = \"key.pem\"\n".into(),
        dir: Some(dir),
        ..Options::default()
    })
    .await
}
