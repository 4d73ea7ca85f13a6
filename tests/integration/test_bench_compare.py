"""bench/compare.py runs end to end on its zero-latency target, so the benchmark cannot rot.

Tiny: 4 programs, one run, lmprog and the hand-written ceiling (and SGLang's frontend where
bench/setup.sh installed it; otherwise its rows must say why they are missing).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = {"one_gen", "multi_turn", "fork", "select", "select_decoded", "json", "react"}
CEILING = "asyncio + AsyncOpenAI (ceiling)"


def test_compare_runs_every_workload_on_the_zero_latency_server(tmp_path: Path) -> None:
    command = [
        sys.executable,
        str(ROOT / "bench" / "compare.py"),
        "--targets",
        "zero",
        "--programs",
        "4",
        "--repeat",
        "1",
        "--tools",
        "lmprog,ceiling,sglang",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    rows = json.loads((tmp_path / "compare.json").read_text())["rows"]
    by_tool: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_tool.setdefault(row["tool"], {})[row["workload"]] = row

    for tool in ("lmprog", CEILING):
        assert set(by_tool[tool]) == WORKLOADS
        for workload, row in by_tool[tool].items():
            (sample,) = row["samples"]
            assert sample["errors"] == [], (tool, workload, sample["errors"])
            assert sample["programs"] == 4 and sample["requests"] >= 4, (tool, workload)
            assert row["ratio"] > 0
    assert by_tool[CEILING]["fork"]["samples"][0]["requests"] == 4 * 5  # 4 branches + final
    assert by_tool["lmprog"]["fork"]["samples"][0]["requests"] >= 4 * 5

    openai_backend = by_tool["SGLang frontend (OpenAI backend)"]
    native = by_tool["SGLang frontend (RuntimeEndpoint)"]
    if importlib.util.find_spec("sglang") is None:
        for row in [*openai_backend.values(), *native.values()]:
            assert "bench/setup.sh" in row["why_not"] and not row["samples"]
        return
    assert "logit_bias" in openai_backend["select"]["why_not"]
    assert "json_schema" in openai_backend["json"]["why_not"]
    for frontend in (openai_backend, native):  # SGLang has no constrained-decoding select
        assert "constrained-decoding" in frontend["select_decoded"]["why_not"]
    for workload in WORKLOADS - {"select_decoded"}:
        (sample,) = native[workload]["samples"]
        assert sample["errors"] == [], (workload, sample["errors"])
    frontends_missing = [r for r in rows if r["why_not"] and r["tool"].startswith("SGLang")]
    assert len(frontends_missing) == 4  # logit_bias select, json_schema, 2 x select_decoded
    # the report shows every row a tool could not run (the opt-in vLLM select tool, which
    # "lmprog" also names, has no zero-target rows), each with its reason
    assert (tmp_path / "compare.md").read_text().count("n/a (") == sum(
        1 for r in rows if r["why_not"]
    )
