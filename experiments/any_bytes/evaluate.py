"""Held-out bits/byte per modality: the trained models next to gzip -9, bzip2 -9 and xz -9 on the same files.

    python experiments/any_bytes/evaluate.py measure outputs/any_bytes_data outputs/any_bytes lf > lf.json &
    python experiments/any_bytes/evaluate.py measure outputs/any_bytes_data outputs/any_bytes gpt > gpt.json; wait
    python experiments/any_bytes/evaluate.py table outputs/any_bytes_data lf.json gpt.json > results.md

For every run ``outputs/any_bytes/<modality>_<lf|gpt>_s<seed>``: the model's cross-entropy on each held-out
file (a file starts after the document separator, as in ``lfbyte.compress``), by full forward passes over
windows of ``seq_len`` that advance by ``seq_len // 2`` and score only bytes with at least that much context
(the context the compressor's sliding window gives, so the figures match its sizes closely). For seed 1 the
smallest held-out file of each modality is also really compressed with ``lfbyte.compress`` (a byte model codes
~150-300 bytes/s on one core), and the smallest of all is decompressed and compared byte for byte. The
classical compressors run per file at -9.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from lfbyte.compress import compress_with_stats, decompress
from lfbyte.model import SEPARATOR
from lfbyte.runs import load_run

CLASSIC = {
    "gzip -9": lambda b: gzip.compress(b, 9, mtime=0),
    "bzip2 -9": lambda b: bz2.compress(b, 9),
    "xz -9": lambda b: lzma.compress(b, preset=9),
}


@torch.inference_mode()
def file_bits(model: torch.nn.Module, data: bytes) -> float:
    """Total -log2 p over the file's bytes, each scored with seq_len//2 .. seq_len-1 bytes of context."""
    seq, half = model.config.seq_len, model.config.seq_len // 2
    tokens = torch.tensor([SEPARATOR, *data])
    total, start = 0.0, 0
    while True:
        window = tokens[start : start + seq + 1]
        if len(window) < 2:
            break
        logp = torch.log_softmax(model(window[None, :-1]).logits[0].double(), -1)
        nll = -logp.gather(1, window[1:, None])[:, 0]
        first = 0 if start == 0 else half  # earlier bytes were scored by the previous window
        total += float(nll[first:].sum()) / math.log(2)
        if start + seq + 1 >= len(tokens):
            break
        start += seq - half
    return total


def measure(data_root: Path, runs_root: Path, side: str) -> dict:
    """Every run of one architecture: held-out bits/byte per modality and seed; seed 1 also really compressed."""
    torch.set_num_threads(1)
    out: dict = {}
    for modality in ("audio", "image", "elf"):
        files = sorted((data_root / modality / "heldout").iterdir())
        blobs = [f.read_bytes() for f in files]
        n = sum(map(len, blobs))
        entry = out.setdefault(modality, {"files": len(files), "bytes": n, "bpb": []})
        for run_dir in sorted(p for p in runs_root.glob(f"{modality}_{side}_s*") if p.is_dir()):
            run = load_run(run_dir, device="cpu")
            bpb = sum(file_bits(run.model, b) for b in blobs) / n
            entry["bpb"].append(bpb)
            print(f"  {run_dir.name}: {bpb:.3f} bits/byte (step {run.step}, val_bpb {run.metrics.get('val_bpb'):.3f})",
                  file=sys.stderr, flush=True)
            if run_dir.name.endswith("_s1"):  # the smallest held-out file, really compressed (a byte model is slow)
                k = min(range(len(blobs)), key=lambda i: len(blobs[i]))
                blob, stats = compress_with_stats(run.model, blobs[k])
                entry["real"] = {"file": files[k].name, "bytes": len(blobs[k]), "lfz_bytes": len(blob),
                                 "estimate_bits": file_bits(run.model, blobs[k]),
                                 "compress_bytes_per_s": len(blobs[k]) / stats.seconds}
                if modality == "elf":  # the smallest file of all: decompressed and compared byte for byte
                    start = time.perf_counter()
                    assert decompress(run.model, blob) == blobs[k], run_dir
                    entry["real"]["decompress_bytes_per_s"] = len(blobs[k]) / (time.perf_counter() - start)
                print(f"  {run_dir.name}: {entry['real']}", file=sys.stderr, flush=True)
    return out


def table(data_root: Path, results: dict[str, dict]) -> None:
    def cell(values: list[float]) -> str:
        if not values:
            return "—"
        spread = statistics.stdev(values) if len(values) > 1 else 0.0
        return f"{statistics.mean(values):.3f} ± {spread:.3f}"

    print("Held-out bits/byte (lower is better): models over all held-out files, mean ± std over 3 seeds; "
          "classical compressors per file at -9.\n")
    print("| modality | held-out files (bytes) | LFByteTransformer | GPT | gzip -9 | bzip2 -9 | xz -9 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for modality in ("audio", "image", "elf"):
        blobs = [f.read_bytes() for f in sorted((data_root / modality / "heldout").iterdir())]
        n = sum(map(len, blobs))
        classic = {name: 8 * sum(len(fn(b)) for b in blobs) / n for name, fn in CLASSIC.items()}
        lf, gpt = results["lf"][modality], results["gpt"][modality]
        print(f"| {modality} | {lf['files']} ({n:,}) | {cell(lf['bpb'])} | {cell(gpt['bpb'])} | "
              f"{classic['gzip -9']:.3f} | {classic['bzip2 -9']:.3f} | {classic['xz -9']:.3f} |")
    print("\nReal files: the smallest held-out file of each modality compressed by `lfbyte.compress` with the "
          "seed-1 models (size includes the 37-byte header), next to the estimate above for that file and the "
          "classical compressors on it.\n")
    print("| file | bytes | LF .lfz (bits/byte) | LF estimate | GPT .lfz (bits/byte) | GPT estimate | gzip -9 | "
          "bzip2 -9 | xz -9 | compress bytes/s LF / GPT |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for modality in ("audio", "image", "elf"):
        lf, gpt = results["lf"][modality]["real"], results["gpt"][modality]["real"]
        data = (data_root / modality / "heldout" / lf["file"]).read_bytes()
        classic = {name: 8 * len(fn(data)) / len(data) for name, fn in CLASSIC.items()}
        print(f"| {modality}/{lf['file']} | {lf['bytes']:,} | {lf['lfz_bytes']:,} ({8 * lf['lfz_bytes'] / lf['bytes']:.3f}) "
              f"| {lf['estimate_bits'] / lf['bytes']:.3f} | {gpt['lfz_bytes']:,} ({8 * gpt['lfz_bytes'] / gpt['bytes']:.3f}) "
              f"| {gpt['estimate_bits'] / gpt['bytes']:.3f} | {classic['gzip -9']:.3f} | {classic['bzip2 -9']:.3f} | "
              f"{classic['xz -9']:.3f} | {lf['compress_bytes_per_s']:,.0f} / {gpt['compress_bytes_per_s']:,.0f} |")
    lf, gpt = results["lf"]["elf"]["real"], results["gpt"]["elf"]["real"]
    print(f"\nRound trip of elf/{lf['file']} byte-identical for both; decompression "
          f"{lf['decompress_bytes_per_s']:,.0f} (LF) and {gpt['decompress_bytes_per_s']:,.0f} (GPT) bytes/s, "
          "one thread each.")


if __name__ == "__main__":
    import json

    if sys.argv[1] == "measure":  # measure DATA RUNS SIDE > SIDE.json
        print(json.dumps(measure(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]), indent=1))
    else:  # table DATA lf.json gpt.json
        table(Path(sys.argv[2]), {"lf": json.loads(Path(sys.argv[3]).read_text()),
                                  "gpt": json.loads(Path(sys.argv[4]).read_text())})
