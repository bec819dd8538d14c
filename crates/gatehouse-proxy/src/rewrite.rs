//! The only two changes the gateway makes to an OpenAI request body, done as byte splices on the
//! client's original bytes: the model key becomes the provider's model name, and a streaming
//! request asks for usage in the stream.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use gatehouse_core::request::StreamOptionsView;

/// What [`rewrite`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewritten {
    /// The gateway asked upstream for a usage chunk the client did not ask for; that chunk must
    /// not reach the client.
    pub injected_usage: bool,
}

/// Whether to ask upstream for usage in a stream.
#[derive(Debug, Clone, Copy)]
pub enum UsageAsk<'a> {
    /// Not a stream, or the provider does not take `stream_options`.
    No,
    /// A stream: make sure `stream_options.include_usage` is true, given what the client sent.
    Yes {
        client: Option<&'a StreamOptionsView>,
    },
}

/// Builds the upstream body from the client's bytes: `model` replaces the byte range of the
/// model string when the provider's name differs. Returns the original `Bytes` (no copy) when
/// nothing changes.
pub fn rewrite(
    body: &Bytes,
    model: Option<(Range<usize>, &str)>,
    usage: UsageAsk<'_>,
) -> (Bytes, Rewritten) {
    let mut splices: Vec<(Range<usize>, Vec<u8>)> = Vec::with_capacity(2);
    if let Some((span, name)) = model {
        splices.push((span, json_string(name)));
    }
    let mut injected_usage = false;
    if let UsageAsk::Yes { client } = usage {
        match client {
            Some(so) if so.include_usage == Some(true) => {}
            Some(so) => {
                // The client sent stream_options without asking for usage: replace the object
                // with one that does. Other stream_options fields are rare; keep them by parsing
                // this small object only.
                let original = body.get(so.span.clone()).unwrap_or_default();
                let mut obj: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(original).unwrap_or_default();
                obj.insert("include_usage".into(), serde_json::Value::Bool(true));
                let replacement = serde_json::to_vec(&obj)
                    .unwrap_or_else(|_| br#"{"include_usage":true}"#.to_vec());
                splices.push((so.span.clone(), replacement));
                injected_usage = true;
            }
            None => {
                // Insert right after the opening brace, before every other field.
                let at = body.iter().position(|&b| b == b'{').map_or(0, |p| p + 1);
                splices.push((
                    at..at,
                    br#""stream_options":{"include_usage":true},"#.to_vec(),
                ));
                injected_usage = true;
            }
        }
    }
    if splices.is_empty() {
        return (body.clone(), Rewritten { injected_usage });
    }
    splices.sort_by_key(|(r, _)| r.start);
    let extra: usize = splices.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(body.len() + extra);
    let mut pos = 0;
    for (range, replacement) in splices {
        // Spans come from the parser of these very bytes; one that does not fit is skipped.
        let Some(kept) = body.get(pos..range.start.max(pos)) else {
            continue;
        };
        out.extend_from_slice(kept);
        out.extend_from_slice(&replacement);
        pos = range.end.max(pos);
    }
    out.extend_from_slice(body.get(pos..).unwrap_or_default());
    (out.freeze(), Rewritten { injected_usage })
}

fn json_string(s: &str) -> Vec<u8> {
    serde_json::to_vec(s).unwrap_or_else(|_| b"\"\"".to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gatehouse_core::ChatRequestView;

    fn run(body: &str, upstream: &str) -> (serde_json::Value, Rewritten, Bytes, Bytes) {
        let original = Bytes::from(body.to_owned());
        let v = ChatRequestView::parse(&original).unwrap();
        let model = (v.model != upstream).then(|| (v.model_span.clone(), upstream));
        let usage = if v.stream {
            UsageAsk::Yes {
                client: v.stream_options.as_ref(),
            }
        } else {
            UsageAsk::No
        };
        let (out, r) = rewrite(&original, model, usage);
        (
            serde_json::from_slice(&out).unwrap(),
            r,
            out,
            original.clone(),
        )
    }

    #[test]
    fn unchanged_bodies_are_not_copied() {
        let (_, r, out, original) = run(
            r#"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            "m",
        );
        assert!(!r.injected_usage);
        assert_eq!(out.as_ptr(), original.as_ptr());
    }

    #[test]
    fn model_is_spliced_and_unknown_fields_survive() {
        let (v, _, out, _) = run(
            r#"{ "model" : "p/m", "x_custom": [1, {"a": "b"}], "messages":[{"role":"user","content":"x"}]}"#,
            "m\"q",
        );
        assert_eq!(v["model"], "m\"q");
        assert_eq!(v["x_custom"][1]["a"], "b");
        assert!(
            std::str::from_utf8(&out)
                .unwrap()
                .contains(r#""x_custom": [1, {"a": "b"}]"#)
        );
    }

    #[test]
    fn streams_ask_for_usage() {
        let (v, r, _, _) = run(
            r#"{"model":"p/m","stream":true,"messages":[{"role":"user","content":"x"}]}"#,
            "m",
        );
        assert!(r.injected_usage);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["model"], "m");

        let (v, r, _, _) = run(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":false,"other":1},"messages":[{"role":"user","content":"x"}]}"#,
            "m",
        );
        assert!(r.injected_usage);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stream_options"]["other"], 1);

        let (_, r, out, original) = run(
            r#"{"model":"m","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"x"}]}"#,
            "m",
        );
        assert!(!r.injected_usage);
        assert_eq!(out, original);
    }
}
