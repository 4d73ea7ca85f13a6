"""Every error lmprog raises, so users can catch by kind rather than by message."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lmprog.state import ProgramState


class LmprogError(Exception):
    """Base class of every lmprog error."""

    primitive: str | None = None  # set when raised while building a primitive, e.g. "gen('x')"


class ConstraintError(LmprogError, ValueError):
    """A constraint is invalid (bad regex or schema) or an output violates it."""


class UnsupportedFeatureError(LmprogError):
    """A backend cannot honour a primitive or constraint; raised before any request is sent."""

    def __init__(self, backend: str, feature: str, instead: str = "") -> None:
        self.backend = backend
        self.feature = feature
        self.instead = instead
        message = f"{backend} cannot {feature}"
        if instead:
            message += f"; {instead}"
        super().__init__(message)


class BackendError(LmprogError):
    """A backend request failed: the server answered with an error or could not be used."""


class BackendUnavailableError(BackendError):
    """The server could not be reached (connection refused, DNS, reset)."""


class BackendTimeoutError(BackendError):
    """The server did not answer within the timeout."""


class BackendResponseError(BackendError):
    """The server answered with an HTTP error or a body lmprog could not understand."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        self.status_code = status_code
        super().__init__(message)


class ProgramError(LmprogError):
    """A program failed; names the program, the primitive it was running and the cause.

    `raised_by_program` is True when the cause is an exception the program's own code raised
    (not an lmprog error): `state.error()` then returns that exception itself, with this
    context added to it as a note (PEP 678), and `state.program_error()` returns this."""

    def __init__(
        self,
        program: str,
        primitive: str,
        cause: BaseException,
        raised_by_program: bool = False,
    ) -> None:
        self.program = program
        self.primitive = primitive
        self.cause = cause
        self.raised_by_program = raised_by_program
        super().__init__(
            f"program {program!r} failed at {primitive}: {type(cause).__name__}: {cause}"
        )
        if raised_by_program:
            add_note(cause, f"lmprog: raised by program {program!r} ({primitive})")

    def as_raised(self) -> BaseException:
        """What `state.error()` returns: the program's own exception if it raised one, else
        this error."""
        return self.cause if self.raised_by_program else self


def add_note(exc: BaseException, note: str) -> None:
    """`exc.add_note(note)` (PEP 678; on Python 3.10, the same `__notes__` list by hand)."""
    adder = getattr(exc, "add_note", None)
    if adder is not None:
        adder(note)
        return
    try:
        notes = exc.__dict__.setdefault("__notes__", [])
        notes.append(note)
    except AttributeError:  # an exception without a __dict__ keeps no notes
        pass


class LocalNotInstalledError(LmprogError, ImportError):
    """lp.Local, lp.LocalEmbeddings or a program with no backend used without the `local` extra
    (torch, transformers, ...): says what to install, or which server backend to use."""

    SERVER_BACKENDS = "lp.LlamaCpp(url), lp.VLLM(url), lp.SGLang(url) or lp.OpenAI(model)"

    def __init__(self, what: str, missing: str) -> None:
        super().__init__(
            f"{what} runs the model in this process with torch, and {missing!r} is not "
            "installed: pip install 'lmprog[local]' (install torch first, pinned to the build "
            f"you want), or use a server backend: {self.SERVER_BACKENDS}, passed as backend= "
            "or set with lp.set_default_backend(...)",
            name=missing,
        )

    @classmethod
    def for_default(cls, missing: str) -> LocalNotInstalledError:
        """A program run with no backend given or set: the default, lp.Local(), cannot run."""
        return cls(
            "no backend was given or set, so the program would run on lp.Local(), which", missing
        )


class ToolError(LmprogError):
    """An MCP tool failed: it raised or returned an error result (`isError`), or the server
    refused the call. The message names the server and the tool; `.server` and `.tool` hold
    them (`.tool` is None for a failure before any tool was called)."""

    def __init__(self, message: str, server: str, tool: str | None = None) -> None:
        self.server = server
        self.tool = tool
        super().__init__(message)


class ToolTimeoutError(ToolError):
    """An MCP tool did not answer within `lp.mcp_tools(timeout=...)` seconds."""


class MCPServerError(ToolError):
    """An MCP server could not be started or reached, did not connect in time, or died."""


class MCPNotInstalledError(LmprogError, ImportError):
    """`lp.mcp_tools` used without the `mcp` extra (the official MCP SDK)."""

    def __init__(self) -> None:
        super().__init__(
            "lp.mcp_tools needs the official MCP SDK, which is not installed: "
            "pip install 'lmprog[mcp]'",
            name="mcp",
        )


class TemplateError(LmprogError):
    """A chat template failed to compile or render, or tried something the sandbox forbids."""


class BudgetExceededError(LmprogError):
    """A request was not sent because it would exceed the run's or the batch's budget."""


class BatchError(LmprogError):
    """Raised by run_batch(return_exceptions=False); `.states` keeps every result."""

    def __init__(self, states: list[ProgramState], errors: list[ProgramError]) -> None:
        self.states = states
        self.errors = errors
        super().__init__(f"{len(errors)} of {len(states)} programs failed; first: {errors[0]}")


class BatchInterrupted(KeyboardInterrupt):
    """Ctrl-C during run_batch: `.states` holds every program (finished ones complete)."""

    def __init__(self, states: list[ProgramState | None]) -> None:
        self.states = states
        done = sum(1 for s in states if s is not None and s._execution.finished)
        super().__init__(f"batch interrupted; {done} of {len(states)} programs had finished")


class CliError(LmprogError):
    """What the `lmprog` command reports and exits on (code 2): a usage problem found before
    any program ran (bad arguments, unreadable input, an unknown program, an unreachable
    backend), whose message names the cause and what to do."""
