"""Byte corpora: files -> one cached uint8 memmap + document offsets -> random windows.

The corpus is seen as one virtual token stream ``SEP doc_0 SEP doc_1 ...`` where
``SEP`` (token 256) marks a document start. Bytes are stored once as uint8 (never
as 16-bit tokens) and separators are inserted on the fly when a window is read,
so any file type, of any size, costs its own size on disk and is memory-mapped,
never read whole into RAM.
"""

from __future__ import annotations

import ast
import errno
import glob
import hashlib
import json
import os
import shutil
import sys
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError, short_repr
from .model.byte_lm import SEPARATOR

DEFAULT_CORPUS = "python-docs"
_COPY_CHUNK = 16 << 20


def default_cache_dir() -> Path:
    root = os.environ.get("LFBYTE_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "lfbyte"
    )
    return Path(root) / "data"


def _python_docs() -> Iterator[bytes]:
    """The embedded default: English documentation prose that ships with every CPython.

    The ``pydoc_data.topics`` reference pages (what ``help('if')`` shows), then every
    docstring of 200+ characters in the standard library's modules (tests excluded),
    in sorted file order: ~1.7 MB on CPython 3.11. No download, no third-party text.
    """
    import pydoc_data.topics as topics

    for key in sorted(topics.topics):
        yield topics.topics[key].strip().encode("utf-8")
    root = Path(sysconfig.get_paths()["stdlib"])
    skip = {"test", "tests", "site-packages", "dist-packages", "idlelib", "lib2to3", "turtledemo"}
    for path in sorted(root.rglob("*.py")):
        if skip.intersection(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_bytes())
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                if doc and len(doc) >= 200:
                    yield doc.encode("utf-8", errors="replace")


def resolve_files(path: str) -> list[Path]:
    """A file, a directory (all non-hidden files below it) or a glob -> sorted files."""
    try:
        return _resolve_files(path)
    except OSError as e:  # a name longer than the filesystem allows, a loop of links, an unreadable folder
        raise DataError(f"data.path={short_repr(path)} cannot be read ({e.strerror or e}); give a file, a directory "
                        "or a glob") from None


def _resolve_files(path: str) -> list[Path]:
    p = Path(os.path.expanduser(path))
    if any(ch in path for ch in "*?["):
        files = [Path(f) for f in glob.glob(os.path.expanduser(path), recursive=True)]
        files = [f for f in files if f.is_file()]
        if not files:
            raise DataError(f"data.path={path!r} matches no files; check the pattern (use ** for subfolders)")
    elif p.is_dir():
        files = [
            f
            for f in p.rglob("*")
            if f.is_file() and not any(part.startswith(".") for part in f.relative_to(p).parts)
        ]
        if not files:
            raise DataError(f"data.path={path!r} is a directory with no files in it; point it at your data")
    elif p.is_file():
        files = [p]
    elif p.exists():  # /dev/null, a FIFO, a socket: no bytes to memory-map
        raise DataError(f"data.path={path!r} is not a regular file or a directory; give a file, a directory or a glob")
    else:
        raise DataError(f"data.path={path!r} does not exist; give a file, a directory or a glob")
    for f in files:
        if not os.access(f, os.R_OK):
            raise DataError(f"cannot read {f} (permission denied); fix its permissions or leave it out of data.path")
    return sorted(files)


@dataclass
class ByteCorpus:
    """Concatenated document bytes (uint8 memmap) and document start offsets."""

    data: np.ndarray  # uint8, all documents back to back
    starts: np.ndarray  # int64, start of each document in ``data``; len = num_docs + 1
    name: str = ""

    @property
    def num_docs(self) -> int:
        return len(self.starts) - 1

    def __len__(self) -> int:
        """Length of the virtual stream (bytes + one separator per document)."""
        return int(len(self.data) + self.num_docs)

    def tokens(self, positions: np.ndarray) -> np.ndarray:
        """Token ids (int64) at virtual stream positions (any shape)."""
        vstarts = self.starts[:-1] + np.arange(self.num_docs)  # virtual index of each SEP
        doc = np.searchsorted(vstarts, positions, side="right") - 1
        offset = positions - vstarts[doc]
        is_sep = offset == 0
        src = np.where(is_sep, 0, self.starts[doc] + offset - 1)
        out = self.data[src.ravel()].astype(np.int64).reshape(positions.shape)
        out[is_sep] = SEPARATOR
        return out


def _build_cache(docs: Iterator[bytes | Path], target: Path) -> None:
    """Stream documents into ``target/{bytes.bin,starts.npy}``, atomically (tmp dir + rename)."""
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        _write_cache(docs, tmp)
    except BaseException:  # a full disk or Ctrl-C mid-copy leaves no half-written cache behind
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.replace(tmp, target)
    except OSError:  # another process finished the same cache first
        if not (target / "starts.npy").exists():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _write_cache(docs: Iterator[bytes | Path], tmp: Path) -> None:
    starts, total = [0], 0
    with open(tmp / "bytes.bin", "wb") as out:
        for doc in docs:
            if isinstance(doc, Path):
                with open(doc, "rb") as f:
                    while chunk := f.read(_COPY_CHUNK):
                        out.write(chunk)
                        total += len(chunk)
            else:
                out.write(doc)
                total += len(doc)
            if total > starts[-1]:  # empty files add nothing, not even a separator
                starts.append(total)
    np.save(tmp / "starts.npy", np.asarray(starts, dtype=np.int64))


def load_corpus(path: str | None, cache_dir: str | None = None) -> ByteCorpus:
    """Open (building once if needed) the corpus at ``path``; ``None`` is the embedded default."""
    if path is None or path == DEFAULT_CORPUS:
        key = {"corpus": DEFAULT_CORPUS, "python": sys.version, "stdlib": sysconfig.get_paths()["stdlib"]}
        files = None
        name = f"{DEFAULT_CORPUS} (CPython {sys.version.split()[0]})"
    else:
        files = resolve_files(str(path))
        key = {"files": [(str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns) for f in files]}
        name = str(path)
    digest = hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(cache_dir or default_cache_dir()) / digest
    try:
        built = (target / "starts.npy").exists()
    except OSError:
        built = False  # e.g. a cache_dir name too long: the mkdir below says so
    if not built:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            _build_cache(_python_docs() if files is None else iter(files), target)
        except OSError as e:  # permissions, a full disk, a file in the way
            full = e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
            raise DataError(f"cannot write the data cache at {target.parent} ({e.strerror or e}); "
                            f"{'free disk space or ' if full else ''}set data.cache_dir to a writable folder") from e
    starts = np.load(target / "starts.npy")
    if starts[-1] == 0:
        raise DataError(f"data.path={path!r} holds no bytes (all files are empty); add data")
    data = np.memmap(target / "bytes.bin", dtype=np.uint8, mode="r", shape=(int(starts[-1]),))
    return ByteCorpus(data, starts, name)


@dataclass(frozen=True)
class Split:
    lo: int
    hi: int

    def __len__(self) -> int:
        return self.hi - self.lo


def split_corpus(corpus: ByteCorpus, val_fraction: float, seq_len: int) -> tuple[Split, Split]:
    """Deterministic split of the virtual stream: the last ``val_fraction`` is validation."""
    n = len(corpus)
    n_val = int(round(n * val_fraction))
    need = seq_len + 1
    if n_val < need or n - n_val < need:
        raise DataError(
            f"corpus {corpus.name!r} has {n:,} tokens; with data.val_fraction={val_fraction} "
            f"each split needs at least seq_len+1={need}: add data, lower model.seq_len "
            "or change data.val_fraction"
        )
    return Split(0, n - n_val), Split(n - n_val, n)


class WindowSampler:
    """Random ``seq_len + 1`` windows for training, identical on every rank.

    Each optimizer step draws ``accumulation_steps × world_size × batch_size``
    window starts from one shared generator; rank ``r`` on micro-step ``j`` reads
    its own slice. So ranks read different data, and the union of a step's windows
    does not depend on how it is divided among ranks and micro-steps: 2 ranks × 4
    windows see exactly what 1 rank × 8 windows sees. The generator state is the
    data position, saved in checkpoints for exact resume.
    """

    def __init__(self, corpus: ByteCorpus, split: Split, seq_len: int, seed: int, input_noise: float = 0.0) -> None:
        self.corpus, self.split, self.seq_len, self.input_noise = corpus, split, seq_len, input_noise
        self.rng = np.random.Generator(np.random.PCG64(seed))
        # its own stream, so turning the noise on does not change which windows are drawn
        self.noise_rng = np.random.Generator(np.random.PCG64([seed, 1]))

    def step_batches(self, batch_size: int, accumulation_steps: int, rank: int, world_size: int) -> np.ndarray:
        """Window starts for one optimizer step, (``accumulation_steps``, ``batch_size``): row j is micro-batch j.

        One array (a view of every rank's draw), not a list of per-micro-batch arrays: those cost ~100 bytes of
        Python object each, beyond the memory estimate's int64 starts."""
        high = len(self.split) - self.seq_len - 1
        starts = self.split.lo + self.rng.integers(0, high + 1, size=(accumulation_steps, world_size, batch_size))
        return starts[:, rank]

    def step_noise(self, batch_size: int, accumulation_steps: int, rank: int, world_size: int) -> np.ndarray | None:
        """One noise key per window of :meth:`step_batches` (same shape), or None when ``input_noise`` is 0.

        Drawn for the whole step like the starts, so a window's noise does not depend on how ranks and
        micro-steps divide the step."""
        if not self.input_noise:
            return None
        keys = self.noise_rng.integers(0, 2**63 - 1, size=(accumulation_steps, world_size, batch_size))
        return keys[:, rank]

    def read(self, starts: np.ndarray, noise_keys: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of the windows at ``starts``. With ``noise_keys`` (:meth:`step_noise`), each input
        byte is, with probability ``input_noise``, replaced by a byte drawn from its own window (unigram noising,
        Xie et al. 2017): the targets stay the true next bytes."""
        pos = starts[:, None] + np.arange(self.seq_len + 1)
        tok = self.corpus.tokens(pos)
        x = tok[:, :-1]
        if noise_keys is not None:
            x = x.copy()
            for row, key in zip(x, noise_keys, strict=True):
                g = np.random.default_rng(int(key))
                hit = np.flatnonzero(g.random(self.seq_len) < self.input_noise)
                row[hit] = row[g.integers(0, self.seq_len, size=len(hit))]  # the right side reads the clean row
        return torch.from_numpy(x), torch.from_numpy(tok[:, 1:])

    def state_dict(self) -> dict:
        return {"bit_generator": self.rng.bit_generator.state, "noise_bit_generator": self.noise_rng.bit_generator.state}

    def load_state_dict(self, state: dict) -> None:
        self.rng.bit_generator.state = state["bit_generator"]
        if "noise_bit_generator" in state:  # checkpoints from before input_noise: their noise stream never moved
            self.noise_rng.bit_generator.state = state["noise_bit_generator"]


def eval_windows(split: Split, seq_len: int, max_windows: int, scored: int | None = None) -> np.ndarray:
    """Starts of fixed, evenly spaced validation windows (``seq_len + 1`` bytes), so every evaluation sees the same bytes.

    With ``scored``, only the last ``scored`` targets of each window count, and those blocks sit where they would for
    ``seq_len == scored``: every context length is scored on the same bytes, a longer one with more of the past in front
    of each block (the first blocks' context may reach back into the training split; no training byte is scored).
    ``scored == seq_len`` places windows exactly as ``scored=None`` does."""
    block = seq_len if scored is None else scored
    count = max(1, min(max_windows, (len(split) - 1) // block))
    firsts = split.lo + 1 + np.linspace(0, len(split) - block - 1, count).astype(np.int64)  # first scored byte
    return firsts - 1 - (seq_len - block)
