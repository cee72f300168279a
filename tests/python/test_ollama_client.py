"""The official `ollama` Python client against a real exo node: chat streamed and not, generate, list and show,
each checked against the OpenAI route's answer to the same request (one generation path), structured output, a
tool call and its result, and errors as the client's exception."""

import json

import ollama
import openai
import pytest

QUESTION = "What is the capital of France?"
OPTIONS = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(node):
    return ollama.Client(host=node.base_url, timeout=120)


@pytest.fixture(scope="module")
def expected(node):
    """The OpenAI route's greedy answer to QUESTION in 12 tokens."""
    openai_client = openai.OpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    r = openai_client.chat.completions.create(model=node.model, messages=[{"role": "user", "content": QUESTION}],
                                              temperature=0, max_tokens=12)
    return r.choices[0].message.content


def test_chat_whole_and_streamed(client, node, expected):
    r = client.chat(model=node.model, messages=[{"role": "user", "content": QUESTION}], options=OPTIONS)
    assert r.message.role == "assistant" and r.message.content == expected
    assert r.done and r.done_reason == "length" and r.eval_count == 12 and r.prompt_eval_count > 0
    parts = list(client.chat(model=node.model, messages=[{"role": "user", "content": QUESTION}], options=OPTIONS,
                             stream=True))
    assert "".join(p.message.content for p in parts) == expected
    assert parts[-1].done and not any(p.done for p in parts[:-1])


def test_generate_list_and_show(client, node, expected):
    r = client.generate(model=node.model, prompt=QUESTION, options=OPTIONS)
    assert r.response == expected and r.done
    names = [m.model for m in client.list().models]
    assert node.model in names
    shown = client.show(node.model)
    assert "completion" in shown.capabilities
    assert shown.modelinfo["general.architecture"] == "llama"


def test_errors_arrive_as_the_clients_exception(client, node):
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="no-such-model", messages=[{"role": "user", "content": "Hi"}])
    assert e.value.status_code == 404 and "no-such-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=node.model, messages=[{"role": "user", "content": "Hi"}],
                    format={"type": "string", "format": "no-such-format"})
    assert e.value.status_code == 400 and "no-such-format" in e.value.error


def test_format_constrains_the_answer_to_the_schema(client, node):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    r = client.chat(model=node.model, format=schema, options={"temperature": 0, "num_predict": 60},
                    messages=[{"role": "user", "content": "What is the capital of France?"}])
    answer = json.loads(r.message.content)
    assert sorted(answer) == ["city", "country"] and all(isinstance(v, str) and len(v) <= 20 for v in answer.values())
    assert r.done_reason == "stop"


TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Get the current weather in a city",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "maxLength": 30},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city", "unit"], "additionalProperties": False}}},
    {"type": "function", "function": {"name": "get_time", "description": "Get the local time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30}},
            "required": ["city"], "additionalProperties": False}}},
]

# The client sends only the schema fields it knows (no maxLength, no additionalProperties), and with its tools so
# shown SmolLM2 opens a call by itself (Ollama has no way to require one) after an example of one: an earlier turn
# whose answer was a call.
EXAMPLE = [{"role": "user", "content": "What time is it in Rome?"},
           {"role": "assistant", "content": "",
            "tool_calls": [{"function": {"name": "get_time", "arguments": {"city": "Rome"}}}]}]


def test_a_tool_call_and_its_result(client, node):
    assert "tools" in client.show(node.model).capabilities
    messages = EXAMPLE + [{"role": "user", "content": "What time is it in Tokyo?"}]
    r = client.chat(model=node.model, messages=messages, tools=TOOLS, options={"temperature": 0, "num_predict": 150})
    calls = r.message.tool_calls
    assert calls and r.done_reason == "stop", r
    for call in calls:
        assert call.function.name == "get_time" and isinstance(call.function.arguments["city"], str), call
    assert "<tool_call>" not in r.message.content
    streamed = [c for part in client.chat(model=node.model, messages=messages, tools=TOOLS, stream=True,
                                          options={"temperature": 0, "num_predict": 150})
                for c in (part.message.tool_calls or [])]
    assert streamed == calls
    # The client's own message goes back as history, then the result as a tool message.
    history = messages + [r.message, {"role": "tool", "content": "23:47", "tool_name": "get_time"}]
    after = client.chat(model=node.model, messages=history, tools=TOOLS, options={"temperature": 0, "num_predict": 40})
    assert after.prompt_eval_count > r.prompt_eval_count
