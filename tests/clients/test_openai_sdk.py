"""The official `openai` Python package against Gatehouse, against the mock upstream."""
import openai
import pytest

from conftest import get_json


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0)


def test_completion(gateway):
    r = client(gateway).chat.completions.create(
        model="mock/echo", messages=[{"role": "user", "content": "Say hello"}]
    )
    assert r.choices[0].message.content == " Hello from the mock"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 11
    assert r.usage.completion_tokens == 4


def test_stream(gateway):
    stream = client(gateway).chat.completions.create(
        model="mock/echo", messages=[{"role": "user", "content": "Stream it"}], stream=True
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " Hello from the mock"
    # The client did not ask for usage, so it gets none, although the gateway recorded it.
    assert all(c.usage is None for c in chunks)
    active = get_json(gateway + "/api/sessions/active")
    newest = active["recent_requests"][0]
    assert newest["stream"] is True
    assert newest["usage_source"] == "upstream"
    assert newest["completion_tokens"] == 4


def test_stream_with_usage(gateway):
    stream = client(gateway).chat.completions.create(
        model="mock/echo",
        messages=[{"role": "user", "content": "Stream with usage"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[-1].usage.total_tokens == 15


def test_models_list(gateway):
    ids = [m.id for m in client(gateway).models.list()]
    assert "mock/echo" in ids
    assert "mistral/codestral-2501" in ids


def test_errors_are_typed(gateway):
    with pytest.raises(openai.NotFoundError) as e:
        client(gateway).chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.AuthenticationError) as e:
        client(gateway).chat.completions.create(
            model="mistral/codestral-2501", messages=[{"role": "user", "content": "x"}]
        )
    assert "MISTRAL_API_KEY" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client(gateway).chat.completions.create(model="mock/echo", messages=[])
    assert e.value.param == "messages"
