//! The route table. One file per route group under `routes/`.

mod audit;
mod auth;
pub(crate) mod chat;
mod compaction;
mod export;
mod gemini;
mod health;
mod keys;
mod mask;
mod memory;
mod messages;
mod models;
mod privacy;
mod providers;
mod ratelimit;
mod responses;
pub(crate) mod sessions;
mod teams;
pub mod users;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::state::AppState;
use crate::{dashboard, error, ws};

pub(crate) use providers::apply as apply_provider_key;

pub fn router(state: AppState) -> Router {
    let limit = state.config.server.max_body_bytes;
    // The proxy routes: a virtual key (`[auth] mode = "keys"`) is their credential, checked in
    // each handler's admit phase; the liveness probes are open.
    let proxy = Router::new()
        .route("/v1/chat/completions", post(chat::completions))
        .route("/chat/completions", post(chat::completions))
        .route("/v1/messages", post(messages::messages))
        .route("/v1/messages/count_tokens", post(messages::count_tokens))
        .route("/v1beta/models/{*rest}", post(gemini::models))
        .route("/v1/responses", post(responses::create))
        .route("/responses", post(responses::create))
        .route(
            "/v1/responses/{id}",
            get(responses::get).delete(responses::delete),
        )
        .route(
            "/v1/responses/{id}/input_items",
            get(responses::input_items),
        )
        .route("/v1/models", get(models::list))
        .route("/models", get(models::list))
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready));
    // Layers run outside in: the login gate, then the per-endpoint limits (which count a
    // logged-in user as themself).
    let management = management(&state)
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::limits::endpoint,
        ))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::login::require,
        ));
    // Outside the login gate: a scraper may use its own token instead (`metrics.rs`).
    let metrics = Router::new()
        .route("/metrics", get(crate::metrics::render))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::gate,
        ));
    let app =
        proxy
            .merge(management)
            .merge(metrics)
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                crate::metrics::track,
            ));
    let guard = crate::guard::GuardLayer::shared(state.guard.clone());
    app.fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .layer(DefaultBodyLimit::max(limit))
        .layer(guard)
        .with_state(state)
}

/// The management API, the dashboard and `/ws`: behind the admin login (`login.rs`) when
/// `[auth] mode = "keys"`.
fn management(state: &AppState) -> Router<AppState> {
    let mut app = Router::new()
        .route("/models/all", get(models::all))
        .route("/api/models", get(models::all))
        .route("/health", get(health::health))
        .route("/api/auth/login", post(auth::login))
        .route("/api/auth/refresh", post(auth::refresh))
        .route("/api/auth/logout", post(auth::logout))
        .route("/api/auth/me", get(auth::me))
        .route("/api/auth/login-history", get(auth::history))
        .route("/api/users", get(users::list).post(users::create))
        .route(
            "/api/users/{id}",
            axum::routing::patch(users::update).delete(users::delete),
        )
        .route("/api/users/{id}/export", get(privacy::export))
        .route("/api/providers", get(providers::list))
        .route(
            "/api/providers/{name}/key",
            axum::routing::put(providers::set_key).delete(providers::delete_key),
        )
        .route("/api/keys", get(keys::list).post(keys::create))
        .route(
            "/api/keys/{id}",
            get(keys::show).patch(keys::update).delete(keys::delete),
        )
        .route("/api/keys/{id}/block", post(keys::block))
        .route("/api/keys/{id}/unblock", post(keys::unblock))
        .route("/api/keys/{id}/rotate", post(keys::rotate))
        .route("/api/keys/{id}/spend", get(keys::spend))
        .route("/api/teams", get(teams::list).post(teams::create))
        .route(
            "/api/teams/{id}",
            get(teams::show).patch(teams::update).delete(teams::delete),
        )
        .route("/api/teams/{id}/spend", get(teams::spend))
        .route("/api/audit", get(audit::list))
        .route("/api/rate-limit", get(ratelimit::status))
        .route("/api/sessions", get(sessions::list).post(sessions::create))
        .route("/api/sessions/active", get(sessions::active))
        .route(
            "/api/sessions/{id}",
            get(sessions::get)
                .patch(sessions::rename)
                .delete(sessions::delete),
        )
        .route("/api/sessions/{id}/activate", post(sessions::activate))
        .route("/api/sessions/{id}/requests", get(sessions::requests))
        .route("/api/export/csv", get(export::csv))
        .route("/api/export/json", get(export::json))
        .route("/api/mask", get(mask::list))
        .route("/api/mask/{reference}", get(mask::get))
        .route("/api/sanitizer/stats", get(mask::stats))
        .route("/api/sanitizer/toggle", post(mask::toggle))
        .route("/api/memory/store", post(memory::store))
        .route("/api/memory/similar", post(memory::similar))
        .route("/api/memory/frequent", get(memory::frequent))
        .route("/api/memory/promote", post(memory::promote))
        .route("/api/memory/cleanup", post(memory::cleanup))
        .route("/api/memory/stats", get(memory::stats));
    // The seed's compression routes are the same feature: served under both prefixes.
    for prefix in ["/api/compaction", "/api/compress"] {
        app = app
            .route(&format!("{prefix}/stats"), get(compaction::global_stats))
            .route(&format!("{prefix}/{{id}}"), post(compaction::compact))
            .route(
                &format!("{prefix}/{{id}}/preview"),
                get(compaction::preview),
            )
            .route(
                &format!("{prefix}/{{id}}/simulate"),
                post(compaction::simulate),
            )
            .route(
                &format!("{prefix}/{{id}}/stats"),
                get(compaction::session_stats),
            )
            .route(
                &format!("{prefix}/{{id}}/history"),
                get(compaction::history),
            )
            .route(
                &format!("{prefix}/{{id}}/auto-status"),
                get(compaction::auto),
            )
            .route(
                &format!("{prefix}/{{id}}/toggle-auto"),
                post(compaction::toggle_auto),
            )
            .route(
                &format!("{prefix}/{{id}}/reserved"),
                post(compaction::reserved),
            );
    }
    if state.config.dashboard.enabled {
        app = app
            .route("/", get(dashboard::index))
            .route("/assets/{name}", get(dashboard::asset))
            .route("/ws", get(ws::upgrade));
    }
    app
}
