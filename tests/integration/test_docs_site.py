"""The documentation site builds with warnings as errors, and the pages' code runs.

Convention for the pages in EXECUTED_PAGES: every ```python block runs, in page order, in one
namespace per page, with the default backend set to lp.Local on the tiny test model (its text
is noise, but every constraint holds, so a snippet that runs here runs on any model). A block
whose first line is `# not run: <why>` (a server, an API key) is only compiled. Any other
fence whose language looks like Python fails the test, so no block escapes unnoticed.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import lmprog as lp
from lmprog.program import get_default_backend

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
EXECUTED_PAGES = [
    "index.md",
    "getting-started.md",
    "language.md",
    "constraints.md",
    "concurrency.md",
    "migrating-from-sglang.md",
]
FENCE = re.compile(r"^```(?P<info>[^\n`]*)\n(?P<body>.*?)^```[ \t]*$", re.M | re.S)
HREF = re.compile(r'href="(?![a-z]+:|#|/)([^"]+)"')
NOT_RUN = re.compile(r"#\s*not run:\s*(?P<why>\S.*)")


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    source: str

    @property
    def not_run_reason(self) -> str | None:
        first = self.source.lstrip().splitlines()[0] if self.source.strip() else ""
        match = NOT_RUN.fullmatch(first.strip())
        return match["why"] if match else None

    @property
    def where(self) -> str:
        return f"docs/{self.page}, block at line {self.line}"


def python_blocks(page: str) -> list[Block]:
    """The page's ```python blocks; fails on a Python-looking fence spelled otherwise."""
    text = (DOCS / page).read_text(encoding="utf-8")
    blocks = []
    for match in FENCE.finditer(text):
        info = match["info"].strip()
        line = text.count("\n", 0, match.start()) + 1
        if info == "python":
            blocks.append(Block(page, line, match["body"]))
        elif info.lower().startswith(("py", "{.py", "{ .py")):
            pytest.fail(f"docs/{page} line {line}: fence ```{info}; write ```python")
    return blocks


@pytest.fixture
def default_tiny_local(tiny_local: lp.Local) -> Iterator[lp.Local]:
    """lp.Local on the tiny model as the default backend, restored afterwards."""
    before = get_default_backend()
    lp.set_default_backend(tiny_local)
    yield tiny_local
    lp.set_default_backend(before)


@pytest.mark.parametrize("page", EXECUTED_PAGES)
def test_python_blocks_run(page: str, default_tiny_local: lp.Local) -> None:
    blocks = python_blocks(page)
    assert blocks, f"docs/{page} has no ```python block to run"
    namespace: dict[str, object] = {"__name__": f"docs_{page.removesuffix('.md')}"}
    for block in blocks:
        code = compile(block.source, block.where, "exec")  # a syntax error fails here
        if block.not_run_reason is not None:
            continue
        try:
            exec(code, namespace)
        except Exception:
            pytest.fail(f"{block.where} raised:\n{traceback.format_exc()}")


def test_every_block_either_runs_or_says_why() -> None:
    """Blocks that are not run are few, and each names what it needs."""
    blocks = [block for page in EXECUTED_PAGES for block in python_blocks(page)]
    skipped = [block for block in blocks if block.not_run_reason is not None]
    for block in blocks:
        first = block.source.strip().splitlines()[0]
        if first.startswith("# not run") and block.not_run_reason is None:
            pytest.fail(f"{block.where}: `# not run:` must say why")
    assert len(skipped) * 2 < len(blocks), [b.where for b in skipped]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built with `mkdocs build --strict` (warnings are errors)."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    return out


def test_site_builds_strict_with_every_page(site: Path) -> None:
    for page in ["index.html", "404.html", "search/search_index.json"]:
        assert (site / page).is_file(), page
    for page in [*EXECUTED_PAGES, "reference.md", "backends.md", "local.md"]:
        name = page.removesuffix(".md")
        built = site / ("index.html" if name == "index" else f"{name}/index.html")
        assert built.is_file(), built
    language = (site / "language" / "index.html").read_text(encoding="utf-8")
    assert "var_scope" in language and "text_iter" in language


def test_api_reference_has_every_public_name_and_its_docstring(site: Path) -> None:
    html = (site / "reference" / "index.html").read_text(encoding="utf-8")
    missing = [name for name in lp.__all__ if f'id="lmprog.{name}"' not in html]
    assert not missing, f"docs/reference.md lacks ::: entries for {missing}"
    first_line = (lp.gen.__doc__ or "").split(".")[0].split("`")[0]
    assert first_line and first_line in html, first_line
    assert (lp.ProgramState.fork.__doc__ or "").split("`")[0] in html


def test_relative_links_on_the_site_resolve(site: Path) -> None:
    """No page links outside the site or to a missing file (a link from a page to a
    repository file such as ../backends/llamacpp/README.md must have been rewritten)."""
    broken = []
    for page in site.rglob("*.html"):
        for href in HREF.findall(page.read_text(encoding="utf-8")):
            target = (page.parent / href.split("#")[0]).resolve()
            inside = target.is_relative_to(site.resolve())
            if not inside or not (target.is_file() or (target / "index.html").is_file()):
                broken.append(f"{page.relative_to(site)} -> {href}")
    assert not broken, broken
