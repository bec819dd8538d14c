//! Sending a request upstream: pooled clients, timeouts, retries before the first byte.
//!
//! A request is retried (with exponential backoff) only when the provider cannot have worked on
//! it: a connection that could not be made, 429, 503, Anthropic's 529 (overloaded), or an error
//! the provider marks retryable (`x-should-retry: true`; `false` forbids a retry). Anything else
//! may already be generating, and billed, at the provider: a timeout, a connection broken after
//! the request went out, a 500, a stream that stays silent or ends empty. Those are not sent
//! again to the same provider; they may go to the model's fallbacks (`Failure::can_fall_back`),
//! except a whole answer that timed out, which falls back only when the model says
//! `fallback_on_timeout = true`. All of this happens before the client has received anything;
//! once the first byte is forwarded the request is never retried.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_config::{Config, ProviderConfig};
use gatehouse_core::{ApiError, ErrorKind};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::client::{Client, ClientError, OutboundProxy, Resolver, error_chain};
use crate::headers::{ProviderHeaders, upstream_headers};
use crate::route::Route;

/// Upstream error bodies are read up to this size, to pass them through or quote them.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// A `Retry-After` longer than this is not waited for: the 429 goes back to the client.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// A successful exchange.
pub enum Outcome {
    Complete {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
        attempts: u32,
        /// Why each earlier attempt was retried.
        retried: Vec<String>,
        /// Time spent waiting on upstream, retries included.
        upstream_wait: Duration,
        /// Send to response head, last attempt.
        ttfb: Duration,
    },
    Stream {
        status: StatusCode,
        headers: HeaderMap,
        first: Bytes,
        rest: UpstreamStream,
        attempts: u32,
        /// Why each earlier attempt was retried.
        retried: Vec<String>,
        /// Time spent waiting on upstream up to the first chunk, retries included.
        upstream_wait: Duration,
    },
}

impl Outcome {
    /// Why each earlier attempt was retried.
    pub fn retried(&self) -> &[String] {
        match self {
            Self::Complete { retried, .. } | Self::Stream { retried, .. } => retried,
        }
    }
}

/// A failed exchange, after retries.
#[derive(Debug)]
pub struct Failure {
    pub error: ApiError,
    /// The provider's circuit breaker is open: nothing was sent.
    pub breaker_open: bool,
    /// Upstream's own error body (first 64 KiB), passed through when the client speaks the
    /// provider's format and it is a well-formed error of that format.
    pub body: Option<Bytes>,
    pub attempts: u32,
    /// Why each earlier attempt was retried.
    pub retried: Vec<String>,
    pub upstream_wait: Duration,
    /// A whole answer timed out: the provider may still be generating it.
    pub uncertain: bool,
}

impl Failure {
    /// The provider failed (unreachable, timeout, bad answer, 429, 5xx) or was skipped by its
    /// breaker: another provider may do better. A 4xx other than 429 is the request's fault. A
    /// whole answer that timed out goes elsewhere only with `fallback_on_timeout`: it may be
    /// generating, and billed, where it is.
    pub fn can_fall_back(&self, fallback_on_timeout: bool) -> bool {
        self.breaker_open
            || (provider_fault(&self.error) && (!self.uncertain || fallback_on_timeout))
    }

    fn new(error: ApiError, attempts: u32, upstream_wait: Duration) -> Self {
        Self {
            error,
            breaker_open: false,
            body: None,
            attempts,
            retried: Vec::new(),
            upstream_wait,
            uncertain: false,
        }
    }
}

fn provider_fault(e: &ApiError) -> bool {
    match e.upstream_status {
        Some(s) => s == 429 || s >= 500,
        None => matches!(
            e.kind,
            ErrorKind::UpstreamUnreachable
                | ErrorKind::UpstreamTimeout
                | ErrorKind::UpstreamBadResponse
        ),
    }
}

/// Why a stream stopped early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamFailure {
    /// No chunk within the idle timeout.
    Idle(Duration),
    /// The connection broke.
    Broken(String),
}

/// The rest of an upstream stream, with the provider's idle timeout between chunks.
pub struct UpstreamStream {
    body: Incoming,
    idle: Duration,
}

impl UpstreamStream {
    /// The next chunk; `None` at a clean end (trailers, if any, are not forwarded).
    pub async fn next(&mut self) -> Option<Result<Bytes, StreamFailure>> {
        loop {
            match tokio::time::timeout(self.idle, self.body.frame()).await {
                Err(_) => return Some(Err(StreamFailure::Idle(self.idle))),
                Ok(None) => return None,
                Ok(Some(Err(e))) => return Some(Err(StreamFailure::Broken(error_chain(&e)))),
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(b) if !b.is_empty() => return Some(Ok(b)),
                    _ => continue,
                },
            }
        }
    }
}

/// One provider's pooled clients and what every request to it reuses.
struct Endpoint {
    clients: Clients,
    /// `{base_url}/chat/completions` (`/messages` for Anthropic), parsed once.
    chat_url: Uri,
    /// `{base_url}/responses`, for a provider that serves OpenAI's Responses API.
    responses_url: Option<Uri>,
    headers: ProviderHeaders,
    /// Ask for usage in streams; starts from config, turned off for good when the provider
    /// rejects `stream_options`.
    stream_usage: AtomicBool,
}

/// The upstream side: one pooled client per provider.
pub struct Upstream {
    endpoints: HashMap<String, Endpoint>,
    pub breakers: crate::breaker::Breakers,
    pub rate_limits: crate::ratelimit::RateLimits,
    pub dice: crate::select::Dice,
    pub passthrough: crate::passthrough::Passthrough,
    retries: u32,
    backoff: Duration,
    hop_id: HeaderValue,
}

impl std::fmt::Debug for Upstream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstream")
            .field("providers", &self.endpoints.len())
            .field("retries", &self.retries)
            .finish()
    }
}

/// What one attempt came to.
enum Attempt {
    Done(Outcome),
    Retry(Failure, Option<Duration>),
    Fail(Failure),
}

impl Upstream {
    /// `instance_id` goes in the hop header, so a request that loops back is recognised.
    pub fn new(config: &Config, instance_id: &str) -> Result<Self, ClientError> {
        let outbound = OutboundProxy::new(
            config.proxy.outbound_proxy.as_deref(),
            &config.proxy.no_proxy,
        )?;
        let mut endpoints = HashMap::with_capacity(config.providers.len());
        for (key, p) in &config.providers {
            // Config validation guarantees an http(s) URL; one that still fails to parse is
            // left out and its requests get a clear error.
            let path = endpoint_path(p.kind);
            if let Some(via) = outbound.describe(&p.base_url) {
                tracing::info!(provider = %key, via = %via, "provider reached through the outbound proxy");
            }
            if let Ok(chat_url) = Uri::try_from(format!("{}/{path}", p.base_url)) {
                endpoints.insert(
                    key.clone(),
                    Endpoint {
                        clients: Clients::new(p, &outbound)?,
                        chat_url,
                        responses_url: responses_url(p),
                        headers: ProviderHeaders::new(p),
                        stream_usage: AtomicBool::new(p.stream_usage),
                    },
                );
            }
        }
        Ok(Self {
            endpoints,
            passthrough: crate::passthrough::Passthrough::new(
                &config.passthrough,
                config.proxy.timeouts,
                &outbound,
            )?,
            breakers: crate::breaker::Breakers::new(config.proxy.circuit_breaker),
            dice: crate::select::Dice::default(),
            rate_limits: crate::ratelimit::RateLimits::new(
                config
                    .providers
                    .iter()
                    .filter_map(|(k, p)| p.rpm.map(|r| (k, r))),
            ),
            retries: config.proxy.retries,
            backoff: config.proxy.retry_backoff,
            hop_id: HeaderValue::from_str(&format!("gatehouse/{instance_id}"))
                .unwrap_or_else(|_| HeaderValue::from_static("gatehouse")),
        })
    }

    /// A passthrough target's endpoint, built per request on the shared passthrough client.
    fn passthrough_endpoint(&self, route: &Route) -> Result<Endpoint, ApiError> {
        let p = &*route.provider;
        let chat_url =
            Uri::try_from(format!("{}/{}", p.base_url, endpoint_path(p.kind))).map_err(|e| {
                ApiError::new(
                    ErrorKind::PassthroughNotAllowed,
                    format!(
                        "X-Target-Base-URL `{}` does not make a URL: {e}",
                        p.shown_url
                    ),
                )
            })?;
        Ok(Endpoint {
            clients: Clients::one(self.passthrough.client().clone()),
            chat_url,
            responses_url: None,
            headers: ProviderHeaders::new(p),
            stream_usage: AtomicBool::new(p.stream_usage),
        })
    }

    /// Sends `key` to `provider_key` from the next request on (`None`: the config's own, if
    /// any). Whether the provider exists.
    pub fn set_provider_key(
        &self,
        provider_key: &str,
        provider: &gatehouse_config::ProviderConfig,
        key: Option<&gatehouse_config::Secret>,
    ) -> bool {
        let Some(e) = self.endpoints.get(provider_key) else {
            return false;
        };
        let key = key.or(provider.api_key.as_ref());
        e.headers
            .set_credential(key.and_then(|k| ProviderHeaders::credential(provider, k)));
        true
    }

    /// Whether streams to this provider should ask for usage.
    pub fn asks_stream_usage(&self, provider_key: &str) -> bool {
        self.endpoints
            .get(provider_key)
            .is_some_and(|e| e.stream_usage.load(Ordering::Relaxed))
    }

    /// Remembers that this provider rejects `stream_options` (until restart; set
    /// `stream_usage = false` in its config to make it permanent).
    pub fn stop_asking_stream_usage(&self, provider_key: &str) {
        if let Some(e) = self.endpoints.get(provider_key)
            && e.stream_usage.swap(false, Ordering::Relaxed)
        {
            tracing::warn!(
                provider = provider_key,
                "provider rejects stream_options; streams to it no longer ask for usage (set stream_usage = false in its config)"
            );
        }
    }

    /// Sends a request to the provider's own API (chat completions, messages, …), retrying
    /// while nothing has reached the client.
    pub async fn send(
        &self,
        route: &Route,
        body: Bytes,
        client_headers: &HeaderMap,
        request_id: &str,
        stream: bool,
    ) -> Result<Outcome, Failure> {
        self.send_via(route, Api::Native, body, client_headers, request_id, stream)
            .await
    }

    /// [`send`](Self::send) to one of the provider's APIs.
    pub async fn send_via(
        &self,
        route: &Route,
        api: Api,
        body: Bytes,
        client_headers: &HeaderMap,
        request_id: &str,
        stream: bool,
    ) -> Result<Outcome, Failure> {
        let started = Instant::now();
        let provider = &*route.provider;
        let passthrough;
        let endpoint = match self.endpoints.get(&route.provider_key) {
            Some(e) => e,
            None if route.is_passthrough() => {
                passthrough = self
                    .passthrough_endpoint(route)
                    .map_err(|e| Failure::new(e, 0, Duration::ZERO))?;
                &passthrough
            }
            None => {
                return Err(Failure::new(
                    ApiError::new(
                        ErrorKind::Internal,
                        format!(
                            "provider `{}` has no usable base URL ({})",
                            route.provider_key, provider.shown_url
                        ),
                    ),
                    0,
                    Duration::ZERO,
                ));
            }
        };
        let ticket = match self.breakers.admit(&route.provider_key, started) {
            Ok(t) => t,
            Err(r) => {
                let secs = r.retry_in.as_secs_f64().ceil();
                let mut f = Failure::new(
                    ApiError::new(
                        ErrorKind::CircuitOpen,
                        format!(
                            "provider `{}` is skipped: its circuit breaker is open after repeated failures (next probe in {secs:.0} s)",
                            route.provider_key,
                        ),
                    )
                    .with_retry_after((secs as u64).max(1)),
                    0,
                    Duration::ZERO,
                );
                f.breaker_open = true;
                return Err(f);
            }
        };
        let result = self
            .send_with_retries(
                endpoint,
                route,
                api,
                body,
                client_headers,
                request_id,
                stream,
                started,
            )
            .await;
        match &result {
            Err(f) if provider_fault(&f.error) => {
                self.breakers.failure(&route.provider_key, Instant::now());
            }
            _ => self.breakers.success(&route.provider_key),
        }
        ticket.reported();
        result
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "the request and where it goes, passed through from `send`"
    )]
    async fn send_with_retries(
        &self,
        endpoint: &Endpoint,
        route: &Route,
        api: Api,
        body: Bytes,
        client_headers: &HeaderMap,
        request_id: &str,
        stream: bool,
        started: Instant,
    ) -> Result<Outcome, Failure> {
        let provider = &*route.provider;
        let headers =
            || upstream_headers(client_headers, &endpoint.headers, request_id, &self.hop_id);
        // Gemini puts the model and the mode in the path.
        let url = if api == Api::Responses {
            endpoint.responses_url.clone().ok_or_else(|| {
                Failure::new(
                    ApiError::new(
                        ErrorKind::Internal,
                        format!(
                            "provider `{}` does not serve the Responses API",
                            route.provider_key
                        ),
                    ),
                    0,
                    Duration::ZERO,
                )
            })?
        } else if provider.kind == gatehouse_config::ProviderType::Gemini {
            let path = crate::translate::gemini::path(&route.upstream_model, stream);
            Uri::try_from(format!("{}/{path}", provider.base_url)).map_err(|e| {
                Failure::new(
                    ApiError::new(ErrorKind::Internal, format!("bad Gemini URL: {e}")),
                    0,
                    Duration::ZERO,
                )
            })?
        } else {
            endpoint.chat_url.clone()
        };
        let mut attempt = 0u32;
        let mut retried: Vec<String> = Vec::new();
        loop {
            attempt += 1;
            if let Some(turn) = self.rate_limits.turn(&route.provider_key, Instant::now()) {
                if let Some(level) = turn.changed {
                    tracing::info!(provider = %route.provider_key, ?level, pct = turn.pct, "upstream rate limit level");
                }
                if !turn.wait.is_zero() {
                    tracing::warn!(
                        provider = %route.provider_key,
                        wait_ms = turn.wait.as_millis() as u64,
                        "at the provider's rpm limit: waiting for a turn"
                    );
                    tokio::time::sleep(turn.wait).await;
                }
            }
            let result = self
                .attempt(
                    endpoint.clients.pick(),
                    &url,
                    // Built afresh for a retry rather than cloned for every first attempt.
                    headers(),
                    body.clone(),
                    provider,
                    route,
                    stream,
                    attempt,
                    started,
                )
                .await;
            match result {
                Attempt::Done(mut o) => {
                    match &mut o {
                        Outcome::Complete { retried: r, .. }
                        | Outcome::Stream { retried: r, .. } => {
                            *r = retried;
                        }
                    }
                    return Ok(o);
                }
                Attempt::Fail(mut f) => {
                    f.retried = retried;
                    return Err(f);
                }
                Attempt::Retry(mut f, _) if attempt > self.retries => {
                    f.retried = retried;
                    return Err(f);
                }
                Attempt::Retry(f, retry_after) => {
                    retried.push(f.error.message.clone());
                    // Checked: a huge configured backoff must not overflow into a panic.
                    let backoff = self
                        .backoff
                        .checked_mul(2u32.saturating_pow(attempt - 1))
                        .unwrap_or(MAX_RETRY_AFTER);
                    let wait = retry_after.map_or(backoff, |ra| ra.max(backoff));
                    tracing::warn!(
                        provider = %route.provider_key,
                        attempt,
                        error = %f.error,
                        wait_ms = wait.as_millis() as u64,
                        "upstream attempt failed; retrying"
                    );
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    #[expect(
        clippy::too_many_arguments,
        reason = "one attempt needs the whole request context"
    )]
    async fn attempt(
        &self,
        client: &Client,
        url: &Uri,
        headers: HeaderMap,
        body: Bytes,
        provider: &ProviderConfig,
        route: &Route,
        stream: bool,
        attempt: u32,
        started: Instant,
    ) -> Attempt {
        let t = provider.timeouts;
        let sent = Instant::now();
        let fail = |error: ApiError, body: Option<Bytes>| Failure {
            body,
            ..Failure::new(error, attempt, started.elapsed())
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = url.clone();
        *request.headers_mut() = headers;
        let head_timeout = if stream {
            t.first_byte
        } else {
            t.first_byte.min(t.total)
        };
        let response = match tokio::time::timeout(head_timeout, client.request(request)).await {
            Err(_) => {
                // The provider has the request and may be working on it: not sent again. A
                // stream that has not started is safe to try elsewhere; a whole answer only if
                // the model says so.
                return Attempt::Fail(Failure {
                    uncertain: !stream,
                    ..fail(timeout_error(route, "a response", head_timeout), None)
                });
            }
            // Never connected: the provider cannot have seen it.
            Ok(Err(e)) if e.is_connect() => {
                return Attempt::Retry(fail(send_error(route, e), None), None);
            }
            Ok(Err(e)) => return Attempt::Fail(fail(send_error(route, e), None)),
            Ok(Ok(r)) => r,
        };
        let ttfb = sent.elapsed();
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let retryable = match should_retry(response.headers()) {
                Some(said) => said,
                // 429, 503 and 529 (Anthropic's "overloaded") mean the work was not started.
                None => matches!(status.as_u16(), 429 | 503 | 529),
            };
            let body = read_limited(response.into_body(), MAX_ERROR_BODY, t.first_byte).await;
            let f = fail(
                upstream_status_error(route, status, &body),
                Some(body).filter(|b| !b.is_empty()),
            );
            return match (retryable, retry_after) {
                (true, Some(ra)) if ra > MAX_RETRY_AFTER => Attempt::Fail(f),
                (true, ra) => Attempt::Retry(f, ra),
                (false, _) => Attempt::Fail(f),
            };
        }
        let (parts, body) = response.into_parts();
        let headers = parts.headers;
        if stream {
            let mut rest = UpstreamStream { body, idle: t.idle };
            let remaining = t.first_byte.saturating_sub(ttfb);
            // Silent, empty or broken before its first chunk: the provider had the request, so
            // it is not sent to it again; nothing reached the client, so a fallback may answer.
            let first = match tokio::time::timeout(remaining, rest.next()).await {
                Err(_) | Ok(Some(Err(StreamFailure::Idle(_)))) => {
                    return Attempt::Fail(fail(
                        timeout_error(route, "the first stream chunk", t.first_byte),
                        None,
                    ));
                }
                Ok(None) => {
                    return Attempt::Fail(fail(
                        ApiError::new(
                            ErrorKind::UpstreamBadResponse,
                            format!(
                                "provider `{}` closed the stream without sending anything",
                                route.provider_key
                            ),
                        ),
                        None,
                    ));
                }
                Ok(Some(Err(StreamFailure::Broken(e)))) => {
                    return Attempt::Fail(fail(
                        ApiError::new(
                            ErrorKind::UpstreamUnreachable,
                            format!(
                                "provider `{}` broke the stream before the first chunk: {e}",
                                route.provider_key
                            ),
                        ),
                        None,
                    ));
                }
                Ok(Some(Ok(b))) => b,
            };
            return Attempt::Done(Outcome::Stream {
                status,
                headers,
                first,
                rest,
                attempts: attempt,
                retried: Vec::new(),
                upstream_wait: started.elapsed(),
            });
        }
        let remaining = t.total.saturating_sub(ttfb);
        match tokio::time::timeout(remaining, body.collect()).await {
            Err(_) => Attempt::Fail(Failure {
                uncertain: true,
                ..fail(timeout_error(route, "the whole response", t.total), None)
            }),
            Ok(Err(e)) => Attempt::Fail(fail(read_error(route, &e), None)),
            Ok(Ok(body)) => Attempt::Done(Outcome::Complete {
                body: body.to_bytes(),
                status,
                headers,
                attempts: attempt,
                retried: Vec::new(),
                upstream_wait: started.elapsed(),
                ttfb,
            }),
        }
    }
}

/// Which of a provider's APIs a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// Its own: chat completions, messages, generateContent, Ollama's chat.
    Native,
    /// OpenAI's Responses API (`responses_api = true`).
    Responses,
}

fn responses_url(p: &ProviderConfig) -> Option<Uri> {
    p.responses_api
        .then(|| Uri::try_from(format!("{}/responses", p.base_url)).ok())
        .flatten()
}

/// The path of a provider's chat endpoint under its base URL (Gemini's is per model).
fn endpoint_path(kind: gatehouse_config::ProviderType) -> &'static str {
    match kind {
        gatehouse_config::ProviderType::Anthropic => "messages",
        gatehouse_config::ProviderType::Ollama => crate::translate::ollama::PATH,
        _ => "chat/completions",
    }
}

/// A provider's clients, taken in turn. Over HTTP/1.1 one is enough: its pool opens as many
/// connections as there are requests in flight. Over HTTP/2 a client keeps one connection per
/// host and never opens a second, so that connection's stream limit (the provider's
/// `SETTINGS_MAX_CONCURRENT_STREAMS`, often 100–256) would cap the concurrent requests and
/// queue the rest behind long streams; `connections` clients lift the cap that many times.
struct Clients {
    first: Client,
    /// The other `connections - 1`.
    more: Box<[Client]>,
    next: AtomicUsize,
}

impl Clients {
    fn new(p: &ProviderConfig, outbound: &OutboundProxy) -> Result<Self, ClientError> {
        // https may negotiate HTTP/2 by ALPN; plain http only speaks it when told to.
        let maybe_h2 = p.http2 || p.base_url.starts_with("https://");
        let more = if maybe_h2 {
            p.connections.max(1) - 1
        } else {
            0
        };
        Ok(Self {
            first: build_client(p, outbound)?,
            more: (0..more)
                .map(|_| build_client(p, outbound))
                .collect::<Result<Box<[_]>, _>>()?,
            next: AtomicUsize::new(0),
        })
    }

    fn one(first: Client) -> Self {
        Self {
            first,
            more: Box::default(),
            next: AtomicUsize::new(0),
        }
    }

    fn pick(&self) -> &Client {
        // One client, the common case, costs no shared write.
        if self.more.is_empty() {
            return &self.first;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed) % (self.more.len() + 1);
        n.checked_sub(1)
            .and_then(|i| self.more.get(i))
            .unwrap_or(&self.first)
    }
}

fn build_client(p: &ProviderConfig, outbound: &OutboundProxy) -> Result<Client, ClientError> {
    crate::client::build(
        p.timeouts.connect,
        p.http2 && p.base_url.starts_with("http://"),
        Resolver::System,
        outbound,
    )
}

fn timeout_error(route: &Route, what: &str, after: Duration) -> ApiError {
    ApiError::new(
        ErrorKind::UpstreamTimeout,
        format!(
            "provider `{}` did not send {what} within {:.1} s (raise [proxy.timeouts.providers.\"{}\"] if it is just slow)",
            route.provider_key,
            after.as_secs_f64(),
            route.provider_key
        ),
    )
}

/// The error of a send, with the provider's shown URL (never the full one, which may hold
/// credentials).
fn send_error(route: &Route, e: hyper_util::client::legacy::Error) -> ApiError {
    let kind = if is_timeout(&e) {
        ErrorKind::UpstreamTimeout
    } else {
        ErrorKind::UpstreamUnreachable
    };
    ApiError::new(
        kind,
        format!(
            "cannot reach provider `{}` at {}: {}",
            route.provider_key,
            route.provider.shown_url,
            error_chain(&e)
        ),
    )
}

/// A connection that broke while the answer was being read.
fn read_error(route: &Route, e: &hyper::Error) -> ApiError {
    ApiError::new(
        ErrorKind::UpstreamUnreachable,
        format!(
            "provider `{}` at {} broke the connection during its answer: {}",
            route.provider_key,
            route.provider.shown_url,
            error_chain(e)
        ),
    )
}

/// The connect timeout, somewhere in the error's causes.
fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

fn upstream_status_error(route: &Route, status: StatusCode, body: &[u8]) -> ApiError {
    let snippet: String = String::from_utf8_lossy(body).chars().take(300).collect();
    ApiError::upstream_status(
        status.as_u16(),
        format!(
            "provider `{}` answered {}: {}",
            route.provider_key,
            status.as_u16(),
            snippet.trim()
        ),
    )
}

/// `{"error": {...}}`: an OpenAI-style error body.
pub fn is_openai_error(body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct E<'a> {
        #[serde(borrow)]
        error: &'a serde_json::value::RawValue,
    }
    serde_json::from_slice::<E<'_>>(body).is_ok_and(|e| e.error.get().starts_with('{'))
}

/// The provider's own word on retrying (`x-should-retry`, which OpenAI's and Anthropic's SDKs
/// obey).
fn should_retry(h: &HeaderMap) -> Option<bool> {
    match h.get("x-should-retry")?.to_str().ok()? {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    }
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let v = h.get(header::RETRY_AFTER)?.to_str().ok()?;
    v.trim()
        .parse::<f64>()
        .ok()
        .and_then(|s| Duration::try_from_secs_f64(s).ok())
}

async fn read_limited(mut body: Incoming, limit: usize, within: Duration) -> Bytes {
    let mut out = Vec::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(chunk) = frame.into_data() else {
                continue;
            };
            let room = limit.saturating_sub(out.len());
            out.extend_from_slice(chunk.get(..room).unwrap_or(&chunk));
            if out.len() >= limit {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    Bytes::from(out)
}
