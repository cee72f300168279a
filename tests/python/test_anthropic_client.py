"""The official `anthropic` Python client against a real exo node: messages whole and streamed
(`messages.stream`), `count_tokens`, stop sequences, and errors as the client's exception classes; each answer checked against
the OpenAI route's answer to the same request (one generation path)."""

import anthropic
import openai
import pytest

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(node):
    return anthropic.Anthropic(base_url=node.base_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(node):
    """The OpenAI route's greedy answer to QUESTION in 12 tokens, and its prompt's length."""
    openai_client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = openai_client.chat.completions.create(model=node.model, messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=12)
    return r.choices[0].message.content, r.usage.prompt_tokens


def ask(client, node, **kwargs):
    # This client version has no `temperature` argument; the API field is still read (greedy here).
    args = dict(model=node.model, max_tokens=12, extra_body={"temperature": 0},
                messages=[{"role": "user", "content": QUESTION}])
    args.update(kwargs)
    return args


def test_messages_whole_and_streamed(client, node, expected):
    text, prompt_tokens = expected
    m = client.messages.create(**ask(client, node))
    assert m.role == "assistant" and m.stop_reason == "max_tokens"
    assert [b.type for b in m.content] == ["text"] and m.content[0].text == text
    assert m.usage.input_tokens == prompt_tokens and m.usage.output_tokens == 12
    counted = client.messages.count_tokens(model=node.model, messages=[{"role": "user", "content": QUESTION}])
    assert counted.input_tokens == prompt_tokens
    with client.messages.stream(**ask(client, node)) as stream:
        streamed = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert streamed == text and final.content[0].text == text and final.stop_reason == "max_tokens"


def test_stop_sequences_and_errors(client, node, expected):
    text, _ = expected
    words = text.split(" ")
    stop = " " + words[len(words) // 2]
    m = client.messages.create(**ask(client, node, stop_sequences=[stop]))
    assert m.stop_reason == "stop_sequence" and m.stop_sequence == stop
    assert text.startswith(m.content[0].text)
    with pytest.raises(anthropic.NotFoundError):
        client.messages.create(**ask(client, node, model="no-such-model"))
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**ask(client, node, extra_body={"temperature": 5}))
    assert "temperature" in str(e.value)


WEATHER_TOOL = {"name": "get_weather", "description": "Get the current weather in a city",
                "input_schema": {"type": "object", "properties": {
                    "city": {"type": "string", "maxLength": 30},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                    "required": ["city", "unit"], "additionalProperties": False}}
TIME_TOOL = {"name": "get_time", "description": "Get the local time in a city",
             "input_schema": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
                              "required": ["city"], "additionalProperties": False}}
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def assert_tool_uses(message):
    """Each tool_use is a call of a listed tool with an input its schema accepts."""
    uses = [b for b in message.content if b.type == "tool_use"]
    assert uses, message
    for u in uses:
        assert u.id.startswith("toolu_"), u
        assert isinstance(u.input.get("city"), str) and len(u.input["city"]) <= 30, u
        if u.name == "get_weather":
            assert set(u.input) == {"city", "unit"} and u.input["unit"] in ("celsius", "fahrenheit"), u
        else:
            assert u.name == "get_time" and set(u.input) == {"city"}, u
    return uses


def test_tool_use_streamed_and_a_tool_result_round_trip(client, node):
    args = ask(client, node, max_tokens=100, messages=WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
               tool_choice={"type": "any"})
    m = client.messages.create(**args)
    assert m.stop_reason == "tool_use"
    uses = assert_tool_uses(m)
    # The stream helper puts input_json_delta fragments back into the same inputs.
    with client.messages.stream(**args) as stream:
        deltas = sum(1 for e in stream if e.type == "content_block_delta" and e.delta.type == "input_json_delta")
        final = stream.get_final_message()
    assert deltas > 1 and final.stop_reason == "tool_use"
    assert [(u.name, u.input) for u in assert_tool_uses(final)] == [(u.name, u.input) for u in uses]

    # A named tool, one call only.
    named = client.messages.create(**ask(client, node, max_tokens=100, messages=WEATHER, tools=[WEATHER_TOOL, TIME_TOOL],
                                         tool_choice={"type": "tool", "name": "get_time",
                                                      "disable_parallel_tool_use": True}))
    assert [u.name for u in assert_tool_uses(named)] == ["get_time"]

    # The SDK's own content blocks go back as history, then the result: the model answers from it.
    history = WEATHER + [{"role": "assistant", "content": [uses[0]]},
                         {"role": "user", "content": [{"type": "tool_result", "tool_use_id": uses[0].id,
                                                       "content": '{"temperature": 31, "sky": "sunny"}'}]}]
    answer = client.messages.create(**ask(client, node, max_tokens=60, messages=history,
                                          tools=[WEATHER_TOOL, TIME_TOOL]))
    assert answer.stop_reason == "end_turn" and "31" in answer.content[0].text, answer
    with pytest.raises(anthropic.BadRequestError) as e:
        client.messages.create(**ask(client, node, tools=[WEATHER_TOOL], tool_choice={"type": "tool", "name": "x"}))
    assert e.value.status_code == 400 and "x" in e.value.message
