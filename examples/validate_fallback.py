"""Constraints on a backend that cannot enforce them: refused by default, validated on request.

Many chat APIs enforce JSON schemas (structured outputs) but not regexes or choice lists, and
return no logprobs. lmprog never drops a constraint silently:

- a regex there raises `lp.UnsupportedFeatureError` before any request is sent;
- `gen(..., fallback="validate", max_attempts=K)` opts into generate-validate-retry; an attempt
  is abandoned as soon as its text can no longer match, so a bad one costs a few tokens;
- `select` on such a model asks for `{"choice": <enum of the choices>}` as structured output.

`get_meta_info(name)["constraint_path"]` records what actually held the value. To have such a
chat API locally, this example starts llama-server with Gemma 3 270M and talks to its chat
endpoint as a JSON-only API (`server="generic"`); the same program on lp.Local reports "token
masks". Needs llama-server (built by scripts/setup.sh). Run with:

    .venv/bin/python examples/validate_fallback.py
"""

from __future__ import annotations

from pathlib import Path

import lmprog as lp
from lmprog.models import gemma3_270m_gguf

GEMMA_TEMPLATE = Path(lp.__file__).parent / "templates" / "gemma3.jinja"  # the GGUF lacks it


@lp.function(temperature=0.7, seed=7)  # sampled, so that a retry can differ; seeded
def review(s, product, fallback):
    s += lp.user(f"Write a one-line review of {product}, starting with a capital letter.")
    first_line = lp.gen(
        "review", regex=r"[A-Z][^\n]{5,120}", max_tokens=40, stop="\n", fallback=fallback,
        max_attempts=5,
    )
    s += lp.assistant(first_line)
    s += lp.user("Is that review positive? Answer yes or no.")
    s += lp.assistant(lp.select("positive", ["yes", "no"]))


def show(label: str, state: lp.ProgramState) -> None:
    if state.error() is not None:
        print(f"[{label}] error: {state.error()}")
        return
    for name in ("review", "positive"):
        path = state.get_meta_info(name)["constraint_path"]
        print(f"[{label}] {name} = {state[name]!r}  ({path})")


def main() -> None:
    with lp.Runtime(
        "llama.cpp", gemma3_270m_gguf(), slots=2, chat_template_file=GEMMA_TEMPLATE
    ) as server:
        chat_api = lp.OpenAI("gemma", base_url=server.url + "/v1", is_chat_model=True,
                             server="generic")  # fmt: skip
        show("chat API, no fallback", review.run("a rain jacket", None, backend=chat_api))
        show("chat API, validate", review.run("a rain jacket", "validate", backend=chat_api))
    show("lp.Local", review.run("a rain jacket", None))


if __name__ == "__main__":
    main()
