"""The benchmark command, end to end on tiny settings: every section measures and reports (no timing asserts)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from hydra import compose, initialize_config_dir

from lfbyte.bench.suite import markdown, run_bench
from lfbyte.config import CONF_DIR, to_plain

from .conftest import run_cli


def _bench_cfg(text_file: Path, *extra: str) -> dict:
    overrides = [
        f"data.path={text_file}",
        "trainer.num_threads=1",
        "bench.peak.sizes=[64,128]",
        "bench.peak.seconds=0.05",
        "bench.throughput.models=[tiny,gpt_tiny]",
        "bench.throughput.precisions=[fp32]",
        "bench.throughput.batch_size=2",
        "bench.throughput.steps=2",
        "bench.throughput.warmup=1",
        "bench.scaling.models=[tiny,gpt_tiny]",
        "bench.scaling.seq_lens=[32,64]",
        "bench.scaling.reference_seq_len=32",
        "bench.scaling.bytes_per_step=128",
        "bench.scaling.precision=fp32",
        "bench.scaling.steps=2",
        "bench.scaling.warmup=1",
        "bench.quality.models=[tiny,gpt_tiny]",
        "bench.quality.baseline=gpt_tiny",
        "bench.quality.budget_s=1",
        "bench.quality.eval_windows=4",
        "trainer.batch_size=2",
        "trainer.precision=fp32",
        *extra,
    ]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return to_plain(compose("bench", overrides=overrides))


def test_every_section_measures_and_reports(tmp_path: Path, text_file: Path) -> None:
    results = run_bench(_bench_cfg(text_file), tmp_path)

    assert set(results["peak"]) == {"fp32", "bf16"}
    assert all(r["gflops"] > 0 and r["size"] in (64, 128) for r in results["peak"].values())

    rows = results["throughput"]
    assert [(r["model"], r["precision"]) for r in rows] == [("tiny", "fp32"), ("gpt_tiny", "fp32")]
    for r in rows:
        assert r["bytes_per_s"] > 0 and r["batch_size"] == 2 and r["seq_len"] == 64
        # MFU is the model's FLOP rate over the measured peak, with FLOPs counted by the model itself
        assert math.isclose(r["mfu"], r["train_flops_per_byte"] * r["bytes_per_s"] / (results["peak"]["fp32"]["gflops"] * 1e9))

    scaling = results["scaling"]
    assert [(r["model"], r["seq_len"], r["batch_size"]) for r in scaling] == [
        ("tiny", 32, 4), ("tiny", 64, 2), ("gpt_tiny", 32, 4), ("gpt_tiny", 64, 2)
    ]
    assert all(r["cost_vs_ref"] == 1.0 for r in scaling if r["seq_len"] == 32)
    assert all(r["activation_mib"] > 0 for r in scaling)
    # activations grow with the bytes in a step, which is fixed here: same order of magnitude at both lengths
    tiny = [r["activation_mib"] for r in scaling if r["model"] == "tiny"]
    assert 0.5 < tiny[1] / tiny[0] < 2.0

    quality = results["quality"]
    assert [r["model"] for r in quality] == ["tiny", "gpt_tiny"]
    for r in quality:
        assert math.isfinite(r["val_bpb"]) and r["steps"] >= 1 and r["budget_s"] == 1
        assert (tmp_path / "quality" / r["model"] / "metrics.json").is_file()  # a normal run directory
    assert quality[1]["bpb_vs_baseline"] == 1.0
    assert math.isclose(quality[0]["bpb_vs_baseline"], quality[0]["val_bpb"] / quality[1]["val_bpb"])

    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quality"] == quality and str(text_file) in saved["data"]
    table = (tmp_path / "bench.md").read_text()
    assert table.strip() == markdown(results).strip()
    for heading in ("Matmul peak", "Training throughput", "Cost per byte", "Quality per time"):
        assert heading in table
    assert "| tiny | 0.21M | fp32 | 2×64 |" in table


def test_sections_are_selectable(tmp_path: Path, text_file: Path) -> None:
    results = run_bench(_bench_cfg(text_file, "bench.sections=[peak]"), tmp_path)
    assert "peak" in results and not {"throughput", "scaling", "quality"} & set(results)


def test_cli_prints_the_table_and_rejects_typos_in_one_line(tmp_path: Path, text_file: Path) -> None:
    common = [f"hydra.run.dir={tmp_path / 'run'}", "trainer.num_threads=1", "bench.peak.sizes=[64]",
              "bench.peak.seconds=0.02"]
    ok = run_cli("lfbyte.bench", "bench.sections=[peak]", *common, check=True)
    assert "| precision | GFLOP/s |" in ok.stdout and (tmp_path / "run" / "results.json").is_file()

    bad = run_cli("lfbyte.bench", "bench.sections=[throughput]", "bench.throughput.models=[smal]", *common)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith("error: bench: model=smal is not an option")
    bad = run_cli("lfbyte.bench", "bench.sections=[speed]", *common)
    assert bad.returncode == 2 and "bench.sections has unknown ['speed']" in bad.stderr
