//! `POST /v1/chat/completions`: the proxy path.
//!
//! Phases, in order: refuse loops → read the body (413 past the limit) → parse, route, count and
//! rewrite (one pass over the body) → refuse prompts over the window (413) → resolve the session
//! → send upstream with retries → answer (bytes as upstream sent them) → queue the accounting
//! row. Nothing here waits for the database.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::record::{RequestRecord, UsageSource};
use gatehouse_core::request::RequestParseError;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind, RequestId, SessionId};
use gatehouse_proxy::headers::dropped_response_header;
use gatehouse_proxy::rewrite::{UsageAsk, rewrite};
use gatehouse_proxy::tap::{AnthropicTap, ClientTap, summarize_anthropic, summarize_response};
use gatehouse_proxy::translate::stream::StreamTranslator;
use gatehouse_proxy::translate::{self, Format};
use gatehouse_proxy::upstream::is_openai_error;
use gatehouse_proxy::{CompletionSummary, HOP_HEADER, Outcome, Route, StreamTap};
use gatehouse_services::events::{Event, emit};

use crate::error::{body_rejection, error_response, json_bytes_response};
use crate::origin::SameOrigin;
use crate::state::{AppState, InFlight};
use crate::stream;
use gatehouse_context::SecretKind;
use gatehouse_core::record::MaskedContent;
use gatehouse_services::events::MaskedSummary;
use gatehouse_store::WriteOp;
use std::sync::atomic::Ordering;

/// Bodies above this are parsed and counted on the blocking pool, so a huge prompt never stalls
/// the async workers that serve everyone else.
const BLOCKING_PREPARE_BYTES: usize = 256 * 1024;
/// Preview lengths (the seed's figures).
const PREVIEW_CHARS: usize = 200;
const SESSION_NAME_CHARS: usize = gatehouse_services::sessions::NAME_CHARS;

mod compacting;
mod economy;

use economy::{mask, memory_tokens, redact};

pub const SESSION_HEADER: &str = "x-gatehouse-session";
pub const OVERHEAD_HEADER: &str = "x-gatehouse-overhead-us";

pub async fn completions(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let request_id = request_id_of(&headers);
    let mut response = match handle(&st, &headers, body, &request_id, t0, Format::OpenAi).await {
        Ok(r) => r,
        Err(e) => {
            if e.kind.fault() == gatehouse_core::Fault::Client {
                tracing::debug!(request_id = %request_id, error = %e, "request refused");
            }
            error_response(&e)
        }
    };
    set_request_id(response.headers_mut(), &request_id, "x-request-id");
    response
}

/// The client's `X-Request-ID`, or a new one.
pub(crate) fn request_id_of(headers: &HeaderMap) -> RequestId {
    RequestId::from_client_or_generate(headers.get("x-request-id").and_then(|v| v.to_str().ok()))
}

pub(crate) fn set_request_id(h: &mut HeaderMap, id: &RequestId, name: &'static str) {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        h.insert(HeaderName::from_static(name), v);
    }
}

/// What one pass over the body yields; owned, so it can come back from the blocking pool.
struct Prepared {
    route: Arc<Route>,
    stream: bool,
    /// The bytes to send before the model rename (masked, compacted), kept (a reference count)
    /// in case the body must be rebuilt.
    original: Bytes,
    /// The client's bytes after redaction only, in OpenAI's format (an Anthropic request is
    /// translated first): the identity of its history for compaction.
    redacted_original: Bytes,
    /// The format the client speaks, and its own bytes after redaction (forwarded as they are
    /// to a provider of the same format when no feature rewrote the conversation).
    ingress: Format,
    client_body: Bytes,
    /// The client asked for usage in its OpenAI stream (`stream_options.include_usage`).
    client_wants_usage: bool,
    /// Compaction replaced the history.
    compacted: bool,
    /// How the route was chosen, when there was a choice (balancing, smart routing).
    select_note: Option<String>,
    /// The model the session is kept under when it is not the route's: what the client asked for
    /// (`auto/coding`, the primary of balanced deployments), not where the request went.
    session_model: Option<String>,
    /// Where the model name is spliced, when the provider's name differs.
    model_span: Option<std::ops::Range<usize>>,
    upstream_body: Bytes,
    injected_usage: bool,
    prompt_tokens: u64,
    session_name: Option<String>,
    preview: String,
    /// Secrets replaced by placeholders, by kind.
    redacted: Vec<(SecretKind, u32)>,
    /// Messages the sanitizer replaced by stand-ins.
    masked: Vec<MaskedContent>,
    /// Prompt tokens of memory/MCP content (what is sent, after masking).
    memory_tokens: u64,
}

/// Keeps the originals the sanitizer replaced (once per reference), counts what was saved,
/// and tells the dashboard.
async fn record_masked(st: &AppState, p: &Prepared, request_id: &RequestId, session: &SessionId) {
    let saved: u64 = p.masked.iter().map(|m| m.tokens_saved).sum();
    st.sanitizer
        .masked
        .fetch_add(p.masked.len() as u64, Ordering::Relaxed);
    st.sanitizer
        .tokens_saved
        .fetch_add(saved, Ordering::Relaxed);
    for m in &p.masked {
        if st.sanitizer.stored.get(&m.hash).is_none() {
            st.sanitizer.stored.insert(m.hash.clone(), ());
            st.writer
                .record(WriteOp::StoreMasked(Box::new(m.clone())))
                .await;
        }
    }
    emit(&*st.bus, || Event::SanitizerEvent {
        request_id: request_id.as_str().to_owned(),
        session_id: session.clone(),
        model: p.route.model_key.clone(),
        masked: p
            .masked
            .iter()
            .map(|m| MaskedSummary {
                reference: m.hash.clone(),
                role: m.role.clone(),
                tags: m.tags.clone(),
                tokens: m.tokens,
                tokens_saved: m.tokens_saved,
            })
            .collect(),
        tokens_saved: saved,
    });
}

fn parse(body: &Bytes) -> Result<ChatRequestView<'_>, ApiError> {
    ChatRequestView::parse(body).map_err(|e| match e {
        RequestParseError::Syntax(m) => ApiError::new(ErrorKind::InvalidJson, m),
        RequestParseError::Field { param, message } => {
            ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
        }
    })
}

/// What `select_route` decided.
struct Selected {
    route: Arc<Route>,
    note: Option<String>,
    session_model: Option<String>,
}

/// The route of a request: a smart-routing choice for `auto/<name>`, a balanced deployment for a
/// model that has several, or the model itself; with the account of the choice and, when it is
/// not the route's own, the model key its session is kept under.
fn select_route(st: &AppState, view: &ChatRequestView<'_>) -> Result<Selected, ApiError> {
    if let Some((name, auto)) = st.router.auto(&view.model) {
        // Count with the first candidate's vocabulary; candidates differ by a few percent.
        let enc = auto
            .candidates
            .first()
            .and_then(|k| st.router.resolve(k).ok())
            .map_or(gatehouse_core::Encoding::Cl100k, |r| r.encoding);
        let tokens = st.counter.count_prompt(enc, view).tokens;
        let (route, note) = gatehouse_proxy::select::choose_auto(
            &st.router,
            &st.upstream,
            name,
            auto,
            tokens,
            view.max_tokens,
        )?;
        return Ok(Selected {
            route,
            note: Some(note),
            session_model: Some(view.model.to_string()),
        });
    }
    let primary = st.router.resolve(&view.model)?;
    if primary.deployments.is_empty() {
        // The common case: no choice to make, nothing to allocate.
        return Ok(Selected {
            route: primary,
            note: None,
            session_model: None,
        });
    }
    let route =
        gatehouse_proxy::select::balance(&st.router, &st.upstream, &st.upstream.dice, &primary);
    let note = format!(
        "balanced across {} deployments: `{}` ({})",
        primary.deployments.len() + 1,
        route.model_key,
        route.latency.ms().map_or_else(
            || "latency not measured yet".to_owned(),
            |ms| format!("{ms:.0} ms EWMA")
        )
    );
    Ok(Selected {
        note: Some(note),
        session_model: Some(primary.model_key.clone()),
        route,
    })
}

fn prepare(st: &AppState, body: &Bytes, ingress: Format) -> Result<Prepared, ApiError> {
    let (client_body, redacted) = redact(st, body)?;
    // Everything below works on OpenAI's format; an Anthropic request is translated once here.
    let redacted_body = match ingress {
        // Gemini is a provider format only.
        Format::OpenAi | Format::Gemini | Format::Ollama => client_body.clone(),
        Format::Anthropic => {
            let ir = translate::anthropic::request_to_ir(&client_body)
                .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))?;
            Bytes::from(translate::openai::request_from_ir(&ir).to_string())
        }
    };
    let first = parse(&redacted_body)?;
    let Selected {
        route,
        note: select_note,
        session_model,
    } = select_route(st, &first)?;
    // Masking rewrites whole messages; the rewritten body is parsed again (and only then).
    let masked_body;
    let (body, view, masked) = match mask(st, &redacted_body, &first, route.encoding) {
        None => (&redacted_body, first, Vec::new()),
        Some((b, m)) => {
            masked_body = b;
            (&masked_body, parse(&masked_body)?, m)
        }
    };
    let parts = body_parts(st, body, &view, &route);
    Ok(Prepared {
        stream: view.stream,
        original: body.clone(),
        redacted_original: redacted_body.clone(),
        ingress,
        client_body,
        client_wants_usage: view
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        compacted: false,
        select_note,
        session_model,
        model_span: parts.model_span,
        upstream_body: parts.upstream_body,
        injected_usage: parts.injected_usage,
        prompt_tokens: parts.prompt_tokens,
        memory_tokens: parts.memory_tokens,
        session_name: view.first_user_preview(SESSION_NAME_CHARS),
        preview: view.last_user_preview(PREVIEW_CHARS).unwrap_or_default(),
        route,
        redacted,
        masked,
    })
}

/// What is derived from the body about to be sent: its count, and the upstream bytes (model
/// name spliced, stream usage asked for).
struct BodyParts {
    model_span: Option<std::ops::Range<usize>>,
    upstream_body: Bytes,
    injected_usage: bool,
    prompt_tokens: u64,
    memory_tokens: u64,
}

fn body_parts(st: &AppState, body: &Bytes, view: &ChatRequestView<'_>, route: &Route) -> BodyParts {
    let prompt = st.counter.count_prompt(route.encoding, view);
    let model_span = (view.model != route.upstream_model).then(|| view.model_span.clone());
    let usage = if view.stream
        && route.provider.kind.is_openai_compatible()
        && st.upstream.asks_stream_usage(&route.provider_key)
    {
        UsageAsk::Yes {
            client: view.stream_options.as_ref(),
        }
    } else {
        UsageAsk::No
    };
    let (upstream_body, rewritten) = rewrite(
        body,
        model_span
            .clone()
            .map(|s| (s, route.upstream_model.as_str())),
        usage,
    );
    BodyParts {
        model_span,
        upstream_body,
        injected_usage: rewritten.injected_usage,
        prompt_tokens: prompt.tokens,
        memory_tokens: memory_tokens(st, body, view, route.encoding),
    }
}

/// [`body_parts`] of a body not parsed yet.
fn parts_of(st: &AppState, body: &Bytes, route: &Route) -> Result<BodyParts, ApiError> {
    let view = parse(body)?;
    Ok(body_parts(st, body, &view, route))
}

impl Prepared {
    fn set_parts(&mut self, parts: BodyParts) {
        self.model_span = parts.model_span;
        self.upstream_body = parts.upstream_body;
        self.injected_usage = parts.injected_usage;
        self.prompt_tokens = parts.prompt_tokens;
        self.memory_tokens = parts.memory_tokens;
    }
}

/// Replaces the body to send by `body` (a compacted history).
fn use_body(st: &AppState, p: &mut Prepared, body: Bytes) -> Result<(), ApiError> {
    let parts = parts_of(st, &body, &p.route)?;
    p.original = body;
    p.compacted = true;
    p.set_parts(parts);
    Ok(())
}

pub(crate) async fn handle(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &RequestId,
    t0: Instant,
    ingress: Format,
) -> Result<Response, ApiError> {
    if let Some(hop) = headers.get(HOP_HEADER) {
        return Err(ApiError::new(
            ErrorKind::LoopDetected,
            format!(
                "this request already passed through a Gatehouse ({HOP_HEADER}: {}); refusing to forward it again",
                hop.to_str().unwrap_or("?")
            ),
        ));
    }
    let body = body.map_err(|r| body_rejection(&r, st.config.server.max_body_bytes))?;
    let explicit = match headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(SessionId::parse_client).ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                "X-Gatehouse-Session must be 1 to 128 characters of letters, digits, `.`, `_`, `:` or `-`",
            )
            .with_param("X-Gatehouse-Session")
        })?),
    };
    let p = if body.len() > BLOCKING_PREPARE_BYTES {
        let st2 = st.clone();
        tokio::task::spawn_blocking(move || prepare(&st2, &body, ingress))
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorKind::Internal,
                    format!("request preparation failed: {e}"),
                )
            })??
    } else {
        prepare(st, &body, ingress)?
    };

    let session = st
        .sessions
        .resolve(
            explicit,
            p.session_model.as_deref().unwrap_or(&p.route.model_key),
            &p.route.provider_key,
            p.session_name.as_deref(),
        )
        .await;
    if !p.masked.is_empty() {
        record_masked(st, &p, request_id, &session.id).await;
    }
    let mut p = p;
    compacting::compaction(st, &mut p, &session.id, request_id).await?;
    let heavy_duty = heavy_duty(st, &mut p)?;
    for note in p.select_note.iter().chain(&heavy_duty) {
        emit(&*st.bus, || Event::Routing {
            request_id: request_id.as_str().to_owned(),
            session_id: session.id.clone(),
            model: p.route.model_key.clone(),
            provider: p.route.provider_key.clone(),
            attempts: 0,
            reason: note.clone(),
        });
    }
    // After compaction: a history over the window may fit once its point is applied.
    if p.prompt_tokens > p.route.max_context {
        return Err(ApiError::new(
            ErrorKind::ContextLengthExceeded,
            format!(
                "the prompt has {} tokens, {} more than the {}-token window of `{}`; shorten the conversation or pick a model with a larger window",
                p.prompt_tokens,
                p.prompt_tokens - p.route.max_context,
                p.route.max_context,
                p.route.model_key
            ),
        )
        .with_param("messages"));
    }

    let provider_format = provider_format(&p.route);
    let upstream_body = upstream_body(&p, provider_format)?;
    let mut draft = Draft {
        routing: None,
        id: request_id.as_str().to_owned(),
        session_id: session.id.clone(),
        created_at: now_ms(),
        route: p.route.clone(),
        stream: p.stream,
        prompt_tokens_est: p.prompt_tokens,
        memory_tokens: p.memory_tokens,
        preview: std::mem::take(&mut p.preview),
    };
    if !p.redacted.is_empty() {
        // Kinds and counts only: a secret never reaches a log line or an event.
        tracing::info!(request_id = %request_id, redacted = ?p.redacted, "secrets replaced by placeholders before forwarding");
        emit(&*st.bus, || Event::Redaction {
            request_id: request_id.as_str().to_owned(),
            session_id: session.id.clone(),
            model: p.route.model_key.clone(),
            found: p
                .redacted
                .iter()
                .map(|(k, n)| gatehouse_services::events::RedactedKind {
                    kind: k.as_str(),
                    count: *n,
                })
                .collect(),
        });
    }
    emit(&*st.bus, || Event::RequestStarted {
        request_id: request_id.as_str().to_owned(),
        session_id: session.id.clone(),
        model: p.route.model_key.clone(),
        provider: p.route.provider_key.clone(),
        upstream_model: p.route.upstream_model.clone(),
        stream: p.stream,
        prompt_tokens_est: p.prompt_tokens,
        max_context: p.route.max_context,
    });
    let guard = InFlight::new(st);
    let mut injected_usage = p.injected_usage;
    // Time and attempts of a refused first try, so the row and the overhead figure count them.
    let mut prior_wait = Duration::ZERO;
    let mut prior_attempts = 0;
    let mut outcome = st
        .upstream
        .send(
            &p.route,
            upstream_body,
            headers,
            request_id.as_str(),
            p.stream,
        )
        .await;
    if let Err(f) = &outcome
        && injected_usage
        && rejects_stream_options(&f.error)
    {
        // An OpenAI-compatible API that refuses `stream_options`: send the client's request as
        // it was (model name aside) and stop asking this provider.
        st.upstream.stop_asking_stream_usage(&p.route.provider_key);
        injected_usage = false;
        prior_wait = f.upstream_wait;
        prior_attempts = f.attempts;
        let (plain, _) = rewrite(
            &p.original,
            p.model_span
                .clone()
                .map(|s| (s, p.route.upstream_model.as_str())),
            UsageAsk::No,
        );
        outcome = st
            .upstream
            .send(&p.route, plain, headers, request_id.as_str(), p.stream)
            .await;
    }
    let mut notes: Vec<String> = p.select_note.take().into_iter().chain(heavy_duty).collect();
    // Retries are worth a note of their own only when nothing else explains the attempts.
    let mut explained = prior_attempts > 0;
    if prior_attempts > 0 {
        notes.push(format!(
            "`{}` refused `stream_options`; resent without it and stopped asking this provider",
            p.route.provider_key
        ));
    }

    // Fallbacks, in order, while the failure is the provider's and nothing reached the client.
    let mut route = p.route.clone();
    if let Err(first) = &outcome
        && first.can_fall_back()
    {
        let mut why = first.error.message.clone();
        for key in &p.route.fallbacks {
            let next = match st.router.resolve(key) {
                Ok(r) => r,
                Err(e) => {
                    notes.push(format!("fallback `{key}` skipped: {}", e.message));
                    continue;
                }
            };
            if p.prompt_tokens > next.max_context {
                notes.push(format!(
                    "fallback `{key}` skipped: the prompt ({} tokens) is over its {}-token window",
                    p.prompt_tokens, next.max_context
                ));
                continue;
            }
            let (body, usage) = match body_for_route(st, &p, &next) {
                Ok(b) => b,
                Err(e) => {
                    notes.push(format!("fallback `{key}` skipped: {}", e.message));
                    continue;
                }
            };
            if let Err(f) = &outcome {
                prior_wait += f.upstream_wait;
                prior_attempts += f.attempts;
            }
            let note = format!("`{}` failed ({why}); fell back to `{key}`", route.model_key);
            emit(&*st.bus, || Event::Routing {
                request_id: request_id.as_str().to_owned(),
                session_id: session.id.clone(),
                model: next.model_key.clone(),
                provider: next.provider_key.clone(),
                attempts: prior_attempts + 1,
                reason: note.clone(),
            });
            notes.push(note);
            explained = true;
            outcome = st
                .upstream
                .send(&next, body, headers, request_id.as_str(), p.stream)
                .await;
            injected_usage = usage;
            route = next;
            match &outcome {
                Err(f) if f.can_fall_back() => why = f.error.message.clone(),
                _ => break,
            }
        }
    }
    let provider_format = self::provider_format(&route);
    draft.route = route.clone();
    // What the next balancing and smart-routing choices know of this route.
    match &outcome {
        Ok(Outcome::Complete { ttfb, .. }) => route.latency.observe(*ttfb),
        Ok(Outcome::Stream { upstream_wait, .. }) => route.latency.observe(*upstream_wait),
        Err(_) => {}
    }

    let attempts = match &outcome {
        Err(f) => f.attempts,
        Ok(Outcome::Complete { attempts, .. } | Outcome::Stream { attempts, .. }) => *attempts,
    } + prior_attempts;
    if attempts > 1 && !explained {
        notes.push(format!("{} retries before the first byte", attempts - 1));
        emit(&*st.bus, || Event::Routing {
            request_id: request_id.as_str().to_owned(),
            session_id: session.id.clone(),
            model: route.model_key.clone(),
            provider: route.provider_key.clone(),
            attempts,
            reason: notes.join("; "),
        });
    }
    draft.routing = (!notes.is_empty()).then(|| notes.join("; "));

    match outcome {
        Err(f) => {
            let record = draft.finish(Finish {
                status: f.error.status(),
                summary: None,
                latency: t0.elapsed(),
                ttfb: None,
                overhead: t0.elapsed().saturating_sub(f.upstream_wait + prior_wait),
                attempts: f.attempts + prior_attempts,
                error: Some((f.error.kind.code().to_owned(), f.error.message.clone())),
            });
            st.writer.record(st.request_finished(record)).await;
            tracing::warn!(request_id = %request_id, error = %f.error, attempts = f.attempts, "upstream request failed");
            // Upstream's own error body goes back as it is when the client reads that format.
            // Across formats, the provider's error is translated (same message and status).
            let status = f.error.status();
            let own = f.body.and_then(|b| match (p.ingress, provider_format) {
                (Format::OpenAi, Format::OpenAi) => is_openai_error(&b).then_some(b),
                (Format::Anthropic, Format::Anthropic) => is_anthropic_error(&b).then_some(b),
                (Format::OpenAi, Format::Anthropic) => {
                    translate::anthropic::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
                }
                (Format::Anthropic, Format::OpenAi | Format::Gemini) => {
                    translate::anthropic::error_from_openai(status, &b)
                        .map(|v| Bytes::from(v.to_string()))
                }
                (Format::Anthropic, Format::Ollama) => translate::ollama::error_to_openai(&b)
                    .and_then(|v| {
                        translate::anthropic::error_from_openai(status, v.to_string().as_bytes())
                    })
                    .map(|v| Bytes::from(v.to_string())),
                (_, Format::Gemini) => {
                    translate::gemini::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
                }
                (_, Format::Ollama) => {
                    translate::ollama::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
                }
                (Format::Gemini | Format::Ollama, _) => None,
            });
            let mut r = match own {
                Some(b) => json_bytes_response(
                    StatusCode::from_u16(f.error.status()).unwrap_or(StatusCode::BAD_GATEWAY),
                    b,
                ),
                None => error_response(&f.error),
            };
            set_session_header(r.headers_mut(), &session.id);
            Ok(r)
        }
        Ok(Outcome::Complete {
            status,
            headers: up,
            body,
            attempts,
            upstream_wait,
            ttfb,
        }) => {
            // Only 2xx answers come back as `Complete`; errors are `Failure`s.
            let body = if provider_format == p.ingress {
                body
            } else {
                translate_response(&body, provider_format, p.ingress).map_err(|e| {
                    if e.0.starts_with("Gemini blocked") {
                        return ApiError::new(
                            ErrorKind::InvalidRequest,
                            format!("{}: the provider's safety filter refused the prompt", e.0),
                        );
                    }
                    ApiError::new(
                        ErrorKind::UpstreamBadResponse,
                        format!(
                            "provider `{}` answered something that cannot be read: {e}",
                            route.provider_key
                        ),
                    )
                })?
            };
            let summary = Some(match p.ingress {
                Format::OpenAi | Format::Gemini | Format::Ollama => {
                    summarize_response(&body, route.encoding)
                }
                Format::Anthropic => summarize_anthropic(&body, route.encoding),
            });
            let overhead = t0.elapsed().saturating_sub(upstream_wait + prior_wait);
            let record = draft.finish(Finish {
                status: status.as_u16(),
                summary,
                latency: t0.elapsed(),
                ttfb: Some(ttfb),
                overhead,
                attempts: attempts + prior_attempts,
                error: None,
            });
            st.writer.record(st.request_finished(record)).await;
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            copy_response_headers(&up, r.headers_mut());
            set_session_header(r.headers_mut(), &session.id);
            set_overhead_header(r.headers_mut(), overhead);
            Ok(r)
        }
        Ok(Outcome::Stream {
            status,
            headers: up,
            first,
            rest,
            attempts,
            upstream_wait,
        }) => {
            let overhead = t0.elapsed().saturating_sub(upstream_wait + prior_wait);
            let tap = match p.ingress {
                // A translated stream always ends with a usage chunk; a client that did not
                // ask for one does not get it.
                Format::OpenAi | Format::Gemini | Format::Ollama => {
                    ClientTap::OpenAi(StreamTap::new(if provider_format == Format::OpenAi {
                        injected_usage
                    } else {
                        !p.client_wants_usage
                    }))
                }
                Format::Anthropic => ClientTap::Anthropic(AnthropicTap::new()),
            };
            let translator = (provider_format != p.ingress).then(|| {
                StreamTranslator::new(
                    provider_format,
                    p.ingress,
                    "",
                    p.prompt_tokens,
                    now_ms() / 1000,
                )
            });
            let recorder = stream::Recorder::new(stream::RecorderParts {
                draft,
                tap,
                writer: st.writer.clone(),
                t0,
                // What the client waits for its first byte: arrival to first upstream chunk.
                ttfb: t0.elapsed(),
                overhead,
                attempts: attempts + prior_attempts,
                status: status.as_u16(),
                guard,
            });
            let mut r = Response::new(stream::body(first, rest, recorder, translator, p.ingress));
            *r.status_mut() = status;
            copy_response_headers(&up, r.headers_mut());
            let h = r.headers_mut();
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            h.insert(
                HeaderName::from_static("x-accel-buffering"),
                HeaderValue::from_static("no"),
            );
            set_session_header(h, &session.id);
            set_overhead_header(h, overhead);
            Ok(r)
        }
    }
}

/// The seed's heavy-duty fallback, after compaction had its chance: a prompt at the threshold of
/// its model's window moves to the smallest model of the same provider that holds it. Returns
/// what was done, for the row and the event; refuses (413) when configured to and there is no
/// larger model.
fn heavy_duty(st: &AppState, p: &mut Prepared) -> Result<Option<String>, ApiError> {
    let hd = st.config.proxy.heavy_duty;
    let window = p.route.max_context;
    if !hd.enabled
        || window == 0
        || (p.prompt_tokens as f64) < hd.threshold_pct / 100.0 * window as f64
    {
        return Ok(None);
    }
    let pct = p.prompt_tokens as f64 * 100.0 / window as f64;
    let Some(next) = st
        .router
        .larger(&p.route, p.prompt_tokens, hd.threshold_pct)
    else {
        if hd.when_none == gatehouse_config::WhenNone::Refuse && p.prompt_tokens <= window {
            return Err(ApiError::new(
                ErrorKind::ContextLengthExceeded,
                format!(
                    "the prompt ({} tokens) is at {pct:.0} % of `{}`'s {window}-token window and provider `{}` has no larger model ([proxy.heavy_duty] when_none = \"refuse\")",
                    p.prompt_tokens, p.route.model_key, p.route.provider_key
                ),
            )
            .with_param("messages"));
        }
        return Ok(Some(format!(
            "heavy-duty: the prompt ({} tokens) is at {pct:.0} % of `{}`'s window and provider `{}` has no larger model",
            p.prompt_tokens, p.route.model_key, p.route.provider_key
        )));
    };
    let note = format!(
        "heavy-duty: the prompt ({} tokens) is at {pct:.0} % of `{}`'s window; moved to `{}` ({}-token window)",
        p.prompt_tokens, p.route.model_key, next.model_key, next.max_context
    );
    let parts = parts_of(st, &p.original, &next)?;
    p.route = next;
    p.set_parts(parts);
    Ok(Some(note))
}

/// The format a provider speaks.
fn provider_format(route: &Route) -> Format {
    match route.provider.kind {
        gatehouse_config::ProviderType::Anthropic => Format::Anthropic,
        gatehouse_config::ProviderType::Gemini => Format::Gemini,
        gatehouse_config::ProviderType::Ollama => Format::Ollama,
        _ => Format::OpenAi,
    }
}

/// An OpenAI-format body (the upstream model name already in it) in a provider's format.
fn translate_request(openai_body: &[u8], to: Format) -> Result<Bytes, ApiError> {
    let ir = translate::openai::request_to_ir(openai_body)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))?;
    let v = match to {
        Format::Anthropic => translate::anthropic::request_from_ir(&ir),
        Format::Gemini => translate::gemini::request_from_ir(&ir),
        Format::Ollama => translate::ollama::request_from_ir(&ir),
        Format::OpenAi => translate::openai::request_from_ir(&ir),
    };
    Ok(Bytes::from(v.to_string()))
}

/// The body in the provider's format. Same format: the prepared bytes. An Anthropic client to an
/// Anthropic provider gets its own bytes through (model name aside) unless masking or compaction
/// rewrote the conversation; otherwise the OpenAI-format body is translated.
fn upstream_body(p: &Prepared, to: Format) -> Result<Bytes, ApiError> {
    match to {
        Format::OpenAi => Ok(p.upstream_body.clone()),
        Format::Anthropic => match anthropic_own(p, &p.route.upstream_model) {
            Some(b) => Ok(b),
            None => translate_request(&p.upstream_body, Format::Anthropic),
        },
        other => translate_request(&p.upstream_body, other),
    }
}

/// An Anthropic client's own bytes for an Anthropic provider: as sent (model name aside) when
/// nothing rewrote the conversation, or with the masked texts replaced in place when only
/// masking did, so `cache_control` and unknown fields survive. `None` after compaction (the
/// history changed shape) or for another client format: the request is translated then.
fn anthropic_own(p: &Prepared, model: &str) -> Option<Bytes> {
    if p.ingress != Format::Anthropic || p.compacted {
        return None;
    }
    if p.masked.is_empty() {
        return Some(splice_model(&p.client_body, model));
    }
    let before = ChatRequestView::parse(&p.redacted_original).ok()?;
    let after = ChatRequestView::parse(&p.original).ok()?;
    if before.messages.len() != after.messages.len() {
        return None;
    }
    let replacements: Vec<(String, String)> = before
        .messages
        .iter()
        .zip(&after.messages)
        .filter_map(|(x, y)| {
            let (old, new) = (x.text()?, y.text()?);
            (old != new).then(|| (old.into_owned(), new.into_owned()))
        })
        .collect();
    let body = translate::anthropic::replace_texts(&p.client_body, &replacements)?;
    Some(splice_model(&Bytes::from(body), model))
}

/// The body for another route (a fallback): the prepared OpenAI-format body re-spliced for its
/// model and provider, or translated; with whether stream usage was asked for on the client's
/// behalf.
fn body_for_route(st: &AppState, p: &Prepared, route: &Route) -> Result<(Bytes, bool), ApiError> {
    let format = provider_format(route);
    if format == Format::Anthropic
        && let Some(b) = anthropic_own(p, &route.upstream_model)
    {
        return Ok((b, false));
    }
    let parts = parts_of(st, &p.original, route)?;
    match format {
        Format::OpenAi => Ok((parts.upstream_body, parts.injected_usage)),
        other => Ok((translate_request(&parts.upstream_body, other)?, false)),
    }
}

/// `body` with its top-level `model` replaced by `model` (a splice; the rest is untouched).
fn splice_model(body: &Bytes, model: &str) -> Bytes {
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow)]
        model: Option<&'a serde_json::value::RawValue>,
    }
    let Ok(Top { model: Some(raw) }) = serde_json::from_slice::<Top<'_>>(body) else {
        return body.clone();
    };
    if raw.get().trim_matches('"') == model {
        return body.clone();
    }
    let start = raw.get().as_ptr() as usize - body.as_ptr() as usize;
    let end = start + raw.get().len();
    let quoted = serde_json::Value::String(model.to_owned()).to_string();
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(&body[..start]);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(&body[end..]);
    Bytes::from(out)
}

/// `{"type": "error", "error": {...}}`: an Anthropic error body.
fn is_anthropic_error(b: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| {
        v.get("type").and_then(serde_json::Value::as_str) == Some("error")
            && v.get("error").is_some_and(serde_json::Value::is_object)
    })
}

/// A complete response from the provider's format into the client's.
fn translate_response(
    body: &[u8],
    from: Format,
    to: Format,
) -> Result<Bytes, translate::TranslateError> {
    let ir = match from {
        Format::OpenAi => translate::openai::response_to_ir(body)?,
        Format::Anthropic => translate::anthropic::response_to_ir(body)?,
        Format::Gemini => translate::gemini::response_to_ir(body)?,
        Format::Ollama => translate::ollama::response_to_ir(body)?,
    };
    let v = match to {
        Format::OpenAi | Format::Gemini | Format::Ollama => {
            translate::openai::response_from_ir(&ir, now_ms() / 1000)
        }
        Format::Anthropic => translate::anthropic::response_from_ir(&ir),
    };
    Ok(Bytes::from(v.to_string()))
}

/// A 400/422 from upstream that names `stream_options`.
fn rejects_stream_options(e: &ApiError) -> bool {
    matches!(e.upstream_status, Some(400 | 422)) && e.message.contains("stream_options")
}

fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (k, v) in from {
        if !dropped_response_header(k) {
            to.append(k.clone(), v.clone());
        }
    }
}

fn set_session_header(h: &mut HeaderMap, id: &SessionId) {
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        h.insert(HeaderName::from_static(SESSION_HEADER), v);
    }
}

fn set_overhead_header(h: &mut HeaderMap, overhead: Duration) {
    h.insert(
        HeaderName::from_static(OVERHEAD_HEADER),
        HeaderValue::from(u64::try_from(overhead.as_micros()).unwrap_or(u64::MAX)),
    );
}

/// The parts of a request row known before upstream answers.
pub(crate) struct Draft {
    /// What routing did, when it did more than one plain attempt.
    routing: Option<String>,
    id: String,
    session_id: SessionId,
    created_at: i64,
    route: Arc<Route>,
    stream: bool,
    prompt_tokens_est: u64,
    memory_tokens: u64,
    preview: String,
}

/// The parts known once the exchange is over.
pub(crate) struct Finish {
    pub status: u16,
    pub summary: Option<CompletionSummary>,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    pub overhead: Duration,
    pub attempts: u32,
    pub error: Option<(String, String)>,
}

impl Draft {
    pub(crate) fn encoding(&self) -> gatehouse_core::Encoding {
        self.route.encoding
    }

    pub(crate) fn finish(self, f: Finish) -> RequestRecord {
        let usage = f.summary.as_ref().and_then(|s| s.usage);
        let (prompt_tokens, completion_tokens, source) = match (usage, &f.summary) {
            (Some(u), _) => (
                Some(u.prompt_tokens),
                Some(u.completion_tokens),
                UsageSource::Upstream,
            ),
            (None, Some(s)) => (
                None,
                Some(s.counted_completion_tokens),
                UsageSource::Estimated,
            ),
            (None, None) => (None, None, UsageSource::Estimated),
        };
        let prompt = prompt_tokens.unwrap_or(self.prompt_tokens_est);
        // Failed exchanges are not billed by providers; streams cut short are, for what was sent.
        let billed = (200..300).contains(&f.status);
        let cost_usd = self.route.pricing.filter(|_| billed).map(|p| {
            p.cost(
                prompt,
                completion_tokens.unwrap_or(0),
                usage.and_then(|u| u.cached_tokens).unwrap_or(0),
            )
        });
        let context_pct = if self.route.max_context > 0 {
            prompt as f64 * 100.0 / self.route.max_context as f64
        } else {
            0.0
        };
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (error_type, error_message) = match f.error {
            Some((t, m)) => (Some(t), Some(m)),
            None => (None, None),
        };
        RequestRecord {
            id: self.id,
            session_id: self.session_id,
            created_at: self.created_at,
            provider: self.route.provider_key.clone(),
            model_key: self.route.model_key.clone(),
            upstream_model: self.route.upstream_model.clone(),
            stream: self.stream,
            status: f.status,
            prompt_tokens_est: self.prompt_tokens_est,
            prompt_tokens,
            completion_tokens,
            cached_tokens: usage.and_then(|u| u.cached_tokens),
            reasoning_tokens: usage.and_then(|u| u.reasoning_tokens),
            usage_source: source,
            max_context: self.route.max_context,
            context_pct,
            preview: self.preview,
            latency_ms: ms(f.latency),
            ttfb_ms: f.ttfb.map(ms),
            overhead_us: u64::try_from(f.overhead.as_micros()).unwrap_or(u64::MAX),
            attempts: f.attempts,
            finish_reason: f.summary.and_then(|s| s.finish_reason),
            error_type,
            error_message,
            cost_usd,
            memory_tokens: self.memory_tokens,
            chat_tokens: self.prompt_tokens_est.saturating_sub(self.memory_tokens),
            memory_ratio: if self.prompt_tokens_est > 0 {
                self.memory_tokens as f64 / self.prompt_tokens_est as f64
            } else {
                0.0
            },
            routing: self.routing,
        }
    }
}
