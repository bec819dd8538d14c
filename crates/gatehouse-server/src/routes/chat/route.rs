//! Phases 6 and 7, route and upstream: the body in the provider's format, the send (with its
//! retries, in `gatehouse-proxy`), the resend without `stream_options` for a provider that
//! refuses it, and the model's fallbacks, in order, while the failure is the provider's and
//! nothing has reached the client.

use std::sync::Arc;
use std::time::Duration;

use axum::http::HeaderMap;
use bytes::Bytes;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind, RequestId, SessionId};
use gatehouse_proxy::rewrite::{UsageAsk, rewrite};
use gatehouse_proxy::translate::{self, Format};
use gatehouse_proxy::upstream::{Api, Failure};
use gatehouse_proxy::{Outcome, Route};
use gatehouse_services::events::{Event, emit};

use super::{Prepared, parts_of};
use crate::state::AppState;

/// What the upstream phase came to.
pub(super) struct Sent {
    pub outcome: Result<Outcome, Failure>,
    /// The route that answered (or failed last).
    pub route: Arc<Route>,
    /// What routing did, for the row.
    pub routing: Option<String>,
    /// The body sent last asked for stream usage on the client's behalf.
    pub injected_usage: bool,
    /// Time waited and attempts made before the last send (a refused first try, fallbacks),
    /// so the row and the overhead figure count them.
    pub prior_wait: Duration,
    pub prior_attempts: u32,
}

impl Sent {
    /// Attempts in all, the last send's included.
    pub fn attempts(&self) -> u32 {
        let last = match &self.outcome {
            Err(f) => f.attempts,
            Ok(Outcome::Complete { attempts, .. } | Outcome::Stream { attempts, .. }) => *attempts,
        };
        last + self.prior_attempts
    }
}

pub(super) async fn send(
    st: &AppState,
    p: &Prepared,
    headers: &HeaderMap,
    request_id: &RequestId,
    session: &SessionId,
    mut notes: Vec<String>,
) -> Result<Sent, ApiError> {
    let format = provider_format(p, &p.route);
    let upstream_body = upstream_body(p, format)?;
    emit(&*st.bus, || Event::RequestStarted {
        request_id: request_id.as_str().to_owned(),
        session_id: session.clone(),
        model: p.route.model_key.clone(),
        provider: p.route.provider_key.clone(),
        upstream_model: p.route.upstream_model.clone(),
        stream: p.stream,
        prompt_tokens_est: p.prompt_tokens,
        max_context: p.route.max_context,
    });
    // A body that goes through as the client sent it asked for nothing on its behalf.
    let mut injected_usage = p.injected_usage && format != Format::Responses;
    let mut prior_wait = Duration::ZERO;
    let mut prior_attempts = 0;
    let mut outcome = st
        .upstream
        .send_via(
            &p.route,
            api_of(format),
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
    // Retries are worth a note of their own only when nothing else explains the attempts.
    let mut explained = prior_attempts > 0;
    if prior_attempts > 0 {
        notes.push(format!(
            "`{}` refused `stream_options`; resent without it and stopped asking this provider",
            p.route.provider_key
        ));
    }

    // Every attempt goes on the row: the retried ones' reasons first.
    let retried_notes = |o: &Result<Outcome, Failure>, model: &str, notes: &mut Vec<String>| {
        let retried = match o {
            Ok(o) => o.retried(),
            Err(f) => &f.retried,
        };
        for (i, why) in retried.iter().enumerate() {
            notes.push(format!("`{model}` attempt {} retried: {why}", i + 1));
        }
    };
    retried_notes(&outcome, &p.route.model_key, &mut notes);
    let mut route = p.route.clone();
    if let Err(first) = &outcome
        && first.can_fall_back(p.route.fallback_on_timeout)
    {
        let mut why = first.error.message.clone();
        for key in &p.route.fallbacks {
            if !super::admit::allowed(p.key.as_deref(), key) {
                notes.push(format!(
                    "fallback `{key}` skipped: not allowed for this key"
                ));
                continue;
            }
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
            let (body, usage, api) = match body_for_route(st, p, &next) {
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
                session_id: session.clone(),
                model: next.model_key.clone(),
                provider: next.provider_key.clone(),
                attempts: prior_attempts + 1,
                reason: note.clone(),
            });
            notes.push(note);
            explained = true;
            outcome = st
                .upstream
                .send_via(&next, api, body, headers, request_id.as_str(), p.stream)
                .await;
            injected_usage = usage;
            retried_notes(&outcome, &next.model_key, &mut notes);
            route = next;
            match &outcome {
                Err(f) if f.can_fall_back(p.route.fallback_on_timeout) => {
                    why = f.error.message.clone();
                }
                _ => break,
            }
        }
    }
    // What the next balancing and smart-routing choices know of this route.
    match &outcome {
        Ok(Outcome::Complete { ttfb, .. }) => route.latency.observe(*ttfb),
        Ok(Outcome::Stream { upstream_wait, .. }) => route.latency.observe(*upstream_wait),
        Err(_) => {}
    }
    let mut sent = Sent {
        outcome,
        route,
        routing: None,
        injected_usage,
        prior_wait,
        prior_attempts,
    };
    let attempts = sent.attempts();
    if attempts > 1 && !explained {
        emit(&*st.bus, || Event::Routing {
            request_id: request_id.as_str().to_owned(),
            session_id: session.clone(),
            model: sent.route.model_key.clone(),
            provider: sent.route.provider_key.clone(),
            attempts,
            reason: notes.join("; "),
        });
    }
    sent.routing = (!notes.is_empty()).then(|| notes.join("; "));
    Ok(sent)
}

/// The format a request goes to its provider in: the provider's own, or the Responses API
/// when a Responses client's own bytes can go through (the provider serves it, and neither the
/// gateway's kept history, masking nor compaction rewrote the conversation), so OpenAI's
/// `reasoning` items, encrypted content and every field it knows arrive as the client sent them.
pub(super) fn provider_format(p: &Prepared, route: &Route) -> Format {
    let through = route.provider.responses_api
        && p.responses.as_ref().is_some_and(|c| !c.expanded)
        && !p.compacted
        && p.masked.is_empty();
    if through {
        Format::Responses
    } else {
        Format::of_provider(route.provider.kind)
    }
}

fn api_of(format: Format) -> Api {
    if format == Format::Responses {
        Api::Responses
    } else {
        Api::Native
    }
}

/// Whether the request can go to its route at all, checked before it has a session (so a
/// refusal is counted with the others); compaction can still change the answer later.
pub(super) fn admissible(p: &Prepared) -> Result<(), ApiError> {
    check_foreign_previous(p, provider_format(p, &p.route))
}

/// A `previous_response_id` only the provider knows cannot be translated: refused unless the
/// request goes through.
fn check_foreign_previous(p: &Prepared, to: Format) -> Result<(), ApiError> {
    match p
        .responses
        .as_ref()
        .and_then(|c| c.foreign_previous.as_ref())
    {
        Some(prev) if to != Format::Responses => Err(ApiError::new(
            ErrorKind::InvalidRequest,
            format!("Previous response with id '{prev}' not found."),
        )
        .with_param("previous_response_id")),
        _ => Ok(()),
    }
}

/// An OpenAI-format body (the upstream model name already in it) in a provider's format.
fn translate_request(openai_body: &[u8], to: Format) -> Result<Bytes, ApiError> {
    translate::request_from_openai(openai_body, to)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))
}

/// The body in the provider's format. Same format: the prepared bytes. An Anthropic client to an
/// Anthropic provider gets its own bytes through (model name aside) unless masking or compaction
/// rewrote the conversation; otherwise the OpenAI-format body is translated.
fn upstream_body(p: &Prepared, to: Format) -> Result<Bytes, ApiError> {
    check_foreign_previous(p, to)?;
    match to {
        Format::OpenAi => Ok(p.upstream_body.clone()),
        Format::Responses => Ok(splice_model(&p.client_body, &p.route.upstream_model)),
        Format::Anthropic => match anthropic_own(p, &p.route.upstream_model) {
            Some(b) => Ok(b),
            None => translate_request(&p.upstream_body, Format::Anthropic),
        },
        other => translate_request(&p.upstream_body, other),
    }
}

/// An Anthropic client's own bytes for an Anthropic provider: as sent (model name aside), with
/// a compaction spliced in (the summarised messages removed, the summary a last `system`
/// block) and the masked texts replaced in place, so `thinking`, signatures, `cache_control`,
/// documents and unknown fields survive. `None` for another client format, or when the
/// compaction's cut falls inside one of its messages: the request is translated then.
fn anthropic_own(p: &Prepared, model: &str) -> Option<Bytes> {
    if p.ingress != Format::Anthropic {
        return None;
    }
    let mut body = p.client_body.clone();
    match &p.spliced {
        Some((cut, summary)) => {
            let drop = translate::anthropic::messages_before(&body, *cut)?;
            body = Bytes::from(translate::anthropic::splice_compaction(
                &body, drop, summary,
            )?);
        }
        None if p.compacted => return None,
        None => {}
    }
    if !p.masked.is_empty() {
        let before = ChatRequestView::parse(&p.redacted_original).ok()?;
        let after = ChatRequestView::parse(&p.masked_body).ok()?;
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
        body = Bytes::from(translate::anthropic::replace_texts(&body, &replacements)?);
    }
    Some(splice_model(&body, model))
}

/// The body for another route (a fallback): the prepared OpenAI-format body re-spliced for its
/// model and provider, or translated; with whether stream usage was asked for on the client's
/// behalf, and the API it goes to.
fn body_for_route(
    st: &AppState,
    p: &Prepared,
    route: &Route,
) -> Result<(Bytes, bool, Api), ApiError> {
    let format = provider_format(p, route);
    check_foreign_previous(p, format)?;
    let api = api_of(format);
    match format {
        Format::Responses => {
            return Ok((
                splice_model(&p.client_body, &route.upstream_model),
                false,
                api,
            ));
        }
        Format::Anthropic => {
            if let Some(b) = anthropic_own(p, &route.upstream_model) {
                return Ok((b, false, api));
            }
        }
        _ => {}
    }
    let parts = parts_of(st, &p.original, route)?;
    match format {
        Format::OpenAi => Ok((parts.upstream_body, parts.injected_usage, api)),
        other => Ok((translate_request(&parts.upstream_body, other)?, false, api)),
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
    let (Some(head), Some(tail)) = (body.get(..start), body.get(end..)) else {
        return body.clone();
    };
    let mut out = Vec::with_capacity(body.len() + quoted.len());
    out.extend_from_slice(head);
    out.extend_from_slice(quoted.as_bytes());
    out.extend_from_slice(tail);
    Bytes::from(out)
}

/// A 400/422 from upstream that names `stream_options`.
fn rejects_stream_options(e: &ApiError) -> bool {
    matches!(e.upstream_status, Some(400 | 422)) && e.message.contains("stream_options")
}
