"""Writes the token-count corpus (run once; the files are committed).

Covers what a coding gateway sees: English and European prose, source code, CJK, JSON,
emoji (ZWJ sequences, flags, skin tones) and pathological repeats.
"""
import json
import pathlib

out = pathlib.Path(__file__).parent / "corpus"
out.mkdir(exist_ok=True)

prose = """The gateway sits between the assistant and the provider. It counts every token, keeps the
context window in view, and never buffers a stream. When the window fills, it compacts history
instead of failing; when a provider stumbles, it retries before the first byte and no later.

L'été dernier, nous avons réécrit le proxy : déjà 3 073 lignes, un seul fichier, aucune couche.
Über die Brücke gehen Größen wie „Token“ und »Kontext« — Maße, die man zählen muss.
¿Dónde está la ventana de contexto? ¡Aquí, al 85 %, justo antes de la compactación!
Numbers: 3.14159, 2,718, 1e-9, 0xDEADBEEF, 1_000_000, v1.2.3-rc.4, 192.168.0.1:8080.
Contractions it's we'll they'd I'M YOU'RE — and 'quoted' "double" `backticks`.
"""

code = '''use std::collections::HashMap;

/// Counts tokens per message, caching by content hash.
pub fn count(messages: &[Message], cache: &mut HashMap<u64, usize>) -> usize {
\tlet mut total = 3; // reply primer
\tfor m in messages {
\t\ttotal += *cache.entry(m.hash()).or_insert_with(|| 3 + encode(&m.content).len());
\t}
\ttotal
}

def retry(fn, attempts=3, backoff=1.0):
    for i in range(attempts):
        try:
            return fn()
        except (ConnectionError, TimeoutError) as e:  # noqa: PERF203
            time.sleep(backoff * 2 ** i)
    raise RuntimeError(f"gave up after {attempts} attempts")

const sse = async function* (res) {
  const reader = res.body.getReader(); let buf = "";
  for (;;) { const {done, value} = await reader.read(); if (done) return;
    buf += new TextDecoder().decode(value); let i;
    while ((i = buf.indexOf("\\n\\n")) >= 0) { yield buf.slice(0, i); buf = buf.slice(i + 2); } }
};
SELECT session_id, SUM(COALESCE(prompt_tokens, prompt_tokens_est)) FROM requests GROUP BY 1;
    '''

cjk = """上下文窗口已满时，网关会压缩历史记录，而不是直接失败。令牌计数必须精确。
日本語のテキスト：コンテキストウィンドウが85％に達すると、自動的に圧縮されます。カタカナとひらがな。
한국어 텍스트: 게이트웨이는 모든 토큰을 정확하게 계산합니다. 스트리밍은 버퍼링하지 않습니다.
繁體中文：閘道器會在視窗填滿之前壓縮對話歷史。混合 mixed 文本 text 123。
"""

data = {
    "model": "mistral/codestral-2501",
    "messages": [
        {"role": "system", "content": "You are a careful reviewer."},
        {"role": "user", "content": [{"type": "text", "text": "Review this diff"}]},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
            "function": {"name": "read_file", "arguments": "{\"path\": \"src/main.rs\", \"lines\": [1, 200]}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "fn main() {\n    println!(\"hi\");\n}\n"},
    ],
    "tools": [{"type": "function", "function": {"name": "read_file", "parameters": {
        "type": "object", "properties": {"path": {"type": "string"}, "lines": {"type": "array", "items": {"type": "integer"}}},
        "required": ["path"]}}}],
    "temperature": 0.2, "max_tokens": 1024, "stream": True, "nested": {"a": [1, 2.5, -3e10, True, False, None, "ü\u0000\t"]},
}
jsontext = json.dumps(data, indent=2, ensure_ascii=False) + "\n" + json.dumps(data, separators=(",", ":")) + "\n"

emoji = """👋 Hello 🌍! 👨‍👩‍👧‍👦 family, 👍🏽 thumbs, 🏳️‍🌈 flag, 🇫🇷🇯🇵🇺🇸 flags, 🧑🏻‍💻 coder.
Keycaps 1️⃣2️⃣#️⃣, variation ☺︎ vs ☺️, math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢, combining é vs é, Z̷a̸l̵g̶o̴.
"""

repeats = "\n".join([
    "a" * 5000,
    " " * 3000 + "x",
    "\n" * 500,
    "ab" * 2500,
    "1234567890" * 300,
    "<|endoftext|>" * 50 + " <|fim_prefix|> <|im_start|>",
    "😀" * 400,
    "\t \t \n" * 200,
    "the " * 1500,
    "ﷺ" * 200,
])

for name, text in [("prose.txt", prose), ("code.txt", code), ("cjk.txt", cjk),
                   ("json.txt", jsontext), ("emoji.txt", emoji), ("repeats.txt", repeats)]:
    (out / name).write_text(text, encoding="utf-8")
