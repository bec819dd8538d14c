//! `GET /api/providers`: providers, their models, whether a key is set and where it comes from
//! (never the key). `PUT /api/providers/{name}/key` stores a key sealed under the master key and
//! sends it from the next request on; `DELETE` goes back to the config's.

use axum::Json;
use axum::extract::{Path, State};
use bytes::Bytes;
use gatehouse_config::Secret;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_store::{StoredProviderKey, WriteOp};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::audit::{self, Actor, Change};
use crate::error::{HttpError, bad_request, json_body, store_failed};
use crate::origin::SameOrigin;
use crate::state::AppState;

type ApiResult<T> = Result<T, HttpError>;

/// Where a provider's key comes from: `stored` (set through the API), `env` (`${VAR}` in the
/// config, set), `config` (written in the file), or `None`.
fn key_source(
    st: &AppState,
    key: &str,
    p: &gatehouse_config::ProviderConfig,
) -> Option<&'static str> {
    if st.stored_keys.contains(key) {
        Some("stored")
    } else if p.api_key.is_some() {
        Some(if p.api_key_env.is_some() {
            "env"
        } else {
            "config"
        })
    } else {
        None
    }
}

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
            let source = key_source(&st, key, p);
            json!({
                "key": key,
                "type": p.kind.as_str(),
                "base_url": p.shown_url,
                "served": p.kind.is_served(),
                "demo": st.demo && key == "demo",
                "key_configured": source.is_some() || !p.key_missing(),
                "key_required": p.api_key_env.is_some(),
                "has_key": source.is_some(),
                "key_source": source,
                "key_last4": st.stored_keys.last4(key),
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

fn provider<'a>(st: &'a AppState, name: &str) -> ApiResult<&'a gatehouse_config::ProviderConfig> {
    st.config.providers.get(name).ok_or_else(|| {
        HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("provider `{name}` is not configured"),
        ))
    })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyBody {
    api_key: String,
}

/// The last four characters, so a person can tell keys apart; of a key too short to spare them,
/// nothing.
fn last4(key: &str) -> String {
    let n = key.chars().count();
    if n < 16 {
        return String::new();
    }
    key.chars().skip(n - 4).collect()
}

pub async fn set_key(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Value>> {
    let p = provider(&st, &name)?;
    let b: KeyBody = json_body(&body, "{\"api_key\": …}")?;
    let key = b.api_key.trim();
    if key.is_empty() || key.len() > 4096 || key.chars().any(char::is_control) {
        return Err(bad_request(
            "api_key must be 1 to 4096 characters, without spaces at its ends or control characters",
        ));
    }
    let Some(master) = st.master_key.as_ref() else {
        return Err(bad_request(
            "provider keys are stored sealed under a master key: start Gatehouse with GATEHOUSE_MASTER_KEY (or GATEHOUSE_MASTER_KEY_FILE) set; `gatehouse secrets generate` makes one",
        ));
    };
    let sealed = master
        .seal(&name, key)
        .map_err(|e| HttpError(ApiError::new(ErrorKind::Internal, e.to_string())))?;
    let shown = last4(key);
    let before = key_source(&st, &name, p);
    let entry = audit::entry(
        &actor,
        Change::new("provider.key_set", Some(format!("provider:{name}")))
            .before(json!({"key_source": before}))
            .after(json!({"key_source": "stored", "last4": shown, "master_key": master.id()})),
        "ok",
    );
    st.store
        .apply(&[
            WriteOp::SetProviderKey(Box::new(StoredProviderKey {
                provider: name.clone(),
                sealed,
                last4: shown.clone(),
                updated_at: now_ms(),
            })),
            WriteOp::AppendAudit(Box::new(entry)),
        ])
        .await
        .map_err(store_failed)?;
    apply(&st, &name, Some(key.to_owned()), Some(shown.clone()));
    tracing::info!(provider = %name, "provider key set through the API (stored sealed)");
    Ok(Json(
        json!({"provider": name, "key_source": "stored", "key_last4": shown}),
    ))
}

pub async fn delete_key(
    _: SameOrigin,
    actor: Actor,
    State(st): State<AppState>,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let p = provider(&st, &name)?;
    if !st.stored_keys.contains(&name) {
        return Err(HttpError(ApiError::new(
            ErrorKind::NotFound,
            format!("provider `{name}` has no stored key"),
        )));
    }
    let entry = audit::entry(
        &actor,
        Change::new("provider.key_delete", Some(format!("provider:{name}")))
            .before(json!({"key_source": "stored", "last4": st.stored_keys.last4(&name)})),
        "ok",
    );
    st.store
        .apply(&[
            WriteOp::DeleteProviderKey(name.clone()),
            WriteOp::AppendAudit(Box::new(entry)),
        ])
        .await
        .map_err(store_failed)?;
    apply(&st, &name, None, None);
    Ok(Json(
        json!({"provider": name, "key_source": key_source(&st, &name, p)}),
    ))
}

/// Sends `key` (or, with `None`, the config's own) from the next request on.
pub fn apply(st: &AppState, name: &str, key: Option<String>, last4: Option<String>) {
    let Some(p) = st.config.providers.get(name) else {
        return;
    };
    let secret = key.map(Secret::new);
    st.upstream.set_provider_key(name, p, secret.as_ref());
    st.router.set_keyed(name, secret.is_some());
    st.stored_keys.set(name, last4);
}
