//! Phase 4, session: the conversation a request belongs to. The rules are `Sessions`' (in
//! `gatehouse-services`); this picks which of them applies.

use gatehouse_core::SessionId;
use gatehouse_services::sessions::Resolved;

use super::Prepared;
use crate::state::AppState;

/// `explicit`: the session the client named (`X-Gatehouse-Session`); `conversation`: the
/// conversation its client names (Claude Code's id, a Responses chain).
pub(super) async fn resolve(
    st: &AppState,
    explicit: Option<SessionId>,
    conversation: Option<SessionId>,
    p: &Prepared,
) -> Resolved {
    let model = p.session_model.as_deref().unwrap_or(&p.route.model_key);
    let (provider, name) = (&p.route.provider_key, p.session_name.as_deref());
    // Session-less: a passthrough request goes in its target's own session
    // (`passthrough:<host>`), never in the user's active one.
    let explicit = explicit.or_else(|| {
        p.route
            .is_passthrough()
            .then(|| SessionId::parse_client(provider))
            .flatten()
    });
    match (explicit, conversation) {
        (Some(id), _) => st.sessions.resolve(Some(id), model, provider, name).await,
        (None, Some(c)) => {
            st.sessions
                .resolve_conversation(c, p.shape.aside, model, provider, name)
                .await
        }
        (None, None) => {
            st.sessions
                .resolve_implicit(p.shape, model, provider, name)
                .await
        }
    }
}
