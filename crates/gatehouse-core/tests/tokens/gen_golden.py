"""Produces golden.json: Python tiktoken's counts on the corpus, the oracle for Gatehouse's counter.

Runs offline. Python tiktoken would download its vocabularies; instead they are exported from
the vocabularies Gatehouse embeds and handed to tiktoken, which checks them against OpenAI's
published SHA-256 before using them, so a vocabulary that differed would fail here, not pass.

    cargo run -p gatehouse-core --example export_vocab -- cl100k_base /tmp/cl100k_base.tiktoken
    cargo run -p gatehouse-core --example export_vocab -- o200k_base /tmp/o200k_base.tiktoken
    python3 -m pip install tiktoken
    python3 gen_golden.py /tmp
"""
import json
import pathlib
import sys

import tiktoken
import tiktoken_ext.openai_public as public
from tiktoken.load import load_tiktoken_bpe

vocab_dir = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp")
here = pathlib.Path(__file__).parent


def local(name):
    def loader(_url, expected_hash=None):
        # expected_hash is OpenAI's published SHA-256 of the file; tiktoken verifies it.
        return load_tiktoken_bpe(str(vocab_dir / f"{name}.tiktoken"), expected_hash=expected_hash)
    return loader


golden = {"tiktoken_version": tiktoken.__version__, "encodings": {}}
for name in ["cl100k_base", "o200k_base"]:
    public.load_tiktoken_bpe = local(name)
    enc = tiktoken.Encoding(**getattr(public, name)())
    files = {}
    for path in sorted((here / "corpus").glob("*.txt")):
        text = path.read_text(encoding="utf-8")
        files[path.name] = {
            "whole": len(enc.encode_ordinary(text)),
            "lines": [len(enc.encode_ordinary(line)) for line in text.split("\n")],
        }
    golden["encodings"][name] = files

(here / "golden.json").write_text(json.dumps(golden, indent=1) + "\n")
print("wrote", here / "golden.json")
