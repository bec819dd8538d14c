//! The SSE framer and the stream tap never panic and never lose or invent a byte.

use bytes::Bytes;
use gatehouse_core::Encoding;
use gatehouse_proxy::StreamTap;
use gatehouse_proxy::tap::summarize_response;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const ALPHABET: &[&[u8]] = &[
    b"data: ",
    b"data:",
    b"\n",
    b"\r",
    b"\r\n",
    b"\n\n",
    b": ping\n",
    b"event: x\n",
    b"[DONE]",
    b"{\"choices\":[{\"delta\":{\"content\":\"hi\"},\"finish_reason\":null}]}",
    b"{\"choices\":[],\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":2}}",
    b"{\"error\":{\"message\":\"x\"}}",
    b"{",
    b"}",
    b"\xff\xfe",
    b"\xe2\x82",
    b"\"",
    b"\\",
];

#[test]
fn the_tap_never_panics_and_passthrough_forwards_every_byte() {
    let mut rng = Rng(7);
    for _ in 0..3_000 {
        let mut stream = Vec::new();
        for _ in 0..rng.below(40) {
            stream.extend_from_slice(ALPHABET[rng.below(ALPHABET.len())]);
        }
        for strip in [false, true] {
            let mut tap = StreamTap::new(strip);
            let mut out = Vec::new();
            let mut pos = 0;
            while pos < stream.len() {
                let end = (pos + 1 + rng.below(16)).min(stream.len());
                out.extend_from_slice(&tap.process(Bytes::copy_from_slice(&stream[pos..end])));
                pos = end;
            }
            out.extend_from_slice(&tap.take_pending());
            let _ = tap.summary(Encoding::Cl100k);
            if strip {
                assert!(
                    out.len() <= stream.len(),
                    "stripping only ever removes bytes"
                );
            } else {
                assert_eq!(out, stream, "passthrough must forward the stream unchanged");
            }
        }
        let _ = summarize_response(&stream, Encoding::O200k);
    }
}

/// Pieces of every format's requests, answers and stream events, glued at random.
const TRANSLATION_ALPHABET: &[&[u8]] = &[
    b"data: ",
    b"event: message_start\n",
    b"\n\n",
    b"\r\n\r\n",
    b"[DONE]",
    b"{\"type\":\"message_start\",\"message\":{\"id\":\"m\",\"usage\":{\"input_tokens\":3}}}",
    b"{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"tool_use\",\"id\":\"t\",\"name\":\"f\"}}",
    b"{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\"}}",
    b"{\"type\":\"content_block_delta\",\"index\":7,\"delta\":{\"type\":\"text_delta\",\"text\":\"hi\"}}",
    b"{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":{\"output_tokens\":2}}",
    b"{\"choices\":[{\"index\":3,\"delta\":{\"tool_calls\":[{\"index\":9,\"function\":{\"arguments\":\"{\"}}]}}]}",
    b"{\"choices\":[{\"delta\":{\"content\":\"x\",\"reasoning_content\":\"y\"},\"finish_reason\":\"length\"}]}",
    b"{\"candidates\":[{\"content\":{\"parts\":[{\"functionCall\":{\"name\":\"f\",\"args\":7}},{\"text\":\"t\",\"thought\":true}]},\"finishReason\":\"STOP\"}]}",
    b"{\"promptFeedback\":{\"blockReason\":\"SAFETY\"}}",
    b"{\"message\":{\"content\":\"x\",\"tool_calls\":[{\"function\":{\"arguments\":[]}}]},\"done\":true,\"eval_count\":-1}\n",
    b"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":\"data:x;base64,\"}}]}]}",
    b"{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":[{\"type\":\"tool_use\",\"input\":null}]},{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"content\":5}]}]}",
    b"{\"messages\":[{\"role\":\"tool\"},{\"role\":\"assistant\",\"tool_calls\":[{\"function\":{}}]}],\"tools\":[{}],\"tool_choice\":{}}",
    b"{\"error\":{\"type\":\"x\"}}",
    b"{",
    b"]",
    b"\xff",
    b"\"",
];

#[test]
fn translators_never_panic_on_any_input() {
    use gatehouse_proxy::translate::stream::StreamTranslator;
    use gatehouse_proxy::translate::{Format, anthropic, gemini, ollama, openai};
    let mut rng = Rng(11);
    let formats = [
        Format::OpenAi,
        Format::Anthropic,
        Format::Gemini,
        Format::Ollama,
    ];
    for _ in 0..3_000 {
        let mut input = Vec::new();
        for _ in 0..rng.below(12) {
            input.extend_from_slice(TRANSLATION_ALPHABET[rng.below(TRANSLATION_ALPHABET.len())]);
        }
        if let Ok(ir) = openai::request_to_ir(&input) {
            let _ = (
                anthropic::request_from_ir(&ir),
                gemini::request_from_ir(&ir),
                ollama::request_from_ir(&ir),
            );
        }
        if let Ok(ir) = anthropic::request_to_ir(&input) {
            let _ = openai::request_from_ir(&ir);
        }
        for r in [
            openai::response_to_ir(&input),
            anthropic::response_to_ir(&input),
            gemini::response_to_ir(&input),
            ollama::response_to_ir(&input),
        ]
        .into_iter()
        .flatten()
        {
            let _ = (
                openai::response_from_ir(&r, 0),
                anthropic::response_from_ir(&r),
            );
        }
        let _ = (
            anthropic::error_to_openai(&input),
            anthropic::error_from_openai(500, &input),
            gemini::error_to_openai(&input),
            ollama::error_to_openai(&input),
        );
        let from = formats[rng.below(4)];
        let to = formats[rng.below(2)];
        let mut t = StreamTranslator::new(from, to, "m", 1, 0);
        let mut pos = 0;
        while pos < input.len() {
            let end = (pos + 1 + rng.below(16)).min(input.len());
            let _ = t.push(&input[pos..end]);
            pos = end;
        }
        let _ = t.finish();
    }
}

/// Answers whose fields have the wrong JSON type, the shapes a random-byte fuzzer rarely
/// builds: each translator must say the answer is unreadable, never panic.
#[test]
fn answers_with_wrong_types_per_field_are_errors_not_panics() {
    use gatehouse_proxy::translate::{anthropic, gemini, ollama, openai};
    let wrong = [
        "null", "1", "-1", "1e400", "true", "\"x\"", "[]", "[1]", "{}", "[{}]",
    ];
    let shapes = [
        r#"{"choices":[{"message":W,"finish_reason":"stop"}]}"#,
        r#"{"choices":[{"message":{"role":W,"content":"x","tool_calls":[{"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
        r#"{"choices":[{"message":{"content":"x","tool_calls":W}}],"usage":W}"#,
        r#"{"choices":[{"message":{"content":"x","tool_calls":[{"function":W}]}}]}"#,
        r#"{"choices":W}"#,
        r#"{"choices":[W]}"#,
        r#"{"id":"m","content":W,"usage":{"input_tokens":W}}"#,
        r#"{"id":"m","content":[{"type":"tool_use","id":"t","name":"f","input":W}]}"#,
        r#"{"id":"m","content":[{"type":W,"text":W}],"stop_reason":W}"#,
        r#"{"candidates":[{"content":{"parts":W}}],"usageMetadata":W}"#,
        r#"{"candidates":[{"content":{"parts":[{"functionCall":W}]}}]}"#,
        r#"{"candidates":W,"promptFeedback":W}"#,
        r#"{"message":W,"done":true}"#,
        r#"{"message":{"content":W,"tool_calls":[{"function":{"arguments":W}}]},"prompt_eval_count":W}"#,
    ];
    for shape in shapes {
        for w in wrong {
            let body = shape.replace('W', w);
            let b = body.as_bytes();
            let _ = openai::response_to_ir(b).map(|ir| anthropic::response_from_ir(&ir));
            let _ = anthropic::response_to_ir(b).map(|ir| openai::response_from_ir(&ir, 0));
            let _ = gemini::response_to_ir(b).map(|ir| openai::response_from_ir(&ir, 0));
            let _ = ollama::response_to_ir(b).map(|ir| anthropic::response_from_ir(&ir));
            let _ = openai::request_to_ir(b);
            let _ = anthropic::request_to_ir(b);
        }
    }
}
