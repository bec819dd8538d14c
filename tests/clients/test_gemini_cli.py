"""The real Gemini CLI (npm `@google/gemini-cli`, pinned in package.json) run headless
(`gemini -p`) against Gatehouse's Gemini API ingress, with a chat-completions upstream (the
mock): a fresh HOME, telemetry and usage statistics off, one run of two turns with a
`run_shell_command` round trip."""
import json
import os
import pathlib
import subprocess
import tempfile

from conftest import captured

GEMINI = pathlib.Path(__file__).resolve().parent / "node_modules" / ".bin" / "gemini"


def test_gemini_cli_runs_a_shell_command_through_gatehouse(gateway, mock):
    assert GEMINI.exists(), "run `npm ci` in tests/clients (.ci/run does)"
    before = len(captured(mock))
    with tempfile.TemporaryDirectory() as home, tempfile.TemporaryDirectory() as work:
        settings = pathlib.Path(home) / ".gemini" / "settings.json"
        settings.parent.mkdir()
        settings.write_text(json.dumps({
            "security": {"auth": {"selectedType": "gemini-api-key"}},
            "telemetry": {"enabled": False},
            "privacy": {"usageStatisticsEnabled": False},
        }))
        env = {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "GOOGLE_GEMINI_BASE_URL": gateway,
            "GEMINI_API_KEY": "client-key",
        }
        r = subprocess.run(
            [str(GEMINI), "--skip-trust", "--yolo", "-m", "mock/shell", "-p", "Run the shell tool"],
            cwd=work, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=180,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    # The mock asked for `echo gatehouse-tool-ok`; Gemini CLI ran it and sent the output back.
    assert "Tool said:" in r.stdout and "gatehouse-tool-ok" in r.stdout, r.stdout + r.stderr
    sent = [b for b in captured(mock)[before:] if b.get("tools")]
    assert len(sent) == 2, sent
    assert any(t["function"]["name"] == "run_shell_command" for t in sent[0]["tools"])
    assert [m["role"] for m in sent[1]["messages"]][-2:] == ["assistant", "tool"]
    assert "gatehouse-tool-ok" in sent[1]["messages"][-1]["content"]
