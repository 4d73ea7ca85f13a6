"""What `lmprog run` runs: the program (FILE.py:NAME) and the inputs (a JSONL file).

Each input line is one JSON object of the program's keyword arguments. Its key, which matches
it to its result on resume, is its `id` field (`--id-field`; passed to the program only if
the program takes a parameter of that name), or else a hash of the line's content: a hash
survives lines being reordered, inserted or deleted, where a line number would not, and an
edited line is a new input. The nth identical line without an id gets `#n` after its hash.
Every line is checked against the program's signature before anything runs.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lmprog.errors import CliError
from lmprog.ir import SAMPLING_NAMES
from lmprog.program import Program

MAX_REPORTED = 5  # input problems listed before "... and N more"


@dataclass(frozen=True)
class Item:
    """One input: its key (the id, or "sha256:<hash>"), its line number, its arguments."""

    key: str | int
    line: int
    arguments: dict[str, Any]


def key_token(key: Any) -> str:
    """A key as one comparable string (1 and "1" stay different)."""
    return json.dumps(key)


def load_program(spec: str) -> Program:
    """The lp.Program that `FILE.py:NAME` (or `package.module:NAME`) names."""
    where, colon, name = spec.rpartition(":")
    if not colon or not where or not name:
        raise CliError(
            f"{spec!r}: name the program as FILE.py:NAME, e.g. examples/batch_pipeline.py:analyse"
        )
    module = _import(where)
    if not hasattr(module, name):
        found = sorted(n for n, v in vars(module).items() if isinstance(v, Program))
        listed = ", ".join(found) if found else "none (decorate a function with @lp.function)"
        raise CliError(f"{where} has no {name!r}; the programs in it are: {listed}")
    program = getattr(module, name)
    if not isinstance(program, Program):
        raise CliError(
            f"{spec} is a {type(program).__name__}, not an lmprog program: decorate it with "
            "@lp.function"
        )
    return program


def _import(where: str) -> Any:
    path = Path(where)
    try:
        if path.suffix == ".py" or path.exists():
            if not path.is_file():
                raise CliError(f"no program file {where}; check the path")
            module_name = f"_lmprog_cli_{path.stem}"
            spec = importlib.util.spec_from_file_location(module_name, path)
            if spec is None or spec.loader is None:
                raise CliError(f"{where} cannot be imported as Python")
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module  # pydantic and dataclasses look modules up
            sys.path.insert(0, str(path.resolve().parent))  # so its own imports work
            spec.loader.exec_module(module)
            return module
        return importlib.import_module(where)
    except CliError:
        raise
    except Exception as exc:
        trace = "".join(traceback.format_exception(exc)[-6:]).rstrip()
        raise CliError(
            f"importing {where} failed; fix the error below and rerun.\n{trace}"
        ) from exc


def read_items(path: Path, program: Program, id_field: str) -> list[Item]:
    """Every input of the file, checked; a CliError listing the bad lines if any."""
    if not path.is_file():
        raise CliError(
            f"no input file {path}; give --input a JSON-lines file with one object of "
            f"{program.name}'s arguments per line"
        )
    parameters = inspect.signature(program.func)
    items: list[Item] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = _item(line, number, id_field, parameters, program, seen)
            except ValueError as exc:
                problems.append(f"{path}:{number}: {exc}")
                continue
            seen[key_token(item.key)] = number
            items.append(item)
    if problems:
        more = len(problems) - MAX_REPORTED
        shown = problems[:MAX_REPORTED] + ([f"... and {more} more"] if more > 0 else [])
        raise CliError(
            f"{len(problems)} bad input line(s); fix them and rerun (nothing ran):\n  "
            + "\n  ".join(shown)
        )
    return items


def _item(
    line: str,
    number: int,
    id_field: str,
    parameters: inspect.Signature,
    program: Program,
    seen: dict[str, int],
) -> Item:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f'not JSON ({exc}); each line must be one object, e.g. {{"x": 1}}'
        ) from None
    if not isinstance(record, dict):
        raise ValueError(f"a JSON {type(record).__name__}, not an object of keyword arguments")
    arguments = dict(record)
    if id_field in record:
        key = record[id_field]
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise ValueError(f"{id_field!r} must be a string or an integer, not {key!r}")
        if id_field not in parameters.parameters:
            del arguments[id_field]
        if key_token(key) in seen:
            raise ValueError(f"{id_field} {key!r} was already used on line {seen[key_token(key)]}")
    else:
        canonical = json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        key = "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()[:16]
        repeat = 2
        base = key
        while key_token(key) in seen:
            key, repeat = f"{base}#{repeat}", repeat + 1
    _check_arguments(arguments, parameters, program)
    return Item(key, number, arguments)


def _check_arguments(
    arguments: dict[str, Any], parameters: inspect.Signature, program: Program
) -> None:
    """The arguments fit the program's signature (sampling settings such as temperature are
    allowed too, as in run_batch)."""
    own = {
        k: v for k, v in arguments.items() if k in parameters.parameters or k not in SAMPLING_NAMES
    }
    try:
        parameters.bind(None, **{**program.bound, **own})
    except TypeError as exc:
        raise ValueError(f"does not fit {program.name}{_shown(parameters)}: {exc}") from None


def _shown(parameters: inspect.Signature) -> str:
    return "(" + ", ".join(str(p) for p in list(parameters.parameters.values())[1:]) + ")"
