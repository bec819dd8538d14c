"""Virtual keys with the official SDKs: each gets its own error classes for refusals, limits
and budgets, and a burst cannot spend past a budget."""
import concurrent.futures
import json

import anthropic
import openai
import pytest

from conftest import captured, gatehouse_cli, get_json


def oai(g, key):
    return openai.OpenAI(base_url=g["base"] + "/v1", api_key=key, max_retries=0)


def claude(g, key):
    return anthropic.Anthropic(base_url=g["base"], api_key=key, max_retries=0)


def test_openai_sdk_with_a_key(keyed):
    c = oai(keyed, keyed["keys"]["app"])
    r = c.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content == " Hello from the mock"
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model="mock/echo", messages=[{"role": "user", "content": "stream"}], stream=True
        )
        if ch.choices
    )
    assert text == " Hello from the mock"
    # The key's models only.
    assert sorted(m.id for m in c.models.list()) == ["anth/claude", "mock/echo", "mock/slow"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        c.chat.completions.create(model="mock/private", messages=[{"role": "user", "content": "no"}])
    assert e.value.code == "model_not_allowed"


def test_openai_sdk_refusals(keyed):
    with pytest.raises(openai.AuthenticationError) as e:
        oai(keyed, "gh_unknown").chat.completions.create(
            model="mock/echo", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "invalid_api_key"
    c = oai(keyed, keyed["keys"]["rpm"])
    raw = c.chat.completions.with_raw_response.create(model="mock/echo", messages=[{"role": "user", "content": "1"}])
    assert raw.headers["x-ratelimit-limit-requests"] == "2"
    assert raw.headers["x-ratelimit-remaining-requests"] == "1"
    c.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "2"}])
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "3"}])
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1


def test_anthropic_sdk_with_a_key(keyed):
    c = claude(keyed, keyed["keys"]["app"])
    m = c.messages.create(model="anth/claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}])
    assert m.content[0].text == " Hello from the mock"
    with pytest.raises(anthropic.AuthenticationError):
        claude(keyed, "gh_wrong").messages.create(
            model="anth/claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    with pytest.raises(anthropic.RateLimitError) as e:
        claude(keyed, keyed["keys"]["tiny"]).messages.create(
            model="anth/claude", max_tokens=50, messages=[{"role": "user", "content": "hi"}]
        )
    assert "budget" in str(e.value)


def test_a_burst_cannot_overspend(keyed):
    before = len(captured(keyed["mock"]))
    c = oai(keyed, keyed["keys"]["burst"])

    def one(i):
        try:
            c.chat.completions.create(
                model="mock/slow", max_tokens=1000, messages=[{"role": "user", "content": f"burst {i}"}]
            )
            return "ok"
        except openai.RateLimitError as e:
            assert e.code == "budget_exceeded"
            return "refused"

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, range(50)))
    assert results.count("ok") == 4, results
    assert len(captured(keyed["mock"])) - before == 4


def test_cli_changes_apply_to_the_running_gateway(keyed):
    c = oai(keyed, keyed["keys"]["app"])
    c.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "before"}])
    listed = json.loads(gatehouse_cli("keys", "list", "--json", data=keyed["data"]))
    app = next(k for k in listed if k["name"] == "app")
    assert "key" not in app and "digest" not in app
    gatehouse_cli("keys", "block", "app", data=keyed["data"])
    try:
        import time

        deadline = time.monotonic() + 10
        while True:
            try:
                c.chat.completions.create(model="mock/echo", messages=[{"role": "user", "content": "blocked?"}])
            except openai.AuthenticationError as e:
                assert e.code == "key_blocked"
                break
            assert time.monotonic() < deadline, "the block never applied"
            time.sleep(0.2)
    finally:
        gatehouse_cli("keys", "unblock", "app", data=keyed["data"])
    spend = get_json(keyed["base"] + f"/api/keys/{app['id']}/spend", keyed["admin"])
    assert spend["requests"] >= 1


def test_the_admin_login_opens_the_management_api_only(keyed):
    import urllib.error
    import urllib.request

    # Without a login the management API answers 401; with it, 200.
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(keyed["base"] + "/api/keys", timeout=5)
    assert e.value.code == 401
    assert get_json(keyed["base"] + "/api/keys", keyed["admin"])["count"] >= 4
    # And the admin's token is no virtual key: the SDK gets its authentication error.
    with pytest.raises(openai.AuthenticationError) as e:
        oai(keyed, keyed["admin"]).chat.completions.create(
            model="mock/echo", messages=[{"role": "user", "content": "hi"}]
        )
    assert e.value.code == "invalid_api_key"
