"""Sampling for the app: runs side by side from one prompt and seed, and two views of the same bytes.

A pane keeps the raw bytes it sampled; what the page shows is derived from them every time:

- :func:`plain_view`: UTF-8 text, invalid bytes as U+FFFD, exactly what :func:`lfbyte.generate.generate_text`
  returns for the same run, prompt and seed;
- :func:`escaped_view`: every byte that is not printable text written as ``\\xNN`` (one escape per byte),
  line breaks marked ``\\n``, spaces as ``·``; unambiguous, so the bytes can be read back from it.
"""

from __future__ import annotations

import codecs
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import LFByteError
from ..generate import iter_bytes

STREAM_INTERVAL = 0.05  # s between page updates: per-byte updates of a fast model only load the browser
ESCAPES_LEGEND = "\\xNN: a byte that is not printable text (invalid UTF-8, a control or format character) · " \
                 "\\n: a line break · ·: a space · \\\\: a backslash"
_SHOWN_AS_IS = {"\n": "\\n\n", "\t": "\\t", "\r": "\\r", " ": "·", "\\": "\\\\"}


def plain_view(data: bytes, final: bool = True) -> str:
    """``data`` as UTF-8 with U+FFFD for invalid bytes; ``final=False`` holds back a character still
    incomplete at the end (it may complete with the next byte), as :func:`~lfbyte.generate.stream_text` does."""
    return codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data, final)


def escaped_view(data: bytes, final: bool = True) -> str:
    """``data`` with every byte that is not printable text as ``\\xNN``: each escape is one byte, so
    invalid UTF-8, NUL or a zero-width character can be told apart; see :data:`ESCAPES_LEGEND`."""
    out = []
    # surrogateescape maps each byte that is not valid UTF-8 to its own code point U+DC80..U+DCFF
    for ch in codecs.getincrementaldecoder("utf-8")(errors="surrogateescape").decode(data, final):
        cp = ord(ch)
        if 0xDC80 <= cp <= 0xDCFF:
            out.append(f"\\x{cp - 0xDC00:02x}")
        elif ch in _SHOWN_AS_IS:
            out.append(_SHOWN_AS_IS[ch])
        elif ch == "·" or not ch.isprintable():  # "·" is taken by the space
            out.append("".join(f"\\x{b:02x}" for b in ch.encode("utf-8")))
        else:
            out.append(ch)
    return "".join(out)


def invalid_bytes(data: bytes) -> int:
    """How many bytes of ``data`` are not valid UTF-8 (each one a U+FFFD or part of one in the plain view)."""
    return sum(0xDC80 <= ord(ch) <= 0xDCFF for ch in data.decode("utf-8", errors="surrogateescape"))


@dataclass
class Pane:
    """One run's continuation of the prompt, pulled a byte at a time and timed on its own."""

    name: str  # "A" or "B": the pane on the page
    head: str  # the run, as the pane names it (Markdown)
    prompt: bytes
    length: int  # bytes asked for
    seed: int
    stream: Iterator[int] | None = None
    generated: bytearray = field(default_factory=bytearray)
    seconds: float = 0.0  # time spent in this run's own decoding (the panes take turns)
    done: bool = False
    error: str = ""

    @classmethod
    def start(cls, name: str, head: str, model: Any, prompt: bytes, length: int, temperature: float,
              top_k: int | None, top_p: float | None, seed: int) -> Pane:
        pane = cls(name, head, prompt, length, seed)
        pane.stream = iter_bytes(model, prompt, length, temperature, top_k, top_p, seed)
        return pane

    def pull(self) -> None:
        """The next byte, or the end, or the error that stopped this run (the other pane goes on)."""
        if self.done or self.stream is None:
            return
        t0 = time.perf_counter()
        try:
            self.generated.append(next(self.stream))
        except StopIteration:
            self.done = True
        except LFByteError as e:
            self.done, self.error = True, str(e)
        except Exception as e:  # keep serving and keep the other pane; the operator gets the traceback
            traceback.print_exc()
            self.done, self.error = True, f"{type(e).__name__}: {e} (see the server log)"
        finally:
            self.seconds += time.perf_counter() - t0

    def views(self) -> tuple[str, str, str]:
        """(plain text, escaped text, stats line) of the prompt and the bytes so far."""
        data = self.prompt + bytes(self.generated)
        return plain_view(data, self.done), escaped_view(data, self.done), self.stats()

    def stats(self) -> str:
        n = len(self.generated)
        parts = [f"**{n:,} of {self.length:,} bytes**"]
        if self.seconds > 0:
            parts.append(f"{n / self.seconds:,.0f} bytes/s" + (f" ({self.seconds:.2f} s)" if self.done else ""))
        parts.append(f"seed {self.seed}")
        if bad := invalid_bytes(self.prompt + bytes(self.generated)):
            parts.append(f"{bad:,} byte{'s' * (bad != 1)} not valid UTF-8")
        if n and bytes(self.generated).isspace():
            parts.append("all whitespace")
        if self.error:
            parts.append(f"stopped by an error: {self.error}")
        return f"{self.head} — " + " · ".join(parts)


def take_turns(panes: list[Pane], interval: float = STREAM_INTERVAL) -> Iterator[None]:
    """Advance every pane by one byte in turn, yielding before the first byte, then at most every
    ``interval`` seconds, and once all are done.

    One generator for all panes, not one event per pane: the app's concurrency limit counts
    generations, so two events would either run two at once or one after the other; taking turns
    byte by byte streams both panes at the same pace, and each pane's bytes/s counts only its own time."""
    yield
    last = time.monotonic()
    while not all(p.done for p in panes):
        for p in panes:
            p.pull()
        if time.monotonic() - last >= interval:
            last = time.monotonic()
            yield
    yield
