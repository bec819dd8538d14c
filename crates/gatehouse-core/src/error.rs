//! The one table of errors a client can see.
//!
//! Each [`ErrorKind`] has a stable snake_case `code`, an OpenAI-compatible `type`, an HTTP status,
//! the side at fault and whether a retry may help. The HTTP layer turns an [`ApiError`] into a
//! response in exactly one place; everything below it only builds errors.

use serde_json::json;

/// Who caused a failure: decides logging level and whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Client,
    Upstream,
    Gateway,
}

/// Every failure class the gateway reports, with its fixed wire identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The body is not JSON, or a field has the wrong type.
    InvalidJson,
    /// The body is JSON but a field is missing or out of range.
    InvalidRequest,
    /// The requested model is not configured.
    ModelNotFound,
    /// A resource of the management API does not exist.
    NotFound,
    /// The request holds a secret and `redaction.mode` is `block`.
    SecretDetected,
    /// A browser page from another origin tried to use the dashboard's API or event stream.
    OriginNotAllowed,
    /// The `Host` header names a host the gateway does not answer to (DNS rebinding).
    HostNotAllowed,
    /// `X-Target-Base-URL` names a host `[passthrough] allowed_hosts` does not list, or one that
    /// resolves to a private address.
    PassthroughNotAllowed,
    /// The request body is larger than `server.max_body_bytes`.
    BodyTooLarge,
    /// The prompt has more tokens than the model's window.
    ContextLengthExceeded,
    /// The provider has no API key configured.
    ProviderKeyMissing,
    /// The provider's type is known but not served yet.
    ProviderUnsupported,
    /// The request already went through this gateway, or targets it.
    LoopDetected,
    /// Upstream could not be reached (DNS, connect, TLS, reset before a response).
    UpstreamUnreachable,
    /// Upstream did not answer, or stalled, within its timeout.
    UpstreamTimeout,
    /// Upstream answered with something that is not a valid response.
    UpstreamBadResponse,
    /// Upstream answered with an error status; that status is passed through.
    UpstreamError,
    /// The provider's circuit breaker is open after repeated failures: nothing was sent.
    CircuitOpen,
    /// The gateway is at one of its bounds (connections, streams); try again shortly.
    Overloaded,
    /// `[redis] on_error = "closed"` and Redis, which holds the shared limits, is unreachable.
    LimiterUnavailable,
    /// The gateway is shutting down and takes no new work.
    ShuttingDown,
    /// A bug or an unexpected failure inside the gateway.
    Internal,
    /// `[auth] mode = "keys"` and the request has no virtual key, or one the gateway does not know.
    InvalidApiKey,
    /// The virtual key is past its `expires_at` (or its rotation grace).
    KeyExpired,
    /// The virtual key is blocked.
    KeyBlocked,
    /// The virtual key may not use this model.
    ModelNotAllowed,
    /// The virtual key is over its `rpm` or `tpm`.
    RateLimitExceeded,
    /// The virtual key has `max_parallel_requests` in flight already.
    TooManyConcurrentRequests,
    /// The virtual key's budget would be exceeded by this request.
    BudgetExceeded,
    /// The management API needs an admin login, and the request has none that holds (missing,
    /// expired, revoked, or signed by another gateway).
    LoginRequired,
    /// Wrong user name or password.
    InvalidCredentials,
    /// Too many wrong passwords: the account refuses logins for a while.
    AccountLocked,
    /// The logged-in user's role does not allow this.
    Forbidden,
}

impl ErrorKind {
    /// The stable machine-readable code.
    pub fn code(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::OriginNotAllowed => "origin_not_allowed",
            Self::HostNotAllowed => "host_not_allowed",
            Self::PassthroughNotAllowed => "passthrough_not_allowed",
            Self::SecretDetected => "secret_detected",
            Self::BodyTooLarge => "request_too_large",
            Self::ContextLengthExceeded => "context_length_exceeded",
            Self::ProviderKeyMissing => "provider_key_missing",
            Self::ProviderUnsupported => "provider_unsupported",
            Self::LoopDetected => "loop_detected",
            Self::UpstreamUnreachable => "upstream_unreachable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBadResponse => "upstream_bad_response",
            Self::UpstreamError => "upstream_error",
            Self::CircuitOpen => "circuit_open",
            Self::Overloaded => "overloaded",
            Self::LimiterUnavailable => "limiter_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal_error",
            Self::InvalidApiKey => "invalid_api_key",
            Self::KeyExpired => "key_expired",
            Self::KeyBlocked => "key_blocked",
            Self::ModelNotAllowed => "model_not_allowed",
            Self::RateLimitExceeded => "rate_limit_exceeded",
            Self::TooManyConcurrentRequests => "too_many_concurrent_requests",
            Self::BudgetExceeded => "budget_exceeded",
            Self::LoginRequired => "login_required",
            Self::InvalidCredentials => "invalid_credentials",
            Self::AccountLocked => "account_locked",
            Self::Forbidden => "forbidden",
        }
    }

    /// The OpenAI `error.type` this kind maps to, so SDKs classify it correctly.
    pub fn error_type(self) -> &'static str {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::ModelNotFound
            | Self::NotFound
            | Self::BodyTooLarge
            | Self::ContextLengthExceeded
            | Self::SecretDetected
            | Self::LoopDetected => "invalid_request_error",
            Self::ProviderKeyMissing
            | Self::InvalidApiKey
            | Self::KeyExpired
            | Self::KeyBlocked
            | Self::LoginRequired
            | Self::InvalidCredentials => "authentication_error",
            Self::OriginNotAllowed
            | Self::HostNotAllowed
            | Self::PassthroughNotAllowed
            | Self::ModelNotAllowed
            | Self::AccountLocked
            | Self::Forbidden => "permission_error",
            Self::RateLimitExceeded | Self::TooManyConcurrentRequests | Self::BudgetExceeded => {
                "rate_limit_error"
            }
            Self::ProviderUnsupported => "not_implemented_error",
            Self::UpstreamTimeout => "timeout_error",
            Self::UpstreamUnreachable
            | Self::UpstreamBadResponse
            | Self::UpstreamError
            | Self::CircuitOpen => "upstream_error",
            Self::ShuttingDown | Self::Overloaded | Self::LimiterUnavailable => {
                "service_unavailable_error"
            }
            Self::Internal => "api_error",
        }
    }

    /// The HTTP status used unless an upstream status is being passed through.
    pub fn status(self) -> u16 {
        match self {
            Self::InvalidJson | Self::InvalidRequest | Self::SecretDetected => 400,
            // 401 rather than 5xx: SDKs do not retry it, and the message says what to set.
            Self::ProviderKeyMissing
            | Self::InvalidApiKey
            | Self::KeyExpired
            | Self::KeyBlocked
            | Self::LoginRequired
            | Self::InvalidCredentials => 401,
            Self::OriginNotAllowed
            | Self::HostNotAllowed
            | Self::PassthroughNotAllowed
            | Self::ModelNotAllowed
            | Self::AccountLocked
            | Self::Forbidden => 403,
            Self::RateLimitExceeded | Self::TooManyConcurrentRequests | Self::BudgetExceeded => 429,
            Self::ModelNotFound | Self::NotFound => 404,
            Self::BodyTooLarge | Self::ContextLengthExceeded => 413,
            Self::Internal => 500,
            Self::ProviderUnsupported => 501,
            Self::UpstreamUnreachable | Self::UpstreamBadResponse | Self::UpstreamError => 502,
            Self::ShuttingDown
            | Self::CircuitOpen
            | Self::Overloaded
            | Self::LimiterUnavailable => 503,
            Self::UpstreamTimeout => 504,
            Self::LoopDetected => 508,
        }
    }

    pub fn fault(self) -> Fault {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::ModelNotFound
            | Self::NotFound
            | Self::BodyTooLarge
            | Self::ContextLengthExceeded
            | Self::OriginNotAllowed
            | Self::HostNotAllowed
            | Self::PassthroughNotAllowed
            | Self::SecretDetected
            | Self::LoopDetected
            | Self::InvalidApiKey
            | Self::KeyExpired
            | Self::KeyBlocked
            | Self::ModelNotAllowed
            | Self::RateLimitExceeded
            | Self::TooManyConcurrentRequests
            | Self::BudgetExceeded
            | Self::LoginRequired
            | Self::InvalidCredentials
            | Self::AccountLocked
            | Self::Forbidden => Fault::Client,
            Self::UpstreamUnreachable
            | Self::UpstreamTimeout
            | Self::UpstreamBadResponse
            | Self::UpstreamError
            | Self::CircuitOpen => Fault::Upstream,
            Self::ProviderKeyMissing
            | Self::ProviderUnsupported
            | Self::ShuttingDown
            | Self::Overloaded
            | Self::LimiterUnavailable
            | Self::Internal => Fault::Gateway,
        }
    }

    /// Whether sending the same request again (here or by the client) may succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable
                | Self::UpstreamTimeout
                | Self::ShuttingDown
                | Self::CircuitOpen
                | Self::Overloaded
                | Self::LimiterUnavailable
                | Self::RateLimitExceeded
                | Self::TooManyConcurrentRequests
        )
    }
}

/// An error on its way to a client: a kind, a message that says what to do, and the request field
/// it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub kind: ErrorKind,
    pub message: String,
    pub param: Option<String>,
    /// Set when upstream answered with an error status that is passed through.
    pub upstream_status: Option<u16>,
    /// Seconds a client should wait before trying again (`Retry-After`).
    pub retry_after_secs: Option<u64>,
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            param: None,
            upstream_status: None,
            retry_after_secs: None,
        }
    }

    pub fn with_retry_after(mut self, secs: u64) -> Self {
        self.retry_after_secs = Some(secs);
        self
    }

    pub fn with_param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// An upstream error status passed through to the client as is.
    pub fn upstream_status(status: u16, message: impl Into<String>) -> Self {
        Self {
            kind: ErrorKind::UpstreamError,
            message: message.into(),
            param: None,
            upstream_status: Some(status),
            retry_after_secs: None,
        }
    }

    pub fn status(&self) -> u16 {
        self.upstream_status.unwrap_or_else(|| self.kind.status())
    }

    /// The OpenAI-style body: `{"error":{"message","type","code","param"}}`.
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind.error_type(),
                "code": self.kind.code(),
                "param": self.param,
            }
        })
    }

    pub fn to_json_bytes(&self) -> Vec<u8> {
        // Serialising a `Value` built from strings cannot fail; fall back to a fixed body anyway.
        serde_json::to_vec(&self.to_json()).unwrap_or_else(|_| {
            br#"{"error":{"message":"internal error","type":"api_error","code":"internal_error","param":null}}"#.to_vec()
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} ({}): {}",
            self.kind.code(),
            self.status(),
            self.message
        )
    }
}

impl std::error::Error for ApiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_openai_shaped() {
        let e = ApiError::new(ErrorKind::ModelNotFound, "no such model").with_param("model");
        let v = e.to_json();
        assert_eq!(v["error"]["code"], "model_not_found");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["param"], "model");
        assert_eq!(e.status(), 404);
    }

    #[test]
    fn upstream_status_is_passed_through() {
        let e = ApiError::upstream_status(429, "slow down");
        assert_eq!(e.status(), 429);
        assert_eq!(e.kind.fault(), Fault::Upstream);
    }
}
