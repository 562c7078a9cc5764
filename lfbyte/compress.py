"""A byte model as a lossless compressor: arithmetic coding over its next-byte distribution.

Python::

    from lfbyte.compress import compress, decompress
    from lfbyte.runs import load_run
    model = load_run("outputs/runs/<ts>", device="cpu").model
    blob = compress(model, data)             # bytes -> .lfz bytes
    assert decompress(model, blob) == data   # the exact bytes back

Command line::

    python -m lfbyte.compress run_dir=outputs/runs/<ts> input=notes.txt               # writes notes.txt.lfz
    python -m lfbyte.compress run_dir=outputs/runs/<ts> input=notes.txt.lfz mode=decompress   # writes notes.txt

A model that gives byte ``b`` probability ``p`` codes it in ``-log2 p`` bits, so the compressed size is the
model's cross-entropy on the file (plus a few bytes): bits/byte becomes a file (Delétang et al. 2023,
"Language Modeling Is Compression").

**Exactness.** The decoder must see the very probabilities the encoder used. Both run the same computation:
one byte at a time through the cached :class:`~lfbyte.generate.Decoder` (same sliding-window policy as
generation), in fp32 on the CPU with one thread (a different thread count can change the order of float
sums), turned into integer frequencies by one fixed rule. The container stores a CRC-32 of the input, so if
the arithmetic ever differs (another CPU family, another torch build), decompression fails with one line
rather than returning wrong bytes.

**Container** (little-endian): ``b"LFBZ"``, format version (u8), window ``keep`` (u32), original length
(u64), CRC-32 of the original (u32), model fingerprint (16 bytes: SHA-256 of the model's config and
weights), then the arithmetic-coded payload.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
import sys
import time
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from .errors import ConfigError, LFByteError
from .model.byte_lm import BYTE_VOCAB, SEPARATOR

MAGIC = b"LFBZ"
VERSION = 3  # 2: the one-byte decoding arithmetic changed (issue 11): a coded file needs the same logits;
# 3: the conditioner's causal convolution (lfbyte/model/causal_conv.py) rounds differently
HEADER = struct.Struct("<4sBIQI16s")
FREQ_BITS = 24  # the integer frequency table sums to at most 2^24
STATE_BITS = 40  # coder state; its quarter (2^38) must exceed the frequency total
_FULL, _HALF, _QUARTER = (1 << STATE_BITS) - 1, 1 << (STATE_BITS - 1), 1 << (STATE_BITS - 2)


class CompressError(LFByteError, ValueError):
    """A container that cannot be decompressed (damaged, truncated, another model's) or bad arguments."""


# ----------------------------------------------------------------------------- model side


def fingerprint(model: nn.Module) -> bytes:
    """16 bytes that differ for another architecture, config or any weight: the container's model check."""
    h = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    h.update(json.dumps(asdict(config) if is_dataclass(config) else repr(config), sort_keys=True,
                        default=str).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.digest()[:16]


def byte_probabilities(logits: torch.Tensor) -> np.ndarray:
    """The model's distribution over the 256 byte values (the separator excluded), softmax in float64."""
    z = logits[:BYTE_VOCAB].detach().to("cpu", torch.float64).numpy()
    p = np.exp(z - z.max())
    return p / p.sum()


def frequencies(p: np.ndarray) -> np.ndarray:
    """Cumulative integer frequencies of the 256 byte values (length 257, ``cum[0] = 0``).

    Every byte gets at least 1 (so any file can be coded); the rest of the 2^24 total follows ``p``.
    A pure function of ``p`` (itself of the logits): encoder and decoder derive the same table."""
    freq = np.floor(p * ((1 << FREQ_BITS) - BYTE_VOCAB)).astype(np.int64) + 1
    return np.concatenate(([0], np.cumsum(freq)))


@contextmanager
def _deterministic(model: nn.Module) -> Iterator[None]:
    """One CPU thread and eval mode while coding (restored after): the same float sums in the same order."""
    if next(model.parameters()).device.type != "cpu":
        raise CompressError("compression runs on the CPU (the same arithmetic for encoder and decoder); "
                            "move the model with model.cpu() or use device=cpu")
    threads, was_training = torch.get_num_threads(), model.training
    torch.set_num_threads(1)
    model.eval()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        model.train(was_training)


class _Predictor:
    """The model's frequency table for the next byte, one cached decoder step per byte."""

    def __init__(self, model: nn.Module, keep: int | None) -> None:
        from .generate import Decoder

        self.decoder = Decoder(model, keep=keep)
        self.logits = self.decoder.feed([SEPARATOR])  # a file starts like a document: after the separator

    def probabilities(self) -> np.ndarray:
        return byte_probabilities(self.logits)

    def push(self, byte: int) -> None:
        self.logits = self.decoder.feed([byte])


# ----------------------------------------------------------------------------- arithmetic coder


class _Encoder:
    """Witten-Neal-Cleary arithmetic coding with integer state (bits out as they are settled)."""

    def __init__(self) -> None:
        self.low, self.high, self.pending = 0, _FULL, 0
        self.bits: list[int] = []

    def _emit(self, bit: int) -> None:
        self.bits.append(bit)
        self.bits.extend([1 - bit] * self.pending)
        self.pending = 0

    def encode(self, lo: int, hi: int, total: int) -> None:
        span = self.high - self.low + 1
        self.high = self.low + span * hi // total - 1
        self.low = self.low + span * lo // total
        while True:
            if self.high < _HALF:
                self._emit(0)
            elif self.low >= _HALF:
                self._emit(1)
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.pending += 1
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1

    def finish(self) -> bytes:
        self.pending += 1
        self._emit(0 if self.low < _QUARTER else 1)
        bits = self.bits + [0] * (-len(self.bits) % 8)
        return np.packbits(np.array(bits, dtype=np.uint8)).tobytes() if bits else b""


class _Decoder:
    def __init__(self, payload: bytes) -> None:
        self.bits = np.unpackbits(np.frombuffer(payload, dtype=np.uint8)).tolist()
        self.pos = 0
        self.low, self.high, self.value = 0, _FULL, 0
        for _ in range(STATE_BITS):
            self.value = 2 * self.value + self._bit()

    def _bit(self) -> int:
        bit = self.bits[self.pos] if self.pos < len(self.bits) else 0  # the encoder's implicit trailing zeros
        self.pos += 1
        return bit

    def decode(self, cum: np.ndarray) -> int:
        total = int(cum[-1])
        span = self.high - self.low + 1
        target = ((self.value - self.low + 1) * total - 1) // span
        symbol = int(np.searchsorted(cum, target, side="right")) - 1
        if not 0 <= symbol < BYTE_VOCAB:
            raise CompressError("the payload is damaged (a code value outside every byte's interval)")
        lo, hi = int(cum[symbol]), int(cum[symbol + 1])
        self.high = self.low + span * hi // total - 1
        self.low = self.low + span * lo // total
        while True:
            if self.high < _HALF:
                pass
            elif self.low >= _HALF:
                self.value -= _HALF
                self.low -= _HALF
                self.high -= _HALF
            elif self.low >= _QUARTER and self.high < 3 * _QUARTER:
                self.value -= _QUARTER
                self.low -= _QUARTER
                self.high -= _QUARTER
            else:
                break
            self.low, self.high = 2 * self.low, 2 * self.high + 1
            self.value = 2 * self.value + self._bit()
        return symbol


# ----------------------------------------------------------------------------- public API


@dataclass
class Stats:
    """What one compression did: sizes, the model's own cross-entropy on the input, and speed."""

    input_bytes: int
    output_bytes: int
    cross_entropy_bits: float  # sum of -log2 p(byte) under the model's (unquantised) distribution
    seconds: float

    @property
    def bits_per_byte(self) -> float:
        return 8 * self.output_bytes / max(1, self.input_bytes)

    @property
    def model_bits_per_byte(self) -> float:
        return self.cross_entropy_bits / max(1, self.input_bytes)


def compress_with_stats(model: nn.Module, data: bytes, keep: int | None = None) -> tuple[bytes, Stats]:
    """:func:`compress`, and what it did."""
    data = bytes(data)
    start, encoder, ce = time.perf_counter(), _Encoder(), 0.0
    with _deterministic(model):
        header = HEADER.pack(MAGIC, VERSION, keep or 0, len(data), zlib.crc32(data), fingerprint(model))
        predictor = _Predictor(model, keep) if data else None
        for i, byte in enumerate(data):
            p = predictor.probabilities()
            cum = frequencies(p)
            encoder.encode(int(cum[byte]), int(cum[byte + 1]), int(cum[-1]))
            ce -= math.log2(p[byte])
            if i + 1 < len(data):
                predictor.push(byte)
    blob = header + (encoder.finish() if data else b"")
    return blob, Stats(len(data), len(blob), float(ce), time.perf_counter() - start)


def compress(model: nn.Module, data: bytes, keep: int | None = None) -> bytes:
    """``data`` as an ``.lfz`` container coded with ``model`` (a :class:`LFByteTransformer` or :class:`GPT`
    on the CPU). ``keep``: the decoder's sliding window (default ``seq_len // 2``), stored in the container."""
    return compress_with_stats(model, data, keep)[0]


def read_header(blob: bytes) -> tuple[int, int, int, bytes]:
    """``(keep, length, crc32, fingerprint)`` of a container, or one line saying why it is not one."""
    if len(blob) < HEADER.size or blob[:4] != MAGIC:
        raise CompressError("not an lfbyte compressed file (no LFBZ header); compress it with "
                            "python -m lfbyte.compress first" if blob[:4] != MAGIC else
                            f"the file is truncated ({len(blob)} bytes, shorter than the {HEADER.size}-byte header)")
    magic, version, keep, length, crc, fp = HEADER.unpack_from(blob)
    if version != VERSION:
        raise CompressError(f"format version {version} is not supported (this lfbyte reads version {VERSION}); "
                            "decompress it with the lfbyte that wrote it")
    return keep, length, crc, fp


def decompress(model: nn.Module, blob: bytes) -> bytes:
    """The exact bytes :func:`compress` was given. Another model, a damaged or truncated container is a
    :class:`CompressError` (one line), never wrong output."""
    keep, length, crc, fp = read_header(blob)
    with _deterministic(model):
        if fingerprint(model) != fp:
            raise CompressError("the file was compressed with another model (its fingerprint differs); "
                                "decompress it with the run and checkpoint that compressed it")
        payload = blob[HEADER.size:]
        if length and not payload:
            raise CompressError(f"the file is truncated: no payload for {length} bytes")
        decoder, out = _Decoder(payload), bytearray()
        predictor = _Predictor(model, keep or None) if length else None
        for i in range(length):
            out.append(decoder.decode(frequencies(predictor.probabilities())))
            if i + 1 < length:
                predictor.push(out[-1])
    if zlib.crc32(out) != crc:
        raise CompressError("the decompressed bytes fail the file's CRC-32: the file is damaged (or this machine's "
                            "arithmetic differs from the one that compressed it)")
    return bytes(out)


# ----------------------------------------------------------------------------- CLI


def _paths(cfg: dict[str, Any]) -> tuple[Path, Path]:
    from .runs import as_path

    src = as_path(cfg.get("input"), "input")
    if not src.is_file():
        raise ConfigError(f"input={src} is not a file; pass input=<the file to {cfg['mode']}>")
    if cfg.get("output"):
        dst = as_path(cfg["output"], "output")
    elif cfg["mode"] == "compress":
        dst = src.with_name(src.name + ".lfz")
    else:
        dst = src.with_suffix("") if src.suffix == ".lfz" else src.with_name(src.name + ".out")
    if dst.exists() and not cfg["overwrite"]:
        raise ConfigError(f"output {dst} exists; pass overwrite=true to replace it, or output=<another path>")
    if dst.resolve() == src.resolve():
        raise ConfigError(f"output={dst} is the input; pass output=<another path>")
    return src, dst


def run_cli(cfg: dict[str, Any]) -> str:
    """``python -m lfbyte.compress``: one file in, one file out; returns the summary line."""
    from .runs import describe_run, latest_run, load_run

    if cfg.get("mode") not in ("compress", "decompress"):
        raise ConfigError(f"mode={cfg.get('mode')!r} must be compress or decompress")
    if not isinstance(cfg.get("overwrite"), bool):
        raise ConfigError(f"overwrite={cfg.get('overwrite')!r} must be true or false")
    src, dst = _paths(cfg)
    data = src.read_bytes()
    if cfg["mode"] == "decompress":
        read_header(data)  # not a container: say so before loading a model
    run_dir = cfg.get("run_dir") or latest_run(cfg.get("runs_root") or "outputs")
    run = load_run(run_dir, cfg.get("checkpoint") or "last", "cpu")
    print(describe_run(run), file=sys.stderr, flush=True)
    start = time.perf_counter()
    if cfg["mode"] == "compress":
        out, stats = compress_with_stats(run.model, data)
        summary = (f"compressed {src} ({len(data):,} bytes) to {dst} ({len(out):,} bytes): "
                   f"{stats.bits_per_byte:.3f} bits/byte (the model's cross-entropy: "
                   f"{stats.model_bits_per_byte:.3f}), {len(data) / max(stats.seconds, 1e-9):,.0f} bytes/s")
    else:
        out = decompress(run.model, data)
        seconds = time.perf_counter() - start
        summary = f"decompressed {src} to {dst} ({len(out):,} bytes), {len(out) / max(seconds, 1e-9):,.0f} bytes/s"
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    try:  # never a half-written output under the final name
        tmp.write_bytes(out)
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _hydra_entry(cfg: DictConfig) -> None:
    from .cli import one_line_errors
    from .config import to_plain

    with one_line_errors():
        try:
            print(run_cli(to_plain(cfg)), flush=True)
        except OSError as e:
            raise ConfigError(f"cannot read or write {e.filename or 'a file'}: {e.strerror or e}") from None


def main() -> None:
    """``python -m lfbyte.compress [key=value ...]``; see conf/compress.yaml."""
    from .cli import hydra_cli

    os.environ.setdefault("OMP_NUM_THREADS", "1")
    hydra_cli("compress", _hydra_entry, flat=True)


if __name__ == "__main__":
    main()
