//! `GET /api/providers`: providers, their models and whether a key is set. Never the key.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn list(State(st): State<AppState>) -> Json<Value> {
    let now = std::time::Instant::now();
    let providers: Vec<Value> = st
        .config
        .providers
        .iter()
        .map(|(key, p)| {
            let models: Vec<&String> = st
                .config
                .models
                .iter()
                .filter(|(_, m)| &m.provider == key)
                .map(|(k, _)| k)
                .collect();
            json!({
                "key": key,
                "type": p.kind.as_str(),
                "base_url": p.shown_url,
                "served": p.kind.is_served(),
                "demo": st.demo && key == "demo",
                "key_configured": !p.key_missing(),
                "key_required": p.api_key_env.is_some(),
                "has_key": p.api_key.is_some(),
                "key_env": p.api_key_env,
                "timeouts_s": {
                    "connect": p.timeouts.connect.as_secs_f64(),
                    "first_byte": p.timeouts.first_byte.as_secs_f64(),
                    "idle": p.timeouts.idle.as_secs_f64(),
                    "total": p.timeouts.total.as_secs_f64(),
                },
                "models": models,
                "circuit_breaker": st.upstream.breakers.view(key, now),
                "rpm": p.rpm,
            })
        })
        .collect();
    Json(json!({ "providers": providers }))
}
