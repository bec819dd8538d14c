//! Translation between wire formats, through one internal representation ([`ir`]).
//!
//! Used only when the client's format and the provider's differ; otherwise the client's bytes
//! are forwarded. Each format has request, response and stream codecs (`*_to_ir`,
//! `*_from_ir`, a stream `Decoder` of provider bytes and an `Encoder` of client bytes).

pub mod anthropic;
pub mod gemini;
pub mod ir;
pub mod ollama;
pub mod openai;
pub mod responses;
pub mod stream;

use serde_json::{Map, Value};

/// Which format a body is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenAi,
    Anthropic,
    /// Gemini's `generateContent`.
    Gemini,
    /// Ollama's native API; provider side only.
    Ollama,
    /// OpenAI's Responses API; client side only.
    Responses,
}

impl Format {
    /// The format a provider of this type speaks.
    pub fn of_provider(kind: gatehouse_config::ProviderType) -> Self {
        match kind {
            gatehouse_config::ProviderType::Anthropic => Self::Anthropic,
            gatehouse_config::ProviderType::Gemini => Self::Gemini,
            gatehouse_config::ProviderType::Ollama => Self::Ollama,
            gatehouse_config::ProviderType::Openai | gatehouse_config::ProviderType::Kimi => {
                Self::OpenAi
            }
        }
    }
}

/// An OpenAI-format request body in another format.
pub fn request_from_openai(body: &[u8], to: Format) -> Result<bytes::Bytes, TranslateError> {
    let ir = openai::request_to_ir(body)?;
    let v = match to {
        Format::Anthropic => anthropic::request_from_ir(&ir),
        Format::Gemini => gemini::request_from_ir(&ir),
        Format::Ollama => ollama::request_from_ir(&ir),
        Format::OpenAi => openai::request_from_ir(&ir),
        Format::Responses => responses::request_from_ir(&ir),
    };
    Ok(bytes::Bytes::from(v.to_string()))
}

/// A whole answer from one format into another (Ollama is never a client format: OpenAI's
/// stands in).
pub fn response_between(
    body: &[u8],
    from: Format,
    to: Format,
    created: i64,
) -> Result<bytes::Bytes, TranslateError> {
    let ir = response_to_ir(body, from)?;
    let v = match to {
        Format::OpenAi | Format::Ollama => openai::response_from_ir(&ir, created),
        Format::Gemini => gemini::response_from_ir(&ir, &ir.model),
        Format::Anthropic => anthropic::response_from_ir(&ir),
        Format::Responses => {
            let meta = responses::Meta::of_request(b"{}", format!("resp_{}", ir.id), created);
            responses::response_from_ir(&ir, &meta)
        }
    };
    Ok(bytes::Bytes::from(v.to_string()))
}

/// A whole answer in `from`'s format, read into the representation.
pub fn response_to_ir(body: &[u8], from: Format) -> Result<ir::Response, TranslateError> {
    match from {
        Format::OpenAi => openai::response_to_ir(body),
        Format::Anthropic => anthropic::response_to_ir(body),
        Format::Gemini => gemini::response_to_ir(body),
        Format::Ollama => ollama::response_to_ir(body),
        Format::Responses => responses::response_to_ir(body),
    }
}

/// A body that cannot be translated: always the client's fault or the provider's, never a
/// panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TranslateError(pub String);

impl TranslateError {
    pub fn json(e: &serde_json::Error) -> Self {
        Self(format!("the body is not valid JSON: {e}"))
    }

    pub fn shape(m: impl Into<String>) -> Self {
        Self(m.into())
    }
}

pub(crate) fn field_str<'a>(o: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    o.get(k).and_then(Value::as_str)
}

pub(crate) fn as_u64(v: Option<&Value>) -> u64 {
    v.and_then(Value::as_u64).unwrap_or(0)
}

/// A JSON number field as a `u32` (0 when absent or out of range).
pub(crate) fn u32_field(v: &Value, k: &str) -> u32 {
    v.get(k)
        .and_then(Value::as_u64)
        .and_then(|i| u32::try_from(i).ok())
        .unwrap_or(0)
}

/// An `{"type", "message"}` error object (both formats use these two fields) as an event.
pub(crate) fn error_event(e: &Value) -> ir::Event {
    ir::Event::Error {
        kind: e
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("api_error")
            .to_owned(),
        message: e
            .get("message")
            .and_then(Value::as_str)
            .map_or_else(|| e.to_string(), str::to_owned),
    }
}

/// Sets `key` when there is a value: the optional sampling fields every format has.
pub(crate) fn put<T: serde::Serialize>(o: &mut Map<String, Value>, key: &str, v: Option<T>) {
    if let Some(v) = v.and_then(|v| serde_json::to_value(v).ok()) {
        o.insert(key.to_owned(), v);
    }
}

/// `data: {json}\n\n`.
pub(crate) fn sse_data(v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"data: ");
    // Writing JSON into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
    out.extend_from_slice(b"\n\n");
}

/// `event: name\ndata: {json}\n\n`.
pub(crate) fn sse_named(name: &str, v: &Value, out: &mut Vec<u8>) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    sse_data(v, out);
}
