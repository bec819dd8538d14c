//! Phase 3, admit: whether the gateway takes this request now.
//!
//! Two steps. [`authenticate`] runs first, before the body is looked at: with
//! `[auth] mode = "keys"` the request must carry a virtual key the registry knows, is not
//! blocked or expired (401 otherwise, and no row: an anonymous caller cannot write into
//! anyone's session). [`admit`] runs once the request is prepared (its model and prompt
//! known): the key may use the model (403), its `max_parallel_requests`, `rpm`, `tpm` and
//! budget hold (429 with `Retry-After`), the worst case is reserved (settled when the row is
//! written, `record.rs`), and streams take their place under `server.max_streams` (503).
//! Nothing here touches the database; with `[redis]`, the limits are checked and taken in one
//! Redis round trip (`gatehouse_services::shared`).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use gatehouse_config::AuthMode;
use gatehouse_core::{ApiError, ErrorKind};
use gatehouse_services::keys::{KeyEntry, RateInfo, Reservation};
use gatehouse_services::shared::Ticket;

use super::Prepared;
use crate::state::AppState;

/// What admission holds for the request's lifetime: its place among the open streams, and its
/// reservation under its key.
pub(crate) struct Admission {
    _stream: Option<StreamSlot>,
    pub(super) key: Option<Reservation>,
    /// Its place under the limits Redis counts for every instance, when it was admitted there.
    pub(super) ticket: Option<Ticket>,
    pub(super) rate: RateInfo,
}

impl Admission {
    /// Nothing held (the gateway's own calls).
    pub(crate) fn none() -> Self {
        Self {
            _stream: None,
            key: None,
            ticket: None,
            rate: RateInfo::default(),
        }
    }
}

/// The header a passthrough request carries its virtual key in: its `Authorization` is the
/// provider's.
pub(crate) const KEY_HEADER: &str = "x-gatehouse-key";

/// The virtual key a request presents: `X-Gatehouse-Key`, `Authorization: Bearer`,
/// `x-api-key` (Anthropic's SDKs) or `x-goog-api-key` (Gemini's). A passthrough request's
/// other headers are the provider's credentials, so only the first counts for it.
fn presented(headers: &HeaderMap) -> Option<&str> {
    // Names made once: looking a header up by `&str` parses the name first.
    const KEY: HeaderName = HeaderName::from_static(KEY_HEADER);
    const TARGET: HeaderName = HeaderName::from_static(gatehouse_proxy::passthrough::TARGET_HEADER);
    const API_KEY: HeaderName = HeaderName::from_static("x-api-key");
    const GOOG_API_KEY: HeaderName = HeaderName::from_static("x-goog-api-key");
    let get = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(k) = get(&KEY) {
        return Some(k.trim());
    }
    if headers.contains_key(&TARGET) {
        return None;
    }
    get(&header::AUTHORIZATION)
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .or_else(|| get(&API_KEY))
        .or_else(|| get(&GOOG_API_KEY))
        .map(str::trim)
}

/// The request's key under `[auth] mode = "keys"`; `None` when auth is off.
pub(crate) fn authenticate(
    st: &AppState,
    headers: &HeaderMap,
) -> Result<Option<Arc<KeyEntry>>, ApiError> {
    if st.config.auth.mode == AuthMode::None {
        return Ok(None);
    }
    let Some(raw) = presented(headers) else {
        let passthrough = headers.contains_key(gatehouse_proxy::passthrough::TARGET_HEADER);
        return Err(ApiError::new(
            ErrorKind::InvalidApiKey,
            if passthrough {
                "this gateway needs a virtual key; a passthrough request sends it as X-Gatehouse-Key (its Authorization goes to the provider)"
            } else {
                "this gateway needs a virtual key: send it as Authorization: Bearer gh_… or x-api-key: gh_…"
            },
        ));
    };
    st.keys
        .authenticate(raw, gatehouse_core::time::now_ms())
        .map(Some)
}

/// Whether the request's key (if any) may use `model`.
pub(crate) fn allowed(key: Option<&KeyEntry>, model: &str) -> bool {
    key.is_none_or(|k| k.allows(model))
}

pub(super) fn not_allowed(key: &KeyEntry, model: &str) -> ApiError {
    let who = match key.team_forbids(model) {
        Some(team) => format!("key `{}` (of team `{team}`)", key.record().name),
        None => format!("key `{}`", key.record().name),
    };
    ApiError::new(
        ErrorKind::ModelNotAllowed,
        format!("{who} may not use model `{model}`; GET /v1/models lists the models it may use"),
    )
    .with_param("model")
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const RESET_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-reset-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
const RESET_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-reset-tokens");

/// The key's limits on a response (the header names OpenAI's and LiteLLM's clients read).
pub(crate) fn set_rate_headers(h: &mut HeaderMap, rate: &RateInfo) {
    let mut put = |names: [HeaderName; 3], (limit, remaining, reset): (u64, u64, u64)| {
        let [l, r, s] = names;
        h.insert(l, HeaderValue::from(limit));
        h.insert(r, HeaderValue::from(remaining));
        h.insert(s, reset_value(reset));
    };
    if let Some(v) = rate.requests {
        put([LIMIT_REQUESTS, REMAINING_REQUESTS, RESET_REQUESTS], v);
    }
    if let Some(v) = rate.tokens {
        put([LIMIT_TOKENS, REMAINING_TOKENS, RESET_TOKENS], v);
    }
}

/// OpenAI's form: `12s`. A limit's window is a minute, so the values are known beforehand and
/// need no allocation.
fn reset_value(secs: u64) -> HeaderValue {
    #[rustfmt::skip]
    const RESETS: [&str; 61] = ["0s", "1s", "2s", "3s", "4s", "5s", "6s", "7s", "8s", "9s", "10s", "11s", "12s", "13s", "14s", "15s", "16s", "17s", "18s", "19s", "20s", "21s", "22s", "23s", "24s", "25s", "26s", "27s", "28s", "29s", "30s", "31s", "32s", "33s", "34s", "35s", "36s", "37s", "38s", "39s", "40s", "41s", "42s", "43s", "44s", "45s", "46s", "47s", "48s", "49s", "50s", "51s", "52s", "53s", "54s", "55s", "56s", "57s", "58s", "59s", "60s"];
    match usize::try_from(secs).ok().and_then(|i| RESETS.get(i)) {
        Some(s) => HeaderValue::from_static(s),
        None => HeaderValue::try_from(format!("{secs}s")).unwrap_or(HeaderValue::from_static("0s")),
    }
}

/// A place among `server.max_streams`; freed when the stream's row is written.
struct StreamSlot(AppState);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams_open.fetch_sub(1, Ordering::Relaxed);
    }
}

pub(super) async fn admit(
    st: &AppState,
    p: &Prepared,
    key: Option<&Arc<KeyEntry>>,
) -> Result<Admission, ApiError> {
    let (key, ticket, rate) = match key {
        None => (None, None, RateInfo::default()),
        Some(k) => {
            let asked = p.session_model.as_deref().unwrap_or(&p.route.model_key);
            for model in [asked, p.route.model_key.as_str()] {
                if !k.allows(model) {
                    return Err(not_allowed(k, model));
                }
            }
            let max_tokens = p.max_tokens.unwrap_or(st.config.auth.default_max_tokens);
            let tokens = p.prompt_tokens.saturating_add(max_tokens);
            let price = gatehouse_services::keys::worst_case_usd(
                p.route.pricing.as_ref(),
                p.prompt_tokens,
                max_tokens,
            );
            let now = gatehouse_core::time::now_ms();
            let shared = st.shared.as_ref();
            let a = gatehouse_services::shared::admit(shared, k, tokens, price, now).await?;
            (Some(a.reservation), a.ticket, a.rate)
        }
    };
    if !p.stream {
        return Ok(Admission {
            _stream: None,
            key,
            ticket,
            rate,
        });
    }
    let max = st.config.server.max_streams as u64;
    let open = st.streams_open.fetch_add(1, Ordering::Relaxed);
    // Taken first, checked after: two racing streams cannot both take the last place.
    let slot = StreamSlot(st.clone());
    if open >= max {
        return Err(ApiError::new(
            ErrorKind::Overloaded,
            format!(
                "the gateway is streaming {max} answers already (server.max_streams); try again in a moment"
            ),
        )
        .with_retry_after(1));
    }
    Ok(Admission {
        _stream: Some(slot),
        key,
        ticket,
        rate,
    })
}
