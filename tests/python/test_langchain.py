"""LangChain's chat models against a real exo node, as an agent built on LangChain uses them: `ChatOpenAI`
(langchain-openai, over chat completions and over the Responses API) and `ChatOllama` (langchain-ollama, over the
node's Ollama API) answering text, calling a bound tool with arguments its schema accepts, a tool-result round
trip, and `with_structured_output` with a pydantic model."""

from typing import Literal

import pydantic
import pytest
from langchain_core.messages import AIMessage, HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_ollama import ChatOllama
from langchain_openai import ChatOpenAI


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """The current weather in a city."""
    return f"31 degrees {unit} in {city}"


class Capital(pydantic.BaseModel):
    country: str
    city: str


QUESTION = "What is the weather like in Paris today?"
# An earlier turn whose answer was a call: Ollama's API cannot require a call, and so shown SmolLM2
# opens one by itself (the other APIs require it by name).
EXAMPLE = [
    HumanMessage("What is the weather like in Rome?"),
    AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Rome", "unit": "celsius"}, "id": "call_1"}]),
]


def openai_model(node, **kwargs):
    return ChatOpenAI(base_url=node.base_url + "/v1", api_key="unused", model=node.model, temperature=0,
                      max_tokens=100, max_retries=0, timeout=120, **kwargs)


def ollama_model(node):
    return ChatOllama(base_url=node.base_url, model=node.model, temperature=0, num_predict=100)


MODELS = {
    "chat completions": openai_model,
    "responses": lambda node: openai_model(node, use_responses_api=True),
    "ollama": ollama_model,
}


@pytest.mark.parametrize("api", MODELS)
def test_text_and_a_bound_tool_with_its_result(node, api):
    model = MODELS[api](node)
    answer = model.invoke("What is the capital of France?")
    assert answer.text.strip() and not answer.tool_calls

    calling = model.bind_tools([get_weather], **({} if api == "ollama" else {"tool_choice": "get_weather"}))
    asked = EXAMPLE + [HumanMessage(QUESTION)]
    first = calling.invoke(asked)
    assert [c["name"] for c in first.tool_calls] == ["get_weather"], first
    call = first.tool_calls[0]
    # The arguments are what the tool's schema takes: the tool runs on them.
    result = get_weather.invoke(call["args"])
    assert result.startswith("31 degrees")

    history = asked + [first, ToolMessage(result, tool_call_id=call["id"])]
    second = model.bind_tools([get_weather]).invoke(history)
    assert second.text.strip() or second.tool_calls


@pytest.mark.parametrize("api", ["chat completions", "ollama"])
def test_structured_output_is_the_pydantic_model(node, api):
    model = MODELS[api](node)
    structured = model.with_structured_output(Capital, method="json_schema")
    capital = structured.invoke("Name the capital of France as JSON with country and city.")
    assert isinstance(capital, Capital) and capital.city and capital.country
