"""Every error lmprog raises, so users can catch by kind rather than by message."""

from __future__ import annotations


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
    """A program failed; names the program, the primitive it was running and the cause."""

    def __init__(self, program: str, primitive: str, cause: BaseException) -> None:
        self.program = program
        self.primitive = primitive
        self.cause = cause
        super().__init__(
            f"program {program!r} failed at {primitive}: {type(cause).__name__}: {cause}"
        )
