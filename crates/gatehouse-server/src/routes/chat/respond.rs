//! Phase 8, respond: what the client gets, in its own format, and the row. A failure becomes
//! the provider's own error body when the client reads that format (translated otherwise); a
//! whole answer is translated when the formats differ; a stream goes out chunk by chunk through
//! the tap (and a translator when the formats differ), its row written when it ends.

use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::record::StoredResponse;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind, RequestId, SessionId};
use gatehouse_proxy::headers::dropped_response_header;
use gatehouse_proxy::tap::{
    AnthropicTap, ClientTap, GeminiTap, ResponsesTap, summarize_anthropic, summarize_gemini,
    summarize_response, summarize_responses,
};
use gatehouse_proxy::translate::stream::StreamTranslator;
use gatehouse_proxy::translate::{self, Format};
use gatehouse_proxy::upstream::{Failure, is_openai_error};
use gatehouse_proxy::{Outcome, StreamTap};

use super::route::{Sent, provider_format};
use super::{Draft, Finish, Prepared, set_overhead_header, set_session_header};
use crate::error::{error_response, json_bytes_response};
use crate::state::AppState;
use crate::stream;

pub(super) async fn respond(
    st: &AppState,
    p: &Prepared,
    sent: Sent,
    mut draft: Draft,
    request_id: &RequestId,
    session: &SessionId,
    t0: Instant,
) -> Result<Response, ApiError> {
    let Sent {
        outcome,
        route,
        routing,
        injected_usage,
        prior_wait,
        prior_attempts,
    } = sent;
    let provider_format = provider_format(p, &route);
    draft.routed(route.clone(), routing);
    match outcome {
        Err(f) => {
            failure(
                draft,
                f,
                p.ingress,
                provider_format,
                prior_wait,
                prior_attempts,
                request_id,
                session,
                t0,
            )
            .await
        }
        Ok(Outcome::Complete {
            status,
            headers: up,
            body,
            attempts,
            upstream_wait,
            ttfb,
            ..
        }) => {
            // Only 2xx answers come back as `Complete`; errors are `Failure`s.
            let body = if provider_format == p.ingress {
                Ok(body)
            } else {
                answer_for_client(st, p, &body, provider_format, session).map_err(|e| {
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
                })
            };
            let body = match body {
                Ok(b) => b,
                Err(e) => return Err(draft.refuse(e)),
            };
            let summary = Some(match p.ingress {
                Format::Gemini => summarize_gemini(&body, route.encoding),
                Format::OpenAi | Format::Ollama => summarize_response(&body, route.encoding),
                Format::Anthropic => summarize_anthropic(&body, route.encoding),
                Format::Responses => summarize_responses(&body, route.encoding),
            });
            let overhead = t0.elapsed().saturating_sub(upstream_wait + prior_wait);
            draft
                .finish(Finish {
                    status: status.as_u16(),
                    summary,
                    latency: t0.elapsed(),
                    ttfb: Some(ttfb),
                    overhead,
                    attempts: attempts + prior_attempts,
                    error: None,
                })
                .await;
            let mut r = Response::new(Body::from(body));
            *r.status_mut() = status;
            copy_response_headers(&up, r.headers_mut());
            set_session_header(r.headers_mut(), session);
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
            ..
        }) => {
            let overhead = t0.elapsed().saturating_sub(upstream_wait + prior_wait);
            let tap = match p.ingress {
                // A translated stream always ends with a usage chunk; a client that did not
                // ask for one does not get it.
                Format::Gemini => ClientTap::Gemini(Box::new(GeminiTap::new())),
                Format::OpenAi | Format::Ollama => {
                    ClientTap::OpenAi(StreamTap::new(if provider_format == Format::OpenAi {
                        injected_usage
                    } else {
                        !p.client_wants_usage
                    }))
                }
                Format::Anthropic => ClientTap::Anthropic(AnthropicTap::new()),
                Format::Responses => ClientTap::Responses(Box::new(ResponsesTap::new())),
            };
            let translator = (provider_format != p.ingress).then(|| match &p.responses {
                Some(ctx) => StreamTranslator::to_responses(
                    provider_format,
                    ctx.meta.clone(),
                    now_ms() / 1000,
                ),
                None => StreamTranslator::new(
                    provider_format,
                    p.ingress,
                    "",
                    p.prompt_tokens,
                    now_ms() / 1000,
                ),
            });
            let keep = keeper(st, p, session);
            let recorder = stream::Recorder::new(stream::RecorderParts {
                draft,
                tap,
                t0,
                // What the client waits for its first byte: arrival to first upstream chunk.
                ttfb: t0.elapsed(),
                overhead,
                attempts: attempts + prior_attempts,
                status: status.as_u16(),
                keep,
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
            set_session_header(h, session);
            set_overhead_header(h, overhead);
            Ok(r)
        }
    }
}

/// The row and the client's answer for a request upstream did not answer.
#[expect(
    clippy::too_many_arguments,
    reason = "the failure and where it happened, from `respond`"
)]
async fn failure(
    draft: Draft,
    f: Failure,
    ingress: Format,
    provider_format: Format,
    prior_wait: std::time::Duration,
    prior_attempts: u32,
    request_id: &RequestId,
    session: &SessionId,
    t0: Instant,
) -> Result<Response, ApiError> {
    draft
        .finish(Finish {
            status: f.error.status(),
            summary: None,
            latency: t0.elapsed(),
            ttfb: None,
            overhead: t0.elapsed().saturating_sub(f.upstream_wait + prior_wait),
            attempts: f.attempts + prior_attempts,
            error: Some((f.error.kind.code().to_owned(), f.error.message.clone())),
        })
        .await;
    tracing::warn!(request_id = %request_id, error = %f.error, attempts = f.attempts, "upstream request failed");
    // Upstream's own error body goes back as it is when the client reads that format.
    // Across formats, the provider's error is translated (same message and status).
    let status = f.error.status();
    let own = f.body.and_then(|b| match (ingress, provider_format) {
        (Format::Gemini, Format::Gemini) => translate::gemini::error_to_openai(&b)
            .is_some()
            .then_some(b),
        // Another provider's error reaches a Gemini client reshaped by its route.
        (Format::Gemini, _) => None,
        (Format::OpenAi | Format::Responses, Format::OpenAi)
        | (Format::Responses, Format::Responses) => is_openai_error(&b).then_some(b),
        (Format::Anthropic, Format::Anthropic) => is_anthropic_error(&b).then_some(b),
        (Format::OpenAi | Format::Responses, Format::Anthropic) => {
            translate::anthropic::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
        }
        (Format::Anthropic, Format::OpenAi | Format::Gemini) => {
            translate::anthropic::error_from_openai(status, &b).map(|v| Bytes::from(v.to_string()))
        }
        (Format::Anthropic, Format::Ollama) => translate::ollama::error_to_openai(&b)
            .and_then(|v| translate::anthropic::error_from_openai(status, v.to_string().as_bytes()))
            .map(|v| Bytes::from(v.to_string())),
        (_, Format::Gemini) => {
            translate::gemini::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
        }
        (_, Format::Ollama) => {
            translate::ollama::error_to_openai(&b).map(|v| Bytes::from(v.to_string()))
        }
        // Never provider formats.
        (Format::Ollama, _) | (_, Format::Responses) => None,
    });
    let mut r = match own {
        Some(b) => json_bytes_response(
            StatusCode::from_u16(f.error.status()).unwrap_or(StatusCode::BAD_GATEWAY),
            b,
        ),
        None => error_response(&f.error),
    };
    set_session_header(r.headers_mut(), session);
    Ok(r)
}

/// A whole answer from the provider's format in the client's; a Responses answer is kept
/// (`store`) before the client has it, so it can be continued at once.
fn answer_for_client(
    st: &AppState,
    p: &Prepared,
    body: &[u8],
    from: Format,
    session: &SessionId,
) -> Result<Bytes, translate::TranslateError> {
    let Some(ctx) = &p.responses else {
        return translate::response_between(body, from, p.ingress, now_ms() / 1000);
    };
    let ir = translate::response_to_ir(body, from)?;
    let v = translate::responses::response_from_ir(&ir, &ctx.meta);
    if let Some(keep) = keeper(st, p, session) {
        keep(&v);
    }
    Ok(Bytes::from(v.to_string()))
}

/// What keeps a Responses request's answer, when it asked to be kept.
fn keeper(st: &AppState, p: &Prepared, session: &SessionId) -> Option<stream::Keep> {
    let ctx = p.responses.as_ref().filter(|c| c.store)?;
    let (st, session, id, input) = (
        st.clone(),
        session.clone(),
        ctx.meta.id.clone(),
        ctx.input.to_string(),
    );
    let key_id = p.key.as_ref().map(|k| k.id.clone());
    Some(Box::new(move |response: &serde_json::Value| {
        st.responses.put(StoredResponse {
            id,
            session_id: session,
            created_at: now_ms(),
            input,
            response: response.to_string(),
            key_id,
        });
    }))
}

/// `{"type": "error", "error": {...}}`: an Anthropic error body.
fn is_anthropic_error(b: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(b).is_ok_and(|v| {
        v.get("type").and_then(serde_json::Value::as_str) == Some("error")
            && v.get("error").is_some_and(serde_json::Value::is_object)
    })
}

/// The headers the gateway adds to a proxied answer at most: session, overhead, request id,
/// the key's six `x-ratelimit-*`, and a stream's two.
const OWN_HEADERS: usize = 11;

/// The provider's headers the client gets, into a map sized once for them and the gateway's
/// own: growing it later rehashes every entry.
fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    if to.capacity() < from.len() + OWN_HEADERS {
        *to = HeaderMap::with_capacity(from.len() + OWN_HEADERS);
    }
    for (k, v) in from {
        if !dropped_response_header(k) {
            to.append(k.clone(), v.clone());
        }
    }
}
