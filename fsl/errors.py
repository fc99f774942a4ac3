"""The one error type users see (the CLI prints its message without a stack trace), and how a
message quotes the value it refuses."""

from __future__ import annotations

from typing import Any


class FslError(Exception):
    """An error the user can fix; the CLI prints its message without a stack trace.

    `parameter`: the argument the error is about, as the Python API names it (`false_accept`), with
    the message starting with that name; the CLI puts its own flag there (`--false-accept`), so a
    library caller reads its own words and a command-line user reads theirs."""

    def __init__(self, message: str, parameter: str | None = None):
        super().__init__(message)
        self.parameter = parameter


def shown(value: Any, limit: int = 80) -> str:
    """A value as an error message quotes it: its repr, cut to `limit` characters, so a huge value
    cannot make a huge message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 15]}... ({len(text)} chars)"
