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
