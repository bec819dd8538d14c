//! `TestApp::spawn()`: a gateway and its mock upstream, ready to call.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use gatehouse_config::{Env, Overrides, load};
use gatehouse_mock::Mock;
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const UPSTREAM_KEY: &str = "sk-mock-upstream-secret";
pub const ADMIN_PASSWORD: &str = "correct horse battery staple";

/// Tests that measure this process's memory, or load it heavily, hold it, so they never overlap (tests run in
/// parallel threads of one process).
pub static MEMORY_MEASURED: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub struct TestApp {
    pub addr: SocketAddr,
    pub mock: Mock,
    pub http: reqwest::Client,
    /// Sends an admin's access token with `[auth] mode = "keys"` (user `root`, password
    /// [`ADMIN_PASSWORD`]); the same as `http` otherwise.
    pub admin: reqwest::Client,
    pub dir: tempfile::TempDir,
    pub state: gatehouse_server::AppState,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
}

/// Variations on the test config.
#[derive(Default)]
pub struct Options {
    /// Appended to the config; `MOCK_BASE_URL` is replaced by the mock's base URL, `MOCK_PORT`
    /// by its port.
    pub extra_toml: String,
    /// Added to the `[server]` section.
    pub server_toml: String,
    /// Added to the `[dashboard]` section.
    pub dashboard_toml: String,
    /// Added to the `[proxy]` section.
    pub proxy_toml: String,
    pub retries: Option<u32>,
    pub grace_secs: Option<f64>,
    /// Seconds; 1 unless set (also bounds non-streamed answers' head).
    pub first_byte_secs: Option<f64>,
    /// Events kept for WebSocket clients (1024 unless set).
    pub event_buffer: Option<usize>,
    /// Start on this data directory (a restart) instead of a fresh one.
    pub dir: Option<tempfile::TempDir>,
    /// The master key of stored provider keys (`GATEHOUSE_MASTER_KEY` for the binary).
    pub master_key: Option<String>,
    /// `[storage] url` instead of the suite's engine.
    pub storage_url: Option<String>,
    /// Serve from another gateway's data directory (and database): a second instance.
    pub data_dir: Option<PathBuf>,
}

/// `GATEHOUSE_TEST_STORAGE=postgres://…` runs the suite on PostgreSQL: each gateway in a schema
/// of its own (kept across a restart on the same data directory), so tests run in parallel.
fn test_storage(dir: &std::path::Path) -> String {
    let Some(base) = std::env::var("GATEHOUSE_TEST_STORAGE")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return String::new();
    };
    let marker = dir.join("pg-schema");
    let schema = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
        let s = format!("t_{}", uuid::Uuid::now_v7().simple());
        std::fs::write(&marker, &s).unwrap();
        s
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("[storage]\nurl = \"{base}{sep}options[search_path]={schema}\"\n")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(Options::default()).await
    }

    pub async fn spawn_with(opts: Options) -> Self {
        let mock = Mock::spawn().await.unwrap();
        let dir = match opts.dir {
            Some(d) => d,
            None => tempfile::tempdir().unwrap(),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let data_dir = opts
            .data_dir
            .clone()
            .unwrap_or_else(|| dir.path().to_path_buf());
        let storage = match &opts.storage_url {
            Some(url) => format!("[storage]\nurl = \"{url}\"\n"),
            None => test_storage(&data_dir),
        };
        let config_text = format!(
            r#"
{storage}
[server]
data_dir = "{data}"
max_body_bytes = 65536
shutdown_grace_secs = {grace}
{server}

[dashboard]
event_buffer = {event_buffer}
ping_secs = 5
{dashboard}

[log_watcher]
paths = ["{data}/core.log"]
poll_ms = 20

[proxy]
retries = {retries}
retry_backoff_ms = 10
{proxy}

[proxy.timeouts]
connect = 1
first_byte = {first_byte}
idle = 1
total = {total}

[providers.mock]
type = "openai"
base_url = "{base}"
api_key = "${{MOCK_KEY}}"

[providers.nokey]
type = "openai"
base_url = "{base}"
api_key = "${{NOKEY_API_KEY}}"

[providers.self]
type = "openai"
base_url = "http://{addr}/v1"

[models."mock/echo"]
provider = "mock"
model = "echo"
max_context_size = 4096
pricing = {{ input = 1.0, output = 2.0, cached_input = 0.5 }}

[models."mock/tiny"]
provider = "mock"
model = "echo"
max_context_size = 20

[models."nokey/m"]
provider = "nokey"
model = "m"
max_context_size = 4096

[models."self/loop"]
provider = "self"
model = "loop"
max_context_size = 4096
{extra}
"#,
            data = data_dir.display(),
            grace = opts.grace_secs.unwrap_or(10.0),
            retries = opts.retries.unwrap_or(2),
            first_byte = opts.first_byte_secs.unwrap_or(1.0),
            total = opts.first_byte_secs.unwrap_or(1.0).max(3.0),
            base = mock.base_url(),
            event_buffer = opts.event_buffer.unwrap_or(1024),
            extra = opts
                .extra_toml
                .replace("MOCK_BASE_URL", &mock.base_url())
                .replace("MOCK_PORT", &mock.addr.port().to_string()),
            server = opts.server_toml,
            dashboard = opts.dashboard_toml,
            proxy = opts.proxy_toml,
        );
        let file = dir.path().join("config.toml");
        std::fs::write(&file, config_text).unwrap();
        let config = load(
            Some(&file),
            &Env::from_pairs([("MOCK_KEY", UPSTREAM_KEY)]),
            &Overrides::default(),
        )
        .unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let (ready_tx, ready_rx) = oneshot::channel::<gatehouse_server::AppState>();
        let master_key = opts.master_key.clone();
        let server = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            let options = gatehouse_server::RunOptions {
                demo: false,
                master_key,
            };
            gatehouse_server::run_with(listener, config, options, shutdown, move |st| {
                let _ = ready_tx.send(st.clone());
            })
            .await
            .unwrap();
        });
        let state = ready_rx.await.unwrap();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap();
        // Under TLS the test logs in itself, over HTTPS.
        let admin = if state.config.auth.mode == gatehouse_config::AuthMode::Keys
            && state.config.server.tls.is_none()
        {
            let token = bootstrap_admin(&state, &http, addr).await;
            client_with_token(&token)
        } else {
            http.clone()
        };
        Self {
            state,
            addr,
            mock,
            http,
            admin,
            dir,
            stop: Some(stop),
            server: Some(server),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The SQLite file (tests of SQLite's own behaviour: see [`Self::on_postgres`]).
    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("gatehouse.db")
    }

    /// The suite runs on PostgreSQL (`GATEHOUSE_TEST_STORAGE`).
    pub fn on_postgres(&self) -> bool {
        !self.state.config.storage.url.is_empty()
    }

    /// The store this gateway uses, opened again as another process (the CLI) would.
    pub async fn open_store(&self) -> std::sync::Arc<dyn gatehouse_store::Store> {
        gatehouse_server::store_url(&self.state.config)
            .unwrap()
            .open(0)
            .await
            .unwrap()
    }

    /// Everything the database holds on disk, for tests that look for what must not be there:
    /// SQLite's file and its WAL; on PostgreSQL, every row of every table as text.
    pub async fn stored_bytes(&self) -> Vec<u8> {
        if !self.on_postgres() {
            let mut b = std::fs::read(self.db_path()).unwrap();
            b.extend(std::fs::read(self.db_path().with_extension("db-wal")).unwrap_or_default());
            return b;
        }
        use sqlx::Connection;
        let mut c = sqlx::PgConnection::connect(&self.state.config.storage.url)
            .await
            .unwrap();
        let tables: Vec<String> = sqlx::query_scalar(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = current_schema()",
        )
        .fetch_all(&mut c)
        .await
        .unwrap();
        let mut out = Vec::new();
        for t in tables {
            let rows: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                "SELECT row_to_json(t)::text FROM \"{t}\" t"
            )))
            .fetch_all(&mut c)
            .await
            .unwrap();
            for r in rows {
                out.extend_from_slice(r.as_bytes());
                out.push(b'\n');
            }
        }
        out
    }

    pub async fn chat(&self, body: Value) -> reqwest::Response {
        self.http
            .post(self.url("/v1/chat/completions"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A chat request with extra headers.
    pub async fn chat_with(&self, headers: &[(&str, &str)], body: Value) -> reqwest::Response {
        let mut req = self.http.post(self.url("/v1/chat/completions")).json(&body);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }

    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.admin.get(self.url(path)).send().await.unwrap();
        assert!(r.status().is_success(), "GET {path}: {}", r.status());
        r.json().await.unwrap()
    }

    /// The JSON of a GET whatever its status (`/health` answers 503 when degraded).
    pub async fn get_json_any(&self, path: &str) -> Value {
        let r = self.admin.get(self.url(path)).send().await.unwrap();
        r.json().await.unwrap()
    }

    /// Stops this gateway and starts another on the same data directory.
    pub async fn restart(mut self, mut opts: Options) -> Self {
        self.shutdown().await;
        opts.dir = Some(self.dir);
        Self::spawn_with(opts).await
    }

    /// Stops the server as SIGTERM would and waits for it to drain.
    pub async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server.await.unwrap();
        }
    }
}

/// Makes user `root` (an admin) unless it exists, as `gatehouse users create` would, and logs in.
async fn bootstrap_admin(
    st: &gatehouse_server::AppState,
    http: &reqwest::Client,
    addr: SocketAddr,
) -> String {
    if st.store.user_by_name("root").await.unwrap().is_none() {
        make_user(st, "root", gatehouse_core::record::Role::Admin).await;
    }
    login(http, addr, "root", ADMIN_PASSWORD).await
}

/// Creates a user with [`ADMIN_PASSWORD`] straight in the store.
pub async fn make_user(
    st: &gatehouse_server::AppState,
    name: &str,
    role: gatehouse_core::record::Role,
) -> gatehouse_core::record::UserRecord {
    let u = gatehouse_services::users::new_user(
        name,
        ADMIN_PASSWORD,
        role,
        gatehouse_core::time::now_ms(),
    )
    .unwrap();
    st.store
        .apply(&[gatehouse_store::WriteOp::UpsertUser(Box::new(u.clone()))])
        .await
        .unwrap();
    u
}

/// Logs in; the access token.
pub async fn login(http: &reqwest::Client, addr: SocketAddr, name: &str, password: &str) -> String {
    let r = http
        .post(format!("http://{addr}/api/auth/login"))
        .json(&json!({"username": name, "password": password}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "login as {name}");
    let v: Value = r.json().await.unwrap();
    v["access_token"].as_str().unwrap().to_owned()
}

/// A client that sends `token` as its bearer.
pub fn client_with_token(token: &str) -> reqwest::Client {
    let mut h = reqwest::header::HeaderMap::new();
    h.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .default_headers(h)
        .build()
        .unwrap()
}

/// A request row as the writer stores it (id and request id `id`), for tests that put rows
/// straight into the store: an older version's, or old ones for the pruner.
pub fn stored_row(
    id: &str,
    session: &str,
    created_at: i64,
) -> gatehouse_core::record::RequestRecord {
    gatehouse_core::record::RequestRecord {
        row_id: id.to_owned(),
        id: id.to_owned(),
        session_id: gatehouse_core::SessionId::new(session.to_owned()),
        created_at,
        provider: "mock".into(),
        model_key: "mock/echo".into(),
        upstream_model: "echo".into(),
        stream: false,
        status: 200,
        prompt_tokens_est: 1,
        prompt_tokens: None,
        completion_tokens: None,
        cached_tokens: None,
        reasoning_tokens: None,
        usage_source: gatehouse_core::record::UsageSource::Estimated,
        max_context: 4096,
        context_pct: 0.0,
        preview: "old".into(),
        latency_ms: 1,
        ttfb_ms: None,
        overhead_us: 1,
        attempts: 1,
        finish_reason: None,
        error_type: None,
        error_message: None,
        cost_usd: None,
        memory_tokens: 0,
        chat_tokens: 0,
        memory_ratio: 0.0,
        routing: None,
        requested_model: None,
        purpose: None,
        key_id: None,
        team_id: None,
    }
}

pub fn user(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

pub fn streaming(model: &str, text: &str) -> Value {
    json!({"model": model, "stream": true, "messages": [{"role": "user", "content": text}]})
}

/// The requests recorded for a session, newest first.
pub async fn rows(app: &TestApp, session: &str) -> Vec<Value> {
    let v = app
        .get_json(&format!("/api/sessions/{session}/requests?limit=500"))
        .await;
    v["requests"].as_array().cloned().unwrap_or_default()
}

pub fn session_of(r: &reqwest::Response) -> String {
    r.headers()["x-gatehouse-session"]
        .to_str()
        .unwrap()
        .to_owned()
}

/// Sends `request` (a whole HTTP/1.1 request, `Connection: close`) over a raw socket and returns
/// the status code and the whole answer, for tests that need headers no HTTP client would send.
pub async fn raw_http(addr: SocketAddr, request: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A TCP path to a server (PostgreSQL, Redis) that the test can cut (every connection through it dropped, new
/// ones refused) and restore: the server going away, as a restart or a network fault does.
pub struct Cuttable {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    links: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Cuttable {
    pub async fn to(target: &str) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let links = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (o, l, target) = (open.clone(), links.clone(), target.to_owned());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !o.load(Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                l.lock().unwrap().push(link.abort_handle());
            }
        });
        Self { port, open, links }
    }

    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for l in self.links.lock().unwrap().drain(..) {
            l.abort();
        }
    }

    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
