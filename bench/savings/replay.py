"""Replays a corpus (corpus.py, or the real trajectories of real/expand.py) through a gateway,
one request at a time, and prints one JSON line: requests, bytes sent by the client, the
gateway's own time (X-Gatehouse-Overhead-Us) in total, the prompt tokens it forwarded upstream
(its exact count, from its request rows), and what those tokens cost with a provider's prompt
cache, read off what the mock received:

- cached tokens: a provider caches the prefix it has seen. Per conversation, each forwarded
  request's leading messages that are byte-identical to the previous forwarded request's are
  cache reads; the rest is written at the full price. (Providers cache by prefix in blocks and
  from a minimum size, 1,024 tokens at OpenAI; whole messages are a close, slightly generous
  reading.) Tokens of the cached messages are the row's exact count times their share of the
  request's message bytes.
- effective cost: input tokens at `INPUT_PRICE`, cache reads at `CACHED_PRICE` (dollars per
  million; the defaults are Claude Sonnet's 3.00 and 0.30 from the price table: reads at 10 %).
- prefix stability: the share of turns whose forwarded messages start with every message of the
  conversation's previous forwarded request, byte for byte; and, of the turns where the client's
  own history extended its previous request, the share the gateway kept stable.
- task kept: of the forwarded requests carrying a compaction summary, the share that still hold
  the conversation's instruction (the last user message before the first answer) verbatim.

usage: replay.py GATEWAY_BASE_URL CORPUS.jsonl MOCK_BASE_URL
"""
import json
import os
import re
import sys
import urllib.error
import urllib.request

INPUT_PRICE = float(os.environ.get("INPUT_PRICE", "3.0"))
CACHED_PRICE = float(os.environ.get("CACHED_PRICE", "0.3"))
SUMMARY = "[Summary of the earlier conversation, written by Gatehouse"

base, corpus, mock = sys.argv[1], sys.argv[2], sys.argv[3].rstrip("/")
mock_root = mock[: -len("/v1")] if mock.endswith("/v1") else mock


def get_json(url):
    with urllib.request.urlopen(url, timeout=120) as r:
        return json.load(r)


def text_of(content):
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


already = len(get_json(f"{mock_root}/mock/captured"))
sent_bytes = overhead_us = n = refused = 0
forwarded = []  # (conversation, task) of each request the gateway answered
tasks = {}
for line in open(corpus):
    item = json.loads(line)
    conv = item["conversation"]
    if conv not in tasks:
        # The instruction: the last user message before the first answer (SWE-agent sends a
        # demonstration first).
        opening = []
        for m in item["body"]["messages"]:
            if m.get("role") == "assistant":
                break
            if m.get("role") == "user":
                opening.append(m)
        task = text_of(opening[-1].get("content")) if opening else ""
        # What a summary keeps of it: the request without the context resent every turn.
        task = re.sub(r"<environment_details>.*?</environment_details>", "", task, flags=re.S)
        tasks[conv] = task.strip()
    data = json.dumps(item["body"]).encode()
    req = urllib.request.Request(
        f"{base}/v1/chat/completions", data=data,
        # Session names are plain: the real corpus's conversation ids hold slashes.
        headers={"content-type": "application/json", "x-gatehouse-session": f"conv-{list(tasks).index(conv)}"})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            r.read()
            overhead_us += int(r.headers.get("x-gatehouse-overhead-us", "0"))
            forwarded.append((conv, [json.dumps(m, sort_keys=True, ensure_ascii=False) for m in item["body"]["messages"]]))
    except urllib.error.HTTPError as e:
        # Refused (413: over the window): counted, and visible in the report.
        refused += 1
        e.read()
    sent_bytes += len(data)
    n += 1

rows = get_json(f"{base}/api/export/json?all=1")["requests"]
tokens = sum(row["prompt_tokens_est"] for row in rows)
compactions = get_json(f"{base}/api/compaction/stats")["global"]["count"]
errors = sum(1 for row in rows if row["status"] != 200)
answered = sorted((r for r in rows if r["status"] == 200 and not r.get("purpose")),
                  key=lambda r: r["id"])
bodies = get_json(f"{mock_root}/mock/captured")[already:]
if len(bodies) != len(forwarded) or len(answered) != len(forwarded):
    sys.exit(f"cannot align: {len(forwarded)} answered, {len(bodies)} received by the mock, {len(answered)} rows")

last = {}
last_client = {}
cached_tokens = stable = turns = compacted = task_kept = 0
client_stable = kept_stable = 0
cost = 0.0
for (conv, client), body, row in zip(forwarded, bodies, answered):
    msgs = [json.dumps(m, sort_keys=True, ensure_ascii=False) for m in body.get("messages", [])]
    total = sum(len(m) for m in msgs) or 1
    prev = last.get(conv)
    common = 0
    if prev is not None:
        while common < min(len(prev), len(msgs)) and prev[common] == msgs[common]:
            common += 1
        turns += 1
        stable += common == len(prev)
        # Some clients rewrite their own history (SWE-agent drops old observations): what the
        # gateway answers for is the turns where the client's own prefix held.
        before = last_client[conv]
        if client[: len(before)] == before:
            client_stable += 1
            kept_stable += common == len(prev)
    last[conv] = msgs
    last_client[conv] = client
    share = sum(len(m) for m in msgs[:common]) / total
    t = row["prompt_tokens_est"]
    cached = round(t * share)
    cached_tokens += cached
    cost += ((t - cached) * INPUT_PRICE + cached * CACHED_PRICE) / 1e6
    if any(SUMMARY in text_of(m.get("content")) for m in body.get("messages", [])):
        compacted += 1
        task = tasks.get(conv, "")
        sent = "\n".join(text_of(m.get("content")) for m in body.get("messages", []))
        task_kept += bool(task) and task in sent

print(json.dumps({
    "requests": n, "client_bytes": sent_bytes, "overhead_us": overhead_us,
    "upstream_prompt_tokens": tokens, "errors": errors + refused, "compactions": compactions,
    "cached_tokens": cached_tokens, "effective_cost_usd": round(cost, 4),
    "prefix_stable_turns": stable, "turns": turns,
    "client_stable_turns": client_stable, "kept_stable_turns": kept_stable,
    "compacted_requests": compacted, "task_kept": task_kept,
}))
