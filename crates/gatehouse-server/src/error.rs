//! The one place where errors become HTTP responses.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gatehouse_core::{ApiError, ErrorKind};

/// An [`ApiError`] on its way out.
#[derive(Debug)]
pub struct HttpError(pub ApiError);

impl From<ApiError> for HttpError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        error_response(&self.0)
    }
}

/// A database failure on a management route: logged in full, answered without its details
/// (the SQL and the schema are not the client's business).
pub fn store_failed(e: impl std::fmt::Display) -> HttpError {
    tracing::error!(error = %e, "database access failed");
    HttpError(ApiError::new(
        ErrorKind::Internal,
        "the database could not be reached; see the gateway log",
    ))
}

/// A 400 `invalid_request_error` for a management-API body that is JSON but wrong.
pub fn bad_request(message: impl Into<String>) -> HttpError {
    HttpError(ApiError::new(ErrorKind::InvalidRequest, message))
}

/// A management-API JSON body (an empty body reads as `{}`); a malformed one is a 400 that
/// says what `shape` was expected.
pub fn json_body<T: serde::de::DeserializeOwned>(raw: &[u8], shape: &str) -> Result<T, HttpError> {
    let raw: &[u8] = if raw.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        raw
    };
    serde_json::from_slice(raw).map_err(|e| {
        HttpError(ApiError::new(
            ErrorKind::InvalidJson,
            format!("the body must be {shape}: {e}"),
        ))
    })
}

pub fn error_response(e: &ApiError) -> Response {
    let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::BAD_GATEWAY);
    let mut r = json_bytes_response(status, e.to_json_bytes());
    set_retry_after(&mut r, e);
    r
}

/// `Retry-After` from the error, when it says how long to wait.
pub fn set_retry_after(r: &mut Response, e: &ApiError) {
    if let Some(secs) = e.retry_after_secs {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
}

pub fn json_bytes_response(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A body that could not be read: too large (413) or broken (400).
pub fn body_rejection(r: &BytesRejection, limit: usize) -> ApiError {
    if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            ErrorKind::BodyTooLarge,
            format!("request body is larger than the {limit}-byte limit (server.max_body_bytes)"),
        )
    } else {
        ApiError::new(
            ErrorKind::InvalidRequest,
            format!("cannot read request body: {}", r.body_text()),
        )
    }
}

impl From<JsonRejection> for HttpError {
    fn from(r: JsonRejection) -> Self {
        let kind = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorKind::BodyTooLarge
        } else {
            ErrorKind::InvalidJson
        };
        Self(ApiError::new(kind, r.body_text()))
    }
}

impl From<PathRejection> for HttpError {
    fn from(r: PathRejection) -> Self {
        Self(ApiError::new(ErrorKind::InvalidRequest, r.body_text()))
    }
}

impl From<QueryRejection> for HttpError {
    fn from(r: QueryRejection) -> Self {
        Self(ApiError::new(ErrorKind::InvalidRequest, r.body_text()))
    }
}

/// Unknown routes answer in the same JSON shape as everything else.
pub async fn not_found(uri: axum::http::Uri) -> HttpError {
    HttpError(ApiError::new(
        ErrorKind::NotFound,
        format!("no route for {}", uri.path()),
    ))
}

pub async fn method_not_allowed() -> Response {
    let e = ApiError::new(
        ErrorKind::InvalidRequest,
        "method not allowed on this route",
    );
    let mut r = error_response(&e);
    *r.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    r
}
