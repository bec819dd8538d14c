//! Health: `/health` (details), `/health/live` (the process answers), `/health/ready` (the
//! database answers and accepts writes, and the gateway is not shutting down).

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::state::AppState;

pub async fn health(State(st): State<AppState>) -> Response {
    let stats = st.writer.stats();
    let db_ok = ping(&st).await && stats.writable();
    let providers = &st.config.providers;
    // The probe also tells a degraded instance that Redis is back.
    if let Some(sh) = &st.shared {
        let _ = sh.ping().await;
    }
    let shared_ok = st.shared.as_ref().is_none_or(|sh| sh.is_up());
    let shared = shared_view(&st).await;
    let status = if db_ok && shared_ok { "ok" } else { "degraded" };
    let body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": st.started.elapsed().as_secs(),
        "listen": st.listen.to_string(),
        "shutting_down": st.shutting_down.load(Ordering::Relaxed),
        "in_flight": st.in_flight.load(Ordering::Relaxed),
        "connections": st.conns.view(&crate::listen::Bounds::of(&st.config.server)),
        "streams": {
            "open": st.streams_open.load(Ordering::Relaxed),
            "max": st.config.server.max_streams,
        },
        "refused": st.refusals.view(),
        "retention": st.retention.lock().ok().and_then(|r| *r).map(|(at, p)| json!({
            "last_run_at": at,
            "pruned": p,
        })),
        "refused_host": st.guard.refused.load(Ordering::Relaxed),
        "database": {
            "ok": db_ok,
            "engine": st.store.engine(),
            "writable": stats.writable(),
            "last_error": stats.last_error(),
        },
        "accounting": {
            "queued": st.writer.queued(),
            "written": stats.written.load(Ordering::Relaxed),
            "failed_batches": stats.failed_batches.load(Ordering::Relaxed),
            "dropped": stats.dropped.load(Ordering::Relaxed),
            "lost": stats.lost.load(Ordering::Relaxed),
            "rejected": stats.rejected.load(Ordering::Relaxed),
        },
        "shared": shared,
        "sessions": st.sessions.count(),
        "providers": {
            "configured": providers.len(),
            "with_key": providers.values().filter(|p| !p.key_missing()).count(),
            "circuit_breakers_open": providers
                .keys()
                .filter_map(|k| {
                    let v = st.upstream.breakers.view(k, std::time::Instant::now());
                    (v.state != gatehouse_proxy::breaker::BreakerState::Closed).then(|| json!({"provider": k, "breaker": v}))
                })
                .collect::<Vec<_>>(),
        },
        "models": st.config.models.len(),
        "events": st.bus.stats(),
        "websocket": {
            "clients": st.ws.clients.load(Ordering::Relaxed),
            "connected_total": st.ws.connected_total.load(Ordering::Relaxed),
            "resyncs": st.ws.resyncs.load(Ordering::Relaxed),
        },
        "log_watcher": {
            "enabled": st.log_watch.get().is_some(),
            "paths": st.log_watch.get().and_then(|s| s.lock().ok().map(|v| v.clone())),
        },
        "demo": st.demo,
    });
    let code = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// Where the live state other instances must see lives: Redis, or this instance alone.
async fn shared_view(st: &AppState) -> serde_json::Value {
    let Some(sh) = &st.shared else {
        return json!({
            "engine": null,
            "state": "standalone",
            "note": "limits, budgets and key changes are this instance's own ([redis] url is empty)",
        });
    };
    json!({
        "engine": "redis",
        "state": sh.state(),
        "instance": sh.instance(),
        "on_error": match sh.on_error {
            gatehouse_config::OnError::Open => "open",
            gatehouse_config::OnError::Closed => "closed",
        },
        "errors": sh.errors.load(Ordering::Relaxed),
        "events": st.redis_bus.as_ref().map(|b| json!({
            "listeners_elsewhere": b.has_remote_listeners(),
            "relayed": b.relayed.load(Ordering::Relaxed),
            "dropped": b.dropped.load(Ordering::Relaxed),
        })),
    })
}

/// The database answers within a second: a probe must not hang on a server that is gone.
async fn ping(st: &AppState) -> bool {
    matches!(
        tokio::time::timeout(std::time::Duration::from_secs(1), st.store.ping()).await,
        Ok(Ok(()))
    )
}

pub async fn live() -> Json<serde_json::Value> {
    Json(json!({ "status": "alive" }))
}

/// Ready: the gateway takes requests. While the database is away it still does (rows wait in
/// the writer's bounded queue and are all written once it is back), so it answers 200 with
/// `degraded`: several instances sharing one database must not all leave the load balancer at
/// once. Not ready (503) when shutting down, or when the queue is nearly full.
pub async fn ready(State(st): State<AppState>) -> Response {
    let shutting_down = st.shutting_down.load(Ordering::Relaxed);
    let writable = st.writer.stats().writable();
    let db_ok = writable && ping(&st).await;
    let (queued, capacity) = (st.writer.queued(), st.writer.capacity());
    let room = queued.saturating_mul(10) < capacity.saturating_mul(9);
    if shutting_down || !(db_ok || room) {
        let reason = if shutting_down {
            "shutting down".to_owned()
        } else {
            format!(
                "the database is away and the accounting queue is nearly full ({queued} of {capacity} rows)"
            )
        };
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": reason })),
        )
            .into_response();
    }
    if db_ok {
        return (StatusCode::OK, Json(json!({ "status": "ready" }))).into_response();
    }
    let why = if writable {
        "the database does not answer"
    } else {
        "the database refuses writes"
    };
    (
        StatusCode::OK,
        Json(json!({
            "status": "degraded",
            "reason": format!("{why}; requests are served and their rows wait in the queue ({queued} of {capacity}), written once it is back"),
        })),
    )
        .into_response()
}
