//! Phase 1, ingress decode: what is read of a request before any work is done on it. Loops
//! are refused, the body must be within the limit, and a session header must be well formed.

use axum::extract::rejection::BytesRejection;
use axum::http::HeaderMap;
use bytes::Bytes;
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_proxy::HOP_HEADER;

use super::SESSION_HEADER;
use crate::error::body_rejection;
use crate::state::AppState;

/// Claude Code's id for the conversation, sent with every request of it.
const CLAUDE_CODE_SESSION: &str = "x-claude-code-session-id";

/// A request the gateway will work on.
pub(super) struct Decoded {
    pub body: Bytes,
    /// The session the client named (`X-Gatehouse-Session`).
    pub explicit_session: Option<SessionId>,
    /// The conversation the client names itself (Claude Code's session id), as a session id.
    pub conversation: Option<SessionId>,
}

pub(super) fn decode(
    st: &AppState,
    headers: &HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Decoded, ApiError> {
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
    let explicit_session = match headers.get(SESSION_HEADER) {
        None => None,
        Some(v) => Some(v.to_str().ok().and_then(SessionId::parse_client).ok_or_else(|| {
            ApiError::new(
                ErrorKind::InvalidRequest,
                "X-Gatehouse-Session must be 1 to 128 characters of letters, digits, `.`, `_`, `:` or `-`",
            )
            .with_param("X-Gatehouse-Session")
        })?),
    };
    // Not ours to validate: an id we cannot use is ignored, never refused.
    let conversation = headers
        .get(CLAUDE_CODE_SESSION)
        .and_then(|v| v.to_str().ok())
        .and_then(|id| SessionId::parse_client(&format!("claude-code:{id}")));
    Ok(Decoded {
        body,
        explicit_session,
        conversation,
    })
}
