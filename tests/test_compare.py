"""Comparisons that hold up: FLOP counts checked against torch's own counter, seed statistics,
and the report's seed groups, best-per-model lines and significance verdicts."""

from __future__ import annotations

import csv
import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from lfbyte.config import model_preset
from lfbyte.model import build_model
from lfbyte.report import main as report_main
from lfbyte.report import report
from lfbyte.stats import betainc, summarize, t_two_sided_p, welch

aten = torch.ops.aten


# ------------------------------------------------------------------ FLOPs
def _grouped_mm_flops(a_shape: list[int], b_shape: list[int], *args: object, **kwargs: object) -> int:
    """MoE dispatch: (tokens, k) @ per-expert (k, n) over sorted groups = 2·tokens·k·n, as computed."""
    return 2 * a_shape[0] * a_shape[1] * b_shape[-1]


def _causal_sdpa_flops(q_shape: list[int], k_shape: list[int], v_shape: list[int], dropout_p: float = 0.0,
                       is_causal: bool = False, *args: object, **kwargs: object) -> int:
    """q·kᵀ and p·v over the pairs a causal kernel computes (s ≤ t): b·h·T(T+1)/2 pairs, 4·dh each."""
    b, h, t, dh = q_shape
    assert is_causal and k_shape[2] == t, "the GPT's training forward is plain causal self-attention"
    return 4 * b * h * dh * t * (t + 1) // 2


def _counted_flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    mapping = {aten._grouped_mm: _grouped_mm_flops,
               aten._scaled_dot_product_flash_attention_for_cpu: _causal_sdpa_flops}
    x = torch.randint(0, 256, (2, seq_len))
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(x)
    return counter.get_total_flops() / x.numel()


MODELS = [  # every preset, plus the ablations and a length that is no multiple of the chunk
    *((name, {}) for name in ("tiny", "mini", "small", "gpt_tiny", "gpt_mini", "gpt_small")),
    ("mini", {"adapt_rank": 0}), ("mini", {"num_experts": 1}), ("mini", {"data_decay": False}),
    ("mini", {"conv_size": 1}), ("mini", {"seq_len": 100}), ("gpt_mini", {"seq_len": 100}),
    ("tiny", {"num_experts": 1, "short_conv": 4, "chunk_size": 64}),  # recipe_2min: one chunk, short convolution
    ("tiny", {"seq_len": 40, "chunk_size": 64}),  # a context shorter than one chunk is not padded to it
    ("tiny", {"num_experts": 1, "short_conv": 4, "seq_len": 256, "chunk_size": 64, "channel_decay": True}),
    ("tiny", {"seq_len": 40, "chunk_size": 64, "channel_decay": True}),  # one chunk: no state to read in
    ("tiny", {"num_experts": 1, "short_conv": 4, "seq_len": 256, "chunk_size": 64, "delta_rule": True}),
    ("tiny", {"seq_len": 40, "chunk_size": 64, "delta_rule": True}),  # one unpadded chunk
    ("mini", {"seq_len": 100, "delta_rule": True}),  # padded chunks
    ("tiny", {"num_experts": 1, "short_conv": 4, "seq_len": 256, "chunk_size": 32, "delta_rule": [1]}),  # a hybrid
]


@pytest.mark.parametrize(("preset", "extra"), MODELS, ids=[f"{p}-{e}" if e else p for p, e in MODELS])
def test_flops_per_token_matches_torch_flop_counter(preset: str, extra: dict) -> None:
    torch.manual_seed(0)
    cfg = {**model_preset(preset), **extra}
    model = build_model(cfg).eval()
    counted = _counted_flops_per_token(model, cfg["seq_len"])
    assert model.flops_per_token(cfg["seq_len"]) == pytest.approx(counted, rel=0.05)


def test_gpt_attention_flops_are_causal_not_square() -> None:
    model = build_model(model_preset("gpt_mini"))
    d, layers = model.config.embed_dim, model.config.num_layers
    # doubling the context adds the causal attention of the extra positions only: 2·d·ΔT per layer
    assert model.flops_per_token(256) - model.flops_per_token(128) == pytest.approx(layers * 2 * d * 128)


# ------------------------------------------------------------------ statistics
def test_student_t_tail_matches_tables() -> None:
    assert t_two_sided_p(2.0, 5) == pytest.approx(0.101939, abs=1e-6)  # t-table, 5 dof
    assert t_two_sided_p(12.7062, 1) == pytest.approx(0.05, abs=1e-6)  # 97.5 % quantile, 1 dof
    assert t_two_sided_p(1.95996, 1e6) == pytest.approx(0.05, abs=1e-5)  # the normal limit
    assert t_two_sided_p(0.0, 3) == pytest.approx(1.0)
    assert betainc(2.0, 3.0, 0.4) == pytest.approx(0.5248, abs=1e-4)  # I_0.4(2,3) = 1 - 0.6^4 - 4·0.4·0.6^3


def test_welch_matches_scipy_when_available() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(0)
    for _ in range(50):
        a = [rng.gauss(0, 1) for _ in range(rng.randint(2, 6))]
        b = [rng.gauss(rng.random(), rng.random() * 3 + 0.1) for _ in range(rng.randint(2, 6))]
        ours, ref = welch(a, b), scipy_stats.ttest_ind(a, b, equal_var=False)
        assert ours is not None
        assert ours.t == pytest.approx(ref.statistic, rel=1e-9) and ours.p == pytest.approx(ref.pvalue, abs=1e-9)


def test_summary_and_welch_edge_cases() -> None:
    s = summarize([2.0, 4.0, 6.0])
    assert (s.n, s.mean, s.std, s.min, s.max) == (3, 4.0, 2.0, 2.0, 6.0)
    assert summarize([3.0]).std == 0.0
    assert welch([1.0], [1.0, 2.0]) is None  # one seed says nothing about the spread
    same = welch([1.0, 1.0], [1.0, 1.0])
    assert same is not None and same.p == 1.0
    apart = welch([1.0, 1.0], [2.0, 2.0])
    assert apart is not None and apart.p == 0.0 and math.isinf(apart.t)


# ------------------------------------------------------------------ report
def _job(sweep: Path, name: str, overrides: dict[str, object], bpb: float, step: int = 100) -> None:
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"{k}={v}" for k, v in overrides.items()]))
    curve = [{"step": s, "val_bpb": bpb + 2.0 * (1 - s / step), "elapsed_s": s * 0.5, "train_flops": s * 1e9}
             for s in (step // 4, step // 2, step)]
    (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    (job / "metrics.json").write_text(json.dumps({"status": "completed", "val_bpb": bpb, "step": step,
                                                  "elapsed_s": step * 0.5, "train_flops": step * 1e9,
                                                  "bytes_per_s": 1000.0, "parameters": 1000}))


@pytest.fixture
def tuned_sweep(tmp_path: Path) -> Path:
    """Two models x two learning rates x three seeds, with known final values."""
    sweep = tmp_path / "tune"
    values = {("lf", "1e-3"): [2.00, 2.02, 2.04], ("lf", "3e-3"): [2.01, 2.03, 2.05],  # lr within the noise
              ("gpt", "1e-3"): [2.50, 2.52, 2.54], ("gpt", "3e-3"): [2.30, 2.31, 2.32]}  # models far apart
    n = 0
    for (model, lr), bpbs in values.items():
        for seed, bpb in enumerate(bpbs, start=1):
            _job(sweep, f"{n}_{model}", {"model": model, "optimizer.lr": lr, "seed": seed}, bpb)
            n += 1
    return sweep


def test_report_groups_seeds_and_names_the_best_setting_per_model(tuned_sweep: Path) -> None:
    report(tuned_sweep)
    with open(tuned_sweep / "report_groups.csv") as f:
        groups = {(r["model"], r["optimizer.lr"]): r for r in csv.DictReader(f)}
    assert set(groups) == {("lf", "1e-3"), ("lf", "3e-3"), ("gpt", "1e-3"), ("gpt", "3e-3")}
    lf = groups[("lf", "1e-3")]
    assert (lf["n"], lf["seeds"]) == ("3", "1,2,3")
    assert float(lf["mean"]) == pytest.approx(2.02) and float(lf["std"]) == pytest.approx(0.02)
    assert (float(lf["min"]), float(lf["max"])) == (pytest.approx(2.00), pytest.approx(2.04))
    md = (tuned_sweep / "report.md").read_text()
    assert "| lf | 1e-3 | 3 | 2.0200 ± 0.0200 | 2.0000 | 2.0400 |" in md
    assert "Best for model=lf: lr=1e-3 — 2.0200 ± 0.0200 val bits/byte (n=3)." in md
    assert "Best for model=gpt: lr=3e-3 — 2.3100 ± 0.0100 val bits/byte (n=3)." in md
    lines = {line.split(" | ")[0].lstrip("| ") + ":" + line.split(" | ")[1]: line for line in md.splitlines()
             if line.startswith("| best")}
    # the two models' best settings differ far beyond the seed spread; lf's two learning rates do not
    assert "beyond the seed spread" in lines["best per model:model=lf lr=1e-3"]
    assert "0.874×" in lines["best per model:model=lf lr=1e-3"]
    assert "within the seed noise" in lines["best vs runner-up:model=lf lr=1e-3"]
    assert "beyond the seed spread" in lines["best vs runner-up:model=gpt lr=3e-3"]
    assert (tuned_sweep / "report.png").stat().st_size > 0


def test_report_puts_budgeted_jobs_at_equal_steps(tmp_path: Path) -> None:
    # a wall-clock budget: each job ends at its own step; the column reads every job of a model at the last
    # evaluation they all reached (lf: 200, gpt: 100), the final values stay what they were
    sweep = tmp_path / "budget"
    ends = {("lf", "1e-3"): [260, 230], ("lf", "3e-3"): [210, 250], ("gpt", "1e-3"): [150, 120]}
    for i, ((model, lr), steps) in enumerate(ends.items()):
        for seed, end in enumerate(steps, start=1):
            job = f"{i}{seed}"
            _job(sweep, job, {"model": model, "optimizer.lr": lr, "seed": seed}, 2.0 + i / 10 + seed / 100, end)
            curve = [{"step": s, "val_bpb": 3.0 + i / 10 + seed / 100 - s / 1000} for s in range(50, end, 50)]
            curve.append({"step": end, "val_bpb": 2.0 + i / 10 + seed / 100})
            (sweep / job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
    report(sweep, plot=False)
    with open(sweep / "report_groups.csv") as f:
        rows = {(r["model"], r["optimizer.lr"]): r for r in csv.DictReader(f)}
    assert [rows[k]["equal_step"] for k in ends] == ["200", "200", "100"]
    lf = rows[("lf", "1e-3")]
    assert float(lf["equal_step_mean"]) == pytest.approx(3.0 + 0.015 - 0.2) and lf["equal_step_n"] == "2"
    assert float(lf["mean"]) == pytest.approx(2.015)  # the final values are untouched
    md = (sweep / "report.md").read_text()
    assert "| gpt | 1e-3 | 2 | 2.2150 ± 0.0071 | 2.2100 | 2.2200 | 3.1150 ± 0.0071 (step 100) |" in md
    # jobs that all ended at one step (a step budget) get no such column
    for job in sweep.iterdir():
        if job.is_dir():
            curve = [{"step": s, "val_bpb": 2.5 - s / 1000} for s in (100, 200)]
            (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in curve))
            metrics = json.loads((job / "metrics.json").read_text())
            (job / "metrics.json").write_text(json.dumps({**metrics, "step": 200}))
    report(sweep, plot=False)
    assert "at equal steps" not in (sweep / "report.md").read_text()
    assert "equal_step" not in (sweep / "report_groups.csv").read_text()


def test_report_tests_every_setting_against_a_baseline(tmp_path: Path) -> None:
    sweep = tmp_path / "ablate"
    for i, (ablation, bpbs) in enumerate({"none": [2.0, 2.01, 2.02], "no_moe": [2.0, 2.02, 2.04],
                                          "no_pos": [2.2, 2.21, 2.22]}.items()):
        for seed, bpb in enumerate(bpbs, start=1):
            _job(sweep, f"{i}{seed}", {"+ablation": ablation, "seed": seed}, bpb)
    assert report_main([str(sweep), "--vs", "ablation=none", "--no-plot"]) == 0
    md = (sweep / "report.md").read_text()
    vs = [line for line in md.splitlines() if line.startswith("| vs ablation=none")]
    assert len(vs) == 2
    assert "ablation=no_moe" in vs[0] and "within the seed noise" in vs[0]
    assert "ablation=no_pos" in vs[1] and "beyond the seed spread" in vs[1] and "+0.2000" in vs[1]


def test_report_single_seed_comparison_says_it_cannot_judge(tmp_path: Path) -> None:
    sweep = tmp_path / "s"
    _job(sweep, "0", {"model": "a", "seed": 1}, 2.0)
    _job(sweep, "1", {"model": "b", "seed": 2}, 2.5)
    report(sweep, plot=False)
    assert "n/a: needs ≥ 2 seeds each (n=1 vs 1)" in (sweep / "report.md").read_text()


def test_report_of_a_queue_names_the_best_folder(tmp_path: Path) -> None:
    # experiments/run_queue.sh writes <sweep>/<model>/seedN: folders without Hydra job numbers
    sweep = tmp_path / "q"
    for model, bpbs in {"lf": [2.1, 2.0], "gpt": [2.3, 2.2]}.items():
        for seed, bpb in enumerate(bpbs, start=3):
            _job(sweep, f"{model}/seed{seed}", {"model": model, "seed": seed}, bpb)
    report(sweep, plot=False)
    assert "Best: `lf/seed4` (model=lf, seed=4) at 2.0000 val bits/byte." in (sweep / "report.md").read_text()


def test_report_rejects_an_unknown_baseline(tuned_sweep: Path, capsys: pytest.CaptureFixture) -> None:
    assert report_main([str(tuned_sweep), "--vs", "model=nope", "--no-plot"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --vs model=nope matches no group")
    assert report_main([str(tuned_sweep), "--vs", "nokey", "--no-plot"]) == 2
    assert "must be KEY=VALUE" in capsys.readouterr().err


def test_report_names_only_the_overrides_the_best_job_set(tmp_path: Path) -> None:
    # a screen's jobs set different keys; the best one's description must not list the others as "key="
    sweep = tmp_path / "screen"
    _job(sweep, "base/seed1", {"experiment": "r", "seed": 1}, 2.1)
    _job(sweep, "lr/seed1", {"experiment": "r", "optimizer.lr": 5e-3, "seed": 1}, 2.0)
    _job(sweep, "drop/seed1", {"experiment": "r", "model.dropout": 0.1, "seed": 1}, 2.2)
    report(sweep, plot=False)
    best = next(line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("Best:"))
    assert best == "Best: `lr/seed1` (optimizer.lr=0.005) at 2.0000 val bits/byte.", best
    # seed groups: the GPT group did not set model.embed_dim, so its "Best for" line names no setting
    sweep = tmp_path / "pairs"
    for seed in (1, 2):
        _job(sweep, f"lf/seed{seed}", {"experiment": "lf", "model.embed_dim": 96, "seed": seed}, 2.0 + seed / 100)
        _job(sweep, f"gpt/seed{seed}", {"experiment": "gpt", "seed": seed}, 2.1 + seed / 100)
    report(sweep, plot=False)
    lines = [line for line in (sweep / "report.md").read_text().splitlines() if line.startswith("Best for")]
    assert sorted(lines) == ["Best for experiment=gpt: 2.1150 ± 0.0071 val bits/byte (n=2).",
                             "Best for experiment=lf: embed_dim=96 — 2.0150 ± 0.0071 val bits/byte (n=2)."], lines


# ------------------------------------------------------------------ the same bytes at every context
def _same_bytes_module() -> object:
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "experiments" / "compare" / "eval_same_bytes.py"
    spec = importlib.util.spec_from_file_location("eval_same_bytes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny_run(root: Path, arch: str, seq_len: int, corpus: Path) -> Path:
    from lfbyte.checkpoint import save_checkpoint

    cfg = {"model": {**model_preset("gpt_tiny" if arch == "gpt" else "tiny"), "seq_len": seq_len, "embed_dim": 16},
           "data": {"path": str(corpus), "val_fraction": 0.1}}
    torch.manual_seed(0)
    run = root / f"{arch}{seq_len}"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    save_checkpoint({"model_state_dict": build_model(cfg["model"]).state_dict(), "config": cfg,
                     "trainer_state": {"step": 1}}, run / "checkpoints", step=1, keep_last=1)
    return run


def test_eval_same_bytes_scores_one_set_of_bytes_whatever_the_context(tmp_path: Path, text_file: Path) -> None:
    from lfbyte.data import load_corpus, split_corpus
    from lfbyte.runs import load_run

    same = _same_bytes_module()
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(text_file.read_bytes()[:20_000])
    torch.set_num_threads(1)
    scores = {}
    for arch, seq_len in (("gpt", 16), ("lf", 16), ("lf", 48)):
        run = _tiny_run(tmp_path, arch, seq_len, corpus)
        scores[arch, seq_len] = same.score(run, 16, 64, 8)
    assert {n for _, n, _ in scores.values()} == {scores["gpt", 16][1]} and scores["gpt", 16][1] > 1000
    assert [s for _, _, s in scores.values()] == [16, 16, 48]
    # at seq_len == block every position of each window is scored: the trainer's own loss on those windows
    run = load_run(tmp_path / "lf16", device="cpu")
    data = load_corpus(str(corpus))
    _, val = split_corpus(data, 0.1, 16)
    firsts = np.arange(val.lo + 64, val.hi - 16 + 1, 16)
    tok = torch.from_numpy(data.tokens(firsts[:, None] - 1 + np.arange(17)))
    with torch.no_grad():
        direct = float(run.model.eval()(tok[:, :-1], tok[:, 1:]).loss) / math.log(2)
    assert scores["lf", 16][0] == pytest.approx(direct, rel=1e-5)
    with pytest.raises(SystemExit, match="seq_len 48 needs"):
        same.score(tmp_path / "lf48", 16, 16, 8)  # 32 bytes of context do not fit before byte 16


def test_eval_windows_score_the_same_bytes_at_every_context(text_file: Path) -> None:
    from lfbyte.data import eval_windows, load_corpus, split_corpus

    data = load_corpus(str(text_file))
    _, val = split_corpus(data, 0.1, 128)
    for seq_len in (16, 48):  # scored == seq_len: the windows every run was scored on before eval_scored, bit for bit
        before = val.lo + np.linspace(0, len(val) - seq_len - 1, 50).astype(np.int64)
        assert (eval_windows(val, seq_len, 50, seq_len) == before).all()
        assert (eval_windows(val, seq_len, 50) == before).all()
    scored_bytes = {}
    for seq_len in (16, 48, 128):
        starts = eval_windows(val, seq_len, 50, scored=16)
        assert starts.max() + seq_len + 1 <= val.hi
        firsts = starts + 1 + seq_len - 16  # the first scored target of each window
        assert firsts.min() >= val.lo and len(firsts) == 50 and np.diff(firsts).min() >= 16  # disjoint blocks
        scored_bytes[seq_len] = firsts.tolist()
    assert scored_bytes[16] == scored_bytes[48] == scored_bytes[128]


def test_trainer_scores_only_the_last_eval_scored_bytes(tmp_path: Path, text_file: Path) -> None:
    from lfbyte.data import eval_windows, load_corpus, split_corpus
    from lfbyte.runs import load_run
    from lfbyte.train import train

    from .conftest import compose_cfg, tiny_overrides

    run_dir = tmp_path / "run"
    result = train(compose_cfg(*tiny_overrides(text_file, **{
        "model.seq_len": 48, "trainer.eval_scored": 16, "trainer.eval_windows": 12, "trainer.max_steps": 2,
        "trainer.eval_interval": 2, "trainer.sample_length": 0})), run_dir)
    assert result["status"] == "completed"
    run = load_run(run_dir, device="cpu")
    data = load_corpus(str(text_file))
    _, val = split_corpus(data, float(run.config["data"]["val_fraction"]), 48)
    starts = eval_windows(val, 48, 12, scored=16)
    tok = torch.from_numpy(data.tokens(starts[:, None] + np.arange(49)))
    with torch.no_grad():
        logits = run.model.eval()(tok[:, :-1]).logits[:, -16:]
    direct = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), tok[:, -16:].flatten()).item()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["val_loss"] == pytest.approx(direct, rel=1e-5)


def test_report_warns_when_compared_runs_were_scored_on_different_bytes(tmp_path: Path) -> None:
    def sweep(name: str, lf_cfg: dict, gpt_cfg: dict) -> str:
        root = tmp_path / name
        for model, cfg in (("lf", lf_cfg), ("gpt", gpt_cfg)):
            for seed, bpb in enumerate([2.0, 2.01] if model == "lf" else [2.2, 2.21], start=1):
                _job(root, f"{model}/seed{seed}", {"model": model, "seed": seed}, bpb)
                (root / model / f"seed{seed}" / "config.yaml").write_text(yaml.safe_dump(cfg))
        report(root, plot=False)
        return next(line for line in (root / "report.md").read_text().splitlines()
                    if line.startswith("| best per model"))

    own = sweep("own", {"model": {"seq_len": 128}, "trainer": {"eval_windows": 256, "eval_scored": None}},
                {"model": {"seq_len": 64}, "trainer": {"eval_windows": 256}})  # an older run: no eval_scored
    assert "not the same validation bytes" in own and "(64, 256) vs (128, 256)" in own
    (tmp_path / "own" / "gpt" / "seed1" / "config.yaml").write_text("trainer: [1, 2]\n")  # unreadable: no claim
    report(tmp_path / "own", plot=False)  # from its other seed the gpt group is still known to score (64, 256)
    assert "(64, 256) vs (128, 256)" in (tmp_path / "own" / "report.md").read_text()
    (tmp_path / "own" / "gpt" / "seed2" / "config.yaml").write_text("trainer: [1, 2]\n")
    report(tmp_path / "own", plot=False)  # nothing readable on one side: no warning claimed either way
    assert "not the same validation bytes" not in (tmp_path / "own" / "report.md").read_text()
    same = sweep("same", {"model": {"seq_len": 128}, "trainer": {"eval_windows": 256, "eval_scored": 64}},
                 {"model": {"seq_len": 64}, "trainer": {"eval_windows": 256, "eval_scored": None}})
    assert "beyond the seed spread" in same and "not the same" not in same
