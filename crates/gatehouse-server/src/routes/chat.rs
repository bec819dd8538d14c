//! `POST /v1/chat/completions` (and, through `messages.rs`, `POST /v1/messages`): the proxy
//! path. [`handle`] reads as its phases, each a module of its own:
//!
//! 1. `ingress`: decode (loop check, body limit, session header);
//! 2. `prepare`: redact → parse → route → mask → count, one pass over the body;
//! 3. `admit`: who is asking (the virtual key, checked before anything else) and whether the
//!    gateway takes the request now (the key's model list, limits and budget, the stream cap);
//! 4. `session`: the conversation the request belongs to (the rules are `Sessions`'); from here
//!    on the request has a row (`record::Draft`), whichever way it ends;
//! 5. `economy`: masked originals kept, compaction, heavy-duty, the window check (413);
//! 6. `route`: the provider's format, the send with its retries, fallbacks;
//! 7. `respond`: the client's answer (error, whole answer or stream) and the row.
//!
//! The ingresses (`/v1/chat/completions` here, `messages.rs`, `responses.rs`) differ only in
//! their [`Ingress`]: the format, and what the route learnt before the path began.
//!
//! A request refused before it has a session (phases 1 to 3) is counted by error code in
//! `/health` (`refused`) and gets a row of its own (`record::refused`), so a misbehaving or
//! failing client is visible.
//!
//! Nothing here waits for the database.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::{ApiError, RequestId, SessionId};
use gatehouse_proxy::translate::Format;

use crate::error::error_response;
use crate::origin::SameOrigin;
use crate::state::AppState;

pub(crate) mod admit;
mod compacting;
mod economy;
mod ingress;
mod prepare;
mod record;
mod respond;
mod route;
mod session;

pub(crate) use prepare::Prepared;
use prepare::{parts_of, use_body};
pub(crate) use record::{Draft, Finish};

pub const SESSION_HEADER: &str = "x-gatehouse-session";

/// The ingress a request came in by: its format, and what that ingress knows beyond the body.
pub(crate) struct Ingress {
    pub format: Format,
    /// The conversation the ingress named (a Responses request continuing a stored response, or
    /// its `prompt_cache_key`), when the client sent no session header.
    pub conversation: Option<SessionId>,
    /// A Responses request: what its Response says and whether it is kept.
    pub responses: Option<Box<ResponsesCtx>>,
}

impl From<Format> for Ingress {
    fn from(format: Format) -> Self {
        Self {
            format,
            conversation: None,
            responses: None,
        }
    }
}

/// What a Responses request's answer needs besides the provider's answer.
pub(crate) struct ResponsesCtx {
    pub meta: gatehouse_proxy::translate::responses::Meta,
    /// The whole input (history included), kept with the response.
    pub input: serde_json::Value,
    /// `store` (OpenAI's default: true).
    pub store: bool,
    /// The input holds a history the gateway kept (`previous_response_id` was one of its own).
    pub expanded: bool,
    /// A `previous_response_id` the gateway does not know: the provider's own, when the
    /// request goes through to a provider that serves Responses; refused otherwise.
    pub foreign_previous: Option<String>,
}
pub const OVERHEAD_HEADER: &str = "x-gatehouse-overhead-us";

pub async fn completions(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let request_id = request_id_of(&headers);
    let ingress = Ingress::from(Format::OpenAi);
    let mut response = match handle(&st, &headers, body, &request_id, t0, ingress).await {
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

/// The proxy path, phase by phase (see the module doc). When shutdown's grace period is over,
/// the connections still open are aborted (`listen.rs`): this future is dropped with its
/// `Draft`, whose row then says `shutdown`.
pub(crate) async fn handle(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
    request_id: &RequestId,
    t0: Instant,
    ingress: Ingress,
) -> Result<Response, ApiError> {
    // No row for a request without a valid key: an anonymous caller writes nothing.
    let key = admit::authenticate(st, headers).map_err(|e| st.refusals.count(e))?;
    let key_ref = key.as_deref();
    let mut req = ingress::decode(st, headers, body)
        .map_err(|e| record::refused(st, request_id, t0, None, None, key_ref, e))?;
    req.conversation = req.conversation.or(ingress.conversation);
    // A refusal's row needs the body and the named session; both stay with `req` (the body's
    // clone shares its bytes).
    let body = req.body.clone();
    let named = req.explicit_session.as_ref().or(req.conversation.as_ref());
    let refused = |e| record::refused(st, request_id, t0, named, Some(&body), key_ref, e);
    let target = st.upstream.passthrough.target(headers, ingress.format);
    let target = target.await.map_err(refused)?;
    let mut p = prepare::run(st, req.body, ingress.format, target, key.clone())
        .await
        .map_err(refused)?;
    p.responses = ingress.responses;
    route::admissible(&p).map_err(refused)?;
    let admission = admit::admit(st, &p, key.as_ref()).await.map_err(refused)?;
    let rate = admission.rate;
    let resolved = session::resolve(st, req.explicit_session, req.conversation, &p).await;
    let mut draft = Draft::open(st, request_id, &resolved, t0, &mut p, admission);
    let session = resolved.id;
    let notes = match economy::apply(st, &mut p, &session, request_id).await {
        Ok(notes) => notes,
        Err(e) => return Err(draft.refuse(e)),
    };
    draft.update(&p);
    let sent = match route::send(st, &p, headers, request_id, &session, notes).await {
        Ok(sent) => sent,
        Err(e) => return Err(draft.refuse(e)),
    };
    let mut response = respond::respond(st, &p, sent, draft, request_id, &session, t0).await?;
    admit::set_rate_headers(response.headers_mut(), &rate);
    Ok(response)
}

/// A request an ingress refused before the path began: counted, and a row in the active
/// session.
pub(crate) fn refuse(st: &AppState, request_id: &RequestId, t0: Instant, e: ApiError) -> ApiError {
    record::refused(st, request_id, t0, None, None, None, e)
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
