//! Accepting client connections, within bounds.
//!
//! Our own accept loop over hyper rather than `axum::serve`, for the bounds a gateway left
//! running all day needs: at most `server.max_connections` open connections and
//! `server.max_connections_per_ip` from one address (a connection past either gets a 503 with
//! `Retry-After` and is closed; while too many are being refused at once, further ones are
//! closed unanswered), a header-read timeout that also closes idle keep-alive connections
//! (hyper's one timer covers both: it runs whenever the connection waits for a request's
//! head), and a cap on concurrent requests per HTTP/2 connection. Shutdown is graceful: the
//! loop stops accepting and every connection finishes its request in flight, then closes; past
//! the grace period [`Connections::cut`] aborts the ones still open (their requests' rows say
//! `shutdown`). Aborting connections, rather than every request selecting on a shutdown
//! signal, keeps the cut off the request path: one registry entry per connection.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, Request, Response, StatusCode, header};
use gatehouse_core::{ApiError, ErrorKind};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use serde::Serialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Connections being answered with a 503 at once, at most; past it they are closed unanswered,
/// so a flood of connections costs a bounded number of tasks.
const MAX_REFUSING: usize = 64;
/// How long a refused connection may take to send its request and read the 503.
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TLS client has to finish its handshake (the header timeout starts after it).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Under TLS every answer says to keep using HTTPS (a year; the name's subdomains are not
/// assumed to be ours).
const HSTS: HeaderValue = HeaderValue::from_static("max-age=31536000");

/// The TLS side of `[server.tls]`: rustls on aws-lc-rs, HTTP/2 and HTTP/1.1 by ALPN.
pub fn tls_acceptor(
    cfg: &gatehouse_config::TlsConfig,
    data_dir: &std::path::Path,
) -> Result<tokio_rustls::TlsAcceptor, String> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let cert_path = data_dir.join(&cfg.cert);
    let key_path = data_dir.join(&cfg.key);
    let certs = CertificateDer::pem_file_iter(&cert_path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the certificate {}: {e}", cert_path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no certificate", cert_path.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("cannot read the private key {}: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("the certificate and key do not go together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// The bounds, from `[server]`.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub max_connections: usize,
    pub max_per_ip: usize,
    /// `None`: no timeout (`header_read_timeout_secs = 0`).
    pub header_read_timeout: Option<Duration>,
    pub http2_max_streams: u32,
}

impl Bounds {
    pub fn of(s: &gatehouse_config::ServerConfig) -> Self {
        Self {
            max_connections: s.max_connections,
            max_per_ip: s.max_connections_per_ip,
            header_read_timeout: (s.header_read_timeout_secs > 0.0).then(|| {
                Duration::try_from_secs_f64(s.header_read_timeout_secs)
                    .unwrap_or(Duration::from_secs(30))
            }),
            http2_max_streams: s.http2_max_streams,
        }
    }
}

/// Connection figures for `/health`.
#[derive(Debug, Default)]
pub struct ConnStats {
    pub open: AtomicU64,
    pub accepted_total: AtomicU64,
    /// Refused because `max_connections` were open.
    pub refused_full: AtomicU64,
    /// Refused because the client's address had `max_connections_per_ip` open.
    pub refused_per_ip: AtomicU64,
    /// Closed without an answer while `MAX_REFUSING` refusals were already under way.
    pub dropped: AtomicU64,
    /// `accept` failed (out of file descriptors…).
    pub accept_errors: AtomicU64,
}

/// A snapshot of [`ConnStats`].
#[derive(Debug, Serialize)]
pub struct ConnView {
    pub open: u64,
    pub max: usize,
    pub max_per_ip: usize,
    pub accepted_total: u64,
    pub refused_full: u64,
    pub refused_per_ip: u64,
    pub dropped: u64,
    pub accept_errors: u64,
}

impl ConnStats {
    pub fn view(&self, b: &Bounds) -> ConnView {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        ConnView {
            open: get(&self.open),
            max: b.max_connections,
            max_per_ip: b.max_per_ip,
            accepted_total: get(&self.accepted_total),
            refused_full: get(&self.refused_full),
            refused_per_ip: get(&self.refused_per_ip),
            dropped: get(&self.dropped),
            accept_errors: get(&self.accept_errors),
        }
    }
}

/// Open connections, in all and per client address.
struct Tracker {
    bounds: Bounds,
    stats: Arc<ConnStats>,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection; frees its place when dropped.
struct Slot {
    tracker: Arc<Tracker>,
    ip: IpAddr,
}

enum Refused {
    Full,
    PerIp,
}

impl Tracker {
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refused> {
        let mut m = self.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        // The map holds one entry per address with a connection open: its total is the count.
        let open = self.stats.open.load(Ordering::Relaxed);
        if open >= self.bounds.max_connections as u64 {
            return Err(Refused::Full);
        }
        let n = m.entry(ip).or_insert(0);
        if *n >= self.bounds.max_per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        self.stats.open.fetch_add(1, Ordering::Relaxed);
        Ok(Slot {
            tracker: self.clone(),
            ip,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut m = self
            .tracker
            .per_ip
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
        self.tracker.stats.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connections being served, so shutdown can abort those still open after its grace.
#[derive(Debug, Clone, Default)]
pub struct Connections(Arc<Mutex<HashMap<u64, tokio::task::AbortHandle>>>);

impl Connections {
    /// Aborts every connection still open: their handlers' futures are dropped, which writes
    /// the rows of their requests.
    pub fn cut(&self) -> usize {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        for h in m.values() {
            h.abort();
        }
        m.len()
    }

    fn add(&self, id: u64, h: tokio::task::AbortHandle) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, h);
    }

    fn remove(&self, id: u64) {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }
}

/// Accepts connections on `listener` and serves `router` on each until `stop` is cancelled;
/// returns the handle that shuts the open connections down gracefully. `open` lists them.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    bounds: Bounds,
    stats: Arc<ConnStats>,
    open: Connections,
    stop: CancellationToken,
) -> GracefulShutdown {
    let graceful = GracefulShutdown::new();
    let mut next_id = 0u64;
    let tracker = Arc::new(Tracker {
        bounds,
        stats: stats.clone(),
        per_ip: Mutex::new(HashMap::new()),
    });
    let refusing = Arc::new(Semaphore::new(MAX_REFUSING));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(bounds.header_read_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(bounds.http2_max_streams);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = stop.cancelled() => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                stats.accept_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "cannot accept a connection (out of file descriptors?); pausing accepts for 50 ms");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Small SSE chunks must leave at once, not wait for Nagle.
        let _ = tcp.set_nodelay(true);
        let slot = match tracker.admit(peer.ip()) {
            Ok(s) => s,
            Err(why) => {
                refuse(tcp, peer, why, &stats, &refusing);
                continue;
            }
        };
        stats.accepted_total.fetch_add(1, Ordering::Relaxed);
        let router = router.clone();
        // Only a connection from beyond loopback pays for the mark (an extension allocates).
        let remote = !peer.ip().to_canonical().is_loopback();
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let mut router = router.clone();
            let mut req = req.map(Body::new);
            if remote {
                req.extensions_mut().insert(crate::guard::RemotePeer(peer));
            }
            tower_service::Service::call(&mut router, req)
        });
        next_id += 1;
        let (id, registry) = (next_id, open.clone());
        let task = if let Some(acceptor) = tls.clone() {
            // The handshake runs in the connection's task, never in the accept loop.
            let builder = builder.clone();
            let watcher = graceful.watcher();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let service = hyper::service::service_fn(move |req| {
                            let answer = hyper::service::Service::call(&service, req);
                            async move {
                                let mut r = answer.await?;
                                r.headers_mut()
                                    .insert(header::STRICT_TRANSPORT_SECURITY, HSTS);
                                Ok::<_, Infallible>(r)
                            }
                        });
                        let conn = builder
                            .serve_connection_with_upgrades(TokioIo::new(stream), service)
                            .into_owned();
                        if let Err(e) = watcher.watch(conn).await {
                            tracing::debug!(%peer, error = %e, "client connection ended with an error");
                        }
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                }
                registry.remove(id);
                drop(slot);
            })
        } else {
            let conn = builder
                .serve_connection_with_upgrades(TokioIo::new(tcp), service)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "client connection ended with an error");
                }
                registry.remove(id);
                drop(slot);
            })
        };
        open.add(id, task.abort_handle());
    }
    graceful
}

/// Answers a connection past a bound with a 503 and closes it, unless too many refusals are
/// under way already: then it is closed at once.
fn refuse(
    tcp: TcpStream,
    peer: SocketAddr,
    why: Refused,
    stats: &ConnStats,
    refusing: &Arc<Semaphore>,
) {
    let (counter, message) = match why {
        Refused::Full => (
            &stats.refused_full,
            "the gateway has server.max_connections connections open; try again in a moment",
        ),
        Refused::PerIp => (
            &stats.refused_per_ip,
            "this address has server.max_connections_per_ip connections open; close some or try again in a moment",
        ),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    let Ok(permit) = refusing.clone().try_acquire_owned() else {
        stats.dropped.fetch_add(1, Ordering::Relaxed);
        return;
    };
    tracing::debug!(%peer, "connection refused: {message}");
    let body = ApiError::new(ErrorKind::Overloaded, message).to_json_bytes();
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |_req: Request<Incoming>| {
            let mut r = Response::new(Body::from(body.clone()));
            *r.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            let h = r.headers_mut();
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            std::future::ready(Ok::<_, Infallible>(r))
        });
        let mut http1 = hyper::server::conn::http1::Builder::new();
        http1
            .timer(TokioTimer::new())
            .header_read_timeout(REFUSAL_TIMEOUT)
            .keep_alive(false);
        let conn = http1.serve_connection(TokioIo::new(tcp), service);
        let _ = tokio::time::timeout(REFUSAL_TIMEOUT * 2, conn).await;
        drop(permit);
    });
}
