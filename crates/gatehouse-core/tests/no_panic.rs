//! The request parser and the token counter never panic, whatever the bytes.
//!
//! A deterministic mutation loop (no extra dependencies): valid bodies are cut, spliced, flipped
//! and filled with hostile values, and every result must be a value or a clean error.

use gatehouse_core::{ChatRequestView, Encoding, TokenCounter};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#,
    r#"{"model":"p/m","stream":true,"stream_options":{"include_usage":false},"messages":[{"role":"system","content":"s"},{"role":"user","name":"n","content":[{"type":"text","text":"a\nb"},{"type":"image_url","image_url":{"url":"data:x"}},{"type":"input_audio","input_audio":{}}]},{"role":"assistant","content":null,"tool_calls":[{"id":"1","type":"function","function":{"name":"f","arguments":"{\"a\":1}"}}]},{"role":"tool","tool_call_id":"1","content":"out"}],"tools":[{"type":"function","function":{"name":"f"}}],"max_tokens":5}"#,
    r#"{"model":"\u00e9\ud83d\ude00","messages":[{"role":"user","content":"\u0000\t<|endoftext|>"}]}"#,
];

const HOSTILE: &[&str] = &[
    "null",
    "true",
    "-1",
    "1e999",
    "\"\\ud800\"",
    "[]",
    "{}",
    "[[[[[[[[[[]]]]]]]]]]",
    "\"\"",
    "18446744073709551616",
    "{\"type\":null}",
    "[{\"type\":\"text\",\"text\":7}]",
];

#[test]
fn parser_and_counter_survive_mutations() {
    let counter = TokenCounter::new(1024);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut ok = 0;
    for round in 0..5_000 {
        let seed = SEEDS[round % SEEDS.len()].as_bytes();
        let mut body = seed.to_vec();
        for _ in 0..=rng.below(3) {
            if body.is_empty() {
                break;
            }
            match rng.below(5) {
                0 => body.truncate(rng.below(body.len() + 1)),
                1 => {
                    let i = rng.below(body.len());
                    body[i] = (rng.next() & 0xff) as u8;
                }
                2 => {
                    let i = rng.below(body.len() + 1);
                    let h = HOSTILE[rng.below(HOSTILE.len())].as_bytes();
                    body.splice(i..i, h.iter().copied());
                }
                3 => {
                    // Replace a value after a colon with a hostile one.
                    let colons: Vec<usize> = body
                        .iter()
                        .enumerate()
                        .filter(|(_, b)| **b == b':')
                        .map(|(i, _)| i)
                        .collect();
                    if let Some(&c) = colons.get(rng.below(colons.len())) {
                        let end = (c + 1 + rng.below(12)).min(body.len());
                        let h = HOSTILE[rng.below(HOSTILE.len())].as_bytes();
                        body.splice(c + 1..end, h.iter().copied());
                    }
                }
                _ => {
                    let i = rng.below(body.len());
                    let j = rng.below(body.len());
                    body.swap(i, j);
                }
            }
        }
        if let Ok(view) = ChatRequestView::parse(&body) {
            ok += 1;
            let enc = if round % 2 == 0 {
                Encoding::Cl100k
            } else {
                Encoding::O200k
            };
            let c = counter.count_prompt(enc, &view);
            assert!(c.tokens >= 3);
            let _ = view.first_user_preview(50);
            let _ = view.last_user_preview(200);
            assert!(view.model_span.end <= body.len());
        }
    }
    assert!(
        ok > 100,
        "the mutations should leave some bodies valid ({ok})"
    );
}

#[test]
fn counter_survives_arbitrary_unicode() {
    // Random code points are the tokenizer's slowest input (about 3 µs each in release, far
    // more unoptimised), so a few hundred strings suffice here.
    let mut rng = Rng(42);
    for _ in 0..300 {
        let len = rng.below(64);
        let s: String = (0..len)
            .filter_map(|_| char::from_u32((rng.next() % 0x11_0000) as u32))
            .collect();
        let _ = Encoding::Cl100k.count(&s);
        let _ = Encoding::O200k.count(&s);
    }
}
