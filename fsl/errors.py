"""The one error type users see: the CLI prints its message without a stack trace."""

from __future__ import annotations


class FslError(Exception):
    """An error the user can fix; the CLI prints its message without a stack trace."""
