"""The model as a lossless compressor: exact round trips on every kind of input for both architectures, a size
that is the model's cross-entropy, and one ``error:`` line for a damaged file or the wrong model."""

from __future__ import annotations

import math
import random
import zlib
from pathlib import Path

import pytest
import torch
from torch import nn

from lfbyte.compress import HEADER, CompressError, compress, compress_with_stats, decompress, fingerprint
from lfbyte.model import build_model

from .conftest import assert_one_error, make_text, run_cli

SMALL = {"seq_len": 32, "embed_dim": 32, "num_layers": 2, "num_heads": 2}
ARCHS = {
    "lfbyte": {"arch": "lfbyte", **SMALL, "adapt_dim": 8, "adapt_rank": 4, "chunk_size": 8, "num_experts": 2,
               "top_k": 1},
    "gpt": {"arch": "gpt", **SMALL},
}


def _model(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ARCHS[arch]).eval()


def _inputs() -> dict[str, bytes]:
    rng = random.Random(0)
    return {
        "empty": b"",
        "one byte": b"\x00",
        "text": make_text(300, seed=1).encode(),
        "random": bytes(rng.randrange(256) for _ in range(200)),
        "every byte value": bytes(range(256)),
        "5x seq_len": (b"abcab" * 40)[:160],  # the decoder's window slides several times
    }


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_round_trip_is_byte_identical(arch: str) -> None:
    model = _model(arch)
    for name, data in _inputs().items():
        blob = compress(model, data)
        assert decompress(model, blob) == data, name
        assert len(blob) >= HEADER.size


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_size_is_the_models_cross_entropy(arch: str) -> None:
    """Within 1 % (plus the header and the coder's last bits) of -sum log2 p(byte) under the model itself."""
    model = _model(arch)
    data = make_text(2000, seed=2).encode()
    blob, stats = compress_with_stats(model, data)
    payload_bits = 8 * (len(blob) - HEADER.size)
    assert 0.99 * stats.cross_entropy_bits <= payload_bits <= 1.01 * stats.cross_entropy_bits + 16
    # the reference: the model's own distribution through a separate decoder (no quantisation, no coder)
    assert abs(stats.model_bits_per_byte - _cross_entropy(model, data)) < 0.01 * stats.model_bits_per_byte


def _cross_entropy(model: nn.Module, data: bytes) -> float:
    """bits/byte of ``data`` by full forward passes over the windows the decoder sees (separator first)."""
    from lfbyte.generate import Decoder
    from lfbyte.model import SEPARATOR

    decoder, total = Decoder(model), 0.0
    logits = decoder.feed([SEPARATOR])
    for i, byte in enumerate(data):
        logp = torch.log_softmax(logits[:256].double(), -1)
        total -= float(logp[byte]) / math.log(2)
        if i + 1 < len(data):
            logits = decoder.feed([byte])
    return total / len(data)


def test_a_trained_model_compresses_what_it_learned() -> None:
    """Bytes the model predicts cost few bits: a model fit to a pattern codes that pattern far below 8 bits/byte,
    and still codes bytes it never saw (every byte keeps a non-zero frequency)."""
    model = _model("lfbyte", seed=3).train()
    pattern = torch.tensor([list(b"the cat sat on the mat. " * 2)[:33]])
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        out = model(pattern[:, :-1], targets=pattern[:, 1:])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    data = b"the cat sat on the mat. " * 8
    blob, stats = compress_with_stats(model, data)
    assert decompress(model, blob) == data
    assert stats.model_bits_per_byte < 2.0, stats
    surprise = data + bytes(range(200, 256))
    assert decompress(model, compress(model, surprise)) == surprise


def test_damage_truncation_and_another_model_are_errors_never_wrong_bytes() -> None:
    model, data = _model("lfbyte"), make_text(400, seed=4).encode()
    blob = compress(model, data)
    with pytest.raises(CompressError, match="another model"):
        decompress(_model("lfbyte", seed=1), blob)
    with pytest.raises(CompressError, match="another model"):
        decompress(_model("gpt"), blob)
    flipped = bytearray(blob)
    flipped[HEADER.size + len(flipped[HEADER.size:]) // 2] ^= 0x10
    with pytest.raises(CompressError, match="CRC-32|damaged"):
        decompress(model, bytes(flipped))
    with pytest.raises(CompressError, match="CRC-32|damaged"):
        decompress(model, blob[: HEADER.size + 20])
    with pytest.raises(CompressError, match="truncated"):
        decompress(model, blob[:10])
    with pytest.raises(CompressError, match="not an lfbyte compressed file"):
        decompress(model, b"hello world, certainly not a container")
    with pytest.raises(CompressError, match="format version 9"):
        decompress(model, blob[:4] + bytes([9]) + blob[5:])


def test_the_fingerprint_sees_every_weight() -> None:
    model = _model("gpt")
    before = fingerprint(model)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] += 1e-6
    assert fingerprint(model) != before


def test_coding_leaves_the_callers_threads_and_mode_alone() -> None:
    model = _model("lfbyte").train()
    threads = torch.get_num_threads()
    compress(model, b"abc")
    assert model.training and torch.get_num_threads() == threads


# ------------------------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real (tiny) run directory: config.yaml and a checkpoint, as lfbyte.train writes them."""
    from lfbyte.checkpoint import make_checkpoint, save_checkpoint

    root = tmp_path_factory.mktemp("run")
    cfg = {"model": ARCHS["lfbyte"]}
    (root / "config.yaml").write_text(__import__("yaml").safe_dump(cfg))
    save_checkpoint(make_checkpoint(_model("lfbyte"), cfg), root / "checkpoints", step=1, keep_last=1)
    return root


def test_cli_round_trip_writes_files_and_reports_sizes(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "notes.txt"
    src.write_bytes(make_text(600, seed=5).encode())
    proc = run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={src}", timeout=120, check=True)
    packed = tmp_path / "notes.txt.lfz"
    assert packed.is_file() and "bits/byte (the model's cross-entropy:" in proc.stdout and "bytes/s" in proc.stdout
    src.rename(tmp_path / "original.txt")
    run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={packed}", "mode=decompress", timeout=120, check=True)
    assert (tmp_path / "notes.txt").read_bytes() == (tmp_path / "original.txt").read_bytes()


def test_cli_bad_input_is_one_line_and_keeps_the_users_files(run_dir: Path, tmp_path: Path) -> None:
    src = tmp_path / "a.txt"
    src.write_bytes(b"keep me")
    existing = tmp_path / "a.txt.lfz"
    existing.write_bytes(b"precious")
    assert_one_error(run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={src}", timeout=120),
                     f"error: output {existing} exists; pass overwrite=true to replace it, or output=<another path>")
    assert existing.read_bytes() == b"precious"
    assert_one_error(run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={src}", "mode=decompress",
                             f"output={tmp_path / 'out'}", timeout=120),
                     "error: not an lfbyte compressed file (no LFBZ header); compress it with python -m "
                     "lfbyte.compress first")
    assert_one_error(run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={tmp_path / 'missing'}", timeout=120),
                     f"error: input={tmp_path / 'missing'} is not a file; pass input=<the file to compress>")
    assert_one_error(run_cli("lfbyte.compress", "mode=zip", f"input={src}", timeout=120),
                     "error: mode='zip' must be compress or decompress")
    other = tmp_path / "other.lfz"
    other.write_bytes(compress(_model("lfbyte", seed=7), b"data"))
    assert_one_error(run_cli("lfbyte.compress", f"run_dir={run_dir}", f"input={other}", "mode=decompress",
                             f"output={tmp_path / 'x'}", timeout=120),
                     "error: the file was compressed with another model (its fingerprint differs); decompress it "
                     "with the run and checkpoint that compressed it")
    assert not (tmp_path / "x").exists()
    assert zlib.crc32(src.read_bytes()) == zlib.crc32(b"keep me")
