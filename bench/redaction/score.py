"""Scores the redaction rules: `gatehouse scan` over the labelled corpus (bench/redaction/secrets,
labels.json), the hard negatives (bench/redaction/negatives, where nothing should fire) and a
large body of ordinary code: the vendored dependencies this repository pins (the crates of
Cargo.lock under ~/.cargo/registry/src, tests/clients/node_modules from package-lock.json, the
Python packages of .venv from tests/clients/requirements.txt), those present on this machine.

usage: GATEHOUSE_BIN=target/release/gatehouse python3 bench/redaction/score.py [--out FILE]
Prints a Markdown report; writes a JSON summary (default bench/results/redaction.json).
"""
import collections
import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.join(ROOT, "bench", "redaction")
BIN = os.environ.get("GATEHOUSE_BIN", os.path.join(ROOT, "target", "release", "gatehouse"))
out_path = os.path.join(ROOT, "bench", "results", "redaction.json")
if "--out" in sys.argv:
    out_path = sys.argv[sys.argv.index("--out") + 1]


def scan(paths):
    if not paths:
        return [], ""
    p = subprocess.run([BIN, "scan", *paths], capture_output=True, text=True, check=True)
    return [json.loads(l) for l in p.stdout.splitlines() if l.strip()], p.stderr.strip()


def line_text(path, line):
    try:
        with open(path, errors="replace") as f:
            for i, l in enumerate(f, 1):
                if i == line:
                    return l.strip()[:120]
    except OSError:
        pass
    return ""


def vendored():
    paths = []
    lock = open(os.path.join(ROOT, "Cargo.lock")).read()
    crates = set()
    name = None
    for l in lock.splitlines():
        if l.startswith("name = "):
            name = l.split('"')[1]
        elif l.startswith("version = ") and name:
            version = l.split('"')[1]
            crates.add(f"{name}-{version}")
            name = None
    for reg in glob.glob(os.path.expanduser("~/.cargo/registry/src/*/")):
        paths += sorted(os.path.join(reg, c) for c in crates if os.path.isdir(os.path.join(reg, c)))
    for extra in ["tests/clients/node_modules", ".venv/lib/python3.11/site-packages"]:
        if os.path.isdir(os.path.join(ROOT, extra)):
            paths.append(os.path.join(ROOT, extra))
    return paths


labels = json.load(open(os.path.join(HERE, "labels.json")))
found, _ = scan([os.path.join(HERE, "secrets")])
rel = lambda p: os.path.relpath(p, HERE)
hits = {(rel(f["path"]), f["line"], f["kind"]) for f in found}
at_line = {(rel(f["path"]), f["line"]) for f in found}
per_kind = collections.defaultdict(lambda: {"labels": 0, "found": 0, "false": 0, "wrong_kind": 0})
for l in labels:
    k = per_kind[l["kind"]]
    k["labels"] += 1
    if (l["file"], l["line"], l["kind"]) in hits:
        k["found"] += 1
    elif (l["file"], l["line"]) in at_line:
        k["wrong_kind"] += 1
labelled = {(l["file"], l["line"], l["kind"]) for l in labels}
for h in hits - labelled:
    per_kind[h[2]]["false"] += 1

neg, _ = scan([os.path.join(HERE, "negatives")])
body_paths = vendored()
body, body_note = scan(body_paths)

print("## Labelled secrets (bench/redaction/secrets)\n")
print("| kind | labelled | found | wrong kind | false | precision | recall |")
print("|---|---:|---:|---:|---:|---:|---:|")
summary = {"kinds": {}, "negatives": [], "body": {}}
for kind in sorted(per_kind):
    k = per_kind[kind]
    tp = k["found"]
    prec = tp / (tp + k["false"]) if tp + k["false"] else 1.0
    rec = tp / k["labels"] if k["labels"] else 1.0
    summary["kinds"][kind] = {**k, "precision": prec, "recall": rec}
    print(f"| {kind} | {k['labels']} | {tp} | {k['wrong_kind']} | {k['false']} | {prec:.0%} | {rec:.0%} |")
total = sum(k["labels"] for k in per_kind.values())
tp = sum(k["found"] for k in per_kind.values())
print(f"\nAll kinds: {tp} of {total} secrets found, {sum(k['false'] for k in per_kind.values())} false findings.\n")
print(f"## Hard negatives (bench/redaction/negatives): {len(neg)} findings\n")
for f in neg:
    summary["negatives"].append(f)
    print(f"- {rel(f['path'])}:{f['line']} {f['kind']}: `{line_text(f['path'], f['line'])}`")
kinds = collections.Counter(f["kind"] for f in body)
summary["body"] = {"paths": len(body_paths), "scan": body_note, "findings": dict(kinds)}
print(f"\n## Ordinary code: vendored dependencies ({len(body_paths)} roots)\n\n{body_note}\n")
for kind, n in kinds.most_common():
    print(f"- {kind}: {n}")
for f in body[:50]:
    print(f"  - {f['path'].replace(os.path.expanduser('~'), '~')}:{f['line']} {f['kind']}: `{line_text(f['path'], f['line'])}`")
os.makedirs(os.path.dirname(out_path), exist_ok=True)
json.dump(summary, open(out_path, "w"), indent=1)
print(f"\nwrote {os.path.relpath(out_path, ROOT)}")
