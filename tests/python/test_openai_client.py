"""The official `openai` Python client against a real exo node: chat and completions, streaming and not, usage,
stop strings, seeds, log-probabilities, structured output (`parse` with a pydantic model, `json_object`), tool calls
(streamed and not, `required` and a named function, a conversation with the tools' results), the Responses API
(`responses.create` and `responses.stream`, with and without tools), and errors as the client's exception classes."""

import json
from typing import Literal

import openai
import pydantic
import pytest

QUESTION = "What is the capital of France?"


@pytest.fixture(scope="module")
def client(node):
    return openai.OpenAI(base_url=node.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def chat(client, node, **kwargs):
    args = dict(model=node.model, messages=[{"role": "user", "content": QUESTION}], temperature=0, max_tokens=12)
    args.update(kwargs)
    return client.chat.completions.create(**args)


def test_chat_with_usage_and_the_stream_adds_up_to_it(client, node):
    r = chat(client, node)
    assert r.object == "chat.completion"
    choice = r.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason == "length"
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12

    chunks = list(chat(client, node, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == choice.message.content
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    assert chunks[-1].usage.prompt_tokens == r.usage.prompt_tokens
    assert len({c.id for c in chunks}) == 1


def test_max_completion_tokens_and_content_parts(client, node):
    parts = [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]
    r = chat(client, node, messages=[{"role": "user", "content": parts}], max_tokens=None, max_completion_tokens=5)
    assert r.usage.completion_tokens == 5
    # Parts join a line apart, as llama-server and Ollama join them: the same message as that string.
    joined = [{"role": "user", "content": "What is the capital \nof France?"}]
    assert r.choices[0].message.content == chat(client, node, messages=joined, max_tokens=5).choices[0].message.content


def test_completions_streaming_and_not(client, node):
    args = dict(model=node.model, prompt="The capital of France is", temperature=0, max_tokens=8)
    r = client.completions.create(**args)
    assert r.object == "text_completion"
    assert r.choices[0].text and r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 8
    chunks = list(client.completions.create(stream=True, **args))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_a_stop_string_ends_the_answer_before_it(client, node):
    full = chat(client, node, max_tokens=24).choices[0].message.content
    words = full.split()
    assert len(words) >= 4, full
    stop = " " + words[2]
    expected = full[: full.index(stop)]
    r = chat(client, node, max_tokens=24, stop=[stop, "\u2603never"])
    assert r.choices[0].finish_reason == "stop"
    assert r.choices[0].message.content == expected
    streamed = chat(client, node, max_tokens=24, stop=stop, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == expected


def test_the_same_seed_gives_the_same_sample(client, node):
    def sample(seed):
        # top_k and min_p are not OpenAI parameters: the client sends them as extra fields.
        r = chat(client, node, temperature=1.0, top_p=1.0, seed=seed, max_tokens=24,
                 extra_body={"top_k": 0, "min_p": 0.0})
        return r.choices[0].message.content

    first = sample(1234)
    assert sample(1234) == first
    # Other seeds: at least one of three differs (all three equal by chance is vanishingly unlikely at t=1).
    assert any(sample(s) != first for s in (1, 2, 3))


def test_logprobs_with_alternatives(client, node):
    r = chat(client, node, max_tokens=4, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    for token in content:
        assert len(token.top_logprobs) == 3
        # Greedy: the chosen token is the most likely one.
        assert token.logprob == pytest.approx(token.top_logprobs[0].logprob, abs=1e-5)
        assert all(t.logprob <= 0 for t in token.top_logprobs)


def test_penalties_are_accepted(client, node):
    r = chat(client, node, presence_penalty=0.5, frequency_penalty=0.5, extra_body={"repetition_penalty": 1.1})
    assert r.usage.completion_tokens == 12


def test_errors_arrive_as_the_clients_exceptions(client, node):
    with pytest.raises(openai.NotFoundError) as e:
        chat(client, node, model="no-such-model")
    assert e.value.status_code == 404 and "no-such-model" in e.value.message
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, n=2)
    assert "n must be 1" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, messages=[{"role": "user", "content": "word " * 9000}])
    assert e.value.body["code"] == "context_length_exceeded" and "8192" in e.value.message
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, messages=[])
    assert e.value.body["param"] == "messages"


def test_models_are_listed(client, node):
    assert node.model in [m.id for m in client.models.list()]
    assert client.models.retrieve(node.model).id == node.model


class City(pydantic.BaseModel):
    name: str = pydantic.Field(max_length=30)
    country: str = pydantic.Field(max_length=30)
    population: int = pydantic.Field(ge=0)
    landmarks: list[str] = pydantic.Field(max_length=2)


def test_parse_with_a_pydantic_model_gets_a_valid_object(client, node):
    # The client sends the model's JSON schema as a strict json_schema response_format and validates the answer
    # against the pydantic model: the constraint is what lets a 135M model pass.
    r = client.chat.completions.parse(
        model=node.model, temperature=0, max_tokens=150, response_format=City,
        messages=[{"role": "user", "content": "Describe the capital of France."}])
    city = r.choices[0].message.parsed
    assert isinstance(city, City), r
    assert r.choices[0].finish_reason == "stop"
    assert City.model_validate_json(r.choices[0].message.content) == city
    # The beta path older code uses is the same call.
    again = client.beta.chat.completions.parse(
        model=node.model, temperature=0, max_tokens=150, response_format=City,
        messages=[{"role": "user", "content": "Describe the capital of France."}])
    assert again.choices[0].message.parsed == city


def test_json_object_and_a_refused_schema(client, node):
    r = chat(client, node, response_format={"type": "json_object"}, max_tokens=60,
             messages=[{"role": "user", "content": "Give the capital of France as JSON."}])
    content = r.choices[0].message.content
    assert content.lstrip().startswith("{"), content
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(content), dict)
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, response_format={"type": "json_schema", "json_schema": {
            "name": "x", "schema": {"type": "string", "format": "no-such-format"}}})
    assert e.value.status_code == 400 and "no-such-format" in e.value.message
    assert e.value.body["param"] == "response_format"


class GetWeather(pydantic.BaseModel):
    """Get the current weather in a city."""
    city: str = pydantic.Field(max_length=30)
    unit: Literal["celsius", "fahrenheit"]


class GetTime(pydantic.BaseModel):
    """Get the local time in a city."""
    city: str = pydantic.Field(max_length=30)


TOOLS = [openai.pydantic_function_tool(GetWeather, name="get_weather"),
         openai.pydantic_function_tool(GetTime, name="get_time")]
ARGUMENTS = {"get_weather": GetWeather, "get_time": GetTime}
WEATHER = [{"role": "user", "content": "What is the weather like in Paris today?"}]


def assert_calls(message):
    """Each call is to a listed tool with arguments its pydantic model accepts; returns (name, arguments) pairs."""
    assert message.tool_calls, message
    out = []
    for call in message.tool_calls:
        assert call.type == "function" and call.id.startswith("call_"), call
        ARGUMENTS[call.function.name].model_validate_json(call.function.arguments)
        out.append((call.function.name, call.function.arguments))
    return out


def test_tool_calls_required_and_named_streamed_and_not(client, node):
    r = chat(client, node, messages=WEATHER, tools=TOOLS, tool_choice="required", max_tokens=100)
    assert r.choices[0].finish_reason == "tool_calls"
    assert r.choices[0].message.content is None
    required = assert_calls(r.choices[0].message)

    named = chat(client, node, messages=WEATHER, tools=TOOLS, max_tokens=100,
                 tool_choice={"type": "function", "function": {"name": "get_time"}})
    assert [name for name, _ in assert_calls(named.choices[0].message)] == ["get_time"]

    # The client's stream helper puts the fragments back together and parses the arguments of the strict tools.
    with client.chat.completions.stream(model=node.model, messages=WEATHER, tools=TOOLS, tool_choice="required",
                                        temperature=0, max_tokens=100) as stream:
        arguments_deltas = sum(1 for event in stream if event.type == "tool_calls.function.arguments.delta")
        final = stream.get_final_completion()
    assert arguments_deltas > 1
    assert final.choices[0].finish_reason == "tool_calls"
    assert assert_calls(final.choices[0].message) == required
    for call in final.choices[0].message.tool_calls:
        assert isinstance(call.function.parsed_arguments, ARGUMENTS[call.function.name])


def test_a_conversation_with_the_tools_results(client, node):
    first = chat(client, node, messages=WEATHER, tools=TOOLS, tool_choice="required", max_tokens=100,
                 parallel_tool_calls=False)
    message = first.choices[0].message
    assert len(assert_calls(message)) == 1
    # The SDK's own message object goes back as history, then the tool's result under the call's id.
    history = WEATHER + [message, {"role": "tool", "tool_call_id": message.tool_calls[0].id,
                                   "content": json.dumps({"temperature": 31, "sky": "sunny"})}]
    answer = chat(client, node, messages=history, tools=TOOLS, max_tokens=60)
    assert answer.choices[0].finish_reason == "stop"
    assert "31" in answer.choices[0].message.content, answer
    assert answer.usage.prompt_tokens > first.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, node, messages=WEATHER, tools=TOOLS,
             tool_choice={"type": "function", "function": {"name": "send_mail"}})
    assert e.value.status_code == 400 and e.value.body["param"] == "tool_choice"


def test_responses_with_and_without_tools(client, node):
    expected = chat(client, node).choices[0].message.content
    r = client.responses.create(model=node.model, input=QUESTION, max_output_tokens=12, temperature=0)
    assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
    assert r.output_text == expected
    # Streamed: the client's helper puts the events back together into the same response (it wants an answer that
    # ends by itself: response.completed, not response.incomplete).
    short = "What is 2+2?"
    whole = chat(client, node, max_tokens=100, messages=[{"role": "user", "content": short}])
    assert whole.choices[0].finish_reason == "stop"
    with client.responses.stream(model=node.model, input=short, max_output_tokens=100, temperature=0) as stream:
        deltas = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.usage.output_tokens == whole.usage.completion_tokens
    assert deltas == whole.choices[0].message.content == final.output_text

    tool = {"type": "function", "name": "get_weather", "description": "Get the current weather in a city",
            "parameters": GetWeather.model_json_schema() | {"additionalProperties": False}, "strict": True}
    r = client.responses.create(model=node.model, input=WEATHER, tools=[tool], tool_choice="required",
                                max_output_tokens=100, temperature=0)
    calls = [item for item in r.output if item.type == "function_call"]
    assert calls and r.status == "completed", r
    for call in calls:
        assert call.name == "get_weather" and call.call_id.startswith("call_")
        GetWeather.model_validate_json(call.arguments)
    # The call and its output go back as input items.
    follow = client.responses.create(
        model=node.model, tools=[tool], max_output_tokens=60, temperature=0,
        input=WEATHER + [{"type": "function_call", "call_id": calls[0].call_id, "name": calls[0].name,
                          "arguments": calls[0].arguments},
                         {"type": "function_call_output", "call_id": calls[0].call_id,
                          "output": json.dumps({"temperature": 31, "sky": "sunny"})}])
    assert follow.output_text, follow
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model=node.model, input=QUESTION, previous_response_id="resp_1")
    assert e.value.status_code == 400 and "no state" in e.value.message
