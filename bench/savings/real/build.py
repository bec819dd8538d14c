"""Builds the real-trajectory corpus (corpus.jsonl.gz, kept outside the repository: PROVENANCE.md) from public coding-agent trajectories.

usage: build.py SRC_ROOT [OUT.jsonl.gz]

SRC_ROOT holds the source repositories, either as git directories at SRC_ROOT/<owner>+<name>/repo
(any clone that contains the pinned commit; files are read with `git show COMMIT:PATH`) or as
plain checkouts of the pinned commit at SRC_ROOT/<owner>/<name>/. No network. OUT defaults to
corpus.jsonl.gz next to this file. The output is deterministic (gzip mtime 0).

Sources (all MIT; licence texts and counts in PROVENANCE.md):

1. SWE-agent/SWE-agent @ 3ea751c087f32b16e039a2233dd6eefecef325d5
   trajectories/demonstrations/**/*.traj and tests/test_data/trajectories/**/*.traj (all 22: 19 + 3).
   Each .traj has `history`, the agent's message list; one request per assistant message, holding
   the history before it, converted the way SWE-agent's own `_history_to_messages` does (keeps
   role/content/tool_calls/thinking_blocks/cache_control, `tool_call_ids[0]` -> `tool_call_id`).
   Where the trajectory also records the messages it sent at each step (`trajectory[k].messages`,
   present in one file that used the `last_n_observations` history processor), those are used
   instead, so the observations SWE-agent itself elided stay elided.
2. SWE-agent/mini-swe-agent @ a83fcae82d2a08f0ee0c688f9d137b3566c097f8
   tests/test_data/github_issue.traj.json (the one non-dummy trajectory in the repository;
   tests/test_data/local.traj.json, a scripted "Blah blah blah" run, is left out).
   One request per assistant message, holding the messages before it.
3. OpenHands/software-agent-sdk @ 611629e6999ad398dc49c761721eefe18d5e6bd9
   tests/fixtures/llm_data/llm-logs/*.json (native tool calls, claude-sonnet-4) and
   tests/fixtures/llm_data/nonfncall-llm-logs/*.json (prompt-based tool calls, deepseek-chat).
   These are LiteLLM completion logs: each file is one request exactly as sent (`messages`, and
   `tools` for the native one); files sorted by name (= timestamp) give the order.
4. All-Hands-AI/OpenHands (now OpenHands/OpenHands) @ f60652dc5a0f01e7fb5fefcd1b9741bffa8d97e7
   (the last commit before the mocks were deleted in 84a578ad)
   tests/integration/mock/eventstream_runtime/{CodeActAgent,CodeActSWEAgent}/<test>/prompt_NNN.log
   for the tests edits, simple_task_rejection, write_simple_script. Each prompt_NNN.log is the
   N-th prompt the agent sent, its messages' text joined by "\\n\\n----------\\n\\n" with no
   roles; the roles are CodeActAgent's fixed layout then:
   system, user (example + task), then assistant and user ("OBSERVATION:...") alternating. A log
   is used only if it splits into exactly that layout (every later user part starts with
   "OBSERVATION:"), which excludes browse_internet, ipython and CodeActSWEAgent/ipython_module;
   CodeActAgent/ipython_module is left out because its logs were committed with CRLF line ends.

Nothing in a message is edited; the model becomes "mock/echo" (set by expand.py).

Output: one JSON line per conversation, {"conversation", "source", "file", "pool": [message...],
"requests": [[pool index...], ...], "tools"?}; expand.py turns it into replay lines.
"""
import glob
import gzip
import io
import json
import os
import subprocess
import sys

SWE_AGENT = ("SWE-agent/SWE-agent", "3ea751c087f32b16e039a2233dd6eefecef325d5")
MINI = ("SWE-agent/mini-swe-agent", "a83fcae82d2a08f0ee0c688f9d137b3566c097f8")
OH_SDK = ("OpenHands/software-agent-sdk", "611629e6999ad398dc49c761721eefe18d5e6bd9")
OH_V0 = ("All-Hands-AI/OpenHands", "f60652dc5a0f01e7fb5fefcd1b9741bffa8d97e7")


class Repo:
    def __init__(self, root, repo, commit):
        owner, name = repo.split("/")
        self.commit = commit
        self.git = os.path.join(root, f"{owner}+{name}", "repo")
        self.tree = os.path.join(root, owner, name)
        if not os.path.isdir(self.git):
            self.git = None
            if not os.path.isdir(self.tree):
                sys.exit(f"missing source {repo}: neither {root}/{owner}+{name}/repo nor {self.tree}")

    def files(self, prefix):
        if self.git:
            out = subprocess.run(["git", "--git-dir", self.git, "ls-tree", "-r", "--name-only", self.commit, prefix],
                                 check=True, capture_output=True, text=True).stdout
            return sorted(out.split("\n")[:-1])
        base = os.path.join(self.tree, prefix)
        return sorted(os.path.relpath(p, self.tree) for p in glob.glob(base + "/**", recursive=True) if os.path.isfile(p))

    def read(self, path):
        if self.git:
            return subprocess.run(["git", "--git-dir", self.git, "show", f"{self.commit}:{path}"],
                                  check=True, capture_output=True).stdout.decode()
        with open(os.path.join(self.tree, path), encoding="utf-8") as f:
            return f.read()


def pack(conv_id, source, path, requests, tools=None):
    """requests: list of message lists. Stores each distinct message once."""
    pool, index, reqs = [], {}, []
    for msgs in requests:
        ids = []
        for m in msgs:
            key = json.dumps(m, sort_keys=True, ensure_ascii=False)
            if key not in index:
                index[key] = len(pool)
                pool.append(m)
            ids.append(index[key])
        reqs.append(ids)
    rec = {"conversation": conv_id, "source": source, "file": path, "pool": pool, "requests": reqs}
    if tools:
        rec["tools"] = tools
    return rec


def prefixes(msgs):
    """One request per assistant message: the messages before it."""
    return [msgs[:i] for i, m in enumerate(msgs) if m["role"] == "assistant"]


def swe_agent_message(item):
    # Mirrors sweagent/agent/models.py::_history_to_messages (convert_system_to_user = False).
    role = item["role"]
    if role == "tool":
        msg = {"role": role, "content": item["content"], "tool_call_id": item["tool_call_ids"][0]}
    elif item.get("tool_calls") is not None:
        msg = {"role": role, "content": item["content"], "tool_calls": item["tool_calls"]}
        if item.get("thinking_blocks"):
            msg["thinking_blocks"] = item["thinking_blocks"]
    else:
        msg = {"role": role, "content": item["content"]}
    if "cache_control" in item:
        msg["cache_control"] = item["cache_control"]
    return msg


def swe_agent(root):
    repo = Repo(root, *SWE_AGENT)
    paths = [p for pre in ("trajectories/demonstrations", "tests/test_data/trajectories")
             for p in repo.files(pre) if p.endswith(".traj")]
    out = []
    for path in sorted(paths):
        traj = json.loads(repo.read(path))
        history = traj["history"]
        agents = {h.get("agent") for h in history}
        assert len(agents) == 1, (path, agents)
        msgs = [swe_agent_message(h) for h in history]
        reqs = prefixes(msgs)
        steps = traj.get("trajectory") or []
        if steps and all(s.get("messages") for s in steps) and len(steps) == len(reqs):
            # The messages SWE-agent actually sent (after its history processors).
            sent = [reqs[0]] + [[swe_agent_message(h) for h in s["messages"]] for s in steps[:-1]]
            for a, b in zip(sent, reqs):
                assert len(a) == len(b) and [m["role"] for m in a] == [m["role"] for m in b], path
            reqs = sent
        parts = path.split("/")
        name = "/".join(parts[2:]) if parts[0] == "trajectories" else "test_data/" + parts[-1]
        out.append(pack(f"swe-agent/{name.removesuffix('.traj')}", "swe-agent", path, reqs))
    return out


def mini_swe_agent(root):
    repo = Repo(root, *MINI)
    path = "tests/test_data/github_issue.traj.json"
    data = json.loads(repo.read(path))
    msgs = data["messages"] if isinstance(data, dict) else data
    # mini-swe-agent keeps its own bookkeeping in "extra" and strips it before the call.
    msgs = [{k: v for k, v in m.items() if k != "extra"} for m in msgs]
    return [pack("mini-swe-agent/github_issue", "mini-swe-agent", path, prefixes(msgs))]


def openhands_sdk(root):
    repo = Repo(root, *OH_SDK)
    out = []
    for sub, native in (("llm-logs", True), ("nonfncall-llm-logs", False)):
        d = f"tests/fixtures/llm_data/{sub}"
        files = [p for p in repo.files(d) if p.endswith(".json")]
        logs = [json.loads(repo.read(p)) for p in files]
        reqs = [log["messages"] for log in logs]
        tools = None
        if native:
            tools = logs[0]["tools"]
            assert all(log["tools"] == tools for log in logs)
        # Prompt-based tool calling: the tool specs are rendered into the system prompt and the
        # calls/results into the text, so no `tools` field is sent (see PROVENANCE.md).
        out.append(pack(f"openhands-sdk/{sub}", "openhands-sdk", d + "/*.json", reqs, tools))
    return out


OH_V0_TESTS = [
    "CodeActAgent/test_edits", "CodeActAgent/test_simple_task_rejection",
    "CodeActAgent/test_write_simple_script", "CodeActSWEAgent/test_edits",
    "CodeActSWEAgent/test_simple_task_rejection", "CodeActSWEAgent/test_write_simple_script",
]
SEP = "\n\n----------\n\n"


def openhands_v0(root):
    repo = Repo(root, *OH_V0)
    out = []
    for test in OH_V0_TESTS:
        d = f"tests/integration/mock/eventstream_runtime/{test}"
        prompts = [p for p in repo.files(d) if os.path.basename(p).startswith("prompt_")]
        reqs = []
        for p in prompts:
            text = repo.read(p)
            assert "\r" not in text, p
            parts = text.split(SEP)
            # Leading separator, system, user (task), then assistant / observation pairs.
            assert parts[0] == "" and len(parts) % 2 == 1, p
            body = parts[1:]
            msgs = [{"role": "system", "content": body[0]}, {"role": "user", "content": body[1]}]
            for i, text in enumerate(body[2:]):
                if i % 2:
                    assert text.startswith("OBSERVATION:"), p
                msgs.append({"role": "user" if i % 2 else "assistant", "content": text})
            assert msgs[-1]["role"] == "user", p
            reqs.append(msgs)
        out.append(pack(f"openhands-v0/{test}", "openhands-v0", d + "/prompt_*.log", reqs))
    return out


def main():
    root = sys.argv[1]
    dest = sys.argv[2] if len(sys.argv) > 2 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus.jsonl.gz")
    convs = swe_agent(root) + mini_swe_agent(root) + openhands_sdk(root) + openhands_v0(root)
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
