"""The real Codex CLI (npm `@openai/codex`, pinned in package.json) run headless (`codex exec`)
against Gatehouse's Responses API, with a chat-completions upstream and with one that serves the
Responses API itself (the mock, both): a fresh HOME, no telemetry, one turn with a shell-tool
round trip."""
import os
import pathlib
import subprocess
import tempfile

import pytest

from conftest import captured, get_json

CODEX = pathlib.Path(__file__).resolve().parent / "node_modules" / ".bin" / "codex"


@pytest.mark.parametrize("model", ["mock/shell", "oai/shell"])
def test_codex_exec_runs_a_tool_through_the_responses_api(gateway, mock, model):
    assert CODEX.exists(), "run `npm ci` in tests/clients (.ci/run does)"
    before = len(captured(mock))
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as work:
        # Codex refuses to put its helpers under /tmp; a home outside it works as a user's does.
        (pathlib.Path(home) / "config.toml").write_text(
            f"""
model = "{model}"
model_provider = "gatehouse"

[model_providers.gatehouse]
name = "Gatehouse"
base_url = "{gateway}/v1"
wire_api = "responses"
env_key = "GATEHOUSE_API_KEY"

[analytics]
enabled = false
"""
        )
        env = {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "CODEX_HOME": home,
            "GATEHOUSE_API_KEY": "client-key",
        }
        last = pathlib.Path(work) / "last.txt"
        r = subprocess.run(
            [str(CODEX), "exec", "--skip-git-repo-check", "--ephemeral",
             "--dangerously-bypass-approvals-and-sandbox", "-o", str(last), "Run the shell tool"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        # The mock asked for `echo gatehouse-tool-ok`; Codex ran it and sent the output back.
        assert last.read_text().strip() == "Tool said: gatehouse-tool-ok", r.stdout + r.stderr
    sent = captured(mock)[before:]
    assert len(sent) == 2, sent
    assert sent[0]["stream"] is True
    if model == "oai/shell":
        # Codex's own Responses bodies, through: its tools, its input items, the tool output.
        assert any(t.get("name") == "exec_command" for t in sent[0]["tools"]), sent[0]["tools"]
        assert sent[0]["model"] == "shell" and "input" in sent[0] and "messages" not in sent[0]
        last = sent[1]["input"][-1]
        assert last["type"] == "function_call_output" and last["call_id"] == "call_mock_1", last
        assert "gatehouse-tool-ok" in str(last["output"])
        # The reasoning item with encrypted content, when Codex asked for it, came back as sent.
        # Codex asks for encrypted reasoning; the reasoning item comes back as the provider sent it.
        assert "reasoning.encrypted_content" in sent[0]["include"], sent[0]
        items = [i for i in sent[1]["input"] if i.get("type") == "reasoning"]
        assert items and items[0]["encrypted_content"] == "gAAAA-mock-encrypted-1", sent[1]["input"]
    else:
        assert any(t["function"]["name"] == "exec_command" for t in sent[0]["tools"])
        assert [m["role"] for m in sent[1]["messages"]][-2:] == ["assistant", "tool"]
        assert "gatehouse-tool-ok" in sent[1]["messages"][-1]["content"]
    # Codex's prompt_cache_key names one session for the whole run.
    sessions = [s for s in get_json(gateway + "/api/sessions")["sessions"] if s["id"].startswith("responses:")]
    assert any(s["request_count"] == 2 for s in sessions), sessions
