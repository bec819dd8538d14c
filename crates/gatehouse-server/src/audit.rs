//! The audit trail: every state change made through the management API appends one row (who,
//! from where, what, on what, before and after, the outcome), written through the writer and
//! hash-chained by the store. Nothing here reads the trail back but `GET /api/audit`.

use axum::extract::FromRequestParts;
use axum::http::header;
use axum::http::request::Parts;
use gatehouse_core::record::AuditEntry;
use gatehouse_core::time::now_ms;
use gatehouse_store::WriteOp;
use serde_json::Value;

use crate::state::AppState;

/// Who made a management request: the logged-in user (`user:<name>`) with `mode = "keys"`;
/// with `mode = "none"` the local administrator (`admin@loopback`, or with
/// `--unsafe-allow-remote` whoever reached the API); with their address and user agent.
#[derive(Debug, Clone)]
pub struct Actor {
    pub name: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// The request came over HTTPS (here, or through a trusted proxy).
    pub https: bool,
}

impl Actor {
    /// The gateway itself (a soft budget crossed, a retention run).
    pub fn system() -> Self {
        Self {
            name: "system".to_owned(),
            ip: None,
            user_agent: None,
            https: false,
        }
    }

    /// The command line: `cli:<login>`, from `$USER`.
    pub fn cli() -> Self {
        let login = std::env::var("USER").unwrap_or_else(|_| "unknown".to_owned());
        Self {
            name: format!("cli:{login}"),
            ip: None,
            user_agent: Some(format!("gatehouse-cli/{}", env!("CARGO_PKG_VERSION"))),
            https: false,
        }
    }
}

impl FromRequestParts<AppState> for Actor {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, st: &AppState) -> Result<Self, Self::Rejection> {
        let ip = crate::client::ip(&st.guard.trusted_proxies, &parts.extensions, &parts.headers);
        let user_agent = parts
            .headers
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.chars().take(300).collect());
        // Logged in (`[auth] mode = "keys"`): the user; otherwise whoever may reach the API
        // unauthenticated, the local administrator.
        let name = match parts
            .extensions
            .get::<std::sync::Arc<crate::login::Principal>>()
        {
            Some(p) => format!("user:{}", p.username),
            None => format!("admin@{ip}"),
        };
        let https = crate::client::https(
            &st.guard.trusted_proxies,
            st.config.server.tls.is_some(),
            &parts.extensions,
            &parts.headers,
        );
        Ok(Self {
            name,
            ip: Some(ip),
            user_agent,
            https,
        })
    }
}

/// One change, on its way to the trail.
pub struct Change<'a> {
    pub action: &'a str,
    pub target: Option<String>,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl<'a> Change<'a> {
    pub fn new(action: &'a str, target: impl Into<Option<String>>) -> Self {
        Self {
            action,
            target: target.into(),
            before: None,
            after: None,
        }
    }

    pub fn before(mut self, v: Value) -> Self {
        self.before = Some(v);
        self
    }

    pub fn after(mut self, v: Value) -> Self {
        self.after = Some(v);
        self
    }
}

/// Appends `change` with `outcome` (`ok`, or why it was refused).
pub fn record(st: &AppState, actor: &Actor, change: Change<'_>, outcome: &str) {
    let entry = entry(actor, change, outcome);
    st.writer.record_now(WriteOp::AppendAudit(Box::new(entry)));
}

/// The entry for `change`, for writers other than the gateway's (the CLI).
pub fn entry(actor: &Actor, change: Change<'_>, outcome: &str) -> AuditEntry {
    AuditEntry {
        seq: 0,
        id: uuid::Uuid::now_v7().to_string(),
        at: now_ms(),
        actor: actor.name.clone(),
        ip: actor.ip.clone(),
        user_agent: actor.user_agent.clone(),
        action: change.action.to_owned(),
        target: change.target,
        before: change.before,
        after: change.after,
        outcome: outcome.to_owned(),
        prev_hash: String::new(),
        hash: String::new(),
        erased: false,
    }
}
