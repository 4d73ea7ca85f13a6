"""`lmprog`, the command-line tool: run a program over a JSONL file with resume, list the
backends, and say what a server is.

    lmprog run examples/batch_pipeline.py:analyse --input examples/data/reviews.jsonl \\
        --output results.jsonl
    lmprog backends
    lmprog serve-info http://127.0.0.1:8080

Exit codes: 0 all went well; 1 some inputs failed (rerun to retry them); 2 a usage error
(bad arguments or input, unreachable backend), nothing ran; 128+N interrupted by signal N.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from lmprog.cli.specs import SPEC_HELP
from lmprog.errors import CliError

_EPILOG = "Run `lmprog COMMAND --help` for a command's options; docs/cli.md has examples."


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lmprog",
        description="Run lmprog programs over datasets; inspect backends and servers.",
        epilog=_EPILOG,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run",
        help="run a program once per line of a JSONL file, with resume",
        description=(
            "Run FILE.py:PROGRAM once per input line; results are appended to --output as "
            "each program finishes. Rerunning the same command skips inputs that already "
            "have a result and retries the failed ones."
        ),
        epilog=SPEC_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("program", help="FILE.py:NAME (or package.module:NAME) of an @lp.function")
    run.add_argument(
        "--input", "-i", required=True, type=Path, metavar="FILE", help="JSONL, an object per line"
    )
    run.add_argument(
        "--output", "-o", required=True, type=Path, metavar="FILE", help="JSONL results"
    )
    run.add_argument(
        "--backend", "-b", default="local", metavar="SPEC", help="see below (default: local)"
    )
    run.add_argument(
        "--concurrency",
        "-c",
        type=int,
        metavar="N",
        help="programs in flight (default: the backend's)",
    )
    run.add_argument(
        "--id-field", default="id", metavar="NAME", help="the input field that keys an input (id)"
    )
    run.add_argument("--max-tokens", type=int, metavar="N", help="for gens that set none")
    run.add_argument("--temperature", type=float, metavar="T", help="for gens that set none")
    run.add_argument("--budget-tokens", type=int, metavar="N", help="this run's token budget")
    run.add_argument("--budget-requests", type=int, metavar="N", help="its request budget")
    run.add_argument(
        "--budget-cost", metavar="AMOUNT", help="its money budget, in --currency (e.g. 0.50)"
    )
    run.add_argument(
        "--price",
        metavar="IN,OUT[,CACHED]",
        help="what the backend's tokens cost per million (prompt, completion, cached prompt), "
        "for a self-hosted model; hosted models are priced from the genai-prices table",
    )
    run.add_argument("--currency", default="USD", metavar="CODE", help="of the two above (USD)")
    progress = run.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", action="store_true", default=None, help="show the bar even without a TTY"
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="never show the bar"
    )

    backends = commands.add_parser(
        "backends",
        help="list the backends in reach and what each supports",
        description=(
            "Lists lp.Local and the servers named by LMPROG_LLAMACPP_URL, LMPROG_VLLM_URL, "
            "LMPROG_SGLANG_URL, OPENAI_BASE_URL (and the OpenAI API when OPENAI_API_KEY is "
            "set), plus every --url, with their capabilities."
        ),
    )
    backends.add_argument(
        "--url", action="append", default=[], help="also probe this server (repeatable)"
    )

    info = commands.add_parser(
        "serve-info",
        help="say what server runs at a URL and which backend to use",
        description="Probe URL (llama-server, vLLM, SGLang or any OpenAI-compatible server).",
    )
    info.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8080")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The `lmprog` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            from lmprog.cli.run import run_command

            return run_command(args, list(sys.argv[1:] if argv is None else argv))
        if args.command == "backends":
            from lmprog.cli.listing import backends_command

            return backends_command(args.url)
        from lmprog.cli.probe import serve_info_command

        return serve_info_command(args.url)
    except CliError as exc:
        print(f"lmprog: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmprog: interrupted", file=sys.stderr)
        return 130
