//! `GET /v1/models` (OpenAI list) and `GET /models/all` (the catalogue with windows).

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use crate::error::HttpError;
use crate::routes::chat::admit;
use crate::state::AppState;

/// The models the caller may use: all of them, or its key's (`[auth] mode = "keys"`).
pub async fn list(
    State(st): State<AppState>,
    headers: HeaderMap,
) -> Result<Json<Value>, HttpError> {
    let key = admit::authenticate(&st, &headers).map_err(|e| HttpError(st.refusals.count(e)))?;
    let allowed = |m: &str| admit::allowed(key.as_deref(), m);
    let data: Vec<Value> = st
        .router
        .models()
        .filter(|r| allowed(&r.model_key))
        .map(|r| {
            json!({
                "id": r.model_key,
                "object": "model",
                "created": 0,
                "owned_by": r.provider_key,
            })
        })
        // Smart-routing virtual models are models a client may ask for too.
        .chain(
            st.config
                .auto
                .keys()
                .map(|name| format!("auto/{name}"))
                .filter(|m| allowed(m))
                .map(|id| {
                    json!({
                        "id": id,
                        "object": "model",
                        "created": 0,
                        "owned_by": "gatehouse",
                    })
                }),
        )
        .collect();
    Ok(Json(json!({ "object": "list", "data": data })))
}

pub async fn all(State(st): State<AppState>) -> Json<Value> {
    let models: Vec<Value> = st
        .config
        .models
        .iter()
        .map(|(key, m)| {
            let provider = st.config.providers.get(&m.provider);
            json!({
                "key": key,
                "provider": m.provider,
                "model": m.model,
                "max_context_size": m.max_context_size,
                "capabilities": m.capabilities,
                "encoding": m.encoding.name(),
                "provider_type": provider.map(|p| p.kind.as_str()),
                "key_configured": provider.is_some_and(|p| !p.key_missing()),
            })
        })
        .collect();
    let auto: Vec<Value> = st
        .config
        .auto
        .iter()
        .map(|(name, a)| json!({"key": format!("auto/{name}"), "candidates": a.candidates}))
        .collect();
    Json(json!({ "models": models, "count": models.len(), "auto": auto }))
}
