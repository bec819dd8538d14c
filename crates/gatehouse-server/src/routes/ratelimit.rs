//! `GET /api/rate-limit`: each provider's upstream requests-per-minute limit and how full it is.

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use crate::state::AppState;

pub async fn status(State(st): State<AppState>) -> Json<Value> {
    Json(json!({
        "window_secs": 60,
        "warning_pct": gatehouse_proxy::ratelimit::WARNING_PCT,
        "critical_pct": gatehouse_proxy::ratelimit::CRITICAL_PCT,
        "providers": st.upstream.rate_limits.views(std::time::Instant::now()),
    }))
}
