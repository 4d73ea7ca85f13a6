"""The six workloads, each written twice, both sending exactly the same prompts:

- once in the SGLang frontend language (`programs(m)`), which lmprog and SGLang both run: `m` is
  the `lmprog` or the `sglang` module (lmprog runs SGLang programs unchanged);
- once as a plain-Python script for the hand-written clients: a generator that yields a request
  (or a list of requests that may go out together, a fork) and receives the answer(s). The
  asyncio ceiling and the sequential loop drive the same scripts.

Every prompt starts with a tag unique to the run, so no run is served from a prefix that an
earlier run (or another tool) left in the engine's cache; within a run, programs share prefixes
as they would in real use. Sampling is greedy, so every tool gets the same answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Req:
    """One completion: the whole prompt, and at most one constraint."""

    prompt: str
    max_tokens: int
    stop: tuple[str, ...] = ()
    choices: tuple[str, ...] = ()
    schema: dict[str, Any] | None = None


Script = Generator["Req | list[Req]", Any, None]

# ----- texts --------------------------------------------------------------------------------

COUNTRIES = [
    "Japan",
    "Egypt",
    "Canada",
    "Peru",
    "Kenya",
    "Chile",
    "India",
    "Cuba",
    "Norway",
    "Brazil",
    "Mexico",
    "Greece",
    "Turkey",
    "Vietnam",
    "Ghana",
    "Poland",
]
FACTS = {c: f"{c} is a country; see an atlas for its capital and population." for c in COUNTRIES}
QUIZ = "A quiz about capital cities.\n" + "".join(
    f"Q: What is the capital of {c}?\nA: {a}\n"
    for c, a in [
        ("France", "Paris"),
        ("Germany", "Berlin"),
        ("Italy", "Rome"),
        ("Spain", "Madrid"),
        ("Austria", "Vienna"),
        ("Ireland", "Dublin"),
        ("Sweden", "Stockholm"),
        ("Portugal", "Lisbon"),
    ]
)
TOPICS = ["city parks", "school lunches", "night trains", "public libraries", "bike lanes"]
REVIEWS = [
    "The soup was cold and the waiter ignored us.",
    "Lovely terrace, fair prices, we will come back.",
    "Food was fine. Nothing special, nothing bad.",
    "Far too expensive for such small plates.",
    "The staff were friendly and quick.",
]
LABELS = (
    "Classify restaurant reviews.\n"
    "Review: Great pasta and a warm welcome.\nSentiment: positive\nTopic: food\nRecommend: yes\n"
    "Review: We waited an hour for the bill.\nSentiment: negative\nTopic: service\n"
    "Recommend: no\n"
)
SENTIMENT = (" positive", " negative", " neutral")
TOPIC = (" food", " service", " price")
RECOMMEND = (" yes", " no")
PEOPLE = [
    "Ada Lovelace, 36, lived in London.",
    "Alan Turing was 41 and worked in Manchester.",
    "Grace Hopper, aged 85, from New York.",
    "Marie Curie (66) spent her life in Paris.",
]
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 24},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "city": {"type": "string", "maxLength": 24},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
REACT = (
    "Answer questions. Tools: lookup[country] gives facts, finish[answer] ends.\n"
    "Question: What is the capital of France?\n"
    "Thought: I should look up France.\nAction: lookup[France]\n"
    "Observation: France is a country; its capital is Paris.\n"
    "Thought: I know the answer.\nAction: finish[Paris]\n"
)
REACT_STOP = ("\nObservation:", "\nQuestion:")
ACTION = re.compile(r"Action: (\w+)\[([^\]]*)\]")


def head(tag: str) -> str:
    return f"[run {tag}]\n"


def action(step: str) -> tuple[str, str] | None:
    """The tool call a ReAct step asks for, or None (no call, or finish: the loop ends)."""
    found = ACTION.search(step)
    if found is None or found[1] == "finish":
        return None
    return found[1], found[2]


def observe(tool: str, argument: str) -> str:
    return (
        FACTS.get(argument.strip(), f"no facts about {argument!r}")
        if tool == "lookup"
        else (f"unknown tool {tool!r}")
    )


# ----- the same workloads as plain scripts for the hand-written clients ----------------------


def one_gen_script(tag: str, i: int) -> Script:
    yield Req(f"{head(tag)}Q: What is {i} plus {i}?\nA:", 8, ("\n",))


def multi_turn_script(tag: str, i: int) -> Script:
    text = head(tag) + QUIZ
    for k in range(3):
        text += f"Q: What is the capital of {COUNTRIES[(3 * i + k) % len(COUNTRIES)]}?\nA:"
        text += (yield Req(text, 8, ("\n",))) + "\n"


def fork_prefix(tag: str, i: int) -> str:
    return (
        f"{head(tag)}Topic: {TOPICS[i % len(TOPICS)]} (brief {i}).\nFour people each write one "
        "short, concrete idea to improve it; then one sentence sums them up.\n"
    )


def fork_script(tag: str, i: int) -> Script:
    text = fork_prefix(tag, i)
    ideas = yield [Req(text + f"Idea {k + 1}:", 16, ("\n",)) for k in range(4)]
    text += "".join(f"Idea {k + 1}:{idea}\n" for k, idea in enumerate(ideas))
    yield Req(text + "Summary:", 16, ("\n",))


def select_script(tag: str, i: int) -> Script:
    text = f"{head(tag)}{LABELS}Review: {REVIEWS[i % len(REVIEWS)]}\nSentiment:"
    text += yield Req(text, 4, choices=SENTIMENT)
    text += "\nTopic:"
    text += yield Req(text, 4, choices=TOPIC)
    text += "\nRecommend:"
    yield Req(text, 4, choices=RECOMMEND)


def json_prompt(tag: str, i: int) -> str:
    return f"{head(tag)}Extract the person as JSON.\nText: {PEOPLE[i % len(PEOPLE)]}\nJSON:"


def json_script(tag: str, i: int) -> Script:
    yield Req(json_prompt(tag, i), 64, schema=PERSON)


def react_question(tag: str, i: int) -> str:
    return f"{head(tag)}{REACT}Question: What is the capital of {COUNTRIES[i % 16]}?\n"


def react_script(tag: str, i: int) -> Script:
    text = react_question(tag, i)
    for _ in range(3):
        text += "Thought:"
        step = yield Req(text, 40, REACT_STOP)
        text += step
        call = action(step)
        if call is None:
            break
        text += f"\nObservation: {observe(*call)}\n"
    yield Req(text + "\nAnswer:", 12, ("\n",))


# ----- the same workloads in the SGLang frontend language ----------------------------------


def programs(m: Any) -> dict[str, Any]:
    """The workloads as programs of `m`, the lmprog or the sglang module (same source)."""

    @m.function
    def one_gen(s: Any, tag: str, i: int) -> None:
        s += f"{head(tag)}Q: What is {i} plus {i}?\nA:" + m.gen("answer", max_tokens=8, stop="\n")

    @m.function
    def multi_turn(s: Any, tag: str, i: int) -> None:
        s += head(tag) + QUIZ
        for k in range(3):
            s += f"Q: What is the capital of {COUNTRIES[(3 * i + k) % len(COUNTRIES)]}?\nA:"
            s += m.gen(f"a{k}", max_tokens=8, stop="\n") + "\n"

    @m.function
    def fork(s: Any, tag: str, i: int) -> None:
        s += fork_prefix(tag, i)
        forks = s.fork(4)
        forks += lambda k: f"Idea {k + 1}:" + m.gen("idea", max_tokens=16, stop="\n")
        forks.join()
        s += "".join(f"Idea {k + 1}:{forks[k]['idea']}\n" for k in range(4))
        s += "Summary:" + m.gen("summary", max_tokens=16, stop="\n")

    def classify(**method: Any) -> Any:
        @m.function
        def select(s: Any, tag: str, i: int) -> None:
            s += f"{head(tag)}{LABELS}Review: {REVIEWS[i % len(REVIEWS)]}\nSentiment:"
            s += m.select("sentiment", choices=list(SENTIMENT), **method)
            s += "\nTopic:" + m.select("topic", choices=list(TOPIC), **method)
            s += "\nRecommend:" + m.select("recommend", choices=list(RECOMMEND), **method)

        return select

    select = classify()
    # lmprog only: the engine picks under a choice constraint, as the hand-written clients do
    decoded = getattr(m, "constrained_decoding", None)
    select_decoded = classify(choices_method=decoded) if decoded else None

    @m.function
    def json_extract(s: Any, tag: str, i: int) -> None:
        s += json_prompt(tag, i) + m.gen("person", max_tokens=64, json_schema=json.dumps(PERSON))

    @m.function
    def react(s: Any, tag: str, i: int) -> None:
        s += react_question(tag, i)
        for k in range(3):
            s += "Thought:" + m.gen(f"step{k}", max_tokens=40, stop=list(REACT_STOP))
            call = action(s[f"step{k}"])
            if call is None:
                break
            s += f"\nObservation: {observe(*call)}\n"
        s += "\nAnswer:" + m.gen("answer", max_tokens=12, stop="\n")

    return {
        "one_gen": one_gen,
        "multi_turn": multi_turn,
        "fork": fork,
        "select": select,
        "select_decoded": select_decoded,
        "json": json_extract,
        "react": react,
    }


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    script: Callable[[str, int], Script] = field(repr=False)


WORKLOADS = [
    Workload("one_gen", "one gen per program", one_gen_script),
    Workload("multi_turn", "few-shot prefix + 3 sequential gens", multi_turn_script),
    Workload("fork", "shared prefix, fork of 4, final gen", fork_script),
    Workload("select", "3 selects per program (classification)", select_script),
    Workload(
        "select_decoded",
        "the same, lp.constrained_decoding (lmprog only)",
        select_script,
    ),
    Workload("json", "JSON extraction with a schema", json_script),
    Workload("react", "ReAct loop (up to 3 tool calls)", react_script),
]
