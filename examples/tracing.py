"""Tracing: every run records spans — the program, each primitive, each backend request — with
timings, token counts and prefix-cache hits.

`state.trace()` returns a program's spans; `lp.trace_to("runs.jsonl")` appends every finished
program's spans to a JSON-lines file (and `lp.trace_to(lp.OpenTelemetryTraces())` sends them
to OpenTelemetry with the GenAI semantic conventions, when its SDK is installed). A trace
never holds an API key, URL credentials or query strings; generated text only with
`include_text=True`. Runs on the default backend (Gemma 3 270M in this process):

    .venv/bin/python examples/tracing.py
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import lmprog as lp

FEW_SHOT = "Q: What is the capital of Italy?\nA: Rome\nQ: What is the capital of Peru?\nA: Lima\n"


@lp.function(temperature=0)
def capital(s, country):
    s += FEW_SHOT + f"Q: What is the capital of {country}?\nA:"
    s += lp.gen("city", max_tokens=8, stop="\n")
    s += "\nIs that a large city? " + lp.select("large", ["yes", "no"])


def main() -> None:
    state = capital.run("France")
    print(f"{'span':<24} {'kind':<9} {'ms':>7}  tokens (prompt/cached/out)")
    for span in state.trace():
        a = span.attributes
        tokens = "/".join(str(a.get(k, "-")) for k in ("prompt_tokens", "cached_tokens",
                                                       "completion_tokens"))  # fmt: skip
        ms = (span.duration_s or 0) * 1000
        print(f"{span.name:<24} {span.kind:<9} {ms:7.1f}  {tokens}")

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "runs.jsonl"
        sink = lp.trace_to(path, include_text=True)
        capital.run_batch([("Japan",), ("Spain",), ("Egypt",)])
        lp.stop_tracing(sink)
        records = [json.loads(line) for line in path.read_text().splitlines()]
    kinds = Counter(r["kind"] for r in records)
    print(f"\n{path.name}: {len(records)} spans {dict(kinds)}")
    answers = [r["text"].strip() for r in records if r["name"] == "generate"]
    print(f"generated: {answers}")


if __name__ == "__main__":
    main()
