"""`lmprog run FILE.py:NAME --input in.jsonl --output out.jsonl`: a program over a dataset.

Programs run on lmprog's loop thread, at most `--concurrency` at a time; the main thread takes
each finished program from a queue, appends its result line to the output (fsynced), and moves
the progress bar. Ctrl-C (or SIGTERM) cancels the programs in flight, writes those that had
finished, compacts the output and exits 128+signal with the command that resumes. So does a
backend that stops answering (exit 1), rather than failing every input left. An input is
skipped when the output already holds a successful result for its key; a failed one runs again.

Each output line: `key`, `line` (in the input), `variables`, `ret_value` (when the program
returned something), `error` (null, or program/primitive/type/message), `stats` (gen requests,
prompt/cached/completion tokens as the engine reported them, null when unknown; latency_s) and
`run` (which invocation computed it).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import inspect
import queue
import shlex
import signal
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from tqdm import tqdm

from lmprog import gc_tuning, loop
from lmprog.backends.base import Backend
from lmprog.budget import Budget, BudgetedBackend, BudgetMeter, price_of
from lmprog.cache_report import CacheReport
from lmprog.cli.inputs import Item, key_token, load_program, read_items
from lmprog.cli.metered import Metered
from lmprog.cli.results import ResultsFile, encode
from lmprog.cli.specs import check_reachable, make_backend
from lmprog.errors import CliError, UnsupportedFeatureError
from lmprog.global_config import global_config
from lmprog.ir import SAMPLING_NAMES
from lmprog.pricing import Price
from lmprog.program import Program
from lmprog.state import ProgramState

CANCEL_WAIT_S = 10.0  # how long Ctrl-C waits for programs in flight to stop


@dataclass
class Finished:
    """One program that ran to its end (successfully or not), waiting to be written."""

    item: Item
    state: ProgramState
    latency_s: float
    meter: Metered


@dataclass(frozen=True)
class Stopped:
    """Why a run stopped before its last input, and the exit code that says so."""

    why: str
    exit_code: int


@dataclass
class Totals:
    ok: int = 0
    failed: int = 0
    generated: int = 0  # completion tokens the engines reported
    report: CacheReport = field(default_factory=CacheReport)
    first_error: str | None = None


def run_command(args: argparse.Namespace, argv: list[str]) -> int:
    if args.concurrency is not None and args.concurrency < 1:
        raise CliError("--concurrency must be at least 1")
    if args.output.resolve() == args.input.resolve():
        raise CliError("--output must not be the --input file")
    backend = make_backend(args.backend)
    program = load_program(args.program)
    items = read_items(args.input, program, args.id_field)
    results = ResultsFile(args.output)
    previous = results.read()
    todo = [item for item in items if not previous.done(key_token(item.key))]
    retrying = sum(1 for item in todo if key_token(item.key) in previous.records)
    unreadable = previous.unreadable
    _say(
        f"{_inputs(len(items))}: {len(items) - len(todo)} already done (skipped), {retrying} "
        f"failed before (retrying), {len(todo) - retrying} new"
        + (f"; {unreadable} unreadable output lines ignored" if unreadable else "")
    )
    order = [key_token(item.key) for item in items]
    if not todo:
        results.compact(order)
        _say(f"nothing to run; {args.output} has a result for every input")
        return 0

    loop.wait(check_reachable(backend))
    shared: Backend = backend
    budget = _budget(args, backend)
    if budget is not None:
        shared = BudgetedBackend(backend, BudgetMeter(budget))
    sampling = {
        name: value
        for name, value in (("max_new_tokens", args.max_tokens), ("temperature", args.temperature))
        if value is not None
    }
    runner = Runner(
        program,
        todo,
        shared,
        args.concurrency or loop.wait(backend.concurrency_hint()),
        sampling,
        results,
        show_progress=args.progress if args.progress is not None else sys.stderr.isatty(),
    )
    results.open()
    try:
        stopped = runner.run()
    finally:
        results.close()
        with contextlib.suppress(Exception):
            loop.wait(backend.aclose())
    results.compact(order)
    _report(
        runner,
        stopped,
        results,
        order,
        len(items) - len(todo),
        f"lmprog {shlex.join(argv)}",
    )
    if stopped is not None:
        return stopped.exit_code
    return 1 if runner.totals.failed else 0


def _report(
    runner: Runner,
    stopped: Stopped | None,
    results: ResultsFile,
    order: list[str],
    skipped: int,
    command: str,
) -> None:
    """The lines on stderr after a run: failures, how to resume, then the totals."""
    totals = runner.totals
    if totals.failed:
        _say(
            f"{_inputs(totals.failed)} failed; first: {totals.first_error}\n"
            f"  their errors are in the `error` field of {results.path}; rerun the same command "
            "to retry them"
        )
    if stopped is not None:
        saved = results.read()
        left = sum(1 for token in order if not saved.done(token))
        _say(
            f"{stopped.why}; every finished result is in {results.path}, {_inputs(left)} still "
            f"to run. Rerun the same command to resume:\n  {command}"
        )
    elapsed = time.perf_counter() - runner.started
    rate = totals.generated / elapsed if elapsed > 0 else 0.0
    _say(
        f"{totals.ok} done, {totals.failed} failed, {skipped} skipped (done before) in "
        f"{elapsed:.1f} s; {totals.generated:,} tokens generated ({rate:,.1f} tok/s); "
        f"{totals.report}"
    )


class Runner:
    """Runs the inputs on lmprog's loop; writes each result from the calling thread."""

    def __init__(
        self,
        program: Program,
        items: list[Item],
        backend: Backend,
        concurrency: int,
        sampling: dict[str, Any],
        results: ResultsFile,
        show_progress: bool,
    ) -> None:
        self.program = program
        self.items = items
        self.backend = backend
        self.concurrency = concurrency
        self.sampling = sampling
        self.results = results
        self.run_id = uuid.uuid4().hex[:8]
        self.totals = Totals()
        self._finished: queue.SimpleQueue[Finished] = queue.SimpleQueue()
        self._drive_done = threading.Event()
        self._parameters = inspect.signature(program.func).parameters
        self._bar = tqdm(
            total=len(items),
            desc=program.name,
            unit="prog",
            file=sys.stderr,
            disable=not show_progress,
            dynamic_ncols=True,
        )
        self.started = time.perf_counter()
        self.stopped: Stopped | None = None

    def run(self) -> Stopped | None:
        """Run every input; returns why it stopped early, if it did."""
        handlers = {n: signal.signal(n, self._on_signal) for n in (signal.SIGINT, signal.SIGTERM)}
        future = loop.submit(self._drive())
        try:
            while not future.done() and self.stopped is None:
                self._write(self._take(timeout=0.1))
            if self.stopped is not None:
                future.cancel()
                self._drive_done.wait(CANCEL_WAIT_S)
            self._write(self._take())
            if self.stopped is None:
                future.result()  # a failure of the driver itself (never a program's)
            return self.stopped
        finally:
            for number, handler in handlers.items():
                signal.signal(number, handler)
            self._bar.close()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        """The first Ctrl-C or SIGTERM stops the run between two writes (so no line is cut);
        a second one stops waiting for the programs in flight."""
        if self.stopped is not None:
            raise KeyboardInterrupt
        self.stopped = Stopped(f"interrupted ({signal.Signals(signum).name})", 128 + signum)

    def _take(self, timeout: float | None = None) -> list[Finished]:
        """The programs finished so far (waiting up to `timeout` for a first one)."""
        taken: list[Finished] = []
        try:
            if timeout is not None:
                taken.append(self._finished.get(timeout=timeout))
            while True:
                taken.append(self._finished.get_nowait())
        except queue.Empty:
            return taken

    def _write(self, finished: list[Finished]) -> None:
        """Append these results with one fsync, then count them."""
        if not finished:
            return
        records = [self._record(f) for f in finished]
        self.results.append(records)
        totals = self.totals
        for record in records:
            stats = record["stats"]
            totals.generated += stats["completion_tokens"] or 0
            if record["error"] is None:
                totals.ok += 1
            else:
                totals.failed += 1
                error = record["error"]
                if totals.first_error is None:
                    totals.first_error = f"line {record['line']}: {error['message']}"
                if error["type"] == "BackendUnavailableError" and self.stopped is None:
                    self.stopped = Stopped(f"stopped: {self.backend.name} stopped answering", 1)
        elapsed = time.perf_counter() - self.started
        self._bar.set_postfix_str(
            f"failed={totals.failed}, {totals.generated / max(elapsed, 1e-9):,.0f} tok/s",
            refresh=False,
        )
        self._bar.update(len(records))

    def _record(self, finished: Finished) -> dict[str, Any]:
        state = finished.state
        error = state.program_error()  # lmprog's context even when the program raised
        report = state.cache_report()
        self.totals.report = CacheReport.merge([self.totals.report, report])
        record: dict[str, Any] = {
            "key": finished.item.key,
            "line": finished.item.line,
            "variables": state.variables(),
        }
        if state.ret_value is not None:
            record["ret_value"] = state.ret_value
        record["error"] = None
        if error is not None:
            record["error"] = {
                "program": error.program,
                "primitive": error.primitive,
                "type": type(error.cause).__name__,
                "message": str(error),
            }
        record["stats"] = {
            "requests": report.requests,
            "prompt_tokens": report.prompt_tokens,
            "cached_tokens": report.cached_tokens,
            "completion_tokens": finished.meter.completion_tokens,
            "latency_s": round(finished.latency_s, 4),
        }
        if report.cost is not None:  # a string, so the amount stays exact
            record["stats"]["cost"] = str(report.cost.amount)
            record["stats"]["currency"] = report.cost.currency
        record["run"] = self.run_id
        try:
            encode(record)
        except (TypeError, ValueError) as exc:  # e.g. a value that contains itself
            record.pop("ret_value", None)
            record["variables"] = {k: repr(v) for k, v in record["variables"].items()}
            record["error"] = record["error"] or {
                "program": self.program.name,
                "primitive": "writing the result",
                "type": type(exc).__name__,
                "message": f"the program's values cannot be written as JSON: {exc}",
            }
        return record

    async def _drive(self) -> None:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(item: Item) -> None:
            own = {k: v for k, v in item.arguments.items() if not self._is_sampling(k)}
            sampling = {
                **self.sampling,
                **{k: v for k, v in item.arguments.items() if self._is_sampling(k)},
            }
            async with limit:
                meter = Metered(self.backend)
                started = time.perf_counter()
                state = await self.program.bind(**own).arun(backend=meter, **sampling)
                self._finished.put(Finished(item, state, time.perf_counter() - started, meter))

        try:
            with gc_tuning.young_generation(global_config.batch_gc_threshold):
                await asyncio.gather(*(one(item) for item in self.items))
        finally:
            self._drive_done.set()

    def _is_sampling(self, name: str) -> bool:
        return name in SAMPLING_NAMES and name not in self._parameters


def _budget(args: argparse.Namespace, backend: Backend) -> Budget | None:
    """The run's budget from --budget-*, pricing `backend` from --price; refused before any
    input runs when a money budget has no price to count with."""
    if args.price is not None:
        backend.price = _price(args.price, args.currency)
    limits = (args.budget_tokens, args.budget_requests, args.budget_cost)
    if limits == (None, None, None):
        return None
    try:
        budget = Budget(
            max_tokens=args.budget_tokens,
            max_requests=args.budget_requests,
            max_cost=args.budget_cost,
            currency=args.currency,
        )
        if budget.max_cost is not None:
            price_of(backend)
    except UnsupportedFeatureError as exc:
        raise CliError(f"{exc.backend} cannot {exc.feature}; pass --price IN,OUT") from exc
    except (TypeError, ValueError) as exc:
        raise CliError(f"--budget-cost / --currency: {exc}") from exc
    return budget


def _price(text: str, currency: str) -> Price:
    """--price IN,OUT[,CACHED]: per million tokens, in `currency`."""
    parts = [part.strip() for part in text.split(",")]
    if len(parts) not in (2, 3):
        raise CliError(f"--price takes IN,OUT or IN,OUT,CACHED per million tokens, got {text!r}")
    cached = parts[2] if len(parts) == 3 else None
    try:
        return Price(input=parts[0], output=parts[1], cached_input=cached, currency=currency)
    except (TypeError, ValueError) as exc:
        raise CliError(f"--price {text!r}: {exc}") from exc


def _inputs(count: int) -> str:
    return f"{count:,} input" + ("" if count == 1 else "s")


def _say(message: str) -> None:
    print(f"lmprog: {message}", file=sys.stderr, flush=True)
