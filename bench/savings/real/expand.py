"""Prints the real-trajectory corpus as replay lines (the format of corpus.py, read by replay.py).

usage: expand.py [CORPUS.jsonl.gz] > out.jsonl

CORPUS defaults to $REAL_CORPUS, else ../shared/corpora/agent-trajectories/corpus.jsonl.gz
(written by build.py; kept outside the repository, see PROVENANCE.md). It stores each
conversation once, as a pool of distinct messages and, per model call, the indices of the messages
that call sent; each call becomes one line {"conversation", "turn", "body"}, the body holding the
full message history as the agent sent it, with "model" set to "mock/echo". No network.
"""
import gzip
import json
import os
import sys


def expand(path):
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            conv = json.loads(line)
            pool = conv["pool"]
            for turn, ids in enumerate(conv["requests"]):
                body = {"model": "mock/echo", "messages": [pool[i] for i in ids]}
                if "tools" in conv:
                    body["tools"] = conv["tools"]
                yield {"conversation": conv["conversation"], "turn": turn, "body": body}


def default_path():
    """$REAL_CORPUS, else the steering repo's copy: data from fetched repositories is kept
    under ../shared, never committed here (PROVENANCE.md says how to rebuild it)."""
    if os.environ.get("REAL_CORPUS"):
        return os.environ["REAL_CORPUS"]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    return os.path.join(os.path.dirname(root), "shared", "corpora", "agent-trajectories", "corpus.jsonl.gz")


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else default_path()
    out = sys.stdout
    try:
        for item in expand(path):
            out.write(json.dumps(item, ensure_ascii=False) + "\n")
    except BrokenPipeError:  # e.g. `expand.py | head`
        sys.stderr.close()


if __name__ == "__main__":
    main()
