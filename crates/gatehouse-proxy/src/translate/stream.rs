//! A live stream translated chunk by chunk: provider events in, client SSE out, nothing buffered
//! beyond an unfinished event (an SSE event, or an Ollama JSON line).

use bytes::Bytes;

use super::ir::Event;
use super::{Format, anthropic, gemini, ollama, openai, responses};
use crate::sse::{Framer, MAX_EVENT_BYTES, parse_event};

enum Decoder {
    OpenAi(openai::Decoder),
    Anthropic(anthropic::Decoder),
    Gemini(gemini::Decoder),
    Ollama(ollama::Decoder),
}

enum Encoder {
    OpenAi(openai::Encoder),
    Anthropic(anthropic::Encoder),
    Responses(Box<responses::Encoder>),
    Gemini(gemini::Encoder),
}

/// Translates one stream from `from` (the provider's format) to `to` (the client's).
pub struct StreamTranslator {
    framer: Framer,
    /// Ollama streams JSON lines, not SSE: the unfinished line.
    line: Vec<u8>,
    decoder: Decoder,
    encoder: Encoder,
    events: Vec<Event>,
    /// The provider said how the answer finished (a finish reason, `message_stop`, `[DONE]`).
    finished: bool,
}

impl std::fmt::Debug for StreamTranslator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamTranslator").finish_non_exhaustive()
    }
}

impl StreamTranslator {
    /// `model` is the name the client asked for; `input_estimate` the gateway's prompt count,
    /// announced by formats that state input tokens before the provider has said them.
    pub fn new(from: Format, to: Format, model: &str, input_estimate: u64, created: i64) -> Self {
        Self {
            framer: Framer::new(),
            line: Vec::new(),
            decoder: match from {
                // Responses is never a provider format.
                Format::OpenAi | Format::Responses => Decoder::OpenAi(openai::Decoder::default()),
                Format::Anthropic => Decoder::Anthropic(anthropic::Decoder::default()),
                Format::Gemini => Decoder::Gemini(gemini::Decoder::default()),
                Format::Ollama => Decoder::Ollama(ollama::Decoder::default()),
            },
            encoder: match to {
                Format::Anthropic => {
                    Encoder::Anthropic(anthropic::Encoder::new(model, input_estimate))
                }
                Format::Gemini => Encoder::Gemini(gemini::Encoder::new(model)),
                // A Responses client's stream is made by [`Self::to_responses`], which has the
                // Response's id and settings; Ollama is never a client format.
                Format::OpenAi | Format::Ollama | Format::Responses => {
                    Encoder::OpenAi(openai::Encoder::new(model, created))
                }
            },
            events: Vec::new(),
            finished: false,
        }
    }

    /// A stream from `from` to a Responses client, as the Response `meta` describes.
    pub fn to_responses(from: Format, meta: responses::Meta, created: i64) -> Self {
        let mut t = Self::new(from, Format::OpenAi, "", 0, created);
        t.encoder = Encoder::Responses(Box::new(responses::Encoder::new(meta)));
        t
    }

    /// The closing Response of a Responses stream, once [`finish`](Self::finish) wrote it.
    pub fn completed_response(&mut self) -> Option<serde_json::Value> {
        match &mut self.encoder {
            Encoder::Responses(enc) => enc.completed(),
            _ => None,
        }
    }

    /// The client's bytes for this provider chunk (empty while an event is incomplete).
    pub fn push(&mut self, chunk: &[u8]) -> Bytes {
        if let Decoder::Ollama(d) = &mut self.decoder {
            for piece in chunk.split_inclusive(|&b| b == b'\n') {
                if self.line.len() + piece.len() > MAX_EVENT_BYTES {
                    // A line that long is not an answer chunk; it is dropped, not held.
                    self.line.clear();
                    continue;
                }
                self.line.extend_from_slice(piece);
                if self.line.ends_with(b"\n") {
                    d.line(self.line.trim_ascii(), &mut self.events);
                    self.line.clear();
                }
            }
            return self.encode();
        }
        let (decoder, events, finished) = (&mut self.decoder, &mut self.events, &mut self.finished);
        self.framer.feed(chunk, |raw| {
            let (name, data) = parse_event(raw);
            if data.is_empty() {
                return;
            }
            match decoder {
                Decoder::OpenAi(d) => {
                    if data == b"[DONE]" {
                        *finished = true;
                    }
                    d.event(&data, events);
                }
                Decoder::Gemini(d) => d.event(&data, events),
                Decoder::Anthropic(d) => {
                    if name == Some(b"message_stop")
                        || data.starts_with(b"{\"type\":\"message_stop\"")
                    {
                        *finished = true;
                    }
                    d.event(&data, events);
                }
                Decoder::Ollama(_) => {}
            }
        });
        self.encode()
    }

    fn encode(&mut self) -> Bytes {
        if self
            .events
            .iter()
            .any(|e| matches!(e, Event::Finish { .. }))
        {
            self.finished = true;
        }
        let mut out = Vec::new();
        for e in self.events.drain(..) {
            match &mut self.encoder {
                Encoder::OpenAi(enc) => enc.event(&e, &mut out),
                Encoder::Anthropic(enc) => enc.event(&e, &mut out),
                Encoder::Responses(enc) => enc.event(&e, &mut out),
                Encoder::Gemini(enc) => enc.event(&e, &mut out),
            }
        }
        Bytes::from(out)
    }

    /// Whether the provider ended its answer properly so far.
    pub fn finished(&self) -> bool {
        self.finished
    }

    /// The closing events, once the provider's stream has ended cleanly.
    pub fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        match &mut self.encoder {
            Encoder::OpenAi(enc) => enc.finish(&mut out),
            Encoder::Anthropic(enc) => enc.finish(&mut out),
            Encoder::Responses(enc) => enc.finish(&mut out),
            Encoder::Gemini(enc) => enc.finish(&mut out),
        }
        Bytes::from(out)
    }
}
