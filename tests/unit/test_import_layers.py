"""Layers import only downward (docs/architecture.md): a module may import from its own layer
or a lower one, never a higher one. Imports under `if TYPE_CHECKING:` are annotations only and
do not count; imports inside functions do (they run)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lmprog

PACKAGE = Path(lmprog.__file__).parent

# Bottom to top; a module belongs to the first layer with a prefix that names it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    (
        "foundations",
        (
            "lmprog.errors",
            "lmprog.paths",
            "lmprog.prefix",
            "lmprog.loop",
            "lmprog.global_config",
            "lmprog.gc_tuning",
            "lmprog.usage",
            "lmprog.pricing",
            "lmprog.logprobs",
        ),
    ),
    (
        "language",
        (
            "lmprog.constraints",
            "lmprog.gbnf",
            "lmprog.choices",
            "lmprog.tools",
            "lmprog.tool_messages",
            "lmprog.templates",
            "lmprog.ir",
            "lmprog.partial",
            "lmprog.models",
            "lmprog.primitives",
            "lmprog.reasoning",
        ),
    ),
    ("backends", ("lmprog.backends",)),
    (
        "execution",
        (
            "lmprog.budget",
            "lmprog.validation",
            "lmprog.speculation",
            "lmprog.trace",
            "lmprog.cache_report",
            "lmprog.prefix_lint",
            "lmprog.display",
            "lmprog.execution",
            "lmprog.mcp",
        ),
    ),
    ("state", ("lmprog.state", "lmprog.scheduling", "lmprog.tracer")),
    ("program", ("lmprog.program",)),
    (
        "faces",
        (
            "lmprog.admin",
            "lmprog.embed",
            "lmprog.launch",
            "lmprog.testing",
            "lmprog.hosted",
            "lmprog.engine",
            "lmprog.lang",
            "lmprog.cli",
            "lmprog.__main__",
            "lmprog",
        ),
    ),
]


def layer_of(module: str) -> int:
    """A prefix names a module and its submodules; "lmprog" names only the package itself
    (`__init__`), so a new module that is in no layer is reported, not taken as a face."""
    for index, (_, prefixes) in enumerate(LAYERS):
        if any(
            module == p or (p != "lmprog" and module.startswith(p + ".")) for p in prefixes
        ):
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and docs/architecture.md")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def run_time_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    annotation_only = {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
        for inner in ast.walk(node)
    }
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in annotation_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lmprog"):
            if node.module == "lmprog":
                found.update(f"lmprog.{alias.name}" for alias in node.names)
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("lmprog"))
    return found


def test_every_module_imports_only_its_own_layer_or_lower() -> None:
    upward = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = module_name(path)
        for imported in run_time_imports(path):
            if layer_of(imported) > layer_of(module):
                upward.append(
                    f"{module} ({LAYERS[layer_of(module)][0]}) imports {imported} "
                    f"({LAYERS[layer_of(imported)][0]})"
                )
    assert not upward, "imports that go up a layer:\n" + "\n".join(upward)


def test_the_check_sees_an_upward_import() -> None:
    """The test above could pass by reading nothing: make sure it finds real imports."""
    execution = run_time_imports(PACKAGE / "execution" / "core.py")
    assert "lmprog.backends.base" in execution
    assert layer_of("lmprog.program") > layer_of("lmprog.backends.openai")
    with pytest.raises(AssertionError, match="in no layer"):
        layer_of("lmprog.unlisted_module")
