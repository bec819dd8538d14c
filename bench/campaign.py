#!/usr/bin/env python3
"""Fault and abuse campaign against the release binaries (outside CI; figures in RESULTS.md).

  python3 bench/campaign.py crash [--rounds 3] [--seconds 3]
      64 concurrent clients, then `kill -9` of the gateway: counts the answered requests whose
      row is missing (goal: at most one writer batch window, max_commit_delay_ms of traffic),
      and checks the database opens cleanly and `gatehouse check` passes.

  python3 bench/campaign.py faults [--requests 200]
      A fault matrix with a fallback configured for every faulty model: provider resets,
      stalled heads, silent streams, 5xx storms, slow readers, a full disk, a locked database.
      Counts client-visible failures (goal 0) and rows lost (goal 0).

Needs `cargo build --release -p gatehouse -p gatehouse-mock` first; the full-disk case needs
root (it mounts a small tmpfs). Only the standard library is used.
"""

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.join(ROOT, "target", "release")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_ready(port, path="/health/live", within=20.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", path)
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"port {port} never answered {path}")


class Resetter(threading.Thread):
    """A provider that accepts each connection and resets it at once."""

    def __init__(self):
        super().__init__(daemon=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(256)
        self.port = self.sock.getsockname()[1]

    def run(self):
        while True:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            c.close()


def start(data_dir, mock_port, extra="", reset_port=None):
    port = free_port()
    cfg = os.path.join(data_dir, "config.toml")
    with open(cfg, "w") as f:
        f.write(f"""
[server]
data_dir = "{data_dir}"
shutdown_grace_secs = 2
[proxy]
retries = 2
retry_backoff_ms = 10
[proxy.timeouts]
connect = 1
first_byte = 1
idle = 2
total = 5
[proxy.circuit_breaker]
failures = 0
open_secs = 1
[providers.mock]
type = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "sk-campaign"
[providers.backup]
type = "openai"
base_url = "http://127.0.0.1:{mock_port}/v1"
api_key = "sk-campaign"
[providers.dead]
type = "openai"
base_url = "http://127.0.0.1:{reset_port or 9}/v1"
api_key = "sk-campaign"
[models."backup/good"]
provider = "backup"
model = "chunks:3"
max_context_size = 131072
[models."mock/good"]
provider = "mock"
model = "chunks:3"
max_context_size = 131072
[models."dead/reset"]
provider = "dead"
model = "x"
max_context_size = 131072
fallbacks = ["backup/good"]
[models."mock/stall"]
provider = "mock"
model = "first:4000"
max_context_size = 131072
fallbacks = ["backup/good"]
fallback_on_timeout = true
[models."mock/silent"]
provider = "mock"
model = "silent:99"
max_context_size = 131072
fallbacks = ["backup/good"]
[models."mock/storm"]
provider = "mock"
model = "status:500"
max_context_size = 131072
fallbacks = ["backup/good"]
[models."mock/slow"]
provider = "mock"
model = "chunks:20+gap:20"
max_context_size = 131072
{extra}
""")
    p = subprocess.Popen(
        [os.path.join(BIN, "gatehouse"), "serve", "--config", cfg, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "GATEHOUSE_LOG": "error", "HOME": data_dir},
    )
    wait_ready(port)
    return p, port, cfg


def chat(port, model, stream=False, slow_read=False, timeout=30):
    """One request: (request id, status or None when no answer, complete)."""
    rid = str(uuid.uuid4())
    body = json.dumps({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "Please review this function. " * 20}],
    })
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        c.request("POST", "/v1/chat/completions", body,
                  {"content-type": "application/json", "x-request-id": rid})
        r = c.getresponse()
        if slow_read:
            data = b""
            while True:
                piece = r.read(16)
                if not piece:
                    break
                data += piece
                time.sleep(0.005)
        else:
            data = r.read()
        complete = r.status == 200 and (not stream or data.rstrip().endswith(b"data: [DONE]"))
        if stream and b"stream_interrupted" in data:
            complete = False
        return rid, r.status, complete
    except OSError:
        return rid, None, False


def rows_for(db, ids):
    con = sqlite3.connect(db, timeout=30)
    try:
        found = set()
        ids = list(ids)
        for i in range(0, len(ids), 500):
            part = ids[i:i + 500]
            q = "SELECT request_id FROM requests WHERE request_id IN (%s)" % ",".join("?" * len(part))
            found.update(r[0] for r in con.execute(q, part))
        return found
    finally:
        con.close()


def wait_writable(port, within=60.0):
    deadline = time.time() + within
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/health/ready")
            if c.getresponse().status == 200:
                return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def crash(args):
    mock_port = free_port()
    mock = subprocess.Popen([os.path.join(BIN, "gatehouse-mock"), "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL)
    wait_ready(mock_port, "/v1/models")
    results = []
    try:
        for round_ in range(args.rounds):
            data = tempfile.mkdtemp(prefix="gh-crash-")
            gw, port, cfg = start(data, mock_port)
            answered, lock, stop = [], threading.Lock(), threading.Event()

            def client():
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                body = json.dumps({"model": "mock/good", "messages": [
                    {"role": "user", "content": "Please review this function. " * 20}]})
                while not stop.is_set():
                    rid = str(uuid.uuid4())
                    try:
                        c.request("POST", "/v1/chat/completions", body,
                                  {"content-type": "application/json", "x-request-id": rid})
                        r = c.getresponse()
                        r.read()
                        if r.status == 200:
                            with lock:
                                answered.append(rid)
                    except OSError:
                        return

            threads = [threading.Thread(target=client, daemon=True) for _ in range(64)]
            t0 = time.time()
            for t in threads:
                t.start()
            time.sleep(args.seconds)
            gw.send_signal(signal.SIGKILL)
            killed_at = time.time()
            gw.wait()
            stop.set()
            for t in threads:
                t.join(timeout=10)
            db = os.path.join(data, "gatehouse.db")
            con = sqlite3.connect(db)
            integrity = con.execute("PRAGMA integrity_check").fetchone()[0]
            con.close()
            found = rows_for(db, answered)
            lost = len(answered) - len(found)
            rps = len(answered) / (killed_at - t0)
            check = subprocess.run([os.path.join(BIN, "gatehouse"), "check", "--config", cfg],
                                   capture_output=True, text=True)
            results.append({
                "round": round_ + 1,
                "answered": len(answered),
                "rows_lost": lost,
                "rps": round(rps),
                "one_batch_window_rows": round(rps * 0.020),
                "integrity": integrity,
                "check_ok": check.returncode == 0,
            })
            print(json.dumps(results[-1]), flush=True)
            shutil.rmtree(data, ignore_errors=True)
    finally:
        mock.kill()
    return results


def run_many(n, fn, concurrency=16):
    out, lock = [], threading.Lock()
    it = iter(range(n))

    def worker():
        while True:
            with lock:
                try:
                    next(it)
                except StopIteration:
                    return
            r = fn()
            with lock:
                out.append(r)

    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return out


def faults(args):
    mock_port = free_port()
    mock = subprocess.Popen([os.path.join(BIN, "gatehouse-mock"), "--port", str(mock_port)],
                            stdout=subprocess.DEVNULL)
    wait_ready(mock_port, "/v1/models")
    resetter = Resetter()
    resetter.start()
    n = args.requests
    table = []
    try:
        data = tempfile.mkdtemp(prefix="gh-faults-")
        gw, port, _ = start(data, mock_port, reset_port=resetter.port)
        db = os.path.join(data, "gatehouse.db")
        scenarios = [
            ("provider resets (connections reset), fallback", lambda: chat(port, "dead/reset")),
            ("stalled heads (4 s > first_byte 1 s), fallback_on_timeout",
             lambda: chat(port, "mock/stall")),
            ("silent streams, fallback", lambda: chat(port, "mock/silent", stream=True)),
            ("5xx storm (every answer 500), fallback", lambda: chat(port, "mock/storm")),
            ("slow readers (16 bytes per 5 ms) on streams",
             lambda: chat(port, "mock/slow", stream=True, slow_read=True)),
        ]
        for name, fn in scenarios:
            res = run_many(n, fn)
            time.sleep(0.3)
            found = rows_for(db, [r[0] for r in res if r[1] is not None])
            table.append({
                "fault": name,
                "requests": len(res),
                "client_failures": sum(1 for r in res if not r[2]),
                "rows_lost": sum(1 for r in res if r[1] is not None and r[0] not in found),
            })
            print(json.dumps(table[-1]), flush=True)

        # The database locked by another process for 8 s while traffic goes on.
        con = sqlite3.connect(db, timeout=30, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        res = []
        t_end = time.time() + 8
        while time.time() < t_end:
            res += run_many(16, lambda: chat(port, "mock/good"))
        con.execute("ROLLBACK")
        con.close()
        ok = wait_writable(port)
        time.sleep(0.5)
        found = rows_for(db, [r[0] for r in res if r[1] is not None])
        table.append({
            "fault": "database locked by another process for 8 s",
            "requests": len(res),
            "client_failures": sum(1 for r in res if not r[2]),
            "rows_lost": sum(1 for r in res if r[1] is not None and r[0] not in found),
            "recovered": ok,
        })
        print(json.dumps(table[-1]), flush=True)
        gw.send_signal(signal.SIGTERM)
        gw.wait()
        shutil.rmtree(data, ignore_errors=True)

        # A full disk: the data directory on an 8 MiB tmpfs, filled while traffic goes on.
        mnt = tempfile.mkdtemp(prefix="gh-tiny-")
        if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", mnt]).returncode != 0:
            print("skipping the full-disk case: mounting a tmpfs needs root", file=sys.stderr)
        else:
            try:
                data = os.path.join(mnt, "data")
                os.makedirs(data)
                gw, port, _ = start(data, mock_port)
                db = os.path.join(data, "gatehouse.db")
                filler = os.path.join(mnt, "filler")
                with open(filler, "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 65536)
                            f.flush()
                    except OSError:
                        pass
                res = []
                t_end = time.time() + 6
                while time.time() < t_end:
                    res += run_many(32, lambda: chat(port, "mock/good"))
                os.remove(filler)
                ok = wait_writable(port)
                time.sleep(0.5)
                found = rows_for(db, [r[0] for r in res if r[1] is not None])
                table.append({
                    "fault": "disk full (8 MiB tmpfs filled) for 6 s",
                    "requests": len(res),
                    "client_failures": sum(1 for r in res if not r[2]),
                    "rows_lost": sum(1 for r in res if r[1] is not None and r[0] not in found),
                    "recovered": ok,
                })
                print(json.dumps(table[-1]), flush=True)
                gw.send_signal(signal.SIGTERM)
                gw.wait()
            finally:
                subprocess.run(["umount", "-l", mnt])
    finally:
        mock.kill()
    return table


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("crash")
    c.add_argument("--rounds", type=int, default=3)
    c.add_argument("--seconds", type=float, default=3.0)
    f = sub.add_parser("faults")
    f.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()
    out = crash(args) if args.cmd == "crash" else faults(args)
    path = os.path.join(ROOT, "bench", "results", f"{args.cmd}.json")
    with open(path, "w") as fh:
        json.dump(out, fh, indent=1)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
