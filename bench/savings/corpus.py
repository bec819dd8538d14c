"""Generates a corpus of coding-agent conversations, as the request bodies a client would send.

usage: corpus.py OUT.jsonl [--conversations N] [--seed S]

Each conversation is a realistic agent session: a system prompt, a task, and 5-12 turns of tool
calls whose results are file reads, test logs, stack traces, JSON API outputs, diffs and grep
results, with the assistant's short answers in between and the occasional plain question. Every
turn is one line of OUT: {"conversation": i, "turn": t, "body": {...chat request...}}, the body
holding the whole history so far, as clients send it. Deterministic for a given seed; no network.
"""
import json
import random
import sys

WORDS = ("parser token buffer state index value result error config client request response "
         "session cache limit offset header stream chunk window budget retry backoff timeout "
         "writer reader queue batch row column schema migration handler route model provider").split()


def ident(r):
    return "_".join(r.choice(WORDS) for _ in range(r.randint(1, 3)))


def code_file(r, lines):
    out = [f"// src/{ident(r)}.rs", "use std::collections::HashMap;", ""]
    while len(out) < lines:
        name = ident(r)
        out.append(f"pub fn {name}(input: &str, limit: usize) -> Result<Vec<String>, Error> {{")
        for _ in range(r.randint(3, 12)):
            out.append(f"    let {ident(r)} = {ident(r)}(input, limit.saturating_sub({r.randint(1, 99)}))?;")
        out.append(f"    Ok(vec![{ident(r)}.to_string()])")
        out.append("}")
        out.append("")
    return "\n".join(out[:lines])


def test_log(r, n, failing):
    lines = ["$ cargo test", "stdout:", f"running {n} tests"]
    for i in range(n):
        ok = i not in failing
        lines.append(f"test {ident(r)}::tests::{ident(r)}_{i} ... {'ok' if ok else 'FAILED'}")
    for i in failing:
        lines += ["", f"---- tests::case_{i} stdout ----",
                  f"thread 'tests::case_{i}' panicked at src/{ident(r)}.rs:{r.randint(10, 900)}:{r.randint(1, 80)}:",
                  f"assertion `left == right` failed\n  left: {r.randint(0, 99)}\n right: {r.randint(100, 999)}"]
    lines.append(f"test result: {'FAILED' if failing else 'ok'}. {n - len(failing)} passed; {len(failing)} failed")
    return "\n".join(lines)


def stack_trace(r):
    frames = "\n".join(f"  at com.example.{ident(r)}.{ident(r).title()}Service.{ident(r)}({ident(r).title()}.java:{r.randint(10, 500)})"
                       for _ in range(r.randint(15, 40)))
    return f"Exception in thread \"main\" java.lang.NullPointerException: {ident(r)} is null\n{frames}"


def api_json(r, items):
    return json.dumps({"data": [{"id": r.randint(1, 10**6), "name": ident(r), "status": r.choice(["active", "pending", "closed"]),
                                 "created_at": f"2026-0{r.randint(1, 9)}-1{r.randint(0, 9)}T10:00:00Z",
                                 "tags": [ident(r) for _ in range(3)], "score": round(r.random() * 100, 2)}
                                for _ in range(items)], "page": 1, "total": items}, indent=2)


def diff(r, hunks):
    out = [f"diff --git a/src/{ident(r)}.rs b/src/{ident(r)}.rs", "--- a/src/x.rs", "+++ b/src/x.rs"]
    for _ in range(hunks):
        out.append(f"@@ -{r.randint(1, 400)},7 +{r.randint(1, 400)},8 @@")
        for _ in range(7):
            out.append(f"{r.choice([' ', ' ', '-', '+'])}    let {ident(r)} = {ident(r)}()?;")
    return "\n".join(out)


TOOLS = [
    ("read_file", lambda r: code_file(r, r.randint(60, 400))),
    ("run_tests", lambda r: test_log(r, r.randint(40, 220), sorted(r.sample(range(40), r.randint(0, 3))))),
    ("run_app", lambda r: stack_trace(r)),
    ("http_get", lambda r: api_json(r, r.randint(20, 120))),
    ("git_diff", lambda r: diff(r, r.randint(4, 30))),
    ("grep", lambda r: "\n".join(f"src/{ident(r)}.rs:{r.randint(1, 900)}:    {ident(r)}({ident(r)})" for _ in range(r.randint(20, 150)))),
]


def conversation(r, i):
    msgs = [{"role": "system", "content": "You are a coding agent working in the user's repository. Use the tools to inspect and change code; answer concisely."},
            {"role": "user", "content": f"The {ident(r)} module misbehaves when {ident(r)} is empty. Find out why and fix it."}]
    bodies = []
    for turn in range(r.randint(5, 12)):
        name, make = r.choice(TOOLS)
        call_id = f"call_{i}_{turn}"
        msgs.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps({"path": f"src/{ident(r)}.rs"})}}]})
        msgs.append({"role": "tool", "tool_call_id": call_id, "content": make(r)})
        bodies.append(json.loads(json.dumps({"model": "mock/echo", "messages": msgs})))
        msgs.append({"role": "assistant", "content": f"The {ident(r)} path skips the check for an empty {ident(r)}; next I will look at {ident(r)}."})
        if r.random() < 0.4:
            msgs.append({"role": "user", "content": f"Also, why does {ident(r)} use a {ident(r)} here? Keep the answer short."})
        else:
            msgs.append({"role": "user", "content": "Go on."})
    return bodies


def main():
    out = sys.argv[1]
    n = int(sys.argv[sys.argv.index("--conversations") + 1]) if "--conversations" in sys.argv else 30
    seed = int(sys.argv[sys.argv.index("--seed") + 1]) if "--seed" in sys.argv else 7
    r = random.Random(seed)
    with open(out, "w") as f:
        for i in range(n):
            for t, body in enumerate(conversation(r, i)):
                f.write(json.dumps({"conversation": i, "turn": t, "body": body}) + "\n")


if __name__ == "__main__":
    main()
