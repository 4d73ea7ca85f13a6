"""`lp.global_config`: SGLang's frontend settings object (`sglang.global_config`), kept so
programs and tests that read or set it run unchanged.

Every attribute SGLang has is here, with SGLang's default. Those lmprog has a concept for act on
it; the rest are accepted and kept, and do nothing (they tune SGLang's own server process, which
lmprog does not run in-process):

- `default_backend`: the backend programs use when `backend=` is not given; reading it is
  `lp.get_default_backend()`, setting it is `lp.set_default_backend(...)`.
- `verbosity`: 2 or more, and every program prints its text when it finishes (as in SGLang).
- `enable_precache_with_tracing`: `run_batch` computes a prefix its items share once, before
  they go out (lmprog learns the prefix from the batch's first item instead of tracing);
  False turns that warm-up off.
- `enable_parallel_encoding`: accepted; `join("concate_and_append")` always appends the
  branches' text (no engine here concatenates KV caches).
- `skip_special_tokens_in_output`, `spaces_between_special_tokens_in_out`: accepted; each
  engine detokenizes with its own defaults.
- `batch_gc_threshold` (lmprog's own, not SGLang's): while a batch runs, CPython's cycle
  collector makes a young collection every this many allocations at least (default 20,000;
  Python's is 700) and a middle one every 50 of those, so a batch's short-lived objects are
  not promoted and scanned again and again (lmprog.gc_tuning); None leaves the collector
  alone.
- `default_init_new_token_ratio`, `default_min_new_token_ratio_factor`,
  `default_new_token_ratio_decay_steps`, `retract_decode_steps`, `flashinfer_workspace_size`,
  `enable_gds`, `gds_path`: accepted; they tune SGLang's scheduler inside its own server
  process (set them there).

Setting a name SGLang does not have raises AttributeError, so a misspelt setting is not silently
dropped.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any


class GlobalConfig:
    """SGLang's global settings, with lmprog's meaning where it has one (see the module)."""

    _fields = (
        "verbosity",
        "default_init_new_token_ratio",
        "default_min_new_token_ratio_factor",
        "default_new_token_ratio_decay_steps",
        "retract_decode_steps",
        "flashinfer_workspace_size",
        "skip_special_tokens_in_output",
        "spaces_between_special_tokens_in_out",
        "enable_precache_with_tracing",
        "enable_parallel_encoding",
        "enable_gds",
        "gds_path",
        "batch_gc_threshold",
    )

    def __init__(self) -> None:
        self.verbosity = 0
        self.default_init_new_token_ratio = float(
            os.environ.get("SGLANG_INIT_NEW_TOKEN_RATIO", 0.7)
        )
        self.default_min_new_token_ratio_factor = float(
            os.environ.get("SGLANG_MIN_NEW_TOKEN_RATIO_FACTOR", 0.14)
        )
        self.default_new_token_ratio_decay_steps = float(
            os.environ.get("SGLANG_NEW_TOKEN_RATIO_DECAY_STEPS", 600)
        )
        self.retract_decode_steps = 20
        self.flashinfer_workspace_size: Any = os.environ.get(
            "FLASHINFER_WORKSPACE_SIZE", 384 * 1024 * 1024
        )
        self.skip_special_tokens_in_output = True
        self.spaces_between_special_tokens_in_out = True
        self.enable_precache_with_tracing = True
        self.enable_parallel_encoding = True
        # SGLang reads these two lower-case variables
        self.enable_gds: Any = os.environ.get("enable_gds", False)  # noqa: SIM112
        self.gds_path = os.environ.get("gds_path", "/tmp/gds/")  # noqa: SIM112
        # lmprog's own: young collections while a batch runs (lmprog.gc_tuning); None: as is
        self.batch_gc_threshold: int | None = 20_000

    @property
    def default_backend(self) -> Any:
        """The backend programs use when `backend=` is not given (None: lmprog's default,
        `lp.Local()`, made on first use)."""
        return _hooks.get()

    @default_backend.setter
    def default_backend(self, backend: Any) -> None:
        _hooks.set(backend)

    def __setattr__(self, name: str, value: Any) -> None:
        if name != "default_backend" and name not in self._fields:
            raise AttributeError(
                f"global_config has no setting {name!r}; it has default_backend, "
                + ", ".join(self._fields)
            )
        object.__setattr__(self, name, value)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"GlobalConfig(default_backend={self.default_backend!r}, {shown})"


class _BackendHooks:
    """The default backend lives with the program layer (lp.set_default_backend), which plugs
    its getter and setter in here, so this object and lp.set_default_backend never disagree.
    Until then (only while lmprog itself is being imported) a value is kept here."""

    def __init__(self) -> None:
        self._value: Any = None
        self.getter: Callable[[], Any] = lambda: self._value
        self.setter: Callable[[Any], None] = self._keep

    def _keep(self, value: Any) -> None:
        self._value = value

    def get(self) -> Any:
        return self.getter()

    def set(self, value: Any) -> None:
        self.setter(value)


_hooks = _BackendHooks()


def plug_default_backend(get: Callable[[], Any], set_: Callable[[Any], None]) -> None:
    """Called once by lmprog.program: `default_backend` reads and writes its default."""
    if _hooks._value is not None:
        set_(_hooks._value)
    _hooks.getter, _hooks.setter = get, set_


global_config = GlobalConfig()
