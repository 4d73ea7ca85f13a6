"""The one error the CLI reports and exits on (code 2): a usage problem, found before any
program ran, whose message names the cause and what to do."""

from __future__ import annotations


class CliError(Exception):
    """Bad arguments, unreadable input, an unknown program, an unreachable backend."""
