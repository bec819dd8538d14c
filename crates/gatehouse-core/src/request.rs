//! A borrowed, typed view of an OpenAI chat-completions request body.
//!
//! The gateway types only the fields it acts on and keeps everything else as the client's raw
//! bytes, so unknown fields pass through untouched and the body is forwarded without being
//! re-serialised. Every type error names the offending field, so a client gets a precise 400.

use std::borrow::Cow;
use std::ops::Range;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Why a body could not be turned into a [`ChatRequestView`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestParseError {
    /// Not JSON at all, or not a JSON object.
    Syntax(String),
    /// A field is missing or has the wrong type; `param` names it (`messages[2].content`).
    Field { param: String, message: String },
}

impl std::fmt::Display for RequestParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Syntax(m) => f.write_str(m),
            Self::Field { param, message } => write!(f, "{param}: {message}"),
        }
    }
}

impl std::error::Error for RequestParseError {}

impl RequestParseError {
    fn field(param: impl Into<String>, message: impl Into<String>) -> Self {
        Self::Field {
            param: param.into(),
            message: message.into(),
        }
    }
}

/// The parts of a chat request the gateway needs, borrowing from the body.
#[derive(Debug)]
pub struct ChatRequestView<'a> {
    pub model: Cow<'a, str>,
    /// Byte range of the `model` JSON string (quotes included) inside the body, so the
    /// forwarder can splice in the upstream model name without re-serialising.
    pub model_span: Range<usize>,
    pub stream: bool,
    pub stream_options: Option<StreamOptionsView>,
    pub messages: Vec<MessageView<'a>>,
    /// Tool definitions, kept raw: they are counted, never rewritten.
    pub tools: Option<&'a RawValue>,
    pub max_tokens: Option<u64>,
}

/// What the client said in `stream_options`, and where it sits in the body.
#[derive(Debug, Clone)]
pub struct StreamOptionsView {
    pub include_usage: Option<bool>,
    pub span: Range<usize>,
}

#[derive(Debug)]
pub struct MessageView<'a> {
    /// The message exactly as sent: the key of the token-count cache.
    pub raw: &'a RawValue,
    /// Byte range of the message object inside the body, for splicing a replacement.
    pub span: Range<usize>,
    pub role: Cow<'a, str>,
    pub name: Option<Cow<'a, str>>,
    pub content: Content<'a>,
    pub tool_calls: Vec<ToolCallView<'a>>,
}

#[derive(Debug)]
pub enum Content<'a> {
    None,
    Text(Cow<'a, str>),
    Parts(Vec<Part<'a>>),
}

#[derive(Debug)]
pub enum Part<'a> {
    Text(Cow<'a, str>),
    Image,
    /// Audio, files and future part types: counted from their raw JSON, which over-estimates
    /// rather than ignores them.
    Other(&'a RawValue),
}

#[derive(Debug)]
pub struct ToolCallView<'a> {
    pub name: Cow<'a, str>,
    pub arguments: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TopRaw<'a> {
    #[serde(borrow)]
    model: Option<&'a RawValue>,
    #[serde(borrow)]
    stream: Option<&'a RawValue>,
    #[serde(borrow)]
    stream_options: Option<&'a RawValue>,
    #[serde(borrow)]
    messages: Option<&'a RawValue>,
    #[serde(borrow)]
    tools: Option<&'a RawValue>,
    #[serde(borrow)]
    max_tokens: Option<&'a RawValue>,
    #[serde(borrow)]
    max_completion_tokens: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageRaw<'a> {
    #[serde(borrow)]
    role: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    name: Option<&'a RawValue>,
    #[serde(borrow)]
    tool_calls: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct PartRaw<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    text: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ToolCallRaw<'a> {
    #[serde(borrow)]
    function: Option<FunctionRaw<'a>>,
}

#[derive(Deserialize)]
struct FunctionRaw<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    arguments: Option<Cow<'a, str>>,
}

/// The longest answer a side request asks for ([`ChatRequestView::is_aside`]): titles and
/// summaries of a line or two, well under what a turn of real work asks for.
pub const ASIDE_MAX_TOKENS: u64 = 1024;

impl<'a> ChatRequestView<'a> {
    /// Parses a request body. Unknown fields are ignored here and preserved in the bytes.
    pub fn parse(body: &'a [u8]) -> Result<Self, RequestParseError> {
        let top: TopRaw<'a> = serde_json::from_slice(body).map_err(|e| {
            RequestParseError::Syntax(format!("request body is not a valid JSON object: {e}"))
        })?;

        let model_raw = top.model.ok_or_else(|| {
            RequestParseError::field("model", "you must provide a model parameter")
        })?;
        let model: Cow<'a, str> = string_field(model_raw, || "model")?;
        if model.is_empty() {
            return Err(RequestParseError::field(
                "model",
                "`model` must not be empty",
            ));
        }

        let stream = match top.stream {
            None => false,
            Some(raw) => match raw.get() {
                "true" => true,
                "false" | "null" => false,
                _ => return Err(type_error("stream", "a boolean")),
            },
        };

        let stream_options = match top.stream_options {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => {
                #[derive(Deserialize)]
                struct So {
                    include_usage: Option<bool>,
                }
                let so: So = serde_json::from_str(raw.get())
                    .map_err(|_| type_error("stream_options", "an object"))?;
                Some(StreamOptionsView {
                    include_usage: so.include_usage,
                    span: span_of(body, raw),
                })
            }
        };

        let messages_raw = top.messages.ok_or_else(|| {
            RequestParseError::field("messages", "you must provide a messages parameter")
        })?;
        let items: Vec<&'a RawValue> = serde_json::from_str(messages_raw.get())
            .map_err(|_| type_error("messages", "an array of message objects"))?;
        if items.is_empty() {
            return Err(RequestParseError::field(
                "messages",
                "`messages` must contain at least one message",
            ));
        }
        let messages = items
            .into_iter()
            .enumerate()
            .map(|(i, raw)| parse_message(i, raw, span_of(body, raw)))
            .collect::<Result<Vec<_>, _>>()?;

        let tools = match top.tools {
            Some(raw) if raw.get() == "null" => None,
            Some(raw) if !raw.get().starts_with('[') => {
                return Err(type_error("tools", "an array of tool definitions"));
            }
            other => other,
        };

        let max_tokens = match top.max_completion_tokens.or(top.max_tokens) {
            None => None,
            Some(raw) if raw.get() == "null" => None,
            Some(raw) => Some(raw.get().parse::<u64>().map_err(|_| {
                let name = if top.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                type_error(name, "a non-negative integer")
            })?),
        };

        Ok(Self {
            model,
            model_span: span_of(body, model_raw),
            stream,
            stream_options,
            messages,
            tools,
            max_tokens,
        })
    }

    /// Identity of the conversation this request continues: a hash of its leading system
    /// messages and its first user message (their text, so a `cache_control` marker that moves
    /// from turn to turn changes nothing). Every turn of one conversation shares it, whatever
    /// its model. `None` without a user message.
    pub fn conversation_fingerprint(&self) -> Option<u64> {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for m in &self.messages {
            h.update(m.role.as_bytes());
            h.update(&[0]);
            m.hash_text(&mut h);
            match m.role.as_ref() {
                "system" | "developer" => {}
                "user" => return Some(h.digest()),
                _ => return None,
            }
        }
        None
    }

    /// A side request: one that continues no conversation (no answer or tool result in it),
    /// offers no tools and asks for a short answer, such as a client's title or topic request
    /// or its `max_tokens: 1` probe.
    pub fn is_aside(&self) -> bool {
        self.tools.is_none()
            && self.max_tokens.is_some_and(|m| m <= ASIDE_MAX_TOKENS)
            && self
                .messages
                .iter()
                .all(|m| matches!(m.role.as_ref(), "system" | "developer" | "user"))
    }

    /// The text of the first user message, for naming a new session.
    pub fn first_user_text(&self) -> Option<String> {
        self.messages
            .iter()
            .find(|m| m.role == "user")
            .and_then(|m| m.text().map(Cow::into_owned))
    }

    /// Up to `max` characters of the first user message, without copying the whole message.
    pub fn first_user_preview(&self, max: usize) -> Option<String> {
        self.messages
            .iter()
            .find(|m| m.role == "user")
            .map(|m| m.preview(max))
    }

    /// Up to `max` characters of the last user message, without copying the whole message.
    pub fn last_user_preview(&self, max: usize) -> Option<String> {
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == "user")
            .map(|m| m.preview(max))
    }
}

impl MessageView<'_> {
    fn hash_text(&self, h: &mut xxhash_rust::xxh3::Xxh3) {
        match &self.content {
            Content::None => {}
            // A string and a single text part are the same content.
            Content::Text(t) => {
                h.update(&(t.len() as u64).to_le_bytes());
                h.update(t.as_bytes());
            }
            Content::Parts(parts) => {
                for p in parts {
                    if let Part::Text(t) = p {
                        h.update(&(t.len() as u64).to_le_bytes());
                        h.update(t.as_bytes());
                    }
                }
            }
        }
    }

    /// Up to `max` characters of the message's text, whitespace collapsed.
    pub fn preview(&self, max: usize) -> String {
        match &self.content {
            Content::None => String::new(),
            Content::Text(t) => crate::record::preview(t, max),
            Content::Parts(parts) => {
                let mut out = String::new();
                for p in parts {
                    if let Part::Text(t) = p {
                        let room = max.saturating_sub(out.chars().count());
                        if room == 0 {
                            break;
                        }
                        if !out.is_empty() {
                            out.push(' ');
                        }
                        out.push_str(&crate::record::preview(t, room));
                    }
                }
                crate::record::preview(&out, max)
            }
        }
    }

    /// The message's text parts joined by newlines (borrowed when it is one string); `None`
    /// when it has no text.
    pub fn text(&self) -> Option<Cow<'_, str>> {
        match &self.content {
            Content::None => None,
            Content::Text(t) => Some(Cow::Borrowed(t.as_ref())),
            Content::Parts(parts) => {
                let texts: Vec<&str> = parts
                    .iter()
                    .filter_map(|p| match p {
                        Part::Text(t) => Some(t.as_ref()),
                        _ => None,
                    })
                    .collect();
                (!texts.is_empty()).then(|| Cow::Owned(texts.join("\n")))
            }
        }
    }
}

fn parse_message<'a>(
    i: usize,
    raw: &'a RawValue,
    span: Range<usize>,
) -> Result<MessageView<'a>, RequestParseError> {
    let m: MessageRaw<'a> = serde_json::from_str(raw.get())
        .map_err(|_| type_error(format!("messages[{i}]"), "an object"))?;
    let role_raw = m.role.ok_or_else(|| {
        RequestParseError::field(format!("messages[{i}].role"), "each message needs a role")
    })?;
    let role = string_field(role_raw, || format!("messages[{i}].role"))?;
    let name = match m.name {
        None => None,
        Some(r) if r.get() == "null" => None,
        Some(r) => Some(string_field(r, || format!("messages[{i}].name"))?),
    };
    let content = match m.content {
        None => Content::None,
        Some(r) if r.get() == "null" => Content::None,
        Some(r) if r.get().starts_with('"') => {
            Content::Text(string_field(r, || format!("messages[{i}].content"))?)
        }
        Some(r) if r.get().starts_with('[') => Content::Parts(parse_parts(i, r)?),
        Some(_) => {
            return Err(type_error(
                format!("messages[{i}].content"),
                "a string or an array of content parts",
            ));
        }
    };
    let tool_calls = match m.tool_calls {
        None => Vec::new(),
        Some(r) if r.get() == "null" => Vec::new(),
        Some(r) => {
            let calls: Vec<ToolCallRaw<'a>> = serde_json::from_str(r.get()).map_err(|_| {
                type_error(
                    format!("messages[{i}].tool_calls"),
                    "an array of tool calls",
                )
            })?;
            calls
                .into_iter()
                .filter_map(|c| c.function)
                .map(|f| ToolCallView {
                    name: f.name.unwrap_or_default(),
                    arguments: f.arguments.unwrap_or_default(),
                })
                .collect()
        }
    };
    Ok(MessageView {
        raw,
        span,
        role,
        name,
        content,
        tool_calls,
    })
}

fn parse_parts<'a>(i: usize, raw: &'a RawValue) -> Result<Vec<Part<'a>>, RequestParseError> {
    let items: Vec<&'a RawValue> = serde_json::from_str(raw.get()).map_err(|_| {
        type_error(
            format!("messages[{i}].content"),
            "a string or an array of content parts",
        )
    })?;
    items
        .into_iter()
        .enumerate()
        .map(|(j, item)| {
            let param = || format!("messages[{i}].content[{j}]");
            let p: PartRaw<'a> = serde_json::from_str(item.get())
                .map_err(|_| type_error(param(), "a content part object with a `type`"))?;
            Ok(match p.kind.as_deref() {
                Some("text") => {
                    let text = p.text.ok_or_else(|| {
                        RequestParseError::field(
                            format!("{}.text", param()),
                            "a text part needs `text`",
                        )
                    })?;
                    Part::Text(string_field(text, || format!("{}.text", param()))?)
                }
                Some("image_url" | "image") => Part::Image,
                Some(_) => Part::Other(item),
                None => {
                    return Err(RequestParseError::field(
                        format!("{}.type", param()),
                        "each content part needs a `type`",
                    ));
                }
            })
        })
        .collect()
}

/// `param` names the field in the error; it is only built when there is one (a string per
/// message on every request otherwise).
fn string_field<'a, P: Into<String>>(
    raw: &'a RawValue,
    param: impl FnOnce() -> P,
) -> Result<Cow<'a, str>, RequestParseError> {
    if !raw.get().starts_with('"') {
        return Err(type_error(param(), "a string"));
    }
    serde_json::from_str::<Cow<'a, str>>(raw.get()).map_err(|_| type_error(param(), "a string"))
}

fn type_error(param: impl Into<String>, expected: &str) -> RequestParseError {
    let param = param.into();
    let message = format!("`{param}` must be {expected}");
    RequestParseError::Field { param, message }
}

/// Where a borrowed raw value sits inside the body it was parsed from.
fn span_of(body: &[u8], raw: &RawValue) -> Range<usize> {
    // The raw value borrows from `body`, so the address difference is its offset.
    let start = (raw.get().as_ptr() as usize).saturating_sub(body.as_ptr() as usize);
    start..start + raw.get().len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fields_it_needs_and_keeps_spans() {
        let body = br#"{"model": "m/x", "stream": true, "extra": {"a": 1},
            "messages": [{"role":"system","content":"be brief"},
                         {"role":"user","content":[{"type":"text","text":"hi\nthere"},{"type":"image_url","image_url":{"url":"data:"}}]},
                         {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function","function":{"name":"f","arguments":"{}"}}]}],
            "max_tokens": 16}"#;
        let v = ChatRequestView::parse(body).unwrap();
        assert_eq!(v.model, "m/x");
        assert_eq!(&body[v.model_span.clone()], br#""m/x""#);
        for m in &v.messages {
            assert_eq!(&body[m.span.clone()], m.raw.get().as_bytes());
        }
        assert!(v.stream);
        assert_eq!(v.messages.len(), 3);
        assert_eq!(v.first_user_text().as_deref(), Some("hi\nthere"));
        assert_eq!(v.messages[2].tool_calls[0].name, "f");
        assert_eq!(v.max_tokens, Some(16));
    }

    fn field_err(body: &str) -> String {
        match ChatRequestView::parse(body.as_bytes()) {
            Err(RequestParseError::Field { param, .. }) => param,
            other => panic!("expected a field error, got {other:?}"),
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        assert_eq!(
            field_err(r#"{"messages":[{"role":"user","content":"x"}]}"#),
            "model"
        );
        assert_eq!(field_err(r#"{"model":5,"messages":[]}"#), "model");
        assert_eq!(field_err(r#"{"model":"m","messages":"hi"}"#), "messages");
        assert_eq!(field_err(r#"{"model":"m","messages":[]}"#), "messages");
        assert_eq!(
            field_err(r#"{"model":"m","messages":[{"role":"user","content":5}]}"#),
            "messages[0].content"
        );
        assert_eq!(
            field_err(r#"{"model":"m","messages":[{"content":"x"}]}"#),
            "messages[0].role"
        );
        assert_eq!(
            field_err(r#"{"model":"m","stream":"yes","messages":[{"role":"user","content":"x"}]}"#),
            "stream"
        );
        assert_eq!(
            field_err(
                r#"{"model":"m","max_tokens":-1,"messages":[{"role":"user","content":"x"}]}"#
            ),
            "max_tokens"
        );
    }

    #[test]
    fn syntax_errors_are_reported() {
        for body in ["", "null", "[1]", "{", "{\"model\":\"m\"", "\u{0}"] {
            assert!(matches!(
                ChatRequestView::parse(body.as_bytes()),
                Err(RequestParseError::Syntax(_))
            ));
        }
    }

    fn view(body: &str) -> ChatRequestView<'_> {
        ChatRequestView::parse(body.as_bytes()).unwrap()
    }

    #[test]
    fn every_turn_of_a_conversation_shares_its_fingerprint() {
        let first = r#"{"model":"a","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":"fix the bug"}]}"#;
        let later = r#"{"model":"b","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":[{"type":"text","text":"fix the bug","cache_control":{"type":"ephemeral"}}]},
            {"role":"assistant","content":"done"},{"role":"user","content":"thanks"}]}"#;
        let other = r#"{"model":"a","messages":[{"role":"system","content":"be brief"},
            {"role":"user","content":"fix the other bug"}]}"#;
        let other_system = r#"{"model":"a","messages":[{"role":"system","content":"be long"},
            {"role":"user","content":"fix the bug"}]}"#;
        let fp = view(first).conversation_fingerprint();
        assert!(fp.is_some());
        assert_eq!(fp, view(later).conversation_fingerprint());
        assert_ne!(fp, view(other).conversation_fingerprint());
        assert_ne!(fp, view(other_system).conversation_fingerprint());
        let no_user = r#"{"model":"a","messages":[{"role":"system","content":"x"}]}"#;
        assert_eq!(view(no_user).conversation_fingerprint(), None);
    }

    #[test]
    fn side_requests_are_short_single_turns_without_tools() {
        let probe =
            r#"{"model":"a","max_tokens":1,"messages":[{"role":"user","content":"quota"}]}"#;
        let title = r#"{"model":"a","max_tokens":512,"messages":[{"role":"system","content":"a title"},
            {"role":"user","content":"fix the bug"}]}"#;
        assert!(view(probe).is_aside());
        assert!(view(title).is_aside());
        for turn in [
            r#"{"model":"a","messages":[{"role":"user","content":"fix the bug"}]}"#,
            r#"{"model":"a","max_tokens":32000,"messages":[{"role":"user","content":"fix"}]}"#,
            r#"{"model":"a","max_tokens":1,"tools":[],"messages":[{"role":"user","content":"x"}]}"#,
            r#"{"model":"a","max_tokens":1,"messages":[{"role":"user","content":"x"},
                {"role":"assistant","content":"y"},{"role":"user","content":"z"}]}"#,
        ] {
            assert!(!view(turn).is_aside(), "{turn}");
        }
    }
}
