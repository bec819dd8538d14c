//! An outbound proxy between the gateway and its providers (`[proxy] outbound_proxy`, else
//! `HTTPS_PROXY` and kin): plain http goes to the proxy in absolute form with its credentials,
//! https through a `CONNECT` tunnel with TLS end to end, loopback providers directly. The
//! proxy here resolves every name to 127.0.0.1, so a provider named `*.internal` is reachable
//! only through it: a request that arrives proves the gateway did not resolve the name itself.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use base64::Engine;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Options, TestApp, user};

/// A connection's first line and its `Proxy-Authorization`.
type Asked = (String, Option<String>);

/// What the proxy was asked, connection by connection.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<Asked>>>);

impl Seen {
    fn all(&self) -> Vec<Asked> {
        self.0.lock().unwrap().clone()
    }
}

/// A forward proxy: `CONNECT host:port` opens a tunnel to 127.0.0.1:port; an absolute-form
/// request is passed on as it came to 127.0.0.1 at its URL's port. With `password`, a request
/// without the matching `Proxy-Authorization` gets 407.
async fn proxy(password: Option<&'static str>) -> (SocketAddr, Seen) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Seen::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let text = String::from_utf8_lossy(&head).into_owned();
                let line = text.lines().next().unwrap_or("").to_owned();
                let auth = text
                    .lines()
                    .find_map(|l| {
                        l.strip_prefix("Proxy-Authorization: ")
                            .or_else(|| l.strip_prefix("proxy-authorization: "))
                    })
                    .map(str::to_owned);
                log.0.lock().unwrap().push((line.clone(), auth.clone()));
                if let Some(p) = password {
                    let want = format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("alice:{p}"))
                    );
                    if auth.as_deref() != Some(want.as_str()) {
                        let _ = client
                            .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\ncontent-length: 0\r\n\r\n")
                            .await;
                        return;
                    }
                }
                let target = line.split(' ').nth(1).unwrap_or("");
                let connect = line.starts_with("CONNECT ");
                let authority = if connect {
                    target
                } else {
                    target
                        .trim_start_matches("http://")
                        .split('/')
                        .next()
                        .unwrap_or("")
                };
                let port: u16 = authority
                    .rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(80);
                let Ok(mut upstream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await
                else {
                    return;
                };
                if connect {
                    let _ = client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await;
                } else {
                    let _ = upstream.write_all(&head).await;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    (addr, seen)
}

#[tokio::test]
async fn a_plain_http_provider_is_reached_through_the_proxy_with_its_credentials() {
    let (proxy_addr, seen) = proxy(Some("s3cret")).await;
    // The mock's port under a name only the proxy resolves; `mock/echo` (127.0.0.1) stays direct.
    let app = TestApp::spawn_with(Options {
        proxy_toml: format!("outbound_proxy = \"http://alice:s3cret@{proxy_addr}\"\n"),
        extra_toml: "[providers.far]\ntype = \"openai\"\nbase_url = \"http://mock.internal:MOCK_PORT/v1\"\napi_key = \"sk-far\"\n".into(),
        ..Options::default()
    })
    .await;
    let mock_port = app.mock.addr.port();
    let r = app.chat(user("far/echo", "through the proxy")).await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let r = app.chat(user("mock/echo", "directly")).await;
    assert_eq!(r.status(), 200);

    let seen = seen.all();
    assert_eq!(
        seen.len(),
        1,
        "one connection, to the far provider only: {seen:?}"
    );
    let (line, auth) = &seen[0];
    assert_eq!(
        line,
        &format!("POST http://mock.internal:{mock_port}/v1/chat/completions HTTP/1.1"),
        "absolute form"
    );
    let basic = base64::engine::general_purpose::STANDARD.encode("alice:s3cret");
    assert_eq!(auth.as_deref(), Some(format!("Basic {basic}").as_str()));
    let got = app.mock.captured();
    assert!(
        got.iter().any(|c| c
            .headers
            .get("authorization")
            .is_some_and(|a| a == "Bearer sk-far")),
        "the provider got the request with its own key"
    );
}

#[tokio::test]
async fn an_https_provider_is_reached_through_a_tunnel_with_tls_inside() {
    let (proxy_addr, seen) = proxy(None).await;
    let upstream = crate::tls::tls_upstream().await;
    let port = upstream.addr.port();
    let app = TestApp::spawn_with(Options {
        proxy_toml: format!("outbound_proxy = \"http://{proxy_addr}\"\n"),
        extra_toml: format!(
            "[providers.tlsup]\ntype = \"openai\"\nbase_url = \"https://tls.internal:{port}/v1\"\napi_key = \"sk-x\"\n"
        ),
        ..Options::default()
    })
    .await;
    let r = app.chat(user("tlsup/x", "hi")).await;
    // The tunnel carried the handshake to the provider, whose certificate (signed by a test CA
    // the platform does not trust) was checked end to end and refused.
    assert_eq!(r.status(), 502);
    let v: Value = r.json().await.unwrap();
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains("certificate"), "{message}");
    let seen = seen.all();
    assert!(!seen.is_empty(), "the proxy was used");
    assert!(
        seen.iter()
            .all(|(line, _)| line == &format!("CONNECT tls.internal:{port} HTTP/1.1")),
        "{seen:?}"
    );
}

#[tokio::test]
async fn a_proxy_that_refuses_is_named_in_the_error_and_its_password_is_not() {
    let (proxy_addr, _seen) = proxy(Some("right")).await;
    let app = TestApp::spawn_with(Options {
        proxy_toml: format!("outbound_proxy = \"http://alice:wrong-pass@{proxy_addr}\"\n"),
        extra_toml: "[providers.tlsup]\ntype = \"openai\"\nbase_url = \"https://api.internal/v1\"\napi_key = \"sk-x\"\n".into(),
        retries: Some(0),
        ..Options::default()
    })
    .await;
    let r = app
        .chat(json!({"model": "tlsup/x", "messages": [{"role": "user", "content": "hi"}]}))
        .await;
    assert_eq!(r.status(), 502);
    let text = r.text().await.unwrap();
    assert!(text.contains("outbound proxy"), "{text}");
    assert!(text.contains("proxy authorization required"), "{text}");
    assert!(!text.contains("wrong-pass"), "{text}");
}

#[tokio::test]
async fn a_proxy_url_that_is_not_http_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("gatehouse.toml");
    std::fs::write(
        &file,
        "[proxy]\noutbound_proxy = \"socks5://bob:hunter2@proxy:1080\"\n",
    )
    .unwrap();
    let e = gatehouse_config::load(
        Some(&file),
        &gatehouse_config::Env::default(),
        &Default::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("proxy.outbound_proxy"), "{e}");
    assert!(!e.contains("hunter2"), "{e}");
}

#[tokio::test]
async fn passthrough_goes_through_the_proxy_too_with_the_clients_key() {
    let (proxy_addr, seen) = proxy(None).await;
    let app = TestApp::spawn_with(Options {
        proxy_toml: format!("outbound_proxy = \"http://{proxy_addr}\"\n"),
        extra_toml: "[passthrough]\nallowed_hosts = [\"api.internal\"]\n".into(),
        ..Options::default()
    })
    .await;
    let port = app.mock.addr.port();
    let r = app
        .chat_with(
            &[
                (
                    "x-target-base-url",
                    &format!("http://api.internal:{port}/v1"),
                ),
                ("authorization", "Bearer sk-client-own"),
            ],
            user("echo", "hi"),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let seen = seen.all();
    assert_eq!(
        seen.first().map(|s| s.0.as_str()),
        Some(format!("POST http://api.internal:{port}/v1/chat/completions HTTP/1.1").as_str()),
        "{seen:?}"
    );
    let got = app.mock.captured().pop().unwrap();
    assert_eq!(got.headers["authorization"], "Bearer sk-client-own");
}
