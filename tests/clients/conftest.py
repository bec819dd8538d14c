"""Starts the mock upstream and a real `gatehouse serve` for the client tests.

Binaries come from GATEHOUSE_BIN_DIR (default: target/debug), built by `cargo build --bins`.
"""
import json
import os
import pathlib
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
BIN = pathlib.Path(os.environ.get("GATEHOUSE_BIN_DIR", ROOT / "target" / "debug"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline=20.0):
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never became ready")


@pytest.fixture(scope="session")
def mock():
    """The mock upstream's base URL (`http://127.0.0.1:PORT/v1`), capturing what it receives."""
    proc = subprocess.Popen([str(BIN / "gatehouse-mock"), "--capture"], stdout=subprocess.PIPE, text=True)
    try:
        yield proc.stdout.readline().strip()
    finally:
        proc.kill()
        proc.wait()


def captured(mock_url):
    """The request bodies the mock received, oldest first."""
    return get_json(mock_url.removesuffix("/v1") + "/mock/captured")


@pytest.fixture(scope="session")
def gateway(mock):
    mock_url = mock
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        config = pathlib.Path(data) / "config.toml"
        config.write_text(
            f"""
[providers.mock]
type = "openai"
base_url = "{mock_url}"
api_key = "sk-upstream-test"

[models."mock/echo"]
provider = "mock"
model = "chunks:4"
max_context_size = 8192

[models."mock/tool"]
provider = "mock"
model = "tool"
max_context_size = 8192

[models."mock/shell"]
provider = "mock"
model = "shell"
max_context_size = 200000

[providers.anth]
type = "anthropic"
base_url = "{mock_url}"
api_key = "sk-upstream-test"

[models."anth/claude"]
provider = "anth"
model = "chunks:4"
max_context_size = 200000

[models."anth/tool"]
provider = "anth"
model = "tool"
max_context_size = 200000

[models."anth/shell"]
provider = "anth"
model = "shell"
max_context_size = 200000

# A provider that serves the Responses API itself (OpenAI's case): Responses clients' bytes go through.
[providers.oai]
type = "openai"
base_url = "{mock_url}"
api_key = "sk-upstream-test"
responses_api = true

[models."oai/shell"]
provider = "oai"
model = "shell"
max_context_size = 200000

[models."oai/text"]
provider = "oai"
model = "chunks:4"
max_context_size = 200000

[providers.gem]
type = "gemini"
base_url = "{mock_url}"
api_key = "sk-upstream-test"

[models."gem/flash"]
provider = "gem"
model = "chunks:4"
max_context_size = 1000000

[models."gem/tool"]
provider = "gem"
model = "tool"
max_context_size = 1000000
"""
        )
        # No inherited overrides or provider keys: the tests expect the built-in catalogue keyless.
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and not k.endswith("_API_KEY")}
        server = subprocess.Popen(
            [str(BIN / "gatehouse"), "serve", "--config", str(config), "--port", str(port), "--data-dir", data],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/health/ready")
            yield base
        finally:
            server.terminate()
            assert server.wait(timeout=20) == 0, "gatehouse did not shut down cleanly"


def get_json(url, token=None):
    req = urllib.request.Request(url, headers={"authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=5) as r:
        return json.load(r)


def gatehouse_cli(*args, data):
    """Runs the `gatehouse` binary (not the server) and returns its stdout."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
    out = subprocess.run(
        [str(BIN / "gatehouse"), *args, "--data-dir", data], env=env, check=True, capture_output=True, text=True
    )
    return out.stdout


@pytest.fixture(scope="session")
def keyed(mock):
    """A gateway with `[auth] mode = "keys"` and keys made by `gatehouse keys create` before it
    starts: `{"base", "mock", "data", "keys": {name: key}}`."""
    mock_url = mock
    port = free_port()
    with tempfile.TemporaryDirectory() as data:
        config = pathlib.Path(data) / "config.toml"
        config.write_text(
            f"""
[auth]
mode = "keys"
default_max_tokens = 1000
sync_secs = 1

[providers.mock]
type = "openai"
base_url = "{mock_url}"
api_key = "sk-upstream-test"

[models."mock/echo"]
provider = "mock"
model = "chunks:4"
max_context_size = 8192
pricing = {{ input = 1.0, output = 2.0 }}

[models."mock/slow"]
provider = "mock"
model = "delay:800"
max_context_size = 8192
pricing = {{ input = 1.0, output = 2.0 }}

[models."mock/private"]
provider = "mock"
model = "chunks:1"
max_context_size = 8192

[providers.anth]
type = "anthropic"
base_url = "{mock_url}"
api_key = "sk-upstream-test"

[models."anth/claude"]
provider = "anth"
model = "chunks:4"
max_context_size = 200000
pricing = {{ input = 3.0, output = 15.0 }}
"""
        )
        keys = {}
        for name, limits in [
            ("app", ["--models", "mock/echo,mock/slow,anth/*"]),
            ("rpm", ["--rpm", "2"]),
            # Worst case of one mock/slow request with max_tokens 1000: ~$0.002; 4 fit.
            ("burst", ["--budget", "0.0085"]),
            ("tiny", ["--budget", "0.00001"]),
        ]:
            out = json.loads(gatehouse_cli("keys", "create", "--name", name, *limits, "--json", data=data))
            keys[name] = out["key"]
        # The management API wants an admin login in this mode: the first admin, made as the
        # README says.
        password = "a long admin passphrase"
        env_cli = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_")}
        subprocess.run(
            [str(BIN / "gatehouse"), "users", "create", "admin", "--password-stdin", "--data-dir", data],
            env=env_cli, input=password + "\n", check=True, capture_output=True, text=True,
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and not k.endswith("_API_KEY")}
        server = subprocess.Popen(
            [str(BIN / "gatehouse"), "serve", "--config", str(config), "--port", str(port), "--data-dir", data],
            env=env,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base + "/health/ready")
            login = urllib.request.Request(
                base + "/api/auth/login",
                data=json.dumps({"username": "admin", "password": password}).encode(),
                headers={"content-type": "application/json"},
            )
            with urllib.request.urlopen(login, timeout=10) as r:
                admin = json.load(r)["access_token"]
            yield {"base": base, "mock": mock_url, "data": data, "keys": keys, "config": str(config), "admin": admin}
        finally:
            server.terminate()
            assert server.wait(timeout=20) == 0, "gatehouse did not shut down cleanly"
