"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from typing import NoReturn


class LFByteError(Exception):
    """Base class; entry points print ``error: <message>`` and exit 2 instead of a traceback."""


class ConfigError(LFByteError):
    pass


class DataError(LFByteError):
    pass


class CheckpointError(LFByteError):
    pass


def describe(e: BaseException) -> str:
    """What a run's record says of a failure: our own one-line message, or the exception's type and text."""
    return str(e) if isinstance(e, LFByteError) else f"{type(e).__name__}: {e}"


def short_repr(value: object, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a 5000-character input does not become the message."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}... ({len(text)} characters)"


def print_error(e: BaseException) -> None:
    """The user-facing form: ``error: <line>`` on stderr for each line of the message."""
    import sys

    for line in str(e).splitlines():
        print(f"error: {line}", file=sys.stderr, flush=True)


def exit_with(e: BaseException, code: int = 2) -> NoReturn:
    print_error(e)
    raise SystemExit(code)
