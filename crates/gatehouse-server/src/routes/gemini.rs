//! Google's Gemini API in front of any provider, for Gemini CLI and the `google-genai` SDKs:
//! `POST /v1beta/models/{model}:generateContent`, `:streamGenerateContent` (SSE with
//! `alt=sse`) and `:countTokens`. The model is the gateway's model key, as is (Gemini CLI puts a
//! key with a `/` into the path as it is). The proxy path is the chat handler's with the Gemini
//! ingress; errors come back in Gemini's shape.

use std::time::Instant;

use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind};
use gatehouse_proxy::translate::{self, Format};
use serde_json::{Value, json};

use crate::error::{body_rejection, json_bytes_response, set_retry_after};
use crate::origin::SameOrigin;
use crate::routes::chat;
use crate::routes::messages::reshape_error;
use crate::state::AppState;

/// An error in Gemini's shape.
pub fn gemini_error(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = json_bytes_response(
        status,
        translate::gemini::error_body(status.as_u16(), &e.message).to_string(),
    );
    set_retry_after(&mut r, e);
    r
}

pub async fn models(
    _: SameOrigin,
    State(st): State<AppState>,
    Path(rest): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let request_id = chat::request_id_of(&headers);
    let Some((model, method)) = rest.rsplit_once(':') else {
        return gemini_error(&ApiError::new(
            ErrorKind::NotFound,
            format!(
                "`models/{rest}` names no method: use `:generateContent`, `:streamGenerateContent` or `:countTokens`"
            ),
        ));
    };
    let stream = match method {
        "generateContent" => false,
        "streamGenerateContent" => true,
        "countTokens" => return count_tokens(&st, model, body),
        other => {
            return gemini_error(&ApiError::new(
                ErrorKind::NotFound,
                format!("the Gemini API method `{other}` is not served by this gateway"),
            ));
        }
    };
    let body = body.map(|b| with_model(b, model, stream));
    let mut response =
        match chat::handle(&st, &headers, body, &request_id, t0, Format::Gemini.into()).await {
            Ok(r) if r.status().is_success() => r,
            Ok(r) => reshape_error(r, translate::gemini::error_body).await,
            Err(e) => gemini_error(&e),
        };
    chat::set_request_id(response.headers_mut(), &request_id, "x-request-id");
    response
}

/// The body with the URL's model and mode in it, so the path reads the request from its body
/// alone. A body that is not a JSON object goes on as it is, for the path to refuse.
fn with_model(body: Bytes, model: &str, stream: bool) -> Bytes {
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut o)) => {
            o.insert("model".to_owned(), json!(model));
            o.insert("stream".to_owned(), json!(stream));
            Bytes::from(Value::Object(o).to_string())
        }
        _ => body,
    }
}

/// `:countTokens`: the prompt's tokens as the gateway counts them for the routed model
/// (`contents`, or a whole `generateContentRequest`).
fn count_tokens(st: &AppState, model: &str, body: Result<Bytes, BytesRejection>) -> Response {
    let count = || -> Result<u64, ApiError> {
        let body = body.map_err(|r| body_rejection(&r, st.config.server.max_body_bytes))?;
        let v: Value = serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                ErrorKind::InvalidJson,
                format!("the body is not valid JSON: {e}"),
            )
        })?;
        let request = v.get("generateContentRequest").cloned().unwrap_or(v);
        let inner = with_model(Bytes::from(request.to_string()), model, false);
        let (ir, _) = translate::gemini::client_request_to_ir(&inner)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))?;
        let openai = Bytes::from(translate::openai::request_from_ir(&ir).to_string());
        let view = ChatRequestView::parse(&openai)
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.to_string()))?;
        let route = st.router.resolve(&view.model)?;
        Ok(st.counter.count_prompt(route.encoding, &view).tokens)
    };
    match count() {
        Ok(n) => json_bytes_response(StatusCode::OK, json!({"totalTokens": n}).to_string()),
        Err(e) => gemini_error(&st.refusals.count(e)),
    }
}
