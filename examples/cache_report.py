"""How much of each prompt the engine served from its prefix cache, and the lint that explains
a low number.

The same few-shot batch twice on the default backend (lp.Local(), Gemma 3 270M, in-process):
once with the shared examples first and the question last, once with the country named
before them. The engine can reuse only a shared *prefix*, so the second ordering recomputes
the examples for every item, and lmprog warns (lp.PrefixOrderWarning, on stderr) naming the
gen and the line that put varying text first. Run it with:

    .venv/bin/python examples/cache_report.py
"""

from __future__ import annotations

import lmprog as lp

EXAMPLES = "".join(
    f"Q: What is the capital of {country}?\nA: {capital}\n"
    for country, capital in [
        ("Germany", "Berlin"),
        ("Italy", "Rome"),
        ("Japan", "Tokyo"),
        ("Kenya", "Nairobi"),
        ("Canada", "Ottawa"),
        ("Egypt", "Cairo"),
        ("Peru", "Lima"),
        ("Norway", "Oslo"),
    ]
)
COUNTRIES = ["France", "Spain", "Portugal", "Greece", "Poland", "Austria"]


@lp.function(temperature=0)
def shared_first(s, country):
    s += EXAMPLES  # the same for every item: the cache serves it after the first
    s += f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("answer", max_tokens=8, stop="\n")


@lp.function(temperature=0)
def country_first(s, country):
    s += f"Country: {country}\n"  # varies, and comes first: nothing after it is reused
    s += EXAMPLES
    s += f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("answer", max_tokens=8, stop="\n")


def main() -> None:
    for program in (shared_first, country_first):
        states = program.run_batch([{"country": c} for c in COUNTRIES])
        print(f"[{program.name}]", ", ".join(s["answer"].strip() for s in states))
        print(lp.cache_report(states).table())


if __name__ == "__main__":
    main()
