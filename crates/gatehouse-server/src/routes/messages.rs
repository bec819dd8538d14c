//! `POST /v1/messages` and `POST /v1/messages/count_tokens`: Anthropic's Messages API in front
//! of any provider. The proxy path is the chat handler's (`chat::handle` with the Anthropic
//! ingress); this file adds Anthropic's error shape and the token count.

use std::time::Instant;

use axum::body::Body;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind};
use gatehouse_proxy::translate::{self, Format};
use gatehouse_proxy::upstream::is_openai_error;
use serde_json::json;

use crate::error::{body_rejection, json_bytes_response, set_retry_after};
use crate::origin::SameOrigin;
use crate::routes::chat;
use crate::state::AppState;

/// Errors the gateway itself writes are small; this bounds reading one back to reshape it.
const MAX_ERROR_BODY: usize = 256 * 1024;

/// An error in Anthropic's shape.
pub fn anthropic_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = json_bytes_response(
        status,
        translate::anthropic::error_body(status.as_u16(), &e.message).to_string(),
    );
    set_retry_after(&mut r, e);
    r
}

pub async fn messages(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let request_id = chat::request_id_of(&headers);
    let mut response = match chat::handle(
        &st,
        &headers,
        body,
        &request_id,
        t0,
        Format::Anthropic.into(),
    )
    .await
    {
        Ok(r) if r.status().is_success() => r,
        Ok(r) => reshape_error(r, translate::anthropic::error_body).await,
        Err(e) => anthropic_error(&e),
    };
    // Anthropic's clients read `request-id`.
    for name in ["request-id", "x-request-id"] {
        chat::set_request_id(response.headers_mut(), &request_id, name);
    }
    response
}

/// An error response of the proxy path in OpenAI's shape becomes the client's (`shape` makes
/// its body from the status and the message); a provider's own error body in the client's
/// format is already in the right shape and is left alone.
pub(crate) async fn reshape_error(
    r: Response,
    shape: fn(u16, &str) -> serde_json::Value,
) -> Response {
    let (parts, body) = r.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
        return Response::from_parts(parts, Body::empty());
    };
    if !is_openai_error(&bytes) {
        return Response::from_parts(parts, Body::from(bytes));
    }
    let message = serde_json::from_slice::<serde_json::Value>(&bytes)
        .ok()
        .and_then(|v| v.get("error")?.get("message")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| "upstream error".to_owned());
    let body = shape(parts.status.as_u16(), &message).to_string();
    let mut out = Response::from_parts(parts, Body::from(body));
    out.headers_mut().remove(axum::http::header::CONTENT_LENGTH);
    out
}

/// `POST /v1/messages/count_tokens`: the prompt's tokens as the gateway counts them (its BPE for
/// the routed model; Anthropic's own tokenizer is not public, so for Claude models this is an
/// estimate).
pub async fn count_tokens(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    if let Err(e) = chat::admit::authenticate(&st, &headers) {
        return anthropic_error(&st.refusals.count(e));
    }
    match count(&st, body) {
        Ok(n) => json_bytes_response(StatusCode::OK, json!({"input_tokens": n}).to_string()),
        Err(e) => anthropic_error(&st.refusals.count(e)),
    }
}

fn count(st: &AppState, body: Result<Bytes, BytesRejection>) -> Result<u64, ApiError> {
    let body = body.map_err(|r| body_rejection(&r, st.config.server.max_body_bytes))?;
    let ir = translate::anthropic::request_to_ir(&body)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))?;
    let openai = Bytes::from(translate::openai::request_from_ir(&ir).to_string());
    let view = ChatRequestView::parse(&openai)
        .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.to_string()))?;
    let route = st.router.resolve(&view.model)?;
    Ok(st.counter.count_prompt(route.encoding, &view).tokens)
}
