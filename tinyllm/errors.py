"""User-facing errors: one line that names the problem and the fix, no traceback unless --debug."""

from __future__ import annotations

import difflib
from typing import Iterable

__all__ = ["TinyLLMError", "ConfigError", "DataError", "suggest", "first_line"]


class TinyLLMError(Exception):
    """An error caused by the user's input; the CLI prints it as one line and exits non-zero."""

    exit_code = 2


class ConfigError(TinyLLMError):
    """Bad configuration: unknown key, bad value, conflicting options."""


class DataError(TinyLLMError):
    """Missing, empty or undecodable data."""


def suggest(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for the closest valid choice, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (or its type name), for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
