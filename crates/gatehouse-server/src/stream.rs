//! The body of a streamed answer: upstream chunks forwarded as they arrive, tapped on the side,
//! and one accounting row written when the stream ends, whichever way it ends (complete, broken
//! upstream, cut at shutdown (the connection aborted), or client gone), because the row is
//! written from `Drop`.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Body;
use bytes::Bytes;
use gatehouse_proxy::tap::ClientTap;
use gatehouse_proxy::translate::Format;
use gatehouse_proxy::translate::stream::StreamTranslator;
use gatehouse_proxy::upstream::{StreamFailure, UpstreamStream};
use serde_json::json;

use crate::routes::chat::{Draft, Finish};

enum End {
    /// Still running: if dropped now, the client went away.
    Running,
    Complete,
    Failed {
        code: &'static str,
        message: String,
    },
}

/// Keeps a Responses stream's closing Response (`store`), before the client sees it.
pub(crate) type Keep = Box<dyn FnOnce(&serde_json::Value) + Send>;

pub(crate) struct RecorderParts {
    pub draft: Draft,
    pub tap: ClientTap,
    pub t0: Instant,
    pub ttfb: Duration,
    pub overhead: Duration,
    pub attempts: u32,
    pub status: u16,
    pub keep: Option<Keep>,
}

/// Owns everything needed to write the row, and writes it when dropped.
pub(crate) struct Recorder {
    draft: Option<Draft>,
    tap: Option<ClientTap>,
    t0: Instant,
    ttfb: Duration,
    /// Gateway time before the first byte, plus tap time per chunk.
    overhead: Duration,
    attempts: u32,
    status: u16,
    end: End,
    keep: Option<Keep>,
}

impl Recorder {
    pub(crate) fn new(p: RecorderParts) -> Self {
        Self {
            draft: Some(p.draft),
            tap: Some(p.tap),
            t0: p.t0,
            ttfb: p.ttfb,
            overhead: p.overhead,
            attempts: p.attempts,
            status: p.status,
            end: End::Running,
            keep: p.keep,
        }
    }

    fn process(&mut self, chunk: Bytes) -> Bytes {
        let Some(tap) = self.tap.as_mut() else {
            return chunk;
        };
        let t = Instant::now();
        let out = tap.process(chunk);
        self.overhead += t.elapsed();
        out
    }
}

impl Drop for Recorder {
    fn drop(&mut self) {
        let (Some(draft), Some(tap)) = (self.draft.take(), self.tap.take()) else {
            return;
        };
        let summary = tap.summary(draft.encoding());
        let error = match std::mem::replace(&mut self.end, End::Running) {
            // Dropped mid-stream: shutdown's cut aborted the connection, or the client left.
            End::Running if draft.cut() => Some((
                "shutdown".to_owned(),
                "the gateway shut down before the stream ended".to_owned(),
            )),
            End::Running => Some((
                "client_disconnected".to_owned(),
                "the client closed the connection before the stream ended".to_owned(),
            )),
            End::Failed { code, message } => Some((code.to_owned(), message)),
            End::Complete => match &summary.upstream_error {
                Some(e) => Some(("upstream_stream_error".to_owned(), e.clone())),
                None if !summary.saw_done && summary.finish_reason.is_none() => Some((
                    "stream_incomplete".to_owned(),
                    "upstream ended the stream without a finish reason or [DONE]".to_owned(),
                )),
                None => None,
            },
        };
        draft.write(Finish {
            status: self.status,
            summary: Some(summary),
            latency: self.t0.elapsed(),
            ttfb: Some(self.ttfb),
            overhead: self.overhead,
            attempts: self.attempts,
            error,
        });
    }
}

struct State {
    first: Option<Bytes>,
    rest: UpstreamStream,
    recorder: Recorder,
    /// Provider format → client format, when they differ.
    translator: Option<StreamTranslator>,
    client: Format,
    done: bool,
}

pub(crate) fn body(
    first: Bytes,
    rest: UpstreamStream,
    recorder: Recorder,
    translator: Option<StreamTranslator>,
    client: Format,
) -> Body {
    let state = State {
        first: Some(first),
        rest,
        recorder,
        translator,
        client,
        done: false,
    };
    let stream = futures_util::stream::unfold(state, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            let next = match s.first.take() {
                Some(b) => Some(Ok(b)),
                None => s.rest.next().await,
            };
            match next {
                Some(Ok(chunk)) => {
                    let chunk = match s.translator.as_mut() {
                        Some(t) => t.push(&chunk),
                        None => chunk,
                    };
                    if chunk.is_empty() {
                        continue;
                    }
                    let out = s.recorder.process(chunk);
                    if out.is_empty() {
                        continue;
                    }
                    return Some((Ok::<Bytes, Infallible>(out), s));
                }
                None => {
                    s.done = true;
                    s.recorder.end = End::Complete;
                    // A translated stream is closed in the client's format, if the provider
                    // finished its answer; a stream cut short stays visibly incomplete.
                    if let Some(t) = s.translator.as_mut()
                        && t.finished()
                    {
                        let tail = t.finish();
                        if let (Some(r), Some(keep)) =
                            (t.completed_response(), s.recorder.keep.take())
                        {
                            keep(&r);
                        }
                        let mut out = s.recorder.process(tail).to_vec();
                        if let Some(tap) = s.recorder.tap.as_mut() {
                            out.extend_from_slice(&tap.take_pending());
                        }
                        return Some((Ok(Bytes::from(out)), s));
                    }
                    let held = s
                        .recorder
                        .tap
                        .as_mut()
                        .map(ClientTap::take_pending)
                        .unwrap_or_default();
                    if held.is_empty() {
                        return None;
                    }
                    return Some((Ok(held), s));
                }
                Some(Err(failure)) => {
                    s.done = true;
                    let (code, message) = match failure {
                        StreamFailure::Idle(d) => (
                            "stream_interrupted",
                            format!(
                                "upstream stream interrupted: no data for {:.1} s",
                                d.as_secs_f64()
                            ),
                        ),
                        StreamFailure::Broken(e) => (
                            "stream_interrupted",
                            format!("upstream stream interrupted: {e}"),
                        ),
                    };
                    let mid_event = s.recorder.tap.as_ref().is_some_and(ClientTap::mid_event);
                    let event = error_event(&message, code, mid_event, s.client);
                    s.recorder.end = End::Failed { code, message };
                    return Some((Ok(event), s));
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// A final SSE error event in the client's format: OpenAI's shape then `[DONE]`, or Anthropic's
/// `error` event, so every client ends cleanly.
fn error_event(message: &str, code: &str, mid_event: bool, client: Format) -> Bytes {
    // If the client holds half an event, end it first so the error parses on its own.
    let lead = if mid_event { "\n\n" } else { "" };
    if client == Format::Anthropic {
        let payload = json!({"type": "error", "error": {"type": "api_error", "message": message}});
        return Bytes::from(format!("{lead}event: error\ndata: {payload}\n\n"));
    }
    if client == Format::Gemini {
        let payload = gatehouse_proxy::translate::gemini::error_body(502, message);
        return Bytes::from(format!("{lead}data: {payload}\n\n"));
    }
    if client == Format::Responses {
        let payload = json!({"type": "error", "code": code, "message": message, "param": null});
        return Bytes::from(format!("{lead}event: error\ndata: {payload}\n\n"));
    }
    let payload = json!({
        "error": {
            "message": message,
            "type": "upstream_error",
            "code": code,
            "param": null,
        }
    });
    Bytes::from(format!("{lead}data: {payload}\n\ndata: [DONE]\n\n"))
}
