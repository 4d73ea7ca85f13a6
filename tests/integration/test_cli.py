"""`lmprog` on real backends: resume after SIGINT and SIGKILL, retries, serve-info, backends.

The program under test writes each input's key to $MARKS when it starts, so a test knows which
inputs a run actually executed, independently of what the CLI reports.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from support.fake_openai import FakeOpenAI
from support.fake_sglang import FakeSGLang
from support.models import tiny_model_dir, tiny_model_gguf

import lmprog as lp
from lmprog.cli import main
from lmprog.cli.inputs import key_token
from lmprog.cli.results import ResultsFile

pytestmark = pytest.mark.engine

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

PROGRAM = """
import asyncio, os
import pydantic
import lmprog as lp

class Info(pydantic.BaseModel):
    n: int
    even: bool

@lp.function(temperature=0)
async def echo(s, n, fail=False):
    with open(os.environ["MARKS"], "a") as marks:
        marks.write(f"{n}\\n")
    await asyncio.sleep(float(os.environ.get("DELAY", "0")))
    if fail and os.environ.get("FAIL") == "1":
        raise ValueError(f"input {n} was asked to fail")
    s += f"Item {n}:" + lp.gen("x")  # max tokens: --max-tokens
    s["info"] = Info(n=n, even=n % 2 == 0)
    return n * 2

def not_a_program(s):
    pass
"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "prog.py").write_text(PROGRAM)
    return tmp_path


def write_inputs(path: Path, count: int, fail_every: int = 0) -> None:
    lines = [
        {"id": f"item-{n}", "n": n, "fail": bool(fail_every) and n % fail_every == 3}
        for n in range(count)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


def lmprog_run(workdir: Path, backend: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "lmprog",
        "run",
        str(workdir / "prog.py") + ":echo",
        "--backend",
        backend,
        "--input",
        str(workdir / "in.jsonl"),
        "--output",
        str(workdir / "out.jsonl"),
        "--max-tokens",
        "3",
        *extra,
    ]


def env_with(marks: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "MARKS": str(marks), **extra}


def read_output(path: Path) -> list[dict[str, Any]]:
    """Every readable line (a SIGKILL may leave the last one cut short)."""
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def marked(path: Path) -> list[int]:
    return [int(line) for line in path.read_text().split()] if path.exists() else []


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGKILL], ids=["sigint", "sigkill"])
def test_an_interrupted_run_resumes_without_recomputing(
    workdir: Path, tiny_server: lp.Runtime, stop: signal.Signals
) -> None:
    write_inputs(workdir / "in.jsonl", 40)
    command = lmprog_run(workdir, f"llamacpp:{tiny_server.url}", "--concurrency", "4")
    output = workdir / "out.jsonl"
    first = subprocess.Popen(
        command,
        env=env_with(workdir / "marks1", DELAY="0.25"),
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while len(read_output(output) if output.exists() else []) < 4:
        assert first.poll() is None, first.communicate()[1]
        assert time.monotonic() < deadline, "no results written within 60 s"
        time.sleep(0.05)
    first.send_signal(stop)
    _, stderr = first.communicate(timeout=30)
    assert first.returncode == (130 if stop == signal.SIGINT else -signal.SIGKILL), stderr
    if stop == signal.SIGINT:
        assert "Rerun the same command to resume" in stderr, stderr
        assert "lmprog run " in stderr.split("resume:")[1], stderr
    kept = {r["key"]: r for r in read_output(output) if r["error"] is None}
    assert 4 <= len(kept) < 40, f"not stopped mid-way: {len(kept)} results"

    second = subprocess.run(
        command, env=env_with(workdir / "marks2"), capture_output=True, text=True, timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert f"{len(kept)} already done (skipped)" in second.stderr, second.stderr
    records = [json.loads(line) for line in output.read_text().splitlines()]
    keys = [r["key"] for r in records]
    assert sorted(keys) == sorted(f"item-{n}" for n in range(40)), "every input exactly once"
    assert all(r["error"] is None for r in records)
    # Nothing the first run finished ran again, and its results are kept as they were.
    rerun = {f"item-{n}" for n in marked(workdir / "marks2")}
    assert not rerun & set(kept), sorted(rerun & set(kept))
    assert rerun == {f"item-{n}" for n in range(40)} - set(kept)
    assert all(r == kept[r["key"]] for r in records if r["key"] in kept)
    assert len({r["run"] for r in records}) == 2
    last = records[-1]
    assert last["ret_value"] == 2 * last["variables"]["info"]["n"]
    assert last["stats"]["requests"] == 1 and last["stats"]["completion_tokens"] == 3


def test_a_server_that_dies_stops_the_run_and_a_rerun_resumes(workdir: Path) -> None:
    write_inputs(workdir / "in.jsonl", 40)
    # One thread: on a busy 2-core machine llama.cpp's spinning thread pool stalls (ENGINES.md).
    server = lp.Runtime("llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=512, threads=1)
    command = lmprog_run(workdir, f"llamacpp:{server.url}", "--concurrency", "2")
    output = workdir / "out.jsonl"
    try:
        first = subprocess.Popen(
            command, env=env_with(workdir / "m1", DELAY="0.25"), stderr=subprocess.PIPE, text=True
        )
        deadline = time.monotonic() + 60
        while len(read_output(output) if output.exists() else []) < 3:
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        server.shutdown()
    _, stderr = first.communicate(timeout=120)
    assert first.returncode == 1, stderr
    assert "stopped answering" in stderr and "Rerun the same command to resume" in stderr
    kept = {r["key"] for r in read_output(output) if r["error"] is None}
    assert 3 <= len(kept) < 40
    assert len(read_output(output)) < len(kept) + 4, "the inputs left did not all fail"

    with lp.Runtime(
        "llama.cpp", tiny_model_gguf(), slots=2, ctx_per_slot=512, threads=1, port=server.port
    ):
        second = subprocess.run(command, env=env_with(workdir / "m2"), capture_output=True)
    assert second.returncode == 0, second.stderr
    records = read_output(output)
    assert sorted(r["key"] for r in records) == sorted(f"item-{n}" for n in range(40))
    assert not {f"item-{n}" for n in marked(workdir / "m2")} & kept


def test_failed_inputs_are_retried_on_rerun(workdir: Path, tiny_server: lp.Runtime) -> None:
    write_inputs(workdir / "in.jsonl", 12, fail_every=5)  # inputs 3 and 8 fail
    command = lmprog_run(workdir, f"llamacpp:{tiny_server.url}")
    first = subprocess.run(
        [*command, "--progress"],
        env=env_with(workdir / "m1", FAIL="1"),
        capture_output=True,
        text=True,
    )
    assert first.returncode == 1, first.stderr
    assert "12/12 [" in first.stderr and "failed=2" in first.stderr, "the progress bar"
    assert "10 done, 2 failed" in first.stderr, first.stderr
    assert "input 3 was asked to fail" in first.stderr
    failed = {r["key"]: r["error"] for r in read_output(workdir / "out.jsonl") if r["error"]}
    assert set(failed) == {"item-3", "item-8"}
    assert failed["item-3"]["program"] == "echo"
    assert failed["item-3"]["type"] == "ValueError"

    second = subprocess.run(command, env=env_with(workdir / "m2"), capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "2 failed before (retrying), 0 new" in second.stderr
    assert sorted(marked(workdir / "m2")) == [3, 8]
    records = read_output(workdir / "out.jsonl")
    assert [r["key"] for r in records] == [f"item-{n}" for n in range(12)]  # input order
    assert all(r["error"] is None for r in records)


def test_local_backend_and_the_final_line(workdir: Path) -> None:
    write_inputs(workdir / "in.jsonl", 4)
    done = subprocess.run(
        lmprog_run(workdir, f"local:{tiny_model_dir()}", "--max-tokens", "2"),  # the last wins
        env=env_with(workdir / "marks"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    final = done.stderr.strip().splitlines()[-1]
    assert final.startswith("lmprog: 4 done, 0 failed, 0 skipped"), final
    assert "8 tokens generated" in final and "prefix cache: 4 requests" in final, final
    records = read_output(workdir / "out.jsonl")
    assert [r["variables"]["info"] for r in records] == [
        {"n": n, "even": n % 2 == 0} for n in range(4)
    ]
    stats = records[0]["stats"]
    assert stats["prompt_tokens"] > 0 and stats["cached_tokens"] is not None


@pytest.mark.parametrize(
    ("program", "data"),
    [("batch_pipeline.py:analyse", "reviews.jsonl"), ("few_shot_qa.py:qa", "questions.jsonl")],
)
def test_the_commands_in_the_docs_run(
    tmp_path: Path, tiny_server: lp.Runtime, program: str, data: str
) -> None:
    """docs/cli.md's commands, on the tiny model instead of Gemma (its text is noise)."""
    output = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "lmprog", "run", str(EXAMPLES / program)]
    command += ["--input", str(EXAMPLES / "data" / data), "--output", str(output)]
    done = subprocess.run(
        [*command, "--backend", f"llamacpp:{tiny_server.url}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    inputs = (EXAMPLES / "data" / data).read_text().splitlines()
    records = read_output(output)
    assert [r["line"] for r in records] == list(range(1, len(inputs) + 1))
    if data == "reviews.jsonl":
        assert [r["key"] for r in records] == [json.loads(line)["id"] for line in inputs]
        assert {r["variables"]["sentiment"] for r in records} <= {" positive", " negative"}
        assert all(r["variables"]["stars"] in {" 1", " 2", " 3", " 4", " 5"} for r in records)
    else:
        assert all(r["key"].startswith("sha256:") for r in records)


@pytest.mark.parametrize("form", ["openai", "bare url", "vllm"])
def test_other_backend_specs(workdir: Path, request: pytest.FixtureRequest, form: str) -> None:
    url = request.getfixturevalue("vllm_server" if form == "vllm" else "tiny_server").url
    spec = {"openai": f"openai:tiny@{url}/v1", "bare url": url, "vllm": f"vllm:{url}"}[form]
    write_inputs(workdir / "in.jsonl", 3)
    done = subprocess.run(
        lmprog_run(workdir, spec), env=env_with(workdir / "marks"), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert [r["ret_value"] for r in read_output(workdir / "out.jsonl")] == [0, 2, 4]


def test_serve_info_on_llama_server(
    tiny_server: lp.Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve-info", tiny_server.url + "/v1"]) == 0
    out = capsys.readouterr().out
    assert "server:         llama.cpp llama-server" in out
    assert "tiny-llama-v1-f32.gguf" in out
    assert "context length: 2,048 tokens" in out
    assert "parallel slots: 4" in out
    assert "chat template:  yes" in out
    assert f"use:            --backend llamacpp:{tiny_server.url}" in out


def test_serve_info_on_vllm(vllm_server: lp.Runtime, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve-info", vllm_server.url]) == 0
    out = capsys.readouterr().out
    assert "server:         vLLM 0." in out
    assert "model:          tiny\n" in out
    assert "context length: 2,048 tokens" in out
    assert "chat template:  yes" in out  # read from the model folder, readable here
    assert f"use:            --backend vllm:{vllm_server.url}" in out


def test_serve_info_on_sglang_and_generic_servers(capsys: pytest.CaptureFixture[str]) -> None:
    """SGLang cannot run on this machine: its documented endpoints, served by a stand-in."""
    with FakeSGLang() as sglang:
        assert main(["serve-info", sglang.url]) == 0
        out = capsys.readouterr().out
    assert "server:         SGLang" in out and "model:          /nonexistent" in out
    assert f"use:            --backend sglang:{sglang.url}" in out
    assert "chat template:  unknown" in out and "not readable here" in out
    with FakeOpenAI() as generic:
        assert main(["serve-info", generic.url]) == 0
        out = capsys.readouterr().out
    assert "server:         OpenAI-compatible" in out
    assert f"use:            --backend openai:fake@{generic.url}" in out


def test_backends_lists_what_is_reachable(
    tiny_server: lp.Runtime, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LMPROG_LLAMACPP_URL", tiny_server.url)
    monkeypatch.setenv("LMPROG_VLLM_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert main(["backends"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["local"][1] == "ready"
    assert rows["local"][-8:] == ["yes", "yes", "gbnf,lark", "3/3", "yes", "no", "yes", "yes"]
    server = rows[f"llamacpp:{tiny_server.url}"]
    assert server[1] == "up:" and server[-8:] == [
        "yes",
        "yes",
        "gbnf",
        "3/3",
        "yes",
        "no",
        "yes",
        "yes",
    ]
    assert " ".join(rows["vllm:http://127.0.0.1:9"][1:4]) == "unreachable: Connection refused"
    assert rows["openai:MODEL"][1:3] == ["no", "key:"]


def test_bad_input_names_the_cause(
    workdir: Path, tiny_server: lp.Runtime, capsys: pytest.CaptureFixture[str]
) -> None:
    (workdir / "in.jsonl").write_text('{"n": 1}\n{"n": 2,}\n{"m": 3}\n')
    url = tiny_server.url

    def error_of(*argv: str) -> str:
        assert main(["run", *argv, "-o", str(workdir / "out.jsonl")]) == 2
        return capsys.readouterr().err

    prog, data = str(workdir / "prog.py"), str(workdir / "in.jsonl")
    err = error_of(prog + ":echo", "-b", f"llamacpp:{url}", "-i", str(workdir / "none.jsonl"))
    assert "no input file" in err and "none.jsonl" in err
    err = error_of(prog + ":echo", "-b", f"llamacpp:{url}", "-i", data)
    assert "2 bad input line(s)" in err and "nothing ran" in err
    assert "in.jsonl:2: not JSON" in err
    assert "in.jsonl:3: does not fit echo(n, fail=False): missing a required argument: 'n'" in err
    err = error_of(prog + ":nope", "-b", f"llamacpp:{url}", "-i", data)
    assert "has no 'nope'; the programs in it are: echo" in err
    err = error_of(prog + ":not_a_program", "-b", f"llamacpp:{url}", "-i", data)
    assert "not an lmprog program: decorate it with @lp.function" in err
    (workdir / "in.jsonl").write_text('{"n": 1}\n')
    err = error_of(prog + ":echo", "-b", "llamacpp:http://127.0.0.1:9", "-i", data)
    assert "cannot reach llama-server at http://127.0.0.1:9" in err and "Start the server" in err
    err = error_of(prog + ":echo", "-b", "mystery:x", "-i", data)
    assert "is not a backend spec" in err and "llamacpp:URL" in err
    assert main(["serve-info", "http://127.0.0.1:9"]) == 2
    assert "cannot reach http://127.0.0.1:9: Connection refused" in capsys.readouterr().err
    assert not (workdir / "out.jsonl").exists()


def test_a_budget_stops_the_run_and_a_rerun_finishes_it(
    workdir: Path, tiny_server: lp.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_inputs(workdir / "in.jsonl", 8)
    monkeypatch.setenv("MARKS", str(workdir / "marks"))
    command = lmprog_run(workdir, f"llamacpp:{tiny_server.url}", "--concurrency", "1")[3:]
    assert main([*command, "--budget-requests", "5"]) == 1
    records = read_output(workdir / "out.jsonl")
    assert [r["error"] is None for r in records] == [True] * 5 + [False] * 3
    assert {r["error"]["type"] for r in records[5:]} == {"BudgetExceededError"}
    assert main(command) == 0
    assert all(r["error"] is None for r in read_output(workdir / "out.jsonl"))
    assert sorted(marked(workdir / "marks")) == sorted([*range(8), 5, 6, 7])


def test_a_money_budget_prices_a_self_hosted_model_and_stops_the_run(
    workdir: Path,
    tiny_server: lp.Runtime,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    write_inputs(workdir / "in.jsonl", 8)
    monkeypatch.setenv("MARKS", str(workdir / "marks"))
    command = lmprog_run(workdir, f"llamacpp:{tiny_server.url}", "--concurrency", "1")[3:]
    # no price for a self-hosted model: refused before any input runs
    assert main([*command, "--budget-cost", "0.01"]) == 2
    assert "--price" in capsys.readouterr().err
    assert not (workdir / "out.jsonl").exists() or read_output(workdir / "out.jsonl") == []
    assert main([*command, "--price", "nope"]) == 2
    assert "IN,OUT" in capsys.readouterr().err

    price = ["--price", "1000,2000", "--currency", "eur"]  # per million tokens
    assert main([*command, *price, "--budget-cost", "0.05"]) == 1
    records = read_output(workdir / "out.jsonl")
    done = [r for r in records if r["error"] is None]
    stopped = [r for r in records if r["error"] is not None]
    assert done and stopped and len(done) + len(stopped) == 8
    assert {r["error"]["type"] for r in stopped} == {"BudgetExceededError"}
    for record in done:  # each result's cost is its own counts at the price
        stats = record["stats"]
        expected = (stats["prompt_tokens"] * 1000 + stats["completion_tokens"] * 2000) / 1e6
        assert float(stats["cost"]) == pytest.approx(expected)
        assert stats["currency"] == "EUR"
    spent = sum(float(r["stats"]["cost"]) for r in done)
    assert spent >= 0.05 - max(float(r["stats"]["cost"]) for r in done)  # stopped at the limit


def test_the_results_file_keeps_every_finished_result(tmp_path: Path) -> None:
    """Duplicates from retries and a line cut short by a crash, as a killed run leaves them."""
    path = tmp_path / "out.jsonl"
    ok = {"error": None, "variables": {}}
    failed = {"error": {"message": "boom"}, "variables": {}}
    lines = [
        {"key": "a", **ok},
        {"key": "b", **failed},
        {"key": "gone", **ok},  # its input was removed since: kept, after the inputs
        {"key": "b", **ok},
        {"key": "c", **failed},
        {"key": "a", **failed},  # a later failure never replaces a success
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines) + '{"key": "d", "err')
    results = ResultsFile(path)
    previous = results.read()
    assert previous.unreadable == 1
    assert [previous.done(key_token(k)) for k in "abcd"] == [True, True, False, False]
    results.open()
    results.append([{"key": "d", **ok}])
    results.close()
    results.compact([key_token(k) for k in "dcba"])
    assert [(r["key"], r["error"] is None) for r in read_output(path)] == [
        ("d", True),
        ("c", False),
        ("b", True),
        ("a", True),
        ("gone", True),
    ]
    assert len(path.read_text().splitlines()) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temporary file left
