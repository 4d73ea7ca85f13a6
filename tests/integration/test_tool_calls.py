"""Native tool calls on a real server: llama-server parses the call, lmprog runs the tool, the
result goes back as a `tool` message, and the model answers.

Gemma 3's own template renders no tools, and llama-server then ignores `tools` (its template
caps say so, and lmprog takes the constrained path). So the server here is started with a
Gemma-format template that does render tools, calls (`<tool_call>` JSON) and tool results,
which llama-server's template analysis recognises as a tool-call format. (Its grammar for
tool_choice="required" admits text before the call: a 270M model may ramble instead of calling,
so which template and prompt the test uses matters; at temperature 0 the outcome is fixed.)
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

import lmprog as lp
from lmprog.models import gemma3_270m_gguf

GEMMA_TOOLS_TEMPLATE = (
    """{{ bos_token }}
{%- if tools %}
<start_of_turn>user
You can call these tools. To call one, answer with """
    """<tool_call>{"name": ..., "arguments": ...}</tool_call>.
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><end_of_turn>
{% endif %}
{%- for message in messages %}
{%- if message['role'] == 'assistant' %}
<start_of_turn>model
{%- if message['content'] %}
{{ message['content'] }}
{%- endif %}
{%- if message['tool_calls'] %}
{%- for call in message['tool_calls'] %}
{%- set fn = call['function'] if call['function'] is defined else call %}
<tool_call>{"name": "{{ fn['name'] }}", "arguments": """
    """{{ fn['arguments'] if fn['arguments'] is string else fn['arguments'] | tojson }}}</tool_call>
{%- endfor %}
{%- endif %}<end_of_turn>
{% elif message['role'] == 'tool' %}
<start_of_turn>user
<tool_response>{{ message['content'] }}</tool_response><end_of_turn>
{% else %}
<start_of_turn>{{ 'user' if message['role'] == 'system' else message['role'] }}
{{ message['content'] }}<end_of_turn>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}
<start_of_turn>model
{% endif %}
"""
)

CITIES: list[str] = []


def get_weather(city: str) -> str:
    """The current weather in a city."""
    CITIES.append(city)
    return f"sunny and 21 C in {city}"


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[lp.Runtime]:
    template = tmp_path_factory.mktemp("template") / "gemma_tools.jinja"
    template.write_text(GEMMA_TOOLS_TEMPLATE)
    with lp.Runtime(
        "llama.cpp",
        gemma3_270m_gguf(),
        slots=1,
        ctx_per_slot=4096,
        chat_template_file=template,
        jinja=True,
        threads=1,
    ) as server:
        yield server


@lp.function
def weather_agent(s, question):
    s += lp.user(question)
    s += lp.assistant(lp.gen("call", tools=[get_weather], max_tokens=200, temperature=0))
    s += lp.tool_result(s["call"])
    s += lp.assistant(lp.gen("answer", max_tokens=30, temperature=0))


def test_a_native_call_round_trip_on_llama_server(tools_server: lp.Runtime) -> None:
    chat = lp.OpenAI("gemma", base_url=tools_server.url + "/v1", is_chat_model=True)
    state = weather_agent.run("What is the weather in Paris?", backend=chat)
    call = state["call"]
    assert isinstance(call, lp.ToolCall), state.error()
    assert call.name == "get_weather"
    assert [call.arguments["city"]] == CITIES  # the tool ran once, with the server's arguments
    assert call.result == f"sunny and 21 C in {call.arguments['city']}"
    assert call.id  # the server's id, answered by the tool message
    assert state.get_meta_info("call")["constraint_path"] == "native tool call"

    roles = [m["role"] for m in state.messages()]
    assert roles == ["user", "assistant", "tool", "assistant"]
    calling, result = state.messages()[1], state.messages()[2]
    assert calling["tool_calls"][0]["id"] == call.id
    assert calling["tool_calls"][0]["function"]["name"] == "get_weather"
    assert result == {
        "role": "tool",
        "tool_call_id": call.id,
        "name": "get_weather",
        "content": call.result,
    }
    assert isinstance(state["answer"], str) and state["answer"].strip()

    # the server laid the tool message out as its template says, before the final answer
    rendered = httpx.post(
        tools_server.url + "/apply-template", json={"messages": state.messages()[:3]}, timeout=60
    ).json()["prompt"]
    assert f"<tool_response>{call.result}</tool_response>" in rendered


def test_auto_may_answer_in_text_and_none_never_calls(tools_server: lp.Runtime) -> None:
    chat = lp.OpenAI("gemma", base_url=tools_server.url + "/v1", is_chat_model=True)

    @lp.function
    def no_tools(s):
        s += lp.user("Say hello.")
        s += lp.assistant(
            lp.gen("reply", tools=[get_weather], tool_choice="none", max_tokens=20, temperature=0)
        )

    state = no_tools.run(backend=chat)
    assert isinstance(state["reply"], str), state.error()
    assert state.messages()[-1] == {"role": "assistant", "content": state["reply"]}


def test_the_server_caps_decide_the_path(
    tools_server: lp.Runtime, gemma_server: lp.Runtime
) -> None:
    """Gemma's own template renders no tools: the same program takes the constrained path."""
    plain = lp.OpenAI("gemma", base_url=gemma_server.url + "/v1", is_chat_model=True)
    state = weather_agent.run("What is the weather in Rome?", backend=plain)
    assert isinstance(state["call"], lp.ToolCall), state.error()
    assert state.get_meta_info("call")["constraint_path"] != "native tool call"
    assert state.messages()[1]["tool_calls"][0]["function"]["name"] == "get_weather"


def test_a_text_backend_renders_the_tool_turn_with_the_template(gemma: lp.LlamaCpp) -> None:
    """lp.LlamaCpp sends text: the call is generated under the schema and the tool turn is laid
    out by the chat template's own markers (lmprog's Gemma 3 template: a user turn)."""
    state = weather_agent.run("What is the weather in Oslo?", backend=gemma)
    call = state["call"]
    assert isinstance(call, lp.ToolCall), state.error()
    assert state.get_meta_info("call")["constraint_path"] != "native tool call"
    assert f"<start_of_turn>user\n{call.result}<end_of_turn>\n<start_of_turn>model\n" in (
        state.text()
    )
    assert [m["role"] for m in state.messages()] == ["user", "assistant", "tool", "assistant"]
    assert state.messages()[2]["tool_call_id"] == call.id
