"""The official `anthropic` package against Gatehouse's /v1/messages, routed to an
OpenAI-compatible model and a Gemini one (translated) and to an Anthropic one (bytes through);
and the `openai` package against a model served by an Anthropic upstream."""
import json

import anthropic
import openai
import pytest

WEATHER = {
    "name": "get_weather",
    "description": "Current weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture
def claude(gateway):
    return anthropic.Anthropic(base_url=gateway, api_key="not-used-by-the-gateway", max_retries=0)


@pytest.mark.parametrize("model", ["mock/echo", "anth/claude", "gem/flash"])
def test_message(claude, model):
    m = claude.messages.create(model=model, max_tokens=64, system="Be brief.",
                               messages=[{"role": "user", "content": "Hello"}])
    assert m.type == "message"
    assert m.content[0].type == "text"
    assert m.content[0].text == " Hello from the mock"
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 7
    assert m.usage.cache_read_input_tokens == 4
    assert m.usage.output_tokens == 4


@pytest.mark.parametrize("model", ["mock/echo", "anth/claude", "gem/flash"])
def test_stream(claude, model):
    with claude.messages.stream(model=model, max_tokens=64,
                                messages=[{"role": "user", "content": "Hello"}]) as s:
        text = "".join(s.text_stream)
        final = s.get_final_message()
    assert text == " Hello from the mock"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 4


@pytest.mark.parametrize("model", ["mock/tool", "gem/tool"])
@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip(claude, model, stream):
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        with claude.messages.stream(model=model, max_tokens=64, tools=[WEATHER], messages=messages) as s:
            first = s.get_final_message()
    else:
        first = claude.messages.create(model=model, max_tokens=64, tools=[WEATHER], messages=messages)
    assert first.stop_reason == "tool_use"
    call = next(b for b in first.content if b.type == "tool_use")
    assert call.name == "get_weather"
    assert call.input == {"city": "Paris"}
    messages += [
        {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in first.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "18 °C, sunny"}]},
    ]
    second = claude.messages.create(model=model, max_tokens=64, tools=[WEATHER], messages=messages)
    assert second.stop_reason == "end_turn"
    assert second.content[0].text.startswith(" Hello")


def test_count_tokens(claude):
    n = claude.messages.count_tokens(model="mock/echo", messages=[{"role": "user", "content": "Hello there"}])
    assert 5 <= n.input_tokens < 20


def test_errors_are_typed(claude):
    with pytest.raises(anthropic.NotFoundError) as e:
        claude.messages.create(model="nope/nope", max_tokens=8, messages=[{"role": "user", "content": "x"}])
    assert "nope/nope" in str(e.value)
    with pytest.raises(anthropic.BadRequestError):
        claude.messages.create(model="mock/echo", max_tokens=8, messages=[{"role": "robot", "content": "x"}])


@pytest.fixture
def oai(gateway):
    return openai.OpenAI(base_url=gateway + "/v1", api_key="not-used-by-the-gateway", max_retries=0)


def test_openai_sdk_on_an_anthropic_model(oai):
    r = oai.chat.completions.create(model="anth/claude", messages=[{"role": "user", "content": "Hello"}])
    assert r.choices[0].message.content == " Hello from the mock"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 11
    chunks = list(oai.chat.completions.create(model="anth/claude", stream=True,
                                              stream_options={"include_usage": True},
                                              messages=[{"role": "user", "content": "Hello"}]))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == " Hello from the mock"
    assert chunks[-1].usage.completion_tokens == 4


def test_openai_sdk_tool_round_trip_on_an_anthropic_model(oai):
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER["input_schema"]}}]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r = oai.chat.completions.create(model="anth/tool", tools=tools, messages=messages)
    call = r.choices[0].message.tool_calls[0]
    assert r.choices[0].finish_reason == "tool_calls"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    messages += [r.choices[0].message.model_dump(exclude_none=True),
                 {"role": "tool", "tool_call_id": call.id, "content": "18 °C"}]
    r = oai.chat.completions.create(model="anth/tool", tools=tools, messages=messages)
    assert r.choices[0].message.content.startswith(" Hello")
