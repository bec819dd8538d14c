//! Phase 5, economy, and the features layer's steps on a chat body.
//!
//! [`apply`] runs once the session is known: it keeps the originals the sanitizer replaced,
//! applies or triggers compaction, moves a prompt near its window to a larger model
//! (heavy-duty) and refuses one that still does not fit (413). The steps that rewrite the body
//! during `prepare` live here too: secret redaction, masking (sanitizer and observation
//! masking), and the memory measure. Each step leaves the client's bytes alone unless it acts.

use std::sync::atomic::Ordering;

use bytes::Bytes;
use gatehouse_config::RedactionMode;
use gatehouse_context::{Redactor, SecretKind, memory, observe, sanitize};
use gatehouse_core::record::MaskedContent;
use gatehouse_core::request::MessageView;
use gatehouse_core::time::now_ms;
use gatehouse_core::{ApiError, ChatRequestView, ErrorKind, RequestId, SessionId};
use gatehouse_services::events::{Event, MaskedSummary, emit};
use gatehouse_store::WriteOp;

use super::{Prepared, compacting, parts_of};
use crate::state::AppState;

/// The economy phase; returns the routing notes so far (how the route was chosen, heavy-duty).
pub(super) async fn apply(
    st: &AppState,
    p: &mut Prepared,
    session: &SessionId,
    request_id: &RequestId,
) -> Result<Vec<String>, ApiError> {
    if !p.masked.is_empty() {
        store_masked(st, p).await;
    }
    if !p.redacted.is_empty() {
        // Kinds and counts only: a secret never reaches a log line or an event.
        tracing::info!(request_id = %request_id, redacted = ?p.redacted, "secrets replaced by placeholders before forwarding");
        emit(&*st.bus, || Event::Redaction {
            request_id: request_id.as_str().to_owned(),
            session_id: session.clone(),
            model: p.route.model_key.clone(),
            found: p
                .redacted
                .iter()
                .map(|(k, n)| gatehouse_services::events::RedactedKind {
                    kind: k.as_str(),
                    count: *n,
                })
                .collect(),
        });
    }
    // A passthrough target is the client's: its window and its models are not ours to manage.
    let passthrough = p.route.is_passthrough();
    let heavy_duty = if passthrough {
        None
    } else {
        compacting::compaction(st, p, session, request_id).await?;
        heavy_duty(st, p)?
    };
    let notes: Vec<String> = p.select_note.take().into_iter().chain(heavy_duty).collect();
    for note in &notes {
        emit(&*st.bus, || Event::Routing {
            request_id: request_id.as_str().to_owned(),
            session_id: session.clone(),
            model: p.route.model_key.clone(),
            provider: p.route.provider_key.clone(),
            attempts: 0,
            reason: note.clone(),
        });
    }
    // After compaction: a history over the window may fit once its point is applied.
    if !passthrough && p.prompt_tokens > p.route.max_context {
        return Err(ApiError::new(
            ErrorKind::ContextLengthExceeded,
            format!(
                "the prompt has {} tokens, {} more than the {}-token window of `{}`; shorten the conversation or pick a model with a larger window",
                p.prompt_tokens,
                p.prompt_tokens - p.route.max_context,
                p.route.max_context,
                p.route.model_key
            ),
        )
        .with_param("messages"));
    }
    // Counted only now: a request refused above (413) saved nothing upstream.
    if !p.masked.is_empty() {
        count_masked(st, p, request_id, session);
    }
    Ok(notes)
}

/// Keeps the originals the sanitizer replaced, once per reference, whatever happens next: a
/// stand-in the client saw (in an error, a log) always resolves.
async fn store_masked(st: &AppState, p: &Prepared) {
    for m in &p.masked {
        if st.sanitizer.stored.get(&m.hash).is_none() {
            st.sanitizer.stored.insert(m.hash.clone(), ());
            let mut m = m.clone();
            m.key_id = p.key.as_ref().map(|k| k.id.clone());
            st.writer.record(WriteOp::StoreMasked(Box::new(m))).await;
        }
    }
}

/// Counts what masking saved on a request that goes upstream, and tells the dashboard.
fn count_masked(st: &AppState, p: &Prepared, request_id: &RequestId, session: &SessionId) {
    let saved: u64 = p.masked.iter().map(|m| m.tokens_saved).sum();
    st.sanitizer
        .masked
        .fetch_add(p.masked.len() as u64, Ordering::Relaxed);
    st.sanitizer
        .tokens_saved
        .fetch_add(saved, Ordering::Relaxed);
    emit(&*st.bus, || Event::SanitizerEvent {
        request_id: request_id.as_str().to_owned(),
        session_id: session.clone(),
        model: p.route.model_key.clone(),
        masked: p
            .masked
            .iter()
            .map(|m| MaskedSummary {
                reference: m.hash.clone(),
                role: m.role.clone(),
                tags: m.tags.clone(),
                tokens: m.tokens,
                tokens_saved: m.tokens_saved,
            })
            .collect(),
        tokens_saved: saved,
    });
}

/// The seed's heavy-duty fallback, after compaction had its chance: a prompt at the threshold of
/// its model's window moves to the smallest model of the same provider that holds it. Returns
/// what was done, for the row and the event; refuses (413) when configured to and there is no
/// larger model.
fn heavy_duty(st: &AppState, p: &mut Prepared) -> Result<Option<String>, ApiError> {
    let hd = st.config.proxy.heavy_duty;
    let window = p.route.max_context;
    if !hd.enabled
        || window == 0
        || (p.prompt_tokens as f64) < hd.threshold_pct / 100.0 * window as f64
    {
        return Ok(None);
    }
    let pct = p.prompt_tokens as f64 * 100.0 / window as f64;
    let Some(next) = st
        .router
        .larger(&p.route, p.prompt_tokens, hd.threshold_pct)
        .filter(|n| super::admit::allowed(p.key.as_deref(), &n.model_key))
    else {
        if hd.when_none == gatehouse_config::WhenNone::Refuse && p.prompt_tokens <= window {
            return Err(ApiError::new(
                ErrorKind::ContextLengthExceeded,
                format!(
                    "the prompt ({} tokens) is at {pct:.0} % of `{}`'s {window}-token window and provider `{}` has no larger model ([proxy.heavy_duty] when_none = \"refuse\")",
                    p.prompt_tokens, p.route.model_key, p.route.provider_key
                ),
            )
            .with_param("messages"));
        }
        return Ok(Some(format!(
            "heavy-duty: the prompt ({} tokens) is at {pct:.0} % of `{}`'s window and provider `{}` has no larger model",
            p.prompt_tokens, p.route.model_key, p.route.provider_key
        )));
    };
    let note = format!(
        "heavy-duty: the prompt ({} tokens) is at {pct:.0} % of `{}`'s window; moved to `{}` ({}-token window)",
        p.prompt_tokens, p.route.model_key, next.model_key, next.max_context
    );
    let parts = parts_of(st, &p.original, &next)?;
    p.route = next;
    p.set_parts(parts);
    Ok(Some(note))
}

/// Tokens of the memory/MCP content in the prompt: stretches matching the seed's patterns, each
/// counted when at least `MIN_MEMORY_TOKENS` long. One Aho-Corasick pass when there is none.
pub(super) fn memory_tokens(
    st: &AppState,
    body: &Bytes,
    view: &ChatRequestView<'_>,
    enc: gatehouse_core::Encoding,
) -> u64 {
    let d = st.memory;
    if !d.may_contain(body) {
        return 0;
    }
    let mut total = 0;
    for text in view.messages.iter().filter_map(MessageView::text) {
        for span in d.spans(&text) {
            let n = text.get(span.start..span.end).map_or(0, |s| enc.count(s));
            if n >= memory::MIN_MEMORY_TOKENS {
                total += n;
            }
        }
    }
    total
}

/// The body with large tool output, pasted context, console output and big JSON replaced by
/// stand-ins (the sanitizer), and the originals to keep; `None` when nothing qualifies or the
/// sanitizer is off. Works from the view already parsed, so a request with nothing to mask
/// costs no second parse.
pub(super) fn mask(
    st: &AppState,
    body: &Bytes,
    view: &ChatRequestView<'_>,
    enc: gatehouse_core::Encoding,
) -> Option<(Bytes, Vec<MaskedContent>)> {
    let rules = sanitize::Rules {
        threshold_tokens: st.config.sanitizer.threshold_tokens,
        preview_length: st.config.sanitizer.preview_length,
    };
    let cfg = &st.config.sanitizer;
    // A token is at least one byte: a body this small holds no message over the threshold.
    if !st.sanitizer.enabled.load(Ordering::Relaxed)
        || (body.len() as u64 <= rules.threshold_tokens && !cfg.observation_masking)
    {
        return None;
    }
    let mut splices: Vec<(std::ops::Range<usize>, String)> = Vec::new();
    let mut masked = Vec::new();
    let texts: Vec<Option<std::borrow::Cow<'_, str>>> =
        view.messages.iter().map(MessageView::text).collect();
    let hidden = if cfg.observation_masking {
        observation_hidden(st, view, &texts, enc)
    } else {
        Hidden::default()
    };
    // Tool names by call id, from the assistant messages that made the calls.
    let mut calls: Vec<(String, String)> = Vec::new();
    if !hidden.whole.is_empty() {
        for m in view.messages.iter().filter(|m| !m.tool_calls.is_empty()) {
            calls.extend(tool_call_ids(m.raw.get()));
        }
    }
    for (i, m) in view.messages.iter().enumerate() {
        let Some(Some(text)) = texts.get(i) else {
            continue;
        };
        let new_text;
        let (tokens, reference, tags, original) = if hidden.whole.contains(&i) {
            // An old tool result, hidden by observation masking.
            let tokens = st.counter.count_message(enc, m);
            let reference = sanitize::reference(text);
            let call_id = tool_call_id(m.raw.get());
            let tool = call_id
                .as_deref()
                .and_then(|id| calls.iter().find(|(c, _)| c == id).map(|(_, n)| n.as_str()));
            new_text = observe::placeholder(tool, call_id.as_deref(), text, tokens, &reference);
            (
                tokens,
                reference,
                vec!["observation".to_owned()],
                text.to_string(),
            )
        } else if m.role == "user"
            && let Some(parts) = user_parts(st, &rules, i, text, &hidden, enc)
        {
            // Tool output inside a user message: those stretches, the user's words kept.
            new_text = parts.text;
            for part in parts.masked {
                masked.push(part);
            }
            if let Some(replacement) = replace_content(m.raw.get(), &new_text) {
                splices.push((m.span.clone(), replacement));
            }
            continue;
        } else {
            if text.len() as u64 <= rules.threshold_tokens {
                continue;
            }
            let tokens = st.counter.count_message(enc, m);
            let tags = sanitize::classify(&rules, &m.role, text, tokens);
            if tags.is_empty() {
                continue;
            }
            let reference = sanitize::reference(text);
            new_text = sanitize::stand_in(text, &tags, tokens, &reference, rules.preview_length);
            let tags = tags.iter().map(|t| t.as_str().to_owned()).collect();
            (tokens, reference, tags, text.to_string())
        };
        let Some(replacement) = replace_content(m.raw.get(), &new_text) else {
            continue;
        };
        let kept = enc.count(&new_text) + 3 + enc.count(&m.role);
        splices.push((m.span.clone(), replacement));
        masked.push(MaskedContent {
            hash: reference,
            role: m.role.to_string(),
            tags,
            tokens,
            tokens_saved: tokens.saturating_sub(kept),
            content: Some(original),
            created_at: now_ms(),
            key_id: None,
        });
    }
    if splices.is_empty() {
        return None;
    }
    let mut out = Vec::with_capacity(body.len());
    let mut at = 0;
    for (range, replacement) in &splices {
        // Spans are the parser's, of these very bytes, in order.
        out.extend_from_slice(body.get(at..range.start)?);
        out.extend_from_slice(replacement.as_bytes());
        at = range.end;
    }
    out.extend_from_slice(body.get(at..)?);
    Some((Bytes::from(out), masked))
}

/// What observation masking hides in this request: whole tool messages, and stretches of tool
/// output inside user messages (by message index and byte range of its text).
#[derive(Default)]
struct Hidden {
    whole: Vec<usize>,
    parts: Vec<(usize, std::ops::Range<usize>)>,
}

/// Old tool output worth hiding (older than the kept turns, not an error, at least
/// `observation_min_tokens`), hidden in closed batches only ([`observe::batch_to_hide`]).
fn observation_hidden(
    st: &AppState,
    view: &ChatRequestView<'_>,
    texts: &[Option<std::borrow::Cow<'_, str>>],
    enc: gatehouse_core::Encoding,
) -> Hidden {
    let cfg = &st.config.sanitizer;
    let roles: Vec<&str> = view.messages.iter().map(|m| m.role.as_ref()).collect();
    let old = observe::cutoff(&roles, cfg.observation_keep_turns);
    // Candidates in conversation order: (message, part of its text or the whole, tokens).
    let mut candidates: Vec<(usize, Option<std::ops::Range<usize>>, u64)> = Vec::new();
    for (i, m) in view.messages.iter().enumerate().take(old) {
        let Some(Some(text)) = texts.get(i) else {
            continue;
        };
        if m.role == "tool" {
            let tokens = st.counter.count_message(enc, m);
            if tokens >= cfg.observation_min_tokens && !observe::looks_like_error(text) {
                candidates.push((i, None, tokens));
            }
        } else if m.role == "user" {
            for r in sanitize::tool_parts(text) {
                let Some(part) = text.get(r.clone()) else {
                    continue;
                };
                let tokens = st.counter.count_text(enc, part);
                if tokens >= cfg.observation_min_tokens && !observe::looks_like_error(part) {
                    candidates.push((i, Some(r), tokens));
                }
            }
        }
    }
    let sizes: Vec<u64> = candidates.iter().map(|c| c.2).collect();
    let n = observe::batch_to_hide(&sizes, cfg.observation_batch_tokens);
    let mut hidden = Hidden::default();
    for (i, part, _) in candidates.into_iter().take(n) {
        match part {
            None => hidden.whole.push(i),
            Some(r) => hidden.parts.push((i, r)),
        }
    }
    hidden
}

/// A user message with its tool output replaced: hidden stretches by the observation
/// placeholder, large ones by the sanitizer's stand-in. `None` when nothing changes.
struct UserParts {
    text: String,
    masked: Vec<MaskedContent>,
}

fn user_parts(
    st: &AppState,
    rules: &sanitize::Rules,
    i: usize,
    text: &str,
    hidden: &Hidden,
    enc: gatehouse_core::Encoding,
) -> Option<UserParts> {
    let parts = sanitize::tool_parts(text);
    if parts.is_empty() {
        return None;
    }
    let mut out = String::with_capacity(text.len());
    let mut masked = Vec::new();
    let mut at = 0;
    for r in parts {
        let part = text.get(r.clone())?;
        let is_hidden = hidden.parts.iter().any(|(m, h)| *m == i && *h == r);
        if !is_hidden && part.len() as u64 <= rules.threshold_tokens {
            continue;
        }
        let tokens = st.counter.count_text(enc, part);
        if !is_hidden && tokens <= rules.threshold_tokens {
            continue;
        }
        let reference = sanitize::reference(part);
        let (stand, tags) = if is_hidden {
            let line = observe::placeholder(None, None, part, tokens, &reference);
            (line, vec!["observation".to_owned()])
        } else {
            let tags = [sanitize::Tag::Tool];
            let stand = sanitize::stand_in(part, &tags, tokens, &reference, rules.preview_length);
            (stand, vec![sanitize::Tag::Tool.as_str().to_owned()])
        };
        out.push_str(text.get(at..r.start)?);
        out.push_str(&stand);
        at = r.end;
        masked.push(MaskedContent {
            hash: reference,
            role: "user".to_owned(),
            tags,
            tokens,
            tokens_saved: tokens.saturating_sub(enc.count(&stand)),
            content: Some(part.to_owned()),
            created_at: now_ms(),
            key_id: None,
        });
    }
    if masked.is_empty() {
        return None;
    }
    out.push_str(text.get(at..)?);
    Some(UserParts { text: out, masked })
}

/// `tool_call_id` of a tool message.
fn tool_call_id(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Msg {
        tool_call_id: Option<String>,
    }
    serde_json::from_str::<Msg>(raw).ok()?.tool_call_id
}

/// `(id, function name)` of each tool call of an assistant message.
fn tool_call_ids(raw: &str) -> Vec<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Function {
        name: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Call {
        id: Option<String>,
        function: Option<Function>,
    }
    #[derive(serde::Deserialize)]
    struct Msg {
        #[serde(default)]
        tool_calls: Vec<Call>,
    }
    serde_json::from_str::<Msg>(raw)
        .map(|m| {
            m.tool_calls
                .into_iter()
                .filter_map(|c| Some((c.id?, c.function?.name?)))
                .collect()
        })
        .unwrap_or_default()
}

/// The message object `raw` with its text replaced by `stand`: a string content becomes the
/// stand-in; in an array, the text parts become one text part (images and other parts stay).
fn replace_content(raw: &str, stand: &str) -> Option<String> {
    let mut msg: serde_json::Map<String, serde_json::Value> = serde_json::from_str(raw).ok()?;
    let content = msg.get_mut("content")?;
    match content {
        serde_json::Value::String(_) => *content = serde_json::Value::String(stand.to_owned()),
        serde_json::Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            let mut placed = false;
            for p in parts.drain(..) {
                if p.get("type").and_then(|t| t.as_str()) == Some("text") {
                    if !placed {
                        out.push(serde_json::json!({"type": "text", "text": stand}));
                        placed = true;
                    }
                } else {
                    out.push(p);
                }
            }
            *parts = out;
        }
        _ => return None,
    }
    serde_json::to_string(&msg).ok()
}

/// The body to forward: the client's, or a copy with its secrets replaced (redaction.mode).
pub(super) fn redact(
    st: &AppState,
    body: &Bytes,
) -> Result<(Bytes, Vec<(SecretKind, u32)>), ApiError> {
    let mode = st.config.redaction.mode;
    if mode == RedactionMode::Off {
        return Ok((body.clone(), Vec::new()));
    }
    let findings = st.redactor.scan(body);
    let Some(first) = findings.first() else {
        return Ok((body.clone(), Vec::new()));
    };
    if mode == RedactionMode::Block {
        let (param, at) = locate(body, first.range.start);
        return Err(ApiError::new(
            ErrorKind::SecretDetected,
            format!(
                "the request contains {} ({}) at byte {at} of {param}; remove it, or set redaction.mode = \"redact\" to send a placeholder instead",
                first.kind.describe(),
                first.kind.as_str(),
            ),
        )
        .with_param(param));
    }
    let mut counts: Vec<(SecretKind, u32)> = Vec::new();
    for f in &findings {
        match counts.iter_mut().find(|(k, _)| *k == f.kind) {
            Some((_, n)) => *n += 1,
            None => counts.push((f.kind, 1)),
        }
    }
    Ok((Redactor::redact(body, &findings), counts))
}

/// Which message holds byte `offset` of the body, and the offset inside it.
fn locate(body: &Bytes, offset: usize) -> (String, usize) {
    if let Ok(view) = ChatRequestView::parse(body) {
        for (i, m) in view.messages.iter().enumerate() {
            if m.span.contains(&offset) {
                return (format!("messages[{i}]"), offset - m.span.start);
            }
        }
    }
    ("the request body".to_owned(), offset)
}
