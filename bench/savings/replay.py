"""Replays a corpus (corpus.py) through a gateway, one request at a time, and prints one JSON line:
requests, bytes sent by the client, the gateway's own time (X-Gatehouse-Overhead-Us) in total,
and the prompt tokens it forwarded upstream (its exact count, from its request rows).

usage: replay.py GATEWAY_BASE_URL CORPUS.jsonl
"""
import json
import sys
import urllib.error
import urllib.request

base, corpus = sys.argv[1], sys.argv[2]
sent_bytes = 0
overhead_us = 0
n = 0
refused = 0
for line in open(corpus):
    item = json.loads(line)
    data = json.dumps(item["body"]).encode()
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", data=data,
        headers={"content-type": "application/json", "x-gatehouse-session": f"conv-{item['conversation']}"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            r.read()
            overhead_us += int(r.headers.get("x-gatehouse-overhead-us", "0"))
    except urllib.error.HTTPError as e:
        # Refused (413: over the window): counted, and visible in the report.
        refused += 1
        e.read()
    sent_bytes += len(data)
    n += 1
with urllib.request.urlopen(f"{base}/api/export/json?all=1", timeout=60) as r:
    rows = json.load(r)["requests"]
tokens = sum(row["prompt_tokens_est"] for row in rows)
with urllib.request.urlopen(f"{base}/api/compaction/stats", timeout=60) as r:
    compactions = json.load(r)["global"]["count"]
errors = sum(1 for row in rows if row["status"] != 200)
print(json.dumps({"requests": n, "client_bytes": sent_bytes, "overhead_us": overhead_us,
                  "upstream_prompt_tokens": tokens, "errors": errors + refused, "compactions": compactions}))
