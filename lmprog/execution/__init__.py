"""Running one program state's primitives against a backend.

`core` holds `Execution`, the log of one state, its worker and its forks; each primitive with
more to do than append text has a module of its own: `turns`, `gen`, `select`, `tool_calls`,
`thinking`, and `request`, through which they all send.
"""

from lmprog.execution.core import WARM_PREFIX_CHARS, Chunk, Execution

__all__ = ["WARM_PREFIX_CHARS", "Chunk", "Execution"]
