"""Builds the long real-trajectory corpus (long.jsonl.gz, kept outside the repository: PROVENANCE.md §5).

usage: build_long.py SRC_ROOT [OUT.jsonl.gz]

Same layout, format and rules as build.py (whose Repo/pack/prefixes it reuses): SRC_ROOT holds
gruckion/mini-swe-agent either as a git directory at SRC_ROOT/gruckion+mini-swe-agent/repo or as a
plain checkout of the pinned commit at SRC_ROOT/gruckion/mini-swe-agent/. No network. OUT defaults
to long.jsonl.gz next to this file. The output is deterministic (gzip mtime 0).

Source (MIT, see PROVENANCE.md §5):

5. gruckion/mini-swe-agent @ d12a71affd95403b036b2bdbd827349b77bfffb9
   swebench_results/20251118_gemini-3-pro-74pct/trajs/<id>/<id>.traj.json: the 500 trajectories of
   mini-swe-agent v1.15.0 with google/gemini-3-pro-preview (via OpenRouter) on SWE-bench Verified,
   copied by that fork from the public s3://swe-bench-experiments/bash-only/
   20251118_mini-v1.15.0_gemini-3-pro-preview-20251118/ run. Each file's `messages` is the agent's
   whole message list (system, user task, then assistant / user-observation alternating); one
   request per assistant message, holding the messages before it (as build.py does for
   mini-swe-agent); the `extra` key (mini-swe-agent's bookkeeping: the raw provider response) is
   dropped, leaving role and content.

Selection (so a replay stays within minutes): the trajectories with at least MIN_CALLS assistant
messages, ordered by sha256 of the instance id, taken in that order until the next one would take
the expanded replay (every request repeats its history) past MAX_CHARS characters of message
content. Nothing in a message is edited; the model becomes "mock/echo" (set by expand.py).
"""
import gzip
import hashlib
import io
import json
import os
import sys

sys.dont_write_bytecode = True  # no __pycache__ in the repository
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from build import Repo, pack, prefixes  # noqa: E402

MINI_GEMINI = ("gruckion/mini-swe-agent", "d12a71affd95403b036b2bdbd827349b77bfffb9")
TRAJS = "swebench_results/20251118_gemini-3-pro-74pct/trajs"
MIN_CALLS = 30
MAX_CHARS = 60_000_000


def expanded_chars(reqs):
    return sum(len(m["content"]) for r in reqs for m in r)


def mini_gemini(root):
    repo = Repo(root, *MINI_GEMINI)
    paths = [p for p in repo.files(TRAJS) if p.endswith(".traj.json")]
    assert len(paths) == 500, len(paths)
    cands = []
    for path in paths:
        traj = json.loads(repo.read(path))
        assert traj["trajectory_format"] == "mini-swe-agent-1", path
        assert traj["info"]["mini_version"] == "1.15.0", path
        msgs = [{k: v for k, v in m.items() if k != "extra"} for m in traj["messages"]]
        assert all(set(m) == {"role", "content"} and isinstance(m["content"], str) for m in msgs), path
        reqs = prefixes(msgs)
        # Every model call is in the history (no retried call is missing).
        assert len(reqs) == traj["info"]["model_stats"]["api_calls"], path
        if len(reqs) >= MIN_CALLS:
            cands.append((hashlib.sha256(traj["instance_id"].encode()).hexdigest(), traj["instance_id"], path, reqs))
    out, total = [], 0
    for _, iid, path, reqs in sorted(cands):
        n = expanded_chars(reqs)
        if total + n > MAX_CHARS:
            break
        total += n
        out.append(pack(f"mini-swe-agent-gemini3/{iid}", "mini-swe-agent-swebench", path, reqs))
    return out


def main():
    root = sys.argv[1]
    dest = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "long.jsonl.gz")
    convs = mini_gemini(root)
    raw = "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in convs).encode()
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as g:
        g.write(raw)
    with open(dest, "wb") as f:
        f.write(buf.getvalue())
    n = sum(len(c["requests"]) for c in convs)
    print(f"{dest}: {len(convs)} conversations, {n} requests, {len(buf.getvalue())} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
