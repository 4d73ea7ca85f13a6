"""SGLang's module paths (`sglang.lang.*`), so deep imports in ported programs keep working:
`from lmprog.lang.ir import REGEX_INT`, `from lmprog.lang.interpreter import ProgramState`,
`from lmprog.lang.backend.runtime_endpoint import RuntimeEndpoint`, ...

Each module re-exports lmprog's own objects under SGLang's names; nothing here has behaviour
of its own. A name with no lmprog equivalent raises ImportError saying what to use instead
(docs/migrating-from-sglang.md lists them).
"""

from __future__ import annotations

from typing import NoReturn


def missing(module: str, name: str, instead: str) -> NoReturn:
    """What a module's `__getattr__` raises for an SGLang name lmprog does not have (an
    ImportError, which `from module import name` passes on with this message)."""
    raise ImportError(f"{module}.{name} has no lmprog equivalent: {instead}", name=name)
