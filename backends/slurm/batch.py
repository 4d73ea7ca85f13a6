"""An lmprog batch against the engine a Slurm job started: JSONL in, JSONL out.

backends/slurm/lmprog-batch.sbatch runs it once the engine is healthy, with LMPROG_ENGINE
(sglang, vllm or llamacpp) and LMPROG_ENGINE_URL set, and the job's arguments:

    python backends/slurm/batch.py questions.jsonl answers.jsonl

Each input line is {"id": ..., "question": ...}; each output line, in input order, is
{"id": ..., "answer": ...}, or {"id": ..., "error": ...} for a program that failed (one
failure never sinks the batch). Exits 1 when every program failed (the engine is unusable).
Replace `answer` with your own program. The prompt is plain text on purpose: a program with
roles needs the model's chat template, which lmprog reads from the model folder when it can
see it, else pass chat_template= to the backend.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import lmprog as lp


@lp.function(temperature=0)
def answer(s: Any, question: str) -> None:
    s += f"Question: {question}\nAnswer:"
    s += lp.gen("answer", max_tokens=256, stop="\n")


def engine_backend(engine: str, url: str) -> lp.Backend:
    """The lmprog backend for the engine the job started."""
    if engine == "sglang":
        return lp.SGLang(url)
    if engine == "vllm":
        return lp.VLLM(url)
    if engine in ("llamacpp", "llama.cpp"):
        return lp.LlamaCpp(url)
    raise SystemExit(f"batch.py: LMPROG_ENGINE={engine!r}: use sglang, vllm or llamacpp")


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        raise SystemExit("usage: batch.py INPUT.jsonl OUTPUT.jsonl")
    source, target = Path(argv[1]), Path(argv[2])
    url = os.environ.get("LMPROG_ENGINE_URL")
    if not url:
        raise SystemExit("batch.py: set LMPROG_ENGINE_URL (lmprog-batch.sbatch does)")
    backend = engine_backend(os.environ.get("LMPROG_ENGINE", "sglang"), url)

    records = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    states = answer.run_batch([{"question": r["question"]} for r in records], backend=backend)
    failed = 0
    with target.open("w") as out:
        for record, state in zip(records, states, strict=True):
            if state.error() is not None:
                failed += 1
                result = {"id": record.get("id"), "error": repr(state.error())}
            else:
                result = {"id": record.get("id"), "answer": state["answer"].strip()}
            out.write(json.dumps(result) + "\n")
    print(f"batch.py: {len(records) - failed}/{len(records)} answered -> {target}")
    return 1 if records and failed == len(records) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
