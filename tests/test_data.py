"""Byte corpora: documents and separators, splits, window sampling, bad paths."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfbyte.data import WindowSampler, eval_windows, load_corpus, split_corpus
from lfbyte.errors import DataError
from lfbyte.model import SEPARATOR


def test_documents_are_stored_as_uint8_with_separators_between(tmp_path: Path, cache_dir: Path) -> None:
    d = tmp_path / "docs"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_bytes(b"hello")
    (d / "sub" / "b.bin").write_bytes(bytes([0, 255, 10]))
    (d / "empty.txt").write_bytes(b"")
    (d / ".hidden").write_bytes(b"secret")
    corpus = load_corpus(str(d), str(tmp_path / "cache"))
    assert corpus.data.dtype == np.uint8 and isinstance(corpus.data, np.memmap)
    stream = corpus.tokens(np.arange(len(corpus))).tolist()
    assert stream == [SEPARATOR, *b"hello", SEPARATOR, 0, 255, 10]  # sorted files; empty and hidden skipped


def test_cache_is_reused_and_rebuilt_when_files_change(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_bytes(b"abc" * 100)
    cache = tmp_path / "cache"
    load_corpus(str(f), str(cache))
    assert len(list(cache.iterdir())) == 1
    load_corpus(str(f), str(cache))
    assert len(list(cache.iterdir())) == 1
    f.write_bytes(b"xyz" * 200)
    os.utime(f, ns=(1, 1))
    corpus = load_corpus(str(f), str(cache))
    assert len(list(cache.iterdir())) == 2 and bytes(corpus.data[:3]) == b"xyz"


def test_glob_selects_files(tmp_path: Path) -> None:
    for name in ("a.txt", "b.txt", "c.md"):
        (tmp_path / name).write_text(name * 10)
    corpus = load_corpus(str(tmp_path / "*.txt"), str(tmp_path / "cache"))
    assert corpus.num_docs == 2


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("/nonexistent/corpus.txt", "does not exist"),
        ("/nonexistent/*.txt", "matches no files"),
        ("/dev/null", "is not a regular file or a directory"),
    ],
)
def test_bad_paths_say_what_is_wrong(path: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=message):
        load_corpus(path, str(tmp_path))


def test_empty_data_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="directory with no files"):
        load_corpus(str(tmp_path / "d"), str(tmp_path / "cache"))
    (tmp_path / "e.txt").write_bytes(b"")
    with pytest.raises(DataError, match="holds no bytes"):
        load_corpus(str(tmp_path / "e.txt"), str(tmp_path / "cache"))


def test_corpus_smaller_than_a_window_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "s.txt").write_bytes(b"short")
    corpus = load_corpus(str(tmp_path / "s.txt"), str(tmp_path / "cache"))
    with pytest.raises(DataError, match="needs at least seq_len"):
        split_corpus(corpus, 0.1, seq_len=64)


def test_default_corpus_is_english_documentation(cache_dir: Path) -> None:
    corpus = load_corpus(None)
    assert len(corpus) > 1_000_000
    text = bytes(corpus.data[:200_000]).decode("utf-8")
    assert " the " in text and "statement" in text


def test_sampler_partitions_a_step_across_ranks_and_micro_steps(text_file: Path) -> None:
    corpus = load_corpus(str(text_file))
    train, _ = split_corpus(corpus, 0.1, 32)

    def starts(batch: int, accum: int, world: int) -> list[int]:
        out = []
        for rank in range(world):
            s = WindowSampler(corpus, train, 32, seed=7)
            out += [int(v) for b in s.step_batches(batch, accum, rank, world) for v in b]
        return sorted(out)

    assert starts(8, 1, 1) == starts(4, 1, 2) == starts(2, 2, 2) == starts(4, 2, 1)


def test_sampler_state_resumes_the_data_position(text_file: Path) -> None:
    corpus = load_corpus(str(text_file))
    train, _ = split_corpus(corpus, 0.1, 32)
    a = WindowSampler(corpus, train, 32, seed=1)
    a.step_batches(4, 1, 0, 1)
    state = a.state_dict()
    expected = a.step_batches(4, 1, 0, 1)[0]
    b = WindowSampler(corpus, train, 32, seed=99)
    b.load_state_dict(state)
    np.testing.assert_array_equal(b.step_batches(4, 1, 0, 1)[0], expected)
    noisy = WindowSampler(corpus, train, 32, seed=1, input_noise=0.1)
    noisy.step_noise(4, 1, 0, 1)
    state, expected = noisy.state_dict(), noisy.step_noise(4, 1, 0, 1)
    again = WindowSampler(corpus, train, 32, seed=99, input_noise=0.1)
    again.load_state_dict(state)
    np.testing.assert_array_equal(again.step_noise(4, 1, 0, 1), expected)


def test_input_noise_replaces_input_bytes_from_their_own_window_and_keeps_targets(text_file: Path) -> None:
    corpus = load_corpus(str(text_file))
    train, _ = split_corpus(corpus, 0.1, 256)
    clean, noisy = WindowSampler(corpus, train, 256, seed=3), WindowSampler(corpus, train, 256, seed=3, input_noise=0.2)
    assert clean.step_noise(8, 2, 0, 1) is None
    starts = noisy.step_batches(8, 2, 0, 1)
    np.testing.assert_array_equal(starts, clean.step_batches(8, 2, 0, 1))  # the noise does not move the windows
    keys = noisy.step_noise(8, 2, 0, 1)
    assert keys.shape == starts.shape
    x0, y0 = clean.read(starts[0])
    x, y = noisy.read(starts[0], keys[0])
    assert (y == y0).all()  # targets are the true next bytes
    changed = (x != x0).float().mean().item()
    assert 0.1 < changed < 0.2  # 20 % of the bytes drawn again, some of them the same byte
    for row, row0 in zip(x, x0, strict=True):
        assert set(row.tolist()) <= set(row0.tolist())  # unigram noise: bytes of the window itself
    x2, _ = noisy.read(starts[0], keys[0])
    assert (x2 == x).all()  # a key fixes the noise
    # the same step's noise whichever way ranks and micro-steps divide it
    def all_keys(batch: int, accum: int, world: int) -> list[int]:
        return sorted(int(k) for r in range(world)
                      for k in WindowSampler(corpus, train, 256, 7, 0.1).step_noise(batch, accum, r, world).ravel())
    assert all_keys(8, 1, 1) == all_keys(4, 1, 2) == all_keys(2, 2, 2)


def test_windows_stay_inside_their_split(text_file: Path) -> None:
    corpus = load_corpus(str(text_file))
    train, val = split_corpus(corpus, 0.1, 32)
    assert train.hi == val.lo and val.hi == len(corpus)
    s = WindowSampler(corpus, train, 32, seed=0)
    for b in s.step_batches(64, 4, 0, 1):
        assert b.min() >= train.lo and b.max() + 33 <= train.hi
        x, y = s.read(b)
        assert x.shape == (64, 32) and (x[:, 1:] == y[:, :-1]).all()
    ev = eval_windows(val, 32, 10)
    assert ev.min() >= val.lo and ev.max() + 33 <= val.hi and len(set(ev.tolist())) == len(ev)


def test_text_that_is_not_utf8_is_just_bytes(tmp_path: Path) -> None:
    raw = b"caf\xc3\xa9 \xff\xfe\x80 lone surrogate \xed\xa0\x80 latin-1 \xe9t\xe9\n" * 50
    (tmp_path / "mixed.txt").write_bytes(raw)
    corpus = load_corpus(str(tmp_path / "mixed.txt"), str(tmp_path / "cache"))
    assert bytes(corpus.data) == raw
    assert corpus.tokens(np.arange(1, 9)).tolist() == list(raw[:8])  # position 0 is the document separator


def _child(code: str, tmp_path: Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit() -> None:
        if limit_bytes is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          preexec_fn=limit)


def test_a_huge_file_is_streamed_and_memory_mapped_never_read_whole(tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # 256 MB, sparse: cheap to make, still 256 MB to read
        f.truncate(256 << 20)
    code = f"""
import resource
from lfbyte.data import load_corpus, split_corpus, WindowSampler
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
corpus = load_corpus({str(big)!r}, {str(tmp_path / "cache")!r})
train, val = split_corpus(corpus, 0.05, 512)
x, y = WindowSampler(corpus, train, 512, 0).read(__import__("numpy").arange(8) * 1_000_000)
print(len(corpus), (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    proc = _child(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    length, grew_mb = map(int, proc.stdout.split())
    print(f"opening a 256 MB corpus grew peak RSS by {grew_mb} MB")  # README figure
    assert length == (256 << 20) + 1
    assert grew_mb < 64, f"peak memory grew by {grew_mb} MB while opening a 256 MB corpus"


def test_a_full_disk_while_building_the_cache_is_one_error_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "data.txt").write_bytes(b"some text\n" * 100_000)  # 1 MB, the 'disk' takes 64 KB
    code = f"""
from lfbyte.data import load_corpus
from lfbyte.errors import DataError
try:
    load_corpus({str(tmp_path / "data.txt")!r}, {str(tmp_path / "cache")!r})
except DataError as e:
    print(e)
"""
    proc = _child(code, tmp_path, limit_bytes=64 << 10)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout.strip() == (f"cannot write the data cache at {tmp_path / 'cache'} (File too large); free disk "
                                   "space or set data.cache_dir to a writable folder")
    assert list((tmp_path / "cache").iterdir()) == []  # no half-written cache to be mistaken for a good one
