//! OpenAI's Responses API in front of any provider: `POST /v1/responses` (the proxy path, with
//! the Responses ingress), and the responses it keeps: `GET` and `DELETE /v1/responses/{id}`,
//! `GET /v1/responses/{id}/input_items`.
//!
//! A request that continues a stored response (`previous_response_id`) has the stored history
//! (its input, then its output) put before its own input here, so the rest of the path sees one
//! self-contained request: counted, masked, compacted and routed like any other. A
//! `previous_response_id` the gateway never gave out is the provider's: such a request can only
//! go through to a provider that serves Responses (`chat::route::provider_format`).

use std::time::Instant;

use axum::Json;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ErrorKind, SessionId};
use gatehouse_proxy::translate::Format;
use gatehouse_proxy::translate::responses::Meta;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{HttpError, error_response};
use crate::origin::SameOrigin;
use crate::routes::chat::{self, Ingress, ResponsesCtx};
use crate::state::AppState;

pub async fn create(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let t0 = Instant::now();
    let request_id = chat::request_id_of(&headers);
    let prepared = match body {
        Ok(b) => match continue_from(&st, b).await {
            Ok((b, ingress)) => Ok((Ok(b), ingress)),
            Err(e) => Err(e),
        },
        Err(r) => Ok((Err(r), Format::Responses.into())),
    };
    let mut response = match prepared {
        Ok((body, ingress)) => {
            match chat::handle(&st, &headers, body, &request_id, t0, ingress).await {
                Ok(r) => r,
                Err(e) => error_response(&e),
            }
        }
        Err(e) => error_response(&chat::refuse(&st, &request_id, t0, e)),
    };
    chat::set_request_id(response.headers_mut(), &request_id, "x-request-id");
    response
}

/// The body with a stored history before its input, and what its Response needs. A body that
/// is not a JSON object goes on unchanged, for the path to refuse it in the usual words.
async fn continue_from(st: &AppState, body: Bytes) -> Result<(Bytes, Ingress), ApiError> {
    let Ok(Value::Object(mut o)) = serde_json::from_slice::<Value>(&body) else {
        return Ok((body, Format::Responses.into()));
    };
    let mut input = match o.get("input") {
        Some(Value::String(s)) => {
            vec![
                json!({"type": "message", "role": "user", "content": [{"type": "input_text", "text": s}]}),
            ]
        }
        Some(Value::Array(a)) => a.clone(),
        _ => Vec::new(),
    };
    let mut conversation = None;
    let mut body = body;
    let previous = o.get("previous_response_id").and_then(Value::as_str);
    let stored = match previous {
        Some(prev) => st
            .responses
            .get(prev)
            .await
            .map_err(|e| ApiError::new(ErrorKind::Internal, e.to_string()))?,
        None => None,
    };
    let expanded = stored.is_some();
    let foreign_previous = previous.filter(|_| !expanded).map(str::to_owned);
    if let Some(stored) = stored {
        let mut history: Vec<Value> = serde_json::from_str(&stored.input).unwrap_or_default();
        let output = serde_json::from_str::<Value>(&stored.response)
            .ok()
            .and_then(|r| r.get("output").and_then(Value::as_array).cloned())
            .unwrap_or_default();
        history.extend(output);
        history.append(&mut input);
        input = history;
        conversation = Some(stored.session_id.clone());
        o.insert("input".to_owned(), Value::Array(input.clone()));
        // The history is in the input now; the provider never saw the gateway's id (the
        // Response still names it).
        let mut sent = o.clone();
        sent.remove("previous_response_id");
        body = Bytes::from(Value::Object(sent).to_string());
    }
    let conversation = conversation.or_else(|| {
        o.get("prompt_cache_key")
            .and_then(Value::as_str)
            .and_then(|k| SessionId::parse_client(&format!("responses:{k}")))
    });
    let id = format!("resp_{}", uuid::Uuid::now_v7().simple());
    let meta = Meta::of_object(&o, id, now_ms() / 1000);
    // Items are listed by id (`input_items`); those the client sent without one get one.
    for (i, item) in input.iter_mut().enumerate() {
        if item.get("id").is_none() {
            gatehouse_core::json::set(item, "id", json!(format!("item_{}_{i}", meta.stem())));
        }
    }
    let store = o.get("store").and_then(Value::as_bool).unwrap_or(true);
    Ok((
        body,
        Ingress {
            format: Format::Responses,
            conversation,
            responses: Some(Box::new(ResponsesCtx {
                meta,
                input: Value::Array(input),
                store,
                expanded,
                foreign_previous,
            })),
        },
    ))
}

fn not_found(id: &str) -> HttpError {
    HttpError(ApiError::new(
        ErrorKind::NotFound,
        format!("No response found with id '{id}'."),
    ))
}

async fn stored(st: &AppState, id: &str) -> Result<(Value, Vec<Value>), HttpError> {
    let r = st
        .responses
        .get(id)
        .await
        .map_err(|e| HttpError(ApiError::new(ErrorKind::Internal, e.to_string())))?
        .ok_or_else(|| not_found(id))?;
    let response = serde_json::from_str(&r.response).unwrap_or(Value::Null);
    let input = serde_json::from_str(&r.input).unwrap_or_default();
    Ok((response, input))
}

/// `GET /v1/responses/{id}`.
pub async fn get(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, HttpError> {
    keyed(&st, &headers)?;
    Ok(Json(stored(&st, &id).await?.0))
}

/// `DELETE /v1/responses/{id}`.
pub async fn delete(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, HttpError> {
    keyed(&st, &headers)?;
    let existed = st
        .responses
        .delete(&id)
        .await
        .map_err(|e| HttpError(ApiError::new(ErrorKind::Internal, e.to_string())))?;
    if !existed {
        return Err(not_found(&id));
    }
    Ok(Json(
        json!({"id": id, "object": "response.deleted", "deleted": true}),
    ))
}

#[derive(Deserialize)]
pub struct ItemsQuery {
    limit: Option<usize>,
    order: Option<String>,
    after: Option<String>,
}

/// `GET /v1/responses/{id}/input_items`: the input a response answered, history included;
/// newest first unless `order=asc`, at most `limit` (1–100, default 20) after the item `after`.
pub async fn input_items(
    _: SameOrigin,
    State(st): State<AppState>,
    headers: axum::http::HeaderMap,
    Path(id): Path<String>,
    q: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Json<Value>, HttpError> {
    keyed(&st, &headers)?;
    let Query(q) = q.map_err(|e| {
        HttpError(ApiError::new(ErrorKind::InvalidRequest, e.body_text()).with_param("query"))
    })?;
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(HttpError(
            ApiError::new(ErrorKind::InvalidRequest, "limit must be between 1 and 100")
                .with_param("limit"),
        ));
    }
    let mut items = stored(&st, &id).await?.1;
    match q.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(_) => {
            return Err(HttpError(
                ApiError::new(ErrorKind::InvalidRequest, "order must be `asc` or `desc`")
                    .with_param("order"),
            ));
        }
    }
    let start = match &q.after {
        Some(after) => {
            items
                .iter()
                .position(|i| i.get("id").and_then(Value::as_str) == Some(after))
                .ok_or_else(|| {
                    HttpError(
                        ApiError::new(
                            ErrorKind::InvalidRequest,
                            format!("no input item `{after}` in response '{id}'"),
                        )
                        .with_param("after"),
                    )
                })?
                + 1
        }
        None => 0,
    };
    let page: Vec<Value> = items.iter().skip(start).take(limit).cloned().collect();
    let has_more = items.len() > start + page.len();
    let id_of = |v: Option<&Value>| v.and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    let mut out = Map::new();
    out.insert("object".into(), json!("list"));
    out.insert("first_id".into(), id_of(page.first()));
    out.insert("last_id".into(), id_of(page.last()));
    out.insert("has_more".into(), json!(has_more));
    out.insert("data".into(), Value::Array(page));
    Ok(Json(Value::Object(out)))
}

/// A stored response is read or deleted only with a virtual key when auth is on.
fn keyed(st: &AppState, headers: &axum::http::HeaderMap) -> Result<(), HttpError> {
    crate::routes::chat::admit::authenticate(st, headers)
        .map(|_| ())
        .map_err(|e| HttpError(st.refusals.count(e)))
}
