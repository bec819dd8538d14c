"""Python tiktoken on the same corpus, with the same vocabularies (verified by their SHA-256).

usage: tokens_tiktoken.py CORPUS_DIR VOCAB_DIR   (vocab files from export_vocab, see gen_golden.py)
"""
import json
import pathlib
import sys
import time

import tiktoken
import tiktoken_ext.openai_public as public
from tiktoken.load import load_tiktoken_bpe

corpus, vocab = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
texts = [p.read_text(encoding="utf-8") for p in sorted(corpus.glob("*.txt"))]
size = sum(len(t.encode()) for t in texts)
rounds = 50
out = {}
for name in ["cl100k_base", "o200k_base"]:
    public.load_tiktoken_bpe = lambda _u, expected_hash=None, n=name: load_tiktoken_bpe(
        str(vocab / f"{n}.tiktoken"), expected_hash=expected_hash)
    enc = tiktoken.Encoding(**getattr(public, name)())
    enc.encode_ordinary("warm")
    t = time.perf_counter()
    for _ in range(rounds):
        n = sum(len(enc.encode_ordinary(s)) for s in texts)
    secs = time.perf_counter() - t
    out[name] = {"bytes": size, "tokens": n, "mb_per_s": size * rounds / secs / 1e6,
                 "us_per_pass": secs * 1e6 / rounds}
print(json.dumps(out))
