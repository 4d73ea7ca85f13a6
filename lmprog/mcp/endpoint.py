"""Where an MCP server is and how to reach it, with its secrets kept out of every text.

The values of `env=` and `headers=` are secrets (API keys, bearer tokens): reprs show `***`
for them, and every message lmprog writes about the server (errors, the server's own error
text, the tail of its stderr) has them replaced by `***` before anyone sees it.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

MIN_SECRET_CHARS = 4  # shorter values ("1", "on") are too common to find and hide safely


@dataclass(frozen=True)
class Endpoint:
    """A server started as a subprocess (`command`, over stdio) or reached at `url`
    (streamable HTTP)."""

    command: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict, repr=False)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @classmethod
    def of(
        cls,
        command: Sequence[str] | None,
        env: Mapping[str, str] | None,
        cwd: str | Path | None,
        url: str | None,
        headers: Mapping[str, str] | None,
    ) -> Endpoint:
        """Check the arguments of lp.mcp_tools: exactly one of command= (with env=, cwd=)
        and url= (with headers=)."""
        if (command is None) == (url is None):
            raise ValueError("lp.mcp_tools needs exactly one of command=[...] or url=...")
        if command is not None:
            if isinstance(command, str) or not command or not all(
                isinstance(part, str) for part in command
            ):
                raise ValueError(
                    "lp.mcp_tools(command=...) takes the program and its arguments as a "
                    f"non-empty list of strings, e.g. ['python', 'server.py'], got {command!r}"
                )
            if headers is not None:
                raise ValueError("lp.mcp_tools: headers= goes with url=, not command=")
            return cls(
                command=tuple(command),
                env=dict(env or {}),
                cwd=str(cwd) if cwd is not None else None,
            )
        assert url is not None
        if urlsplit(url).scheme not in ("http", "https"):
            raise ValueError(f"lp.mcp_tools(url=...) must be an http(s) URL, got {_safe(url)!r}")
        if env is not None or cwd is not None:
            raise ValueError("lp.mcp_tools: env= and cwd= go with command=, not url=")
        return cls(url=url, headers=dict(headers or {}))

    @property
    def label(self) -> str:
        """How messages name the server: its command line, or its URL without credentials."""
        if self.url is not None:
            return self.redact(_safe(self.url))
        return self.redact(shlex.join(self.command))

    def redact(self, text: str) -> str:
        """`text` with every secret value replaced by `***`."""
        for secret in sorted(self._secrets(), key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def _secrets(self) -> set[str]:
        found = set()
        for value in (*self.env.values(), *self.headers.values()):
            # a header's whole value, and each word of it ("Bearer <token>")
            for part in (value, *value.split()):
                if len(part) >= MIN_SECRET_CHARS:
                    found.add(part)
        return found

    def __repr__(self) -> str:
        if self.url is not None:
            shown = f"url={_safe(self.url)!r}"
            if self.headers:
                shown += f", headers={_masked(self.headers)}"
            return shown
        shown = f"command={list(self.command)!r}"
        if self.env:
            shown += f", env={_masked(self.env)}"
        if self.cwd is not None:
            shown += f", cwd={self.cwd!r}"
        return self.redact(shown)


def _masked(values: Mapping[str, str]) -> str:
    return "{" + ", ".join(f"{key!r}: '***'" for key in values) + "}"


def _safe(url: str) -> str:
    """`url` without user:password@ and with every query value masked."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    query = "&".join(
        f"{pair.partition('=')[0]}=***" if "=" in pair else pair
        for pair in parts.query.split("&")
        if pair
    )
    return urlunsplit((parts.scheme, host, parts.path, query, ""))
