//! The router-wide guard that runs before any handler: the `Host` check and CORS.
//!
//! **Host.** A web page can make a browser send requests to `127.0.0.1:8000` under a name the
//! page's owner controls (DNS rebinding: `rebind.attacker` first resolves to their server, then
//! to 127.0.0.1), and the browser then treats the gateway's answers as that page's own, so the
//! page could read every row. The browser always sends the name it used as `Host`, so every
//! request whose `Host` is not `localhost` (or `*.localhost`, which browsers resolve to loopback
//! themselves), an IP literal, or a name in `server.allowed_hosts` gets 403 here, on every route.
//! A request without `Host` (HTTP/1.0 tools) does not come from a browser and passes.
//!
//! **CORS.** Pages of the origins in `dashboard.allowed_origins` may call the gateway from the
//! browser: their preflight (`OPTIONS` with `Access-Control-Request-Method`) is answered here,
//! and their requests' answers carry `Access-Control-Allow-Origin`. No other origin gets CORS
//! headers, so the browser keeps their pages from reading answers; state-changing routes also
//! refuse foreign origins outright (`origin.rs`).
//!
//! **Panics.** A bug that panics while a handler runs answers that request with a 500 and is
//! logged; the process, every other request in flight and the queued rows live on (release
//! builds unwind, and a panic inside a streamed body ends only that connection's task).
//!
//! A hand-written tower service rather than `axum::middleware::from_fn`: the common case (a
//! good `Host`, no `Origin`) costs two header lookups and no boxed future.

use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, CatchUnwind, Either, Map, Ready, ready};
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_proxy::translate;

use crate::error::{error_response, json_bytes_response};

/// What the guard allows; built once from the config.
#[derive(Debug)]
pub struct Policy {
    /// `server.allowed_hosts`, lower case.
    hosts: Vec<String>,
    /// `dashboard.allowed_origins`, as header values.
    origins: Vec<HeaderValue>,
    /// Requests refused for their `Host`, for `/health`.
    pub refused: std::sync::atomic::AtomicU64,
    /// `server.trusted_proxies`, parsed (`client.rs`).
    pub trusted_proxies: Vec<gatehouse_config::Cidr>,
}

/// Set on the requests of a connection from beyond loopback (`listen.rs`): its address.
#[derive(Debug, Clone, Copy)]
pub struct RemotePeer(pub std::net::SocketAddr);

/// The routes a virtual key opens (`[auth] mode = "keys"`), and the liveness probes; every
/// other route is the management API or the dashboard.
pub fn is_proxy_path(path: &str) -> bool {
    path.starts_with("/v1/")
        || path.starts_with("/v1beta/")
        || matches!(
            path,
            "/chat/completions" | "/responses" | "/models" | "/health/live" | "/health/ready"
        )
}

impl Policy {
    pub fn new(hosts: &[String], origins: &[String]) -> Self {
        Self {
            hosts: hosts.iter().map(|h| h.to_ascii_lowercase()).collect(),
            origins: origins
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
            refused: std::sync::atomic::AtomicU64::new(0),
            trusted_proxies: Vec::new(),
        }
    }

    /// Believes `X-Forwarded-For` from these proxies (`server.trusted_proxies`).
    pub fn trusting(mut self, proxies: &[String]) -> Self {
        self.trusted_proxies = proxies
            .iter()
            .filter_map(|p| gatehouse_config::Cidr::parse(p))
            .collect();
        self
    }

    /// Whether the gateway answers to `host` (a `Host` header's value).
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host);
        if is_local_name(name) {
            return true;
        }
        self.hosts
            .iter()
            .any(|h| h.eq_ignore_ascii_case(host) || h.eq_ignore_ascii_case(name))
    }

    fn listed_origin(&self, origin: &HeaderValue) -> bool {
        self.origins
            .iter()
            .any(|o| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }
}

/// `host` without its port: `[::1]:8000` → `::1`, `localhost:8000` → `localhost`.
pub fn host_name(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    match host.rsplit_once(':') {
        // A bare IPv6 address has several colons and no brackets: it is all name.
        Some((h, port)) if !h.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// `localhost`, `*.localhost` and IP literals: names a DNS-rebinding page cannot hold.
pub fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.');
    let lower = name.len() >= 9 && {
        let tail = name.get(name.len() - 9..).unwrap_or("");
        tail.eq_ignore_ascii_case("localhost")
            && (name.len() == 9 || name.as_bytes().get(name.len() - 10) == Some(&b'.'))
    };
    lower || name.parse::<std::net::IpAddr>().is_ok()
}

/// The layer that puts [`Guard`] around the router.
#[derive(Debug, Clone)]
pub struct GuardLayer(Arc<Policy>);

impl GuardLayer {
    pub fn shared(policy: Arc<Policy>) -> Self {
        Self(policy)
    }
}

impl<S> tower_layer::Layer<S> for GuardLayer {
    type Service = Guard<S>;
    fn layer(&self, inner: S) -> Guard<S> {
        Guard {
            inner,
            policy: self.0.clone(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Guard<S> {
    inner: S,
    policy: Arc<Policy>,
}

type Refusal = Ready<Result<Response<Body>, std::convert::Infallible>>;
type Answer = Result<Response<Body>, std::convert::Infallible>;
type Unwound = Result<Answer, Box<dyn std::any::Any + Send>>;
/// A handler's future, its panic turned into a 500.
type Caught<F> = Map<CatchUnwind<std::panic::AssertUnwindSafe<F>>, fn(Unwound) -> Answer>;

/// The answer to a request whose handler panicked.
fn panicked(r: Unwound) -> Answer {
    r.unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_default();
        tracing::error!(panic = %what, "a request handler panicked (a bug; please report it); the request got a 500");
        Ok(error_response(&ApiError::new(
            ErrorKind::Internal,
            "the gateway hit an internal error on this request (a bug, logged); other requests are not affected",
        )))
    })
}

/// [`panicked`], and the headers that keep a browser from framing, sniffing or leaking the
/// management API's answers (the proxy routes' clients are not browsers, and skip the cost).
fn panicked_secured(r: Unwound) -> Answer {
    panicked(r).map(|mut resp| {
        let h = resp.headers_mut();
        h.insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        h.entry(header::X_FRAME_OPTIONS)
            .or_insert(HeaderValue::from_static("DENY"));
        h.entry(header::REFERRER_POLICY)
            .or_insert(HeaderValue::from_static("no-referrer"));
        resp
    })
}

fn caught<F: std::future::Future<Output = Answer>>(f: F, proxy: bool) -> Caught<F> {
    let finish = if proxy {
        panicked as fn(Unwound) -> Answer
    } else {
        panicked_secured as fn(Unwound) -> Answer
    };
    std::panic::AssertUnwindSafe(f).catch_unwind().map(finish)
}

impl<S> tower_service::Service<Request<Body>> for Guard<S>
where
    S: tower_service::Service<
            Request<Body>,
            Response = Response<Body>,
            Error = std::convert::Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = std::convert::Infallible;
    type Future = Either<Refusal, Either<Caught<S::Future>, BoxFuture<'static, Answer>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        if let Some(host) = host
            && !self.policy.host_allowed(host)
        {
            self.policy
                .refused
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let e = ApiError::new(
                ErrorKind::HostNotAllowed,
                format!(
                    "this gateway does not answer to the host name `{}`; if it is yours, add it to server.allowed_hosts",
                    host_name(host)
                ),
            );
            return Either::Left(ready(Ok(refusal(req.uri().path(), &e))));
        }
        let proxy = is_proxy_path(req.uri().path());
        let Some(origin) = req.headers().get(header::ORIGIN).cloned() else {
            return Either::Right(Either::Left(caught(self.inner.call(req), proxy)));
        };
        if !self.policy.listed_origin(&origin) {
            return Either::Right(Either::Left(caught(self.inner.call(req), proxy)));
        }
        if req.method() == Method::OPTIONS
            && req
                .headers()
                .contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
        {
            return Either::Left(ready(Ok(preflight(&origin, req.headers()))));
        }
        let fut = caught(self.inner.call(req), proxy);
        Either::Right(Either::Right(Box::pin(async move {
            let mut r = fut.await?;
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            h.insert(
                header::ACCESS_CONTROL_EXPOSE_HEADERS,
                HeaderValue::from_static(EXPOSED),
            );
            h.append(header::VARY, HeaderValue::from_static("origin"));
            Ok(r)
        })))
    }
}

/// Response headers a listed page may read besides the CORS-safelisted ones.
const EXPOSED: &str =
    "x-request-id, request-id, x-gatehouse-session, x-gatehouse-overhead-us, retry-after";

/// The answer to a listed origin's preflight: the methods the API uses and whatever headers the
/// page asked for (SDKs send `authorization`, `x-api-key`, `anthropic-version`…).
fn preflight(origin: &HeaderValue, req: &HeaderMap) -> Response<Body> {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = StatusCode::NO_CONTENT;
    let h = r.headers_mut();
    h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, PATCH, PUT, DELETE, OPTIONS"),
    );
    if let Some(asked) = req.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    h.insert(header::VARY, HeaderValue::from_static("origin"));
    r
}

/// A refusal in the shape the route's clients read: Anthropic's on `/v1/messages`.
fn refusal(path: &str, e: &ApiError) -> Response<Body> {
    if path.starts_with("/v1/messages") {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::FORBIDDEN);
        return json_bytes_response(
            status,
            translate::anthropic::error_body(status.as_u16(), &e.message).to_string(),
        );
    }
    error_response(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_names_ip_literals_and_listed_hosts_only() {
        let p = Policy::new(&["gatehouse.internal".to_owned()], &[]);
        for ok in [
            "localhost",
            "localhost:8000",
            "LOCALHOST:8000",
            "app.localhost:8000",
            "127.0.0.1:8000",
            "127.0.0.1",
            "[::1]:8000",
            "[::1]",
            "::1",
            "10.1.2.3:9000",
            "gatehouse.internal",
            "gatehouse.internal:8000",
            "Gatehouse.Internal:8000",
        ] {
            assert!(p.host_allowed(ok), "{ok} should be allowed");
        }
        for bad in [
            "rebind.attacker:8000",
            "rebind.attacker",
            "evillocalhost:8000",
            "localhost.attacker.example",
            "127.0.0.1.nip.io",
            "gatehouse.internal.attacker",
            "",
        ] {
            assert!(!p.host_allowed(bad), "{bad} should be refused");
        }
    }

    #[tokio::test]
    async fn a_panicking_handler_answers_500_and_the_next_request_is_served() {
        use tower_layer::Layer;
        use tower_service::Service;
        let inner = tower::service_fn(|req: Request<Body>| async move {
            if req.uri().path() == "/boom" {
                panic!("a bug");
            }
            Ok::<_, std::convert::Infallible>(Response::new(Body::from("fine")))
        });
        let mut svc = GuardLayer::shared(Arc::new(Policy::new(&[], &[]))).layer(inner);
        let get = |path: &str| {
            Request::builder()
                .uri(path)
                .header(header::HOST, "127.0.0.1:8000")
                .body(Body::empty())
                .unwrap()
        };
        let r = svc.call(get("/boom")).await.unwrap();
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let r = svc.call(get("/ok")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
    }

    #[test]
    fn host_name_strips_the_port_only() {
        assert_eq!(host_name("localhost:8000"), "localhost");
        assert_eq!(host_name("[::1]:8000"), "::1");
        assert_eq!(host_name("::1"), "::1");
        assert_eq!(host_name("example"), "example");
    }
}
