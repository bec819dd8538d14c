//! Which browser pages may use the gateway: its own pages, and `dashboard.allowed_origins`.
//!
//! Any local web page can make a browser send requests to `127.0.0.1:8000`; without this rule a
//! site could read the event stream or spend the user's tokens. Requests without an `Origin`
//! header (SDKs, curl, IDE plugins) are not browsers' cross-site requests and pass. A page counts
//! as the gateway's own only when its origin matches the `Host` header *and* that host is one the
//! gateway answers to (`localhost`, an IP literal, or `server.allowed_hosts`; see `guard.rs`): a
//! DNS-rebinding name pointed at 127.0.0.1 is not.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use gatehouse_core::{ApiError, ErrorKind};

use crate::error::HttpError;
use crate::guard::Policy;
use crate::state::AppState;

/// Whether a request carrying `origin` may proceed.
pub fn allowed(origin: &str, host: Option<&str>, extra: &[String], policy: &Policy) -> bool {
    if extra.iter().any(|o| o.eq_ignore_ascii_case(origin)) {
        return true;
    }
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    match (authority, host) {
        (Some(a), Some(h)) => a.eq_ignore_ascii_case(h) && policy.host_allowed(h),
        _ => false,
    }
}

pub fn check(st: &AppState, headers: &HeaderMap) -> Result<(), HttpError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or("");
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    if allowed(
        origin,
        host,
        &st.config.dashboard.allowed_origins,
        &st.guard,
    ) {
        Ok(())
    } else {
        Err(HttpError(ApiError::new(
            ErrorKind::OriginNotAllowed,
            format!(
                "requests from the web page at `{origin}` are not allowed; if it is yours, add it to dashboard.allowed_origins"
            ),
        )))
    }
}

/// Taken by every state-changing handler: refuses requests from foreign pages. Reads need no
/// guard: the browser's same-origin policy keeps their answers from foreign pages (CORS headers
/// go only to listed origins). An extractor rather than a middleware layer, so the proxy path pays one
/// header lookup and no boxed future.
#[derive(Debug, Clone, Copy)]
pub struct SameOrigin;

impl FromRequestParts<AppState> for SameOrigin {
    type Rejection = HttpError;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, HttpError> {
        check(st, &parts.headers).map(|()| Self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_pages_and_listed_origins_only() {
        let none: Vec<String> = Vec::new();
        let p = Policy::new(&[], &[]);
        let allowed = |o: &str, h: Option<&str>, extra: &[String]| allowed(o, h, extra, &p);
        assert!(allowed(
            "http://127.0.0.1:8000",
            Some("127.0.0.1:8000"),
            &none
        ));
        assert!(allowed(
            "http://localhost:8000",
            Some("localhost:8000"),
            &none
        ));
        assert!(allowed("http://[::1]:8000", Some("[::1]:8000"), &none));
        assert!(!allowed(
            "http://evil.example",
            Some("127.0.0.1:8000"),
            &none
        ));
        // DNS rebinding: the page's name resolves to us, but it is not a local name.
        assert!(!allowed(
            "http://evil.example:8000",
            Some("evil.example:8000"),
            &none
        ));
        assert!(!allowed("null", Some("127.0.0.1:8000"), &none));
        let extra = vec!["http://localhost:5173".to_owned()];
        assert!(allowed(
            "http://localhost:5173",
            Some("127.0.0.1:8000"),
            &extra
        ));
    }
}
