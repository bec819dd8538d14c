"""The official `openai` package's Responses API (`client.responses.create`) against Gatehouse,
in front of a chat-completions upstream (the mock)."""
import json

import openai
import pytest

from conftest import captured

WEATHER = [{
    "type": "function",
    "name": "get_weather",
    "description": "Weather of a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}]


def client(base):
    return openai.OpenAI(base_url=base + "/v1", api_key="client-key", max_retries=0)


def test_create(gateway, mock):
    r = client(gateway).responses.create(model="mock/echo", instructions="Be brief.", input="Say hello")
    assert r.status == "completed"
    assert r.output_text == " Hello from the mock"
    assert r.usage.input_tokens == 11
    assert r.usage.output_tokens == 4
    sent = captured(mock)[-1]
    assert sent["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Say hello"},
    ]


def test_stream(gateway):
    with client(gateway).responses.stream(model="mock/echo", input="Stream it") as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == " Hello from the mock"
    assert final.output_text == " Hello from the mock"
    assert final.usage.output_tokens == 4


@pytest.mark.parametrize("stream", [False, True])
def test_tool_round_trip_with_previous_response_id(gateway, mock, stream):
    c = client(gateway)

    def create(**kw):
        if not stream:
            return c.responses.create(**kw)
        events = list(c.responses.create(stream=True, **kw))
        assert events[0].type == "response.created"
        assert events[-1].type == "response.completed"
        return events[-1].response

    first = create(model="mock/tool", tools=WEATHER, input="Weather in Paris?")
    call = next(i for i in first.output if i.type == "function_call")
    assert call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Paris"}

    second = create(
        model="mock/tool",
        tools=WEATHER,
        previous_response_id=first.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "18°C"}],
    )
    assert second.previous_response_id == first.id
    assert second.output_text == " Hello from the"
    sent = captured(mock)[-1]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "tool"]
    assert sent["messages"][2] == {"role": "tool", "tool_call_id": call.call_id, "content": "18°C"}

    # Stored: read back and listed; deleted: gone.
    assert c.responses.retrieve(second.id).output_text == " Hello from the"
    items = c.responses.input_items.list(second.id, order="asc")
    assert [i.type for i in items.data] == ["message", "function_call", "function_call_output"]
    c.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        c.responses.retrieve(first.id)
    with pytest.raises(openai.BadRequestError):
        c.responses.create(model="mock/echo", previous_response_id=first.id, input="again")


def test_structured_output(gateway, mock):
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    client(gateway).responses.create(
        model="mock/echo",
        input="A number",
        text={"format": {"type": "json_schema", "name": "num", "schema": schema, "strict": True}},
    )
    assert captured(mock)[-1]["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "num", "schema": schema, "strict": True},
    }


@pytest.mark.parametrize("stream", [False, True])
def test_to_a_provider_that_serves_responses_the_bytes_go_through(gateway, mock, stream):
    """The SDK's request reaches the provider's /responses as sent, and its Response (id,
    reasoning item, usage) comes back as the provider sent it."""
    c = client(gateway)
    kw = dict(model="oai/text", input="Say hello", include=["reasoning.encrypted_content"],
              reasoning={"effort": "low"}, store=False)
    if stream:
        with c.responses.stream(**kw) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            r = s.get_final_response()
        assert "".join(deltas) == " Hello from the mock"
    else:
        r = c.responses.create(**kw)
    assert r.id == "resp_mock_1"
    assert r.output_text == " Hello from the mock"
    assert r.output[0].type == "reasoning" and r.output[0].encrypted_content == "gAAAA-mock-encrypted-1"
    assert r.usage.input_tokens == 11 and r.usage.output_tokens == 4
    sent = captured(mock)[-1]
    assert sent["model"] == "chunks:4" and sent["input"] == "Say hello" and sent["store"] is False
    assert sent["include"] == ["reasoning.encrypted_content"] and sent["reasoning"] == {"effort": "low"}
