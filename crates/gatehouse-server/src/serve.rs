//! Serving: build the state, bind the routes, run until shutdown, then drain.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use gatehouse_config::Config;
use gatehouse_core::TokenCounter;
use gatehouse_proxy::{Router, Upstream};
use gatehouse_services::events::{Event, EventBus, emit};
use gatehouse_services::logwatch::{LogWatcher, Sink, expand_home};
use gatehouse_services::{Gauges, LocalBus, Sessions};
use gatehouse_store::{Store, StoreError, StoreUrl, WriteOp, Writer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::routes;
use crate::state::{AppState, Inner};

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Client(#[from] gatehouse_proxy::ClientError),
    #[error("server I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("the built-in redaction or memory patterns do not compile (a bug; please report it)")]
    RedactionRules,
    #[error("{0}")]
    Secrets(#[from] gatehouse_services::secrets::SecretsError),
    #[error("cannot serve HTTPS: {0}")]
    Tls(String),
    #[error("cannot set up admin logins: {0}")]
    Login(#[from] crate::login::SecretError),
    #[error("{0}")]
    Redis(String),
}

/// How long cut requests get to write their rows before the writer closes.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// The settings key of the sanitizer's switch.
pub(crate) const SANITIZER_KEY: &str = "sanitizer_enabled";

/// Serves on `listener` until `shutdown` resolves, then stops accepting, lets in-flight requests
/// finish for up to `server.shutdown_grace_secs`, and drains the accounting queue.
///
/// `on_ready` is called once the store is open and the routes are bound.
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&AppState) + Send,
) -> Result<(), ServeError> {
    run_with(listener, config, RunOptions::default(), shutdown, on_ready).await
}

/// Choices of the binary that are not configuration.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// The configuration includes the built-in demo provider.
    pub demo: bool,
    /// The master key's text, instead of `GATEHOUSE_MASTER_KEY` / `_FILE` (tests, embedders).
    pub master_key: Option<String>,
}

/// The store `[storage]` names: `url`, or else the SQLite file in the data directory.
pub fn store_url(config: &Config) -> Result<StoreUrl, StoreError> {
    if config.storage.url.is_empty() {
        return Ok(StoreUrl::Sqlite(
            config.server.data_dir.join(&config.storage.sqlite_file),
        ));
    }
    StoreUrl::parse(&config.storage.url, &config.server.data_dir)
}

/// [`run`] with [`RunOptions`].
pub async fn run_with(
    listener: TcpListener,
    config: Config,
    options: RunOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
    on_ready: impl FnOnce(&AppState) + Send,
) -> Result<(), ServeError> {
    let started = Instant::now();
    let listen = listener.local_addr()?;
    let store_url = store_url(&config)?;
    let store = store_url.open(config.storage.pool_size).await?;
    tracing::info!(engine = store_url.engine(), at = %store_url.describe(), "store open");
    let (writer, writer_task) = Writer::spawn(
        store.clone(),
        config.storage.queue_capacity,
        config.storage.batch_size,
        Duration::from_millis(config.storage.max_commit_delay_ms),
    );
    let instance_id = uuid::Uuid::now_v7().to_string();
    let shared = gatehouse_services::shared::Shared::open(&config.redis, &instance_id)
        .map_err(ServeError::Redis)?;
    // With Redis, one live view: every instance's events reach every dashboard.
    let (bus, redis_bus, bridge): (Arc<dyn EventBus>, _, _) = match &shared {
        Some(sh) => {
            let (b, rx) = gatehouse_services::shared::bus::RedisBus::new(
                config.dashboard.event_buffer,
                &instance_id,
            );
            let task = tokio::spawn(b.clone().run(sh.clone(), rx));
            (b.clone(), Some(b), Some(task))
        }
        None => (
            Arc::new(LocalBus::new(config.dashboard.event_buffer)),
            None,
            None,
        ),
    };
    let sessions = Sessions::load(
        &store,
        writer.clone(),
        bus.clone(),
        config.sessions.new_on_model_change,
    )
    .await?;
    let stop = CancellationToken::new();
    let mut recall = gatehouse_context::recall::Recall::new();
    for r in store.load_memory().await? {
        recall.load(r);
    }
    // The dashboard's toggle outlives restarts; the file's value applies until it is used.
    let sanitizer_on = match store.get_setting(SANITIZER_KEY).await?.as_deref() {
        Some("true") => true,
        Some("false") => false,
        _ => config.sanitizer.enabled,
    };
    let stored_compactions = store.load_compaction_state().await?;
    let keys = gatehouse_services::Keys::new();
    let mut since = Since::default();
    // Teams first: a key is linked to its team as it is applied.
    for (t, spend) in store.load_teams(0).await? {
        since.teams = since.teams.max(t.updated_at);
        keys.apply_team(t, Some(spend));
    }
    for (k, spend) in store.load_keys(0).await? {
        since.keys = since.keys.max(k.updated_at);
        keys.apply(k, Some(spend));
    }
    let login = crate::login::LoginState::from_config(&config)?;
    let master = match &options.master_key {
        Some(text) => Some(gatehouse_services::secrets::MasterKey::parse(text)?),
        None => gatehouse_services::secrets::MasterKey::from_env()?,
    };
    let (master_key, provider_keys) = open_provider_keys(&*store, master).await?;
    let tls = match &config.server.tls {
        Some(t) => {
            Some(crate::listen::tls_acceptor(t, &config.server.data_dir).map_err(ServeError::Tls)?)
        }
        None => None,
    };
    for (jti, expires_at) in store.revoked_tokens(gatehouse_core::time::now_ms()).await? {
        login.revoked.revoke(&jti, expires_at, 0);
    }
    let state = AppState(Arc::new(Inner {
        shared,
        redis_bus,
        resync: tokio::sync::Notify::new(),
        metrics: crate::metrics::Metrics::new(config.metrics.max_series),
        router: Router::new(&config, Some(listen)),
        upstream: Upstream::new(&config, &instance_id)?,
        counter: TokenCounter::new(config.proxy.token_cache_entries),
        redactor: gatehouse_context::Redactor::shared().ok_or(ServeError::RedactionRules)?,
        memory: gatehouse_context::memory::Detector::shared().ok_or(ServeError::RedactionRules)?,
        sanitizer: crate::state::SanitizerState::new(sanitizer_on),
        compaction: crate::compaction::CompactionState::new(stored_compactions),
        recall: std::sync::Mutex::new(recall),
        listen,
        guard: Arc::new(
            crate::guard::Policy::new(
                &config.server.allowed_hosts,
                &config.dashboard.allowed_origins,
            )
            .trusting(&config.server.trusted_proxies),
        ),
        sessions,
        keys,
        login,
        endpoint_limits: gatehouse_services::endpoints::EndpointLimits::new(&config.rate_limits),
        master_key,
        stored_keys: crate::state::StoredKeys::default(),
        responses: gatehouse_services::responses::Responses::new(
            store.clone(),
            writer.clone(),
            gatehouse_services::responses::MEMORY_BYTES,
        ),
        store,
        writer: writer.clone(),
        bus,
        gauges: Gauges::new(),
        log_watch: std::sync::OnceLock::new(),
        shutdown: stop.clone(),
        cut: CancellationToken::new(),
        conns: Arc::new(crate::listen::ConnStats::default()),
        retention: std::sync::Mutex::new(None),
        streams_open: AtomicU64::new(0),
        refusals: crate::state::Refusals::default(),
        ws: crate::state::WsStats::default(),
        demo: options.demo,
        started,
        in_flight: AtomicU64::new(0),
        shutting_down: AtomicBool::new(false),
        config,
    }));
    // No vocabulary is loaded here: each is tens of MiB once decoded, and most instances serve
    // one or two encodings, so each loads on the first request that counts with it (idle RSS
    // stays within DESIGN §10's 20 MiB; that first request pays the load once).

    for (provider, key, last4) in provider_keys {
        if state.config.providers.contains_key(&provider) {
            crate::routes::apply_provider_key(&state, &provider, Some(key), Some(last4));
        } else {
            tracing::warn!(%provider, "a key is stored for a provider the config no longer has; it stays unused");
        }
    }
    let pruner = tokio::spawn(retention_loop(state.clone(), stop.clone()));
    let keys_on = state.config.auth.mode == gatehouse_config::AuthMode::Keys;
    let key_sync = keys_on.then(|| tokio::spawn(key_sync_loop(state.clone(), since, stop.clone())));
    let shared_changes = state.shared.as_ref().map(|sh| {
        // This instance's breaker openings and closings, for the others to follow.
        let announce = sh.clone();
        state.upstream.breakers.on_transition(move |t| {
            use gatehouse_proxy::breaker::Transition;
            let change = match t {
                Transition::Opened { provider, open_for } => {
                    gatehouse_services::shared::Change::Breaker {
                        provider,
                        open_ms: Some(u64::try_from(open_for.as_millis()).unwrap_or(u64::MAX)),
                    }
                }
                Transition::Closed { provider } => gatehouse_services::shared::Change::Breaker {
                    provider,
                    open_ms: None,
                },
            };
            announce.publish(change);
        });
        tokio::spawn(shared_changes_loop(state.clone(), sh.clone(), stop.clone()))
    });
    let grace = Duration::try_from_secs_f64(state.config.server.shutdown_grace_secs)
        .unwrap_or(Duration::from_secs(30));
    let mut watcher = start_log_watcher(&state);
    let app = routes::router(state.clone());
    let open = crate::listen::Connections::default();
    let accepting = tokio::spawn(crate::listen::serve(
        listener,
        app,
        tls,
        crate::listen::Bounds::of(&state.config.server),
        state.conns.clone(),
        open.clone(),
        stop.clone(),
    ));
    tracing::info!(%listen, elapsed_ms = started.elapsed().as_millis() as u64, "gatehouse ready");
    on_ready(&state);

    shutdown.await;
    state.shutting_down.store(true, Ordering::SeqCst);
    let in_flight = state.in_flight.load(Ordering::SeqCst);
    tracing::info!(
        in_flight,
        grace_s = grace.as_secs_f64(),
        "shutting down: no new connections, finishing in-flight requests"
    );
    stop.cancel();
    let graceful = accepting
        .await
        .map_err(|e| std::io::Error::other(format!("the accept loop failed: {e}")))?;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = state.in_flight.load(Ordering::SeqCst),
            "grace period over; cutting the remaining requests"
        );
        state.cut.cancel();
        let cut = open.cut();
        tracing::info!(connections = cut, "connections still open were cut");
        // The cut requests write their rows as their futures are dropped; wait for that.
        let deadline = Instant::now() + CUT_WAIT;
        while state.in_flight.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    if let Some(w) = watcher.as_mut() {
        w.stop();
    }
    // The pruner stops between two batches once `stop` is cancelled.
    let _ = pruner.await;
    if let Some(k) = key_sync {
        let _ = k.await;
    }
    if let Some(c) = shared_changes {
        let _ = c.await;
    }
    if let Some(b) = bridge {
        b.abort();
    }
    // Spend settled since the last tick, before the writer closes.
    persist_spend(&state);
    writer.close().await;
    let _ = writer_task.await;
    let stats = writer.stats();
    tracing::info!(
        rows_written = stats.written.load(Ordering::Relaxed),
        rows_rejected = stats.rejected.load(Ordering::Relaxed),
        "accounting drained; bye"
    );
    Ok(())
}

/// The first pruning run comes this soon after start, so a database that grew while the
/// gateway was stopped is brought back within bounds early.
const FIRST_PRUNE: Duration = Duration::from_secs(10);

/// Retention, every `[retention] interval_secs`: old rows and originals pruned in small batches,
/// then idle sessions out of memory (their gauges, last requests and trigger state too).
async fn retention_loop(st: AppState, stop: CancellationToken) {
    let cfg = st.config.retention;
    let mut wait = FIRST_PRUNE.min(Duration::from_secs(cfg.interval_secs));
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        wait = Duration::from_secs(cfg.interval_secs);
        let go_on = || !stop.is_cancelled();
        match gatehouse_services::retention::prune(
            &*st.store,
            &cfg,
            gatehouse_core::time::now_ms(),
            &go_on,
        )
        .await
        {
            Ok(p) => {
                if p.masked > 0 {
                    // Originals still in use are stored again on their next turn.
                    st.sanitizer.stored.clear();
                }
                if p.requests + p.masked + p.over_size > 0 {
                    tracing::info!(
                        requests = p.requests,
                        masked = p.masked,
                        over_size = p.over_size,
                        live_mb = p.size.live_bytes >> 20,
                        "retention pruned old data"
                    );
                }
                *st.retention.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((gatehouse_core::time::now_ms(), p));
            }
            Err(e) => {
                tracing::warn!(error = %e, "retention could not prune; it tries again next time")
            }
        }
        let idle_ms = i64::from(cfg.session_idle_hours).saturating_mul(3_600_000);
        let idle = st
            .sessions
            .evict_idle(gatehouse_core::time::now_ms().saturating_sub(idle_ms));
        for id in &idle {
            st.gauges.forget(id);
            st.compaction.evict(id);
        }
        if !idle.is_empty() {
            tracing::debug!(sessions = idle.len(), "idle sessions left memory");
        }
    }
}

/// Follows the configured client logs; each figure goes to the active session's gauge and out as
/// a `log_metric` event.
fn start_log_watcher(state: &AppState) -> Option<LogWatcher> {
    let cfg = &state.config.log_watcher;
    if !cfg.enabled || cfg.paths.is_empty() {
        return None;
    }
    let home = std::env::var_os("HOME").map(std::path::PathBuf::from);
    let paths = cfg
        .paths
        .iter()
        .map(|p| expand_home(p, home.as_deref()))
        .collect();
    let st = state.clone();
    let sink: Sink = Box::new(move |path, metric| {
        let gauge = st.sessions.active().and_then(|s| {
            let (view, change) = st.gauges.on_log(&s.id, &metric, Instant::now())?;
            if let Some(c) = change {
                st.publish_alert(&view, c);
            }
            Some(view)
        });
        emit(&*st.bus, || Event::LogMetric {
            path: path.to_owned(),
            metric,
            gauge,
        });
    });
    match LogWatcher::spawn(paths, Duration::from_millis(cfg.poll_ms), sink) {
        Ok(w) => {
            let _ = state.log_watch.set(w.status_handle());
            Some(w)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the log watcher");
            None
        }
    }
}

/// The master key from the environment and the provider keys stored under it, opened. A
/// database holding stored keys without the master key that sealed them refuses to start (and
/// says which key it needs), rather than run without the keys an admin set.
async fn open_provider_keys(
    store: &dyn Store,
    master: Option<gatehouse_services::secrets::MasterKey>,
) -> Result<
    (
        Option<gatehouse_services::secrets::MasterKey>,
        Vec<(String, String, String)>,
    ),
    ServeError,
> {
    use gatehouse_services::secrets::{SecretsError, sealed_with};
    let stored = store.provider_keys().await?;
    let Some(first) = stored.first() else {
        return Ok((master, Vec::new()));
    };
    let Some(m) = master else {
        let id = sealed_with(&first.sealed).unwrap_or("?").to_owned();
        return Err(SecretsError::Missing(id).into());
    };
    let mut opened = Vec::with_capacity(stored.len());
    for k in &stored {
        opened.push((
            k.provider.clone(),
            m.open(&k.provider, &k.sealed)?,
            k.last4.clone(),
        ));
    }
    Ok((Some(m), opened))
}

/// The newest edit read of the keys and of the teams.
#[derive(Debug, Default, Clone, Copy)]
struct Since {
    keys: i64,
    teams: i64,
}

/// Every `auth.sync_secs`: hands the keys' and teams' new spend to the writer, and reads back
/// the keys and teams changed outside this process (the CLI, another instance): edits, blocks,
/// rotations and deletions apply within that time.
async fn key_sync_loop(st: AppState, mut since: Since, stop: CancellationToken) {
    let every = Duration::from_secs(st.config.auth.sync_secs.max(1));
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            // Redis (re)connected: the changes announced meanwhile were missed.
            () = st.resync.notified() => {}
            () = stop.cancelled() => return,
        }
        persist_spend(&st);
        // Logouts made by another instance on the same database apply here too.
        let now = gatehouse_core::time::now_ms();
        if let Ok(revoked) = st.store.revoked_tokens(now).await {
            for (jti, expires_at) in revoked {
                if !st.login.revoked.is_revoked(&jti) {
                    st.login.revoked.revoke(&jti, expires_at, now);
                }
            }
        }
        match st.store.load_teams(since.teams).await {
            Ok(changed) => {
                for (t, spend) in changed {
                    since.teams = since.teams.max(t.updated_at);
                    st.keys.apply_team(t, Some(spend));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read teams back from the database; retrying")
            }
        }
        match st.store.load_keys(since.keys).await {
            Ok(changed) => {
                for (k, spend) in changed {
                    since.keys = since.keys.max(k.updated_at);
                    st.keys.apply(k, Some(spend));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot read virtual keys back from the database; retrying")
            }
        }
    }
}

/// The key, team and logout changes other instances announce through Redis, applied as they
/// arrive: a key blocked on one instance is refused by this one on its next request.
async fn shared_changes_loop(
    st: AppState,
    shared: Arc<gatehouse_services::shared::Shared>,
    stop: CancellationToken,
) {
    use gatehouse_services::shared::{Change, Incoming};
    let (tx, mut rx) = tokio::sync::mpsc::channel(256);
    let listener = tokio::spawn(shared.listen(tx));
    loop {
        let incoming = tokio::select! {
            m = rx.recv() => m,
            () = stop.cancelled() => None,
        };
        let Some(incoming) = incoming else {
            break;
        };
        match incoming {
            Incoming::Change(Change::Key(k)) => st.keys.apply(*k, None),
            Incoming::Change(Change::Team(t)) => st.keys.apply_team(*t, None),
            Incoming::Change(Change::Revoke { jti, expires_at }) => {
                st.login
                    .revoked
                    .revoke(&jti, expires_at, gatehouse_core::time::now_ms());
            }
            Incoming::Change(Change::Breaker { provider, open_ms }) => {
                use gatehouse_proxy::breaker::Transition;
                let t = match open_ms {
                    Some(ms) => Transition::Opened {
                        provider,
                        open_for: Duration::from_millis(ms),
                    },
                    None => Transition::Closed { provider },
                };
                st.upstream.breakers.follow(&t, std::time::Instant::now());
            }
            Incoming::Change(Change::Compaction(r)) => st.compaction.adopt(&r),
            Incoming::Resync => st.resync.notify_one(),
        }
    }
    listener.abort();
}

fn persist_spend(st: &AppState) {
    for (id, spend) in st.keys.take_dirty() {
        st.writer.record_now(WriteOp::SetKeySpend { id, spend });
    }
    for (id, spend) in st.keys.take_dirty_teams() {
        st.writer.record_now(WriteOp::SetTeamSpend { id, spend });
    }
}
