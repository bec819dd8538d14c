//! Phase 3, prepare: one pass over the body. Redact → parse → route → mask → count, and the
//! upstream bytes (model name spliced, stream usage asked for). Pure CPU work: a large body
//! runs on the blocking pool.

use std::sync::Arc;

use bytes::Bytes;
use gatehouse_context::SecretKind;
use gatehouse_core::record::MaskedContent;
use gatehouse_core::request::RequestParseError;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind};
use gatehouse_proxy::Route;
use gatehouse_proxy::passthrough::Target;
use gatehouse_proxy::rewrite::{UsageAsk, rewrite};
use gatehouse_proxy::translate::{self, Format};
use gatehouse_services::keys::KeyEntry;
use gatehouse_services::sessions::Shape;

use super::economy::{mask, memory_tokens, redact};
use crate::state::AppState;

/// Bodies above this are parsed and counted on the blocking pool, so a huge prompt never stalls
/// the async workers that serve everyone else.
const BLOCKING_PREPARE_BYTES: usize = 256 * 1024;
/// Preview lengths (the seed's figures).
const PREVIEW_CHARS: usize = 200;
const SESSION_NAME_CHARS: usize = gatehouse_services::sessions::NAME_CHARS;

/// What one pass over the body yields; owned, so it can come back from the blocking pool.
pub(crate) struct Prepared {
    pub route: Arc<Route>,
    pub stream: bool,
    /// The client's `max_tokens` (or `max_completion_tokens`), for reservations.
    pub max_tokens: Option<u64>,
    /// The request's virtual key (`[auth] mode = "keys"`): fallbacks it may not use are skipped.
    pub key: Option<Arc<KeyEntry>>,
    /// The bytes to send before the model rename (masked, compacted), kept (a reference count)
    /// in case the body must be rebuilt.
    pub original: Bytes,
    /// The client's bytes after redaction only, in OpenAI's format (an Anthropic request is
    /// translated first): the identity of its history for compaction.
    pub redacted_original: Bytes,
    /// The format the client speaks, and its own bytes after redaction (forwarded as they are
    /// to a provider of the same format when no feature rewrote the conversation).
    pub ingress: Format,
    pub client_body: Bytes,
    /// The client asked for usage in its OpenAI stream (`stream_options.include_usage`).
    pub client_wants_usage: bool,
    /// Compaction replaced the history.
    pub compacted: bool,
    /// The compaction in the body: how many leading OpenAI-format messages its summary replaces,
    /// and the summary, so it can be spliced into an Anthropic client's own bytes too.
    pub spliced: Option<(usize, String)>,
    /// The OpenAI-format body after masking and before compaction.
    pub masked_body: Bytes,
    /// How the route was chosen, when there was a choice (balancing, smart routing).
    pub select_note: Option<String>,
    /// The model the session is kept under when it is not the route's: what the client asked for
    /// (`auto/coding`, the primary of balanced deployments), not where the request went.
    pub session_model: Option<String>,
    /// Where the model name is spliced, when the provider's name differs.
    pub model_span: Option<std::ops::Range<usize>>,
    pub upstream_body: Bytes,
    pub injected_usage: bool,
    pub prompt_tokens: u64,
    pub session_name: Option<String>,
    pub preview: String,
    /// Secrets replaced by placeholders, by kind.
    pub redacted: Vec<(SecretKind, u32)>,
    /// Messages the sanitizer replaced by stand-ins.
    pub masked: Vec<MaskedContent>,
    /// Prompt tokens of memory/MCP content (what is sent, after masking).
    pub memory_tokens: u64,
    /// A Responses request's context (set by `handle` from its ingress).
    pub responses: Option<Box<super::ResponsesCtx>>,
    /// Where the request belongs when it names no session: the conversation it continues,
    /// whether it is a side request.
    pub shape: Shape,
}

/// [`prepare`], on the blocking pool for a large body.
pub(super) async fn run(
    st: &AppState,
    body: Bytes,
    ingress: Format,
    target: Option<Target>,
    key: Option<Arc<KeyEntry>>,
) -> Result<Prepared, ApiError> {
    let mut p = if body.len() <= BLOCKING_PREPARE_BYTES {
        prepare(st, &body, ingress, target.as_ref(), key.as_deref())?
    } else {
        let st2 = st.clone();
        let key2 = key.clone();
        tokio::task::spawn_blocking(move || {
            prepare(&st2, &body, ingress, target.as_ref(), key2.as_deref())
        })
        .await
        .map_err(|e| {
            ApiError::new(
                ErrorKind::Internal,
                format!("request preparation failed: {e}"),
            )
        })??
    };
    p.key = key;
    Ok(p)
}

pub(super) fn parse(body: &Bytes) -> Result<ChatRequestView<'_>, ApiError> {
    ChatRequestView::parse(body).map_err(|e| match e {
        RequestParseError::Syntax(m) => ApiError::new(ErrorKind::InvalidJson, m),
        RequestParseError::Field { param, message } => {
            ApiError::new(ErrorKind::InvalidRequest, message).with_param(param)
        }
    })
}

/// What `select_route` decided.
struct Selected {
    route: Arc<Route>,
    note: Option<String>,
    session_model: Option<String>,
}

/// The route of a request: a smart-routing choice for `auto/<name>`, a balanced deployment for a
/// model that has several, or the model itself; with the account of the choice and, when it is
/// not the route's own, the model key its session is kept under.
fn select_route(
    st: &AppState,
    view: &ChatRequestView<'_>,
    target: Option<&Target>,
    key: Option<&KeyEntry>,
) -> Result<Selected, ApiError> {
    if let Some(k) = key
        && !k.allows(&view.model)
    {
        return Err(super::admit::not_allowed(k, &view.model));
    }
    let allowed = |m: &str| super::admit::allowed(key, m);
    if let Some(t) = target {
        return Ok(Selected {
            route: st.router.passthrough(t, &view.model),
            note: Some(format!("passthrough to {}", t.provider.shown_url)),
            session_model: None,
        });
    }
    if let Some((name, auto)) = st.router.auto(&view.model) {
        // Count with the first candidate's vocabulary; candidates differ by a few percent.
        let enc = auto
            .candidates
            .first()
            .and_then(|k| st.router.resolve(k).ok())
            .map_or(gatehouse_core::Encoding::Cl100k, |r| r.encoding);
        let tokens = st.counter.count_prompt(enc, view).tokens;
        let (route, note) = gatehouse_proxy::select::choose_auto(
            &st.router,
            &st.upstream,
            name,
            auto,
            tokens,
            view.max_tokens,
            &allowed,
        )?;
        return Ok(Selected {
            route,
            note: Some(note),
            session_model: Some(view.model.to_string()),
        });
    }
    let primary = st.router.resolve(&view.model)?;
    if primary.deployments.is_empty() {
        // The common case: no choice to make, nothing to allocate.
        return Ok(Selected {
            route: primary,
            note: None,
            session_model: None,
        });
    }
    let route = gatehouse_proxy::select::balance(
        &st.router,
        &st.upstream,
        &st.upstream.dice,
        &primary,
        &allowed,
    );
    let note = format!(
        "balanced across {} deployments: `{}` ({})",
        primary.deployments.len() + 1,
        route.model_key,
        route.latency.ms().map_or_else(
            || "latency not measured yet".to_owned(),
            |ms| format!("{ms:.0} ms EWMA")
        )
    );
    Ok(Selected {
        note: Some(note),
        session_model: Some(primary.model_key.clone()),
        route,
    })
}

fn prepare(
    st: &AppState,
    body: &Bytes,
    ingress: Format,
    target: Option<&Target>,
    key: Option<&KeyEntry>,
) -> Result<Prepared, ApiError> {
    let (client_body, redacted) = redact(st, body)?;
    let (client_body, repaired) = repair(st, client_body, ingress);
    // Everything below works on OpenAI's format; another client format is translated once here.
    let mut left_out = Vec::new();
    let redacted_body = match ingress {
        // Ollama is a provider format only.
        Format::OpenAi | Format::Ollama => client_body.clone(),
        Format::Anthropic | Format::Responses | Format::Gemini => {
            let (ir, left) = match ingress {
                Format::Anthropic => translate::anthropic::request_to_ir_noting(&client_body),
                Format::Gemini => translate::gemini::client_request_to_ir(&client_body),
                _ => translate::responses::request_to_ir_noting(&client_body),
            }
            .map_err(|e| ApiError::new(ErrorKind::InvalidRequest, e.0))?;
            left_out = left;
            Bytes::from(translate::openai::request_from_ir(&ir).to_string())
        }
    };
    let redacted_body = with_default_model(st, redacted_body);
    let first = parse(&redacted_body)?;
    let Selected {
        route,
        note: mut select_note,
        session_model,
    } = select_route(st, &first, target, key)?;
    // Only a translated request has `left_out`; it matters when it goes to another format.
    if !left_out.is_empty() && Format::of_provider(route.provider.kind) != ingress {
        add_note(
            &mut select_note,
            format!("not translated: {}", left_out.join(", ")),
        );
    }
    if let Some(r) = repaired {
        add_note(&mut select_note, r.describe());
    }
    // From the client's messages, before masking rewrites any.
    let shape = Shape {
        conversation: first.conversation_fingerprint(),
        aside: first.is_aside(),
    };
    // Masking rewrites whole messages; the rewritten body is parsed again (and only then).
    let masked_body;
    let (body, view, masked) = match mask(st, &redacted_body, &first, route.encoding) {
        None => (&redacted_body, first, Vec::new()),
        Some((b, m)) => {
            masked_body = b;
            (&masked_body, parse(&masked_body)?, m)
        }
    };
    let parts = body_parts(st, body, &view, &route);
    Ok(Prepared {
        stream: view.stream,
        max_tokens: view.max_tokens,
        key: None,
        original: body.clone(),
        redacted_original: redacted_body.clone(),
        ingress,
        client_body,
        client_wants_usage: view
            .stream_options
            .as_ref()
            .and_then(|o| o.include_usage)
            .unwrap_or(false),
        compacted: false,
        spliced: None,
        masked_body: body.clone(),
        select_note,
        session_model,
        model_span: parts.model_span,
        upstream_body: parts.upstream_body,
        injected_usage: parts.injected_usage,
        prompt_tokens: parts.prompt_tokens,
        memory_tokens: parts.memory_tokens,
        session_name: view.first_user_preview(SESSION_NAME_CHARS),
        preview: view.last_user_preview(PREVIEW_CHARS).unwrap_or_default(),
        route,
        redacted,
        masked,
        responses: None,
        shape,
    })
}

/// What is derived from the body about to be sent: its count, and the upstream bytes (model
/// name spliced, stream usage asked for).
pub(super) struct BodyParts {
    pub model_span: Option<std::ops::Range<usize>>,
    pub upstream_body: Bytes,
    pub injected_usage: bool,
    pub prompt_tokens: u64,
    pub memory_tokens: u64,
}

fn body_parts(st: &AppState, body: &Bytes, view: &ChatRequestView<'_>, route: &Route) -> BodyParts {
    let prompt = st.counter.count_prompt(route.encoding, view);
    let model_span = (view.model != route.upstream_model).then(|| view.model_span.clone());
    let usage = if view.stream
        && route.provider.kind.is_openai_compatible()
        && st.upstream.asks_stream_usage(&route.provider_key)
    {
        UsageAsk::Yes {
            client: view.stream_options.as_ref(),
        }
    } else {
        UsageAsk::No
    };
    let (upstream_body, rewritten) = rewrite(
        body,
        model_span
            .clone()
            .map(|s| (s, route.upstream_model.as_str())),
        usage,
    );
    BodyParts {
        model_span,
        upstream_body,
        injected_usage: rewritten.injected_usage,
        prompt_tokens: prompt.tokens,
        memory_tokens: memory_tokens(st, body, view, route.encoding),
    }
}

/// [`body_parts`] of a body not parsed yet.
pub(super) fn parts_of(st: &AppState, body: &Bytes, route: &Route) -> Result<BodyParts, ApiError> {
    let view = parse(body)?;
    Ok(body_parts(st, body, &view, route))
}

impl Prepared {
    pub(super) fn set_parts(&mut self, parts: BodyParts) {
        self.model_span = parts.model_span;
        self.upstream_body = parts.upstream_body;
        self.injected_usage = parts.injected_usage;
        self.prompt_tokens = parts.prompt_tokens;
        self.memory_tokens = parts.memory_tokens;
    }
}

/// Replaces the body to send by `body` (a compacted history).
pub(super) fn use_body(st: &AppState, p: &mut Prepared, body: Bytes) -> Result<(), ApiError> {
    let parts = parts_of(st, &body, &p.route)?;
    p.original = body;
    p.compacted = true;
    p.set_parts(parts);
    Ok(())
}

/// Tool-call repair (`proxy.repair_tool_calls`) on an OpenAI client's request: the repaired
/// bytes replace the client's, and what changed goes on the row. An Anthropic request needs
/// none: its `tool_use` blocks carry ids and object inputs by construction.
fn repair(
    st: &AppState,
    body: Bytes,
    ingress: Format,
) -> (Bytes, Option<gatehouse_context::repair::Repairs>) {
    if !st.config.proxy.repair_tool_calls || ingress != Format::OpenAi {
        return (body, None);
    }
    match gatehouse_context::repair::repair_tool_calls(&body) {
        Some((fixed, r)) => (Bytes::from(fixed), Some(r)),
        None => (body, None),
    }
}

/// A body that names no model (`model` missing or empty) gets `proxy.default_model`, when one
/// is set; any other body is returned as it is, unparsed.
fn with_default_model(st: &AppState, body: Bytes) -> Bytes {
    let Some(default) = st.config.proxy.default_model.as_deref() else {
        return body;
    };
    #[derive(serde::Deserialize)]
    struct Top<'a> {
        #[serde(borrow, default)]
        model: Option<std::borrow::Cow<'a, str>>,
    }
    match serde_json::from_slice::<Top<'_>>(&body) {
        Ok(Top { model: Some(m) }) if !m.is_empty() => body,
        Ok(_) => match serde_json::from_slice::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Object(mut o)) => {
                o.insert(
                    "model".to_owned(),
                    serde_json::Value::String(default.to_owned()),
                );
                Bytes::from(serde_json::Value::Object(o).to_string())
            }
            _ => body,
        },
        Err(_) => body,
    }
}

fn add_note(notes: &mut Option<String>, note: String) {
    *notes = Some(match notes.take() {
        Some(n) => format!("{n}; {note}"),
        None => note,
    });
}
