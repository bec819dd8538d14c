"""The real Claude Code (npm `@anthropic-ai/claude-code`, pinned in package.json) run headless
(`claude -p`) against Gatehouse's Anthropic ingress, with an Anthropic-format and an
OpenAI-format upstream (the mock): a fresh HOME, no telemetry, one run of two turns with a
Bash round trip."""
import os
import pathlib
import subprocess
import tempfile

import pytest

from conftest import captured, get_json

CLAUDE = pathlib.Path(__file__).resolve().parent / "node_modules" / ".bin" / "claude"


def claude_env(home, gateway, small_model):
    """A fresh HOME, Gatehouse as the API, side requests (titles, summaries) to `small_model`."""
    return {
        "PATH": os.environ["PATH"],
        "HOME": home,
        "ANTHROPIC_BASE_URL": gateway,
        "ANTHROPIC_API_KEY": "client-key",
        "ANTHROPIC_SMALL_FAST_MODEL": small_model,
        "ANTHROPIC_DEFAULT_HAIKU_MODEL": small_model,
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
    }


@pytest.mark.parametrize("model,upstream", [("anth/shell", "anthropic"), ("mock/shell", "openai")])
def test_claude_print_runs_bash_through_gatehouse(gateway, mock, model, upstream):
    assert CLAUDE.exists(), "run `npm ci` in tests/clients (.ci/run does)"
    before = len(captured(mock))
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as work:
        # Side requests go to the same model.
        env = claude_env(home, gateway, model)
        r = subprocess.run(
            [str(CLAUDE), "-p", "--model", model, "--allowedTools", "Bash", "--", "Run the shell tool"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    # The mock asked for `echo gatehouse-tool-ok`; Claude Code ran it and sent the output back.
    assert r.stdout.strip() == "Tool said: gatehouse-tool-ok", r.stdout + r.stderr
    sent = [b for b in captured(mock)[before:] if b.get("tools")]
    assert len(sent) == 2, sent
    assert any((t.get("name") or t.get("function", {}).get("name")) == "Bash" for t in sent[0]["tools"])
    roles = [m["role"] for m in sent[1]["messages"]]
    if upstream == "openai":
        # Claude Code's system blocks and its mid-conversation system message become one.
        assert roles.count("system") == 1 and roles[0] == "system", roles
        assert roles[-2:] == ["assistant", "tool"], roles
        assert "gatehouse-tool-ok" in sent[1]["messages"][-1]["content"]
    else:
        # Anthropic to Anthropic: the client's messages go through as sent.
        assert roles[-2:] == ["assistant", "user"], roles
        assert any(b["type"] == "tool_result" for b in sent[1]["messages"][-1]["content"])
    # X-Claude-Code-Session-Id names one session for the run.
    sessions = [s for s in get_json(gateway + "/api/sessions")["sessions"] if s["id"].startswith("claude-code:")]
    assert sessions and all(s["request_count"] >= 2 for s in sessions), sessions


def test_claude_conversation_over_several_runs_and_a_model_switch_is_one_session(gateway, mock):
    """Three turns of one conversation (`claude -p`, then `--continue` twice), the model switched
    between Anthropic-format and OpenAI-format upstreams (what `/model` does in the TUI), with
    side requests to a small model allowed: every turn lands in one session."""
    before = {s["id"] for s in get_json(gateway + "/api/sessions")["sessions"]}
    sent_before = len(captured(mock))
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as work:
        env = claude_env(home, gateway, "mock/echo")
        for i, (model, extra) in enumerate(
            [("anth/shell", []), ("mock/shell", ["--continue"]), ("anth/shell", ["--continue"])]
        ):
            r = subprocess.run(
                [str(CLAUDE), "-p", *extra, "--model", model, "--allowedTools", "Bash", "--",
                 f"Run the shell tool, turn {i}"],
                cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )
            assert r.returncode == 0, r.stdout + r.stderr
            assert r.stdout.strip() == "Tool said: gatehouse-tool-ok", r.stdout + r.stderr
    new = [s for s in get_json(gateway + "/api/sessions")["sessions"] if s["id"] not in before]
    assert len(new) == 1 and new[0]["id"].startswith("claude-code:"), new
    rows = get_json(gateway + f"/api/sessions/{new[0]['id']}/requests?limit=100")["requests"]
    # Every request the mock answered in these runs, on both models, is in that session.
    assert len(rows) == len(captured(mock)) - sent_before, rows
    assert {r["model_key"] for r in rows} == {"anth/shell", "mock/shell"}, rows
