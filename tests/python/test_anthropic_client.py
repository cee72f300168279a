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
