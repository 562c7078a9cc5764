"""User-facing errors: each carries one line that says what is wrong and how to fix it."""

from typing import NoReturn

# What str.splitlines breaks a line at besides "\n", the one separator a message's own lines use: in a message these
# can only come from an echoed user value (a path, an override), and would cut its line; they are shown escaped.
_BREAKS = str.maketrans({c: repr(c)[1:-1] for c in "\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"})


class LFByteError(Exception):
    """Base class; entry points print ``error: <message>`` and exit 2 instead of a traceback.

    The message's lines are split at ``\\n`` only: any other line-break character in it is escaped."""

    def __init__(self, *args: object) -> None:
        if args and isinstance(args[0], str):
            args = (args[0].translate(_BREAKS), *args[1:])
        super().__init__(*args)


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


def shown(value: object, limit: int | None = None) -> str:
    """A user's value (a path, a name) as a message echoes it: as typed when it is printable (and, with ``limit``,
    no longer), else by :func:`short_repr` (a newline in a file name would split the message's line)."""
    text = str(value)
    if text.isprintable() and (limit is None or len(text) <= limit):
        return text
    return short_repr(text, limit or 120)


def print_error(e: BaseException) -> None:
    """The user-facing form: ``error: <line>`` on stderr for each line of the message."""
    import sys

    for line in str(e).splitlines():
        print(f"error: {line}", file=sys.stderr, flush=True)


def exit_with(e: BaseException, code: int = 2) -> NoReturn:
    print_error(e)
    raise SystemExit(code)
