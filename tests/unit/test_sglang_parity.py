"""SGLang parity on the test double: the parts of SGLang's frontend that are lmprog's own
behaviour (settings, dtype gens, choice methods, separate_reasoning, tracing and caching, deep
imports, errors, streaming meta, hosted backends). Each test names the upstream test it
mirrors (sgl-project/sglang: python/sglang/test/test_programs.py, test/lang/test_*.py), in our
own words. Real-engine counterparts: tests/integration/test_sglang_parity.py.
"""

from __future__ import annotations

import asyncio
import json
import re

import pytest

import lmprog as lp
from lmprog.testing import ScriptedBackend
from lmprog.usage import TokenUsage, token_usage

# ----- 1. lp.global_config ----------------------------------------------------------------


def test_global_config_has_sglangs_settings_and_defaults() -> None:
    config = lp.global_config
    assert config.verbosity == 0
    assert config.enable_precache_with_tracing is True
    assert config.enable_parallel_encoding is True
    assert config.skip_special_tokens_in_output is True
    assert config.spaces_between_special_tokens_in_out is True
    assert config.retract_decode_steps == 20
    assert config.default_init_new_token_ratio == pytest.approx(0.7)
    from lmprog.global_config import global_config  # SGLang's module path

    assert global_config is config
    with pytest.raises(AttributeError, match="verbosty"):
        config.verbosty = 2  # a misspelt setting is refused, not dropped


def test_global_config_default_backend_is_set_default_backend() -> None:
    """Mirrors test_programs.test_completion_speculative, which reads
    `sgl.global_config.default_backend` after `set_default_backend`."""
    backend = ScriptedBackend(lambda r: "x")
    try:
        lp.set_default_backend(backend)
        assert lp.global_config.default_backend is backend
        lp.global_config.default_backend = None
        assert lp.get_default_backend() is None
        lp.global_config.default_backend = backend
        assert lp.get_default_backend() is backend

        @lp.function
        def hello(s):
            s += "hi" + lp.gen("a")

        assert hello.run()["a"] == "x"  # no backend=: the one global_config set
    finally:
        lp.set_default_backend(None)


def test_verbosity_two_prints_each_finished_program(capsys: pytest.CaptureFixture[str]) -> None:
    @lp.function
    def hello(s):
        s += "Hello," + lp.gen("a")

    backend = ScriptedBackend(lambda r: " world")
    hello.run(backend=backend)
    assert "Hello, world" not in capsys.readouterr().out
    lp.global_config.verbosity = 2
    try:
        hello.run(backend=backend)
    finally:
        lp.global_config.verbosity = 0
    assert "Hello, world" in capsys.readouterr().out


def test_enable_precache_with_tracing_switches_the_batch_prefix_warm_up() -> None:
    """SGLang pre-caches a batch's shared prefix when this is on (run_program_batch)."""
    document = "A long shared document. " * 60

    @lp.function
    def ask(s, question):
        s += document + question + lp.gen("a", max_tokens=2)

    items = [(f"Question {i}?",) for i in range(4)]
    warmed = ScriptedBackend(lambda r: "ok")
    ask.run_batch(items, backend=warmed)
    assert warmed.warmed and all(w.startswith(document) for w in warmed.warmed)
    lp.global_config.enable_precache_with_tracing = False
    try:
        cold = ScriptedBackend(lambda r: "ok")
        states = ask.run_batch(items, backend=cold)
    finally:
        lp.global_config.enable_precache_with_tracing = True
    assert cold.warmed == [] and all(s["a"] == "ok" for s in states)


# ----- 2. REGEX constants and dtype gens -----------------------------------------------------


def test_regex_constants_are_sglangs() -> None:
    from lmprog.ir import REGEX_BOOL, REGEX_FLOAT, REGEX_INT, REGEX_STR
    from lmprog.lang.ir import REGEX_INT as deep_int

    assert REGEX_INT == r"[-+]?[0-9]+[ \n]*" == deep_int
    assert REGEX_FLOAT == r"[-+]?[0-9]*\.?[0-9]+[ \n]*"
    assert REGEX_BOOL == r"(True|False)"
    assert REGEX_STR == r"\"[\w\d\s]*\""
    assert re.fullmatch(REGEX_STR, '"Paris France"') and not re.fullmatch(REGEX_STR, "Paris")


def _json_replies() -> ScriptedBackend:
    """Replies as a model writes them, ending each value with the token it likes ('",' or a
    space); the gen's stops keep only the value. A string's opening quote is in the prompt."""
    replies = {'"name": "': 'Paris",', '"population": ': "2100000,", '"area": ': "105 km"}
    replies |= {'"country": "': 'France",\n', '"timezone": "': 'CET"\n}'}
    return ScriptedBackend(lambda r: next(v for k, v in replies.items() if r.prompt.endswith(k)))


def test_decode_json_from_typed_pieces_is_valid_json() -> None:
    """Mirrors test_programs.test_decode_json: gen_string/gen_int/gen(dtype=...) pieces
    assembled into a JSON object parse as JSON (strings are generated quoted)."""

    @lp.function
    def decode_json(s):
        s += "Generate a JSON object to describe the basic information of a city.\n"
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + lp.gen_string() + ",\n"
            s += '  "population": ' + lp.gen_int() + ",\n"
            s += '  "area": ' + lp.gen(dtype=int) + ",\n"
            s += '  "country": ' + lp.gen_string("country") + ",\n"
            s += '  "timezone": ' + lp.gen(dtype=str) + "\n"
            s += "}"

    backend = _json_replies()
    state = decode_json.run(backend=backend, max_new_tokens=64)
    assert state.error() is None
    data = json.loads(state["json_output"])
    assert data == {
        "name": "Paris",
        "population": 2100000,
        "area": 105,  # "105 km" stops at the space, "2100000," at the comma
        "country": "France",
        "timezone": "CET",
    }
    assert state["country"] == "France"  # the value between the quotes; the text keeps them
    assert '"name": "Paris",\n  "population": 2100000,\n' in state.text()
    stops = [set(r.sampling.stop or ()) for r in backend.requests]
    assert {" ", "\n", ","} <= stops[1] and '"' in stops[0] and '"' not in stops[1]
    values = ["Paris", "2100000", "105", "France", "CET"]
    for request, value in zip(backend.requests, values, strict=True):
        assert re.fullmatch(request.constraint.pattern, value)  # what the engine enforces


def test_decode_json_regex_with_the_constants() -> None:
    """Mirrors test_programs.test_decode_json_regex (REGEX_* from the ir module)."""
    from lmprog.ir import REGEX_FLOAT, REGEX_INT, REGEX_STR

    replies = iter(['"Paris"', "2100000", "105", "48.85"])

    @lp.function
    def decode_json(s):
        with s.var_scope("json_output"):
            s += "{\n"
            s += '  "name": ' + lp.gen(regex=REGEX_STR) + ",\n"
            s += '  "population": ' + lp.gen(regex=REGEX_INT, stop=[" ", "\n"]) + ",\n"
            s += '  "area": ' + lp.gen(regex=REGEX_INT, stop=[" ", "\n"]) + ",\n"
            s += '  "latitude": ' + lp.gen(regex=REGEX_FLOAT, stop=[" ", "\n"]) + "\n"
            s += "}"

    state = decode_json.run(backend=ScriptedBackend(lambda r: next(replies)), temperature=0)
    data = json.loads(state["json_output"])
    assert isinstance(data["name"], str) and isinstance(data["population"], int)


def test_dtype_gen_values() -> None:
    """Mirrors test_programs.test_dtype_gen and test_decode_int: each dtype's value converts
    as SGLang's test converts it (int(), float(), bool()); here it already is that type."""
    replies = {
        'nams is "': 'Domain Name System"',
        "invented?\nA: ": "1983\n",
        "pi?\nA: ": "3.14 or so",
        "blue?\nA: ": "True",
    }

    @lp.function
    def dtype_gen(s):
        s += "Q: What is the full name of DNS?\n"
        s += "A: The full nams is " + lp.gen("str_res", dtype=str, stop="\n") + "\n"
        s += "Q: Which year was DNS invented?\n"
        s += "A: " + lp.gen("int_res", dtype=int) + "\n"
        s += "Q: What is the value of pi?\n"
        s += "A: " + lp.gen("float_res", dtype=float) + "\n"
        s += "Q: Is the sky blue?\n"
        s += "A: " + lp.gen("bool_res", dtype=bool) + "\n"

    backend = ScriptedBackend(lambda r: next(v for k, v in replies.items() if r.prompt.endswith(k)))
    state = dtype_gen.run(backend=backend)
    assert state.error() is None, state.error()
    assert state["str_res"] == "Domain Name System"
    assert state["int_res"] == int(state["int_res"]) == 1983
    assert state["float_res"] == float(state["float_res"]) == pytest.approx(3.14)
    assert state["bool_res"] is True
    assert '"Domain Name System"\n' in state.text() and "1983\n" in state.text()


def test_type_str_stays_free_text_and_gen_string_is_quoted() -> None:
    backend = ScriptedBackend(lambda r: "free words")

    @lp.function
    def both(s):
        s += "a:" + lp.gen("free", type=str) + " b:" + lp.gen("quoted", dtype=str)

    state = both.run(backend=backend)
    assert backend.requests[0].constraint is None and state["free"] == "free words"
    assert state["quoted"] == "free words"  # generated between the quotes the executor wrote
    assert state.text() == 'a:free words b:"free words"'

    cut = ScriptedBackend(lambda r: "a long string")

    @lp.function
    def short(s):
        s += "a:" + lp.gen("quoted", dtype=str, max_tokens=3)

    class Cut(ScriptedBackend):  # the token limit ends the string before its closing quote
        async def generate(self, request, on_text=None):
            generation = await super().generate(request, on_text)
            generation.finish_reason = "length"
            return generation

    error = short.run(backend=Cut(cut._respond)).error()
    assert isinstance(error, lp.ProgramError) and "raise max_tokens" in str(error)


def test_gen_string_streams_its_quotes_and_validates_where_not_enforced() -> None:
    @lp.function
    def name(s):
        s += "Name: " + lp.gen("name", dtype=str, fallback="validate")

    state = name.run(backend=ScriptedBackend(lambda r: 'Ada Lovelace", she said'), stream=True)
    pieces = list(state.text_iter("name"))
    assert "".join(pieces) == '"Ada Lovelace"' and pieces[0] == '"' and pieces[-1] == '"'
    assert state["name"] == "Ada Lovelace"

    class NoRegex(ScriptedBackend):
        capabilities = lp.Capabilities(constraints=frozenset({"json_schema"}), streaming=True)

    unquoted = name.run(backend=NoRegex(lambda r: "Ada")).error()  # validated, not enforced:
    assert isinstance(unquoted, lp.ProgramError)  # the model must write the quotes itself
    assert name.run(backend=NoRegex(lambda r: '"Ada"'))["name"] == "Ada"


def test_return_text_in_logprobs_is_accepted() -> None:
    node = lp.gen("a", return_logprob=True, return_text_in_logprobs=True)
    assert node == lp.gen("a", return_logprob=True)


# ----- 3. choice methods callable as SGLang's ------------------------------------------------

# test/lang/test_choices.py's data: organ ["organ"], organism ["organ", "ism"], and an
# eight-token word whose later tokens are confident
CHOICES_DATA = {
    "choices": ["organ", "organism", "antidisestablishmentarianism"],
    "normalized_prompt_logprobs": [-0.1, -0.2, -0.05],
    "input_token_logprobs": [
        [[-0.1, 1, None]],
        [[-0.1, 1, None], [-0.3, 2, None]],
        [[v, i, None] for i, v in enumerate([-0.4, -0.25, -0.1] + [-0.01] * 5, start=3)],
    ],
    "output_token_logprobs": [[[-0.1, 10, None]]] * 3,
    "unconditional_token_logprobs": [
        [[None, 1, None]],
        [[None, 1, None], [-1.4, 2, None]],
        [[None, 3, None]] + [[v, i, None] for i, v in enumerate([-0.25, -0.1] + [-0.01] * 5)],
    ],
}


def test_token_length_normalized_called_as_sglang() -> None:
    """Mirrors test_choices.test_token_length_normalized."""
    decision = lp.token_length_normalized(**CHOICES_DATA)
    assert decision.decision == "antidisestablishmentarianism"
    assert decision.meta_info["normalized_prompt_logprobs"] == [-0.1, -0.2, -0.05]


def test_greedy_token_selection_called_as_sglang() -> None:
    """Mirrors test_choices.test_greedy_token_selection (and its logprob matrix)."""
    decision = lp.greedy_token_selection(**CHOICES_DATA)
    assert decision.decision == "organ"
    expected = [
        [-0.1] * 8,
        [-0.1, -0.3] + [-0.2] * 6,
        [-0.4, -0.25, -0.1] + [-0.01] * 5,
    ]
    for row, want in zip(decision.meta_info["greedy_logprob_matrix"], expected, strict=True):
        assert row == pytest.approx(want, abs=0.01)


def test_unconditional_likelihood_normalized_called_as_sglang() -> None:
    """Mirrors test_choices.test_unconditional_likelihood_normalized."""
    decision = lp.unconditional_likelihood_normalized(**CHOICES_DATA)
    assert decision.decision == "organism"
    assert decision.meta_info["normalized_unconditional_prompt_logprobs"] == pytest.approx(
        [-0.1, 0.5, -0.05], abs=0.01
    )
    without = {**CHOICES_DATA, "unconditional_token_logprobs": None}
    with pytest.raises(ValueError, match="Unconditional"):
        lp.unconditional_likelihood_normalized(**without)


def test_choice_methods_still_drive_select() -> None:
    from lmprog.lang.choices import ChoicesDecision, ChoicesSamplingMethod

    assert isinstance(lp.greedy_token_selection, ChoicesSamplingMethod)
    assert isinstance(lp.token_length_normalized(**CHOICES_DATA), ChoicesDecision)

    @lp.function
    def pick(s):
        s += "Pick b." + lp.select("x", ["a", "b"], choices_method=lp.greedy_token_selection)

    state = pick.run(backend=ScriptedBackend())
    assert state["x"] == "b"
    assert state.get_meta_info("x")["greedy_logprob_matrix"] == [[-1.0], [5.0]]


# ----- 4. separate_reasoning ---------------------------------------------------------------


def test_separate_reasoning_expression() -> None:
    """Mirrors test_separate_reasoning.py: creation, naming, repr, any model type accepted
    when the expression is made."""
    from lmprog.lang.ir import SglExprList, SglSeparateReasoning

    test_gen = lp.gen("test")
    expr = lp.separate_reasoning(test_gen, model_type="deepseek-r1")
    assert isinstance(expr, SglExprList) and len(expr.expr_list) == 2
    assert expr.expr_list[0] == test_gen
    reasoning = expr.expr_list[1]
    assert isinstance(reasoning, SglSeparateReasoning)
    assert reasoning.model_type == "deepseek-r1"
    assert reasoning.name == "test_reasoning_content"
    assert reasoning.process_name_for_reasoning("another_var") == "another_var_reasoning_content"
    named = lp.separate_reasoning(lp.gen("test_var"), model_type="deepseek-r1").expr_list[1]
    assert repr(named) == (
        "SeparateReasoning(model_type=deepseek-r1, name=test_var_reasoning_content)"
    )
    assert lp.separate_reasoning(test_gen, model_type="invalid-model").expr_list[1]
    with pytest.raises(ValueError, match="name"):
        lp.separate_reasoning(lp.gen(), model_type="qwen3")


@lp.function
def reasoned(s, model_type):
    s += lp.user("What is 2 + 2?")
    s += lp.assistant(lp.separate_reasoning(lp.gen("answer"), model_type=model_type))
    s["seen"] = s["answer"]  # read in the body: already the answer, never the raw text


@pytest.mark.parametrize(
    ("model_type", "raw", "reasoning", "answer"),
    [
        ("deepseek-r1", "2 and 2 make 4.</think>4", "2 and 2 make 4.", "4"),
        ("deepseek-r1", "<think>sum</think>\n\nIt is 4.", "sum", "\n\nIt is 4."),
        ("deepseek-r1", "never closed", "never closed", ""),
        ("qwen3", "<think>sum</think>4", "sum", "4"),
        ("qwen3", "4, no thinking", "", "4, no thinking"),
        ("qwen3-thinking", "sum</think>4", "sum", "4"),
        ("kimi", "\u25c1think\u25b7sum\u25c1/think\u25b74", "sum", "4"),
    ],
)
def test_separate_reasoning_splits_the_value_and_the_text(
    model_type: str, raw: str, reasoning: str, answer: str
) -> None:
    """Mirrors test_separate_reasoning_execution.test_execute_separate_reasoning: the value
    becomes the answer, `<name>_reasoning_content` the reasoning, the text only the answer."""
    state = reasoned.run(model_type, backend=ScriptedBackend(lambda r: raw))
    assert state.error() is None, state.error()
    assert state["answer"] == answer == state["seen"]
    assert state["answer_reasoning_content"] == reasoning
    assert state.get_meta_info("answer")["reasoning"] == reasoning
    assert state.messages()[-1] == {"role": "assistant", "content": answer}
    assert state.text().endswith(f"<|im_start|>assistant\n{answer}<|im_end|>\n")


def test_separate_reasoning_unknown_model_type_fails_when_run() -> None:
    """Mirrors test_separate_reasoning_execution.test_reasoning_parser_invalid_model."""
    state = reasoned.run("invalid-model", backend=ScriptedBackend(lambda r: "x"))
    error = state.error()
    assert isinstance(error, lp.ProgramError) and isinstance(error.cause, ValueError)
    assert "Unsupported model type" in str(error)
    missing = reasoned.run(None, backend=ScriptedBackend(lambda r: "x")).error()
    assert "Model type must be specified" in str(missing)


def test_separate_reasoning_while_streaming_keeps_the_streamed_text() -> None:
    state = reasoned.run(
        "deepseek-r1", backend=ScriptedBackend(lambda r: "hm</think>4"), stream=True
    )
    pieces = "".join(state.text_iter())
    assert state["answer"] == "4" and state["answer_reasoning_content"] == "hm"
    assert pieces == state.text() and "hm</think>4" in pieces


# ----- 5. trace() and cache() --------------------------------------------------------------


@lp.function
def few_shot_qa(s, prompt, question):
    s += prompt
    s += "Q: What is the capital of France?\n"
    s += "A: Paris\n"
    s += "Q: " + question + "\n"
    s += "A:" + lp.gen("answer", stop="\n")


def test_trace_of_a_bound_program() -> None:
    """Mirrors test_bind_cache.test_bind and test_tracing.test_few_shot_qa."""
    bound = few_shot_qa.bind(prompt="The following are questions with answers.\n\n")
    tracer = bound.trace()
    graph = tracer.last_node.print_graph_dfs()
    assert "Gen('answer')" in graph and "Argument(name=question)" in graph
    assert graph.index("questions with answers") < graph.index("Gen('answer')")
    assert set(tracer.variables) == {"answer"}
    kinds = [type(n).__name__ for n in tracer.flatten_nodes()]
    assert kinds[-1] == "Gen" and "Argument" in kinds


def test_trace_of_select_and_fork() -> None:
    """Mirrors test_tracing.test_select and test_tracing.test_fork."""

    @lp.function
    def capital(s):
        s += "The capital of France is"
        s += lp.select("capital", ["Paris. ", "London. "])
        s += "It is a city" + lp.gen("description", stop=".")

    assert [type(n).__name__ for n in capital.trace().flatten_nodes()][-3:] == [
        "Select",
        "Text",
        "Gen",
    ]

    @lp.function
    def tip_suggestion(s):
        s += "Here are three tips for staying healthy: 1. Diet; 2. Exercise; 3. Sleep\n"
        forks = s.fork(3)
        for i in range(3):
            forks[i] += f"Now, expand tip {i + 1} into a paragraph:\n"
            forks[i] += lp.gen("detailed_tip")
        s += "Tip 1:" + forks[0]["detailed_tip"] + "\n"
        s += "In summary" + lp.gen("summary")

    tracer = tip_suggestion.trace()
    graph = tracer.last_node.print_graph_dfs()
    assert "Fork(size=3)" in graph and "Gen('summary')" in graph
    assert "Variable('detailed_tip'" in graph


def test_trace_refuses_an_argument_in_an_f_string() -> None:
    """Mirrors test_tracing.test_raise_warning."""

    @lp.function
    def wrong(s, question):
        s += f"I want to ask {question}"

    with pytest.raises(TypeError):
        wrong.trace()


def test_trace_of_a_program_calling_programs_and_compile() -> None:
    """Mirrors test_tracing.test_multi_function: a program called from a traced body is
    traced; compile() gives a program that runs and runs in batches."""

    @lp.function
    def expand(s, tip):
        s += "Please expand the following tip into a detailed paragraph:" + tip + "\n"
        s += lp.gen("detailed_tip")

    @lp.function
    def tip_suggestion(s, topic):
        s += "Here are 2 tips for " + topic + ".\n"
        s += "1." + lp.gen("tip_1", stop=["\n", ":", "."]) + "\n"
        s += "2." + lp.gen("tip_2", stop=["\n", ":", "."]) + "\n"
        branch1 = expand(tip=s["tip_1"])
        branch2 = expand(tip=s["tip_2"])
        s += "Tip 1: " + branch1["detailed_tip"] + "\n"
        s += "Tip 2: " + branch2["detailed_tip"] + "\n"
        s += "In summary" + lp.gen("summary")

    tracer = tip_suggestion.trace()
    assert len(tracer.child_states) == 2
    assert "Variable('tip_1'" in repr(tracer.child_states[0].flatten_nodes())

    @lp.function
    def short(s, topic):
        s += "Tips for " + topic + ":" + lp.gen("tip", max_tokens=8)

    compiled = short.compile()
    backend = ScriptedBackend(lambda r: " rest")
    assert compiled.run(topic="sleep", backend=backend)["tip"] == " rest"
    states = compiled.run_batch([{"topic": "a"}, {"topic": "b"}], backend=backend, temperature=0)
    assert [s["tip"] for s in states] == [" rest", " rest"]


def test_cache_computes_the_constant_prefix_in_the_engine() -> None:
    """Mirrors test_bind_cache.test_cache: the bound prompt and the literal few-shot text,
    up to the first argument, are computed once in the engine (Backend.warm)."""
    prompt = "Answer the following questions as if you were a 5-year-old kid.\n\n"
    backend = ScriptedBackend()
    prefix = few_shot_qa.bind(prompt=prompt).cache(backend)
    assert prefix == prompt + "Q: What is the capital of France?\nA: Paris\nQ: "
    assert backend.warmed == [prefix] and backend.requests == []
    short = ScriptedBackend()
    few_shot_qa.bind(prompt="Hi\n").cache(short)
    assert short.warmed == []  # 64 characters or fewer: not worth a request (SGLang's rule)


def test_cache_renders_roles_with_the_backends_template() -> None:
    @lp.function
    def chat(s, question):
        s += lp.system("You are a helpful assistant who answers in one word. " * 2)
        s += lp.user(question)
        s += lp.assistant(lp.gen("answer"))

    backend = ScriptedBackend()
    prefix = chat.cache(backend)
    assert prefix.startswith("<|im_start|>system\nYou are") and prefix.endswith(
        "<|im_end|>\n<|im_start|>user\n"
    )
    state = chat.run("Why?", backend=backend)
    assert state.text().startswith(prefix)  # what was cached is what the run sends


# ----- 6. SGLang's module paths ------------------------------------------------------------


def test_deep_imports_of_sglang_module_paths() -> None:
    from lmprog.lang.backend.anthropic import Anthropic
    from lmprog.lang.backend.base_backend import BaseBackend
    from lmprog.lang.backend.openai import OpenAI, TokenUsage
    from lmprog.lang.backend.runtime_endpoint import Runtime, RuntimeEndpoint
    from lmprog.lang.chat_template import get_chat_template
    from lmprog.lang.interpreter import ProgramState, ProgramStateGroup
    from lmprog.lang.ir import SglFunction, SglGen

    assert (BaseBackend, OpenAI, Runtime, RuntimeEndpoint) == (
        lp.Backend,
        lp.OpenAI,
        lp.Runtime,
        lp.RuntimeEndpoint,
    )
    assert ProgramState is lp.ProgramState and ProgramStateGroup is lp.ForkGroup
    assert SglFunction is lp.Program and isinstance(lp.gen("a"), SglGen)
    assert TokenUsage is TokenUsage and Anthropic is lp.Anthropic
    assert "<|im_start|>" in get_chat_template("chatml").source
    with pytest.raises(ImportError, match="video"):
        from lmprog.lang.ir import SglVideo  # noqa: F401
    with pytest.raises(ImportError, match="Execution"):
        from lmprog.lang.interpreter import StreamExecutor  # noqa: F401


# ----- 7. state.error() is what the program raised -----------------------------------------


def test_error_is_the_exception_the_program_raised() -> None:
    @lp.function
    def check(s, n):
        s += "n=" + lp.gen("n")
        if n < 0:
            raise ValueError(f"negative: {n}")

    state = check.run(-1, backend=ScriptedBackend(lambda r: "1"))
    error = state.error()
    assert isinstance(error, ValueError) and str(error) == "negative: -1"
    assert "program 'check'" in " ".join(getattr(error, "__notes__", []))
    wrapped = state.program_error()
    assert isinstance(wrapped, lp.ProgramError) and wrapped.cause is error
    assert wrapped.raised_by_program and wrapped.program == "check"

    states = check.run_batch([(1,), (-2,)], backend=ScriptedBackend(lambda r: "1"))
    assert states[0].error() is None and isinstance(states.errors()[0], ValueError)
    with pytest.raises(lp.BatchError, match="negative: -2"):
        check.run_batch([(1,), (-2,)], backend=ScriptedBackend(), return_exceptions=False)


def test_lmprogs_own_errors_stay_typed() -> None:
    @lp.function
    def number(s):
        s += "n=" + lp.gen("n", type=int)

    error = number.run(backend=ScriptedBackend(lambda r: "many")).error()
    assert isinstance(error, lp.ProgramError) and isinstance(error.cause, lp.ConstraintError)
    assert not error.raised_by_program

    @lp.function
    def reads_failed(s):
        s += "n=" + lp.gen("n", type=int)
        s["n"]  # re-raises the ProgramError of the failed gen

    error = reads_failed.run(backend=ScriptedBackend(lambda r: "many")).error()
    assert isinstance(error, lp.ProgramError) and "gen('n')" in str(error)


# ----- 8. streaming, token usage, hosted APIs, Engine ---------------------------------------


@lp.function
def story(s):
    s += "Once" + lp.gen("story", max_tokens=16)


def test_text_iter_takes_sglangs_var_name() -> None:
    """Mirrors test_programs.test_stream (text_iter() and text_iter("answer"))."""
    backend = ScriptedBackend(lambda r: " upon a time")
    state = story.run(backend=backend, stream=True)
    assert "".join(state.text_iter(var_name="story")) == " upon a time"
    assert "".join(story.run(backend=backend, stream=True).text_iter()) == "Once upon a time"
    with pytest.raises(TypeError, match="once"):
        state.text_iter("story", var_name="other")


def test_text_async_iter_meta_counts_tokens_per_chunk() -> None:
    state = story.run(backend=ScriptedBackend(lambda r: " upon a time"), stream=True)

    async def read() -> list[tuple[str, dict]]:
        pieces = []
        async for piece, meta in state.text_async_iter(var_name="story", return_meta_data=True):
            pieces.append((piece, meta))
        return pieces

    pieces = asyncio.run(read())
    assert "".join(p for p, _ in pieces) == " upon a time"
    assert [m["completion_tokens"] for _, m in pieces] == list(range(1, len(pieces) + 1))


def test_token_usage_adds_up_every_request_and_resets() -> None:
    """SGLang's backend.token_usage (test_programs.test_completion_speculative)."""
    backend = ScriptedBackend(lambda r: "two words")
    usage = token_usage(backend)
    assert usage == TokenUsage(0, 0)
    state = story.run(backend=backend, budget=lp.Budget(max_requests=5))  # through a wrapper
    meta = state.get_meta_info("story")
    assert (usage.prompt_tokens, usage.completion_tokens) == (
        meta["prompt_tokens"],
        meta["completion_tokens"],
    )
    story.run(backend=backend)
    assert usage.completion_tokens == 2 * meta["completion_tokens"]
    usage.reset()
    assert usage == TokenUsage(0, 0) and token_usage(backend) is usage


@pytest.mark.skipif(
    not hasattr(lp.Backend, "token_usage"),
    reason="Backend.token_usage is added in lmprog/backends/base.py (the lead's file)",
)
def test_backend_token_usage_attribute() -> None:
    backend = ScriptedBackend(lambda r: "x")
    backend.token_usage.reset()
    story.run(backend=backend)
    assert backend.token_usage.completion_tokens == 1


def test_hosted_backends_are_openai_compatible_endpoints(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(lp.LmprogError, match="ANTHROPIC_API_KEY"):
        lp.Anthropic("claude-3-5-haiku-latest")
    claude = lp.Anthropic("claude-3-5-haiku-latest", api_key="sk-test")
    assert isinstance(claude, lp.OpenAI) and claude.is_chat_model
    assert claude.base_url == "https://api.anthropic.com/v1"

    @lp.function
    def constrained(s):
        s += lp.user("Pick.") + lp.assistant(lp.gen("n", regex="[0-9]"))

    refused = constrained.run(backend=claude).error()  # refused before any request
    assert isinstance(refused, lp.ProgramError)
    assert isinstance(refused.cause, lp.UnsupportedFeatureError)

    monkeypatch.delenv("GCP_PROJECT_ID", raising=False)
    with pytest.raises(lp.LmprogError, match="GCP_PROJECT_ID"):
        lp.VertexAI("gemini-2.0-flash")
    gemini = lp.VertexAI("gemini-2.0-flash", project="p", location="europe-west4", access_token="t")
    assert gemini.model == "google/gemini-2.0-flash"
    assert gemini.base_url == (
        "https://europe-west4-aiplatform.googleapis.com/v1/projects/p/locations/europe-west4"
        "/endpoints/openapi"
    )
    with pytest.raises(TypeError, match="safety_settings"):
        lp.VertexAI("gemini-2.0-flash", safety_settings={"x": 1}, project="p")

    monkeypatch.delenv("LITELLM_PROXY_API_BASE", raising=False)
    with pytest.raises(lp.LmprogError, match="LiteLLM proxy"):
        lp.LiteLLM("gpt-4o-mini")
    proxy = lp.LiteLLM("gpt-4o-mini", base_url="http://127.0.0.1:4000")
    assert proxy.base_url == "http://127.0.0.1:4000" and proxy.is_chat_model


def test_engine_refuses_sglang_server_arguments() -> None:
    with pytest.raises(TypeError, match="mem_fraction_static"):
        lp.Engine(model_path="x", mem_fraction_static=0.8)


def test_sglangs_constructor_keywords() -> None:
    """SGLang spells them `sgl.OpenAI(model_name=...)` and `sgl.Runtime(model_path=...)`."""
    assert lp.OpenAI(model_name="gpt-4o-mini", api_key="k").model == "gpt-4o-mini"
    with pytest.raises(TypeError, match="once"):
        lp.OpenAI("a", model_name="b")
    with pytest.raises(TypeError, match="needs a model"):
        lp.OpenAI()
    with pytest.raises(TypeError, match="once"):
        lp.Runtime("sglang", "m", model_path="m")
    with pytest.raises(TypeError, match="engine and a model"):
        lp.Runtime()
