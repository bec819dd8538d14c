//! The per-endpoint limits of the management API (`[rate_limits.endpoints]`), as a route layer
//! inside the login gate, so a logged-in user is counted as themself and anyone else by address.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::endpoints::Verdict;

use crate::error::HttpError;
use crate::login::Principal;
use crate::state::AppState;

fn set_headers(h: &mut HeaderMap, v: &Verdict) {
    // A route with a limiter of its own (login's per minute) shows whichever leaves fewer.
    let theirs = h
        .get("x-ratelimit-remaining")
        .and_then(|r| r.to_str().ok())
        .and_then(|r| r.parse::<u32>().ok());
    if theirs.is_some_and(|r| r <= v.remaining) {
        return;
    }
    h.insert("x-ratelimit-limit", HeaderValue::from(v.limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(v.remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(v.reset_secs));
}

pub async fn endpoint(State(st): State<AppState>, req: Request, next: Next) -> Response {
    let subject = match req.extensions().get::<Arc<Principal>>() {
        Some(p) => format!("user:{}", p.user_id),
        None => crate::client::ip(&st.guard.trusted_proxies, req.extensions(), req.headers()),
    };
    let Some(v) = st
        .endpoint_limits
        .check(req.uri().path(), &subject, now_ms())
    else {
        return next.run(req).await;
    };
    if !v.allowed {
        let e = ApiError::new(
            ErrorKind::RateLimitExceeded,
            format!(
                "too many requests to {}: {} per window; try again in {} s",
                req.uri().path(),
                v.limit,
                v.reset_secs
            ),
        )
        .with_retry_after(v.reset_secs);
        let mut r = HttpError(e).into_response();
        set_headers(r.headers_mut(), &v);
        return r;
    }
    let mut r = next.run(req).await;
    set_headers(r.headers_mut(), &v);
    r
}
