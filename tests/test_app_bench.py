"""The app as a bench: two runs side by side from one prompt and seed, Stop, the byte views, the Run
menu, the learning curves and the panel that compares two runs.

Pure functions first (views, curves, names), then a real server on two tiny trained runs (the
LFByteTransformer and the GPT baseline) and a sweep, driven by gradio_client; the slow test drives the
page in Debian chromium, as tests/test_app.py does.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from lfbyte.app.records import Record, curve_rows, curves, fmt, menu_entries, read_record
from lfbyte.app.sampling import escaped_view, plain_view
from lfbyte.config import CONF_DIR
from lfbyte.generate import generate_bytes, generate_text
from lfbyte.runs import load_run, runs_root_of
from lfbyte.train import train

from .conftest import compose_cfg, headless_chromium, serve_app, tiny_overrides

PROMPT = "Once upon a time"
CAP = int(yaml.safe_load((CONF_DIR / "app.yaml").read_text())["max_length_cap"])
LN2 = math.log(2.0)


# ------------------------------------------------------------------------------ the byte views


def unescape(text: str) -> bytes:
    """The bytes an escaped view was made from (the view is unambiguous, so this is exact)."""
    out, i = bytearray(), 0
    while i < len(text):
        if text.startswith("\\x", i):
            out.append(int(text[i + 2 : i + 4], 16))
            i += 4
        elif text.startswith("\\n\n", i):
            out += b"\n"
            i += 3
        elif text[i] == "\\":
            out += {"t": b"\t", "r": b"\r", "\\": b"\\"}[text[i + 1]]
            i += 2
        else:
            out += b" " if text[i] == "·" else text[i].encode()
            i += 1
    return bytes(out)


@given(st.binary(max_size=200) | st.text(max_size=60).map(lambda t: t.encode("utf-8", "surrogatepass")))
def test_the_escaped_view_gives_back_every_byte_and_the_plain_view_is_utf8(data: bytes) -> None:
    view = escaped_view(data)
    assert unescape(view) == data
    assert all(ch.isprintable() or ch == "\n" for ch in view)  # nothing invisible, nothing that moves the cursor
    assert plain_view(data) == data.decode("utf-8", errors="replace")
    for cut in range(len(data)):  # while streaming: each view so far is where the final one starts
        assert plain_view(data).startswith(plain_view(data[:cut], final=False))
        assert view.startswith(escaped_view(data[:cut], final=False))


def test_what_each_kind_of_byte_looks_like_escaped() -> None:
    assert escaped_view(b"a b\n\x00\t\\\xff\xe2\x80\x8b\xc2\xb7\xc3\xa9\xe2\x82") == (
        "a·b\\n\n\\x00\\t\\\\\\xff\\xe2\\x80\\x8b\\xc2\\xb7é\\xe2\\x82")  # zero-width space, "·", é, a cut-off €
    assert escaped_view(b"\xe2\x82", final=False) == ""  # may still become a character
    assert plain_view(b"\x00\xff") == "\x00\ufffd"


# ------------------------------------------------------------------------------ records, curves, names


def test_curves_follow_a_resumed_run_and_skip_what_is_not_a_number(tmp_path: Path) -> None:
    rows = [
        {"step": 1, "train_loss": 2.0 * LN2, "elapsed_s": 0.5},
        {"step": 2, "val_bpb": 1.9, "elapsed_s": 1.0},
        {"step": 3, "train_loss": 1.0, "elapsed_s": 1.5},  # lost: the run resumed from step 2
        {"step": 2, "event": "resume"},
        {"step": 3, "train_loss": "nan", "elapsed_s": 1.6},  # a non-finite loss, as the logger writes it
        {"step": 4, "val_bpb": 1.5},  # no elapsed_s: on the step plot only
    ]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "tr')
    rec = read_record(tmp_path)
    assert [(r["series"], r["step"], r["bits_per_byte"]) for r in curve_rows(rec, "A")] == [
        ("A train", 1, pytest.approx(2.0)), ("A val", 2, 1.9), ("A val", 4, 1.5)]
    by_step, by_time = curves([("A", rec)])
    drawn = by_step[by_step["bits_per_byte"].notna()]
    assert list(drawn["step"]) == [1, 2, 4] and list(by_time[by_time["bits_per_byte"].notna()]["step"]) == [1, 2]
    # every series has a row (an empty one when it has no points), so each keeps its colour in the plot
    assert set(by_step["series"]) == set(by_time["series"]) == {"A val", "A train", "B val", "B train"}


def test_values_are_shown_for_people() -> None:
    assert [fmt(v) for v in (2.6666666666666665, 4.0, 0.001, 1e-08, None, True, [0.9, 0.95], 64)] == [
        "2.66667", "4.0", "0.001", "1e-08", "null", "true", "[0.9, 0.95]", "64"]
    assert Record(Path("x"), final={"val_bpb": 2.5}).val_bpb == 2.5


# ------------------------------------------------------------------------------ a server on real runs


@pytest.fixture(scope="module")
def bench_root(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """``<tmp>/outputs/``: ``runs/lf`` (LFByteTransformer) and ``runs/gpt`` (the GPT baseline), 6 steps each;
    a two-job sweep ``multirun/sweep`` made of copies. Newest to oldest: runs/gpt, sweep job 1, job 0, runs/lf."""
    root = tmp_path_factory.mktemp("bench") / "outputs"
    train(compose_cfg(*tiny_overrides(text_file)), root / "runs" / "lf")
    train(compose_cfg(*tiny_overrides(text_file, model="gpt_tiny")), root / "runs" / "gpt")
    sweep = root / "multirun" / "sweep"
    for job, src in (("0", "lf"), ("1", "gpt")):
        shutil.copytree(root / "runs" / src, sweep / job)
    (sweep / "multirun.yaml").write_text("hydra:\n  mode: MULTIRUN\n")
    for run, t in (("runs/lf", 1e9), ("multirun/sweep/0", 2e9), ("multirun/sweep/1", 2e9 + 1), ("runs/gpt", 3e9)):
        for ckpt in (root / run / "checkpoints").iterdir():
            os.utime(ckpt, (t, t))
    return root


@pytest.fixture(scope="module")
def bench_url(bench_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    log = tmp_path_factory.mktemp("bench-app") / "server.log"
    # no runs_root: the menus list the runs in the outputs/ folder above run_dir, not the one where the
    # app was started (the repository's)
    with serve_app(log, f"run_dir={bench_root / 'runs' / 'lf'}") as url:
        yield url


@pytest.fixture(scope="module")
def runs(bench_root: Path) -> dict:
    return {name: load_run(bench_root / "runs" / name) for name in ("lf", "gpt")}


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def _pair(url: str):
    """A session with run A = runs/lf (served first) and run B = runs/gpt."""
    client = _client(url)
    menu, panel = client.predict("runs/gpt", api_name="/select_run_b")
    assert menu == "runs/gpt" and "Could not load" not in panel
    return client


def _sampled(stats: str) -> int:
    return int(re.search(r"\*\*([\d,]+) of [\d,]+ bytes\*\*", stats).group(1).replace(",", ""))


def test_both_runs_continue_the_prompt_with_one_seed(bench_url: str, runs: dict) -> None:
    client = _pair(bench_url)
    text_a, esc_a, stats_a, text_b, esc_b, stats_b = client.predict(PROMPT, 48, 0.8, 0, 1.0, 7, api_name="/sample")
    for run, text, esc, stats in ((runs["lf"], text_a, esc_a, stats_a), (runs["gpt"], text_b, esc_b, stats_b)):
        assert text == generate_text(run.model, PROMPT, 48, 0.8, None, None, 7)
        assert unescape(esc) == PROMPT.encode() + generate_bytes(run.model, PROMPT, 48, temperature=0.8, seed=7)
        assert "**48 of 48 bytes**" in stats and "seed 7" in stats and re.search(r"[\d,]+ bytes/s \(", stats)
        assert f"val {run.metrics['val_bpb']:.3f} bits/byte" in stats
    assert "LFByteTransformer" in stats_a and "`runs/lf`" in stats_a and "GPT" in stats_b and "`runs/gpt`" in stats_b

    # seed -1: one fresh seed, the same for both and shown, so the pair can be sampled again
    *_, stats_a, text_b, _, stats_b = outs = client.predict(PROMPT, 24, 0.8, 0, 1.0, -1, api_name="/sample")
    seed = int(re.search(r"seed (\d+)", stats_a).group(1))
    assert f"seed {seed}" in stats_b
    assert outs[0] == generate_text(runs["lf"].model, PROMPT, 24, 0.8, None, None, seed)
    assert text_b == generate_text(runs["gpt"].model, PROMPT, 24, 0.8, None, None, seed)


def test_the_panes_stream_at_the_same_pace(bench_url: str) -> None:
    job = _pair(bench_url).submit(PROMPT, 300, 0.8, 0, 1.0, 3, api_name="/sample")
    final = job.result(timeout=120)
    updates = job.outputs()
    assert len(updates) >= 3 and updates[0][0] == PROMPT and updates[0][3] == PROMPT  # the prompt before any byte
    for text_a, _, stats_a, text_b, _, stats_b in updates:
        assert final[0].startswith(text_a) and final[3].startswith(text_b)
        assert abs(_sampled(stats_a) - _sampled(stats_b)) <= 1  # the runs take turns, byte by byte


def test_stop_keeps_what_was_sampled_and_the_server_goes_on(bench_url: str, runs: dict) -> None:
    client = _pair(bench_url)
    job = client.submit(PROMPT, CAP, 0.8, 0, 1.0, 1, api_name="/sample")
    deadline = time.monotonic() + 120
    while not (job.outputs() and _sampled(job.outputs()[-1][2]) >= 20):
        assert time.monotonic() < deadline and not job.done(), job.status()
        time.sleep(0.05)
    assert job.cancel()  # what the Stop button does
    time.sleep(1)
    text_a, esc_a, stats_a, text_b, esc_b, stats_b = job.outputs()[-1]
    n = _sampled(stats_a)
    assert 20 <= n < CAP and f"of {CAP:,} bytes" in stats_a and abs(n - _sampled(stats_b)) <= 1
    for run, text, esc, m in ((runs["lf"], text_a, esc_a, n), (runs["gpt"], text_b, esc_b, _sampled(stats_b))):
        sampled = PROMPT.encode() + generate_bytes(run.model, PROMPT, m, temperature=0.8, seed=1)  # its first m bytes
        assert text == plain_view(sampled, final=False) and unescape(esc) == sampled[: len(unescape(esc))]
    assert job.status().code.name == "CANCELLED"
    # the generation ended: the next request is not queued behind the 2,000 bytes the stopped one asked for
    spent = n / float(re.search(r"([\d,]+) bytes/s", stats_a).group(1).replace(",", ""))  # run A's own seconds
    left = (CAP - n) * spent / n  # what run A alone still had to do, at its own pace
    t0 = time.monotonic()
    assert client.predict("again", 4, 0.0, 0, 1.0, 1, api_name="/sample")[0].startswith("again")
    assert time.monotonic() - t0 < left, (time.monotonic() - t0, left)


def test_limits_are_messages_not_clamps(bench_url: str) -> None:
    from gradio_client.exceptions import AppError

    client = _client(bench_url)
    with pytest.raises(AppError) as info:
        client.predict(PROMPT, CAP + 1, 0.8, 0, 1.0, 1, api_name="/sample")
    assert str(info.value) == (f"Max Length must be between 1 and {CAP} (app config max_length_cap); "
                               f"{CAP + 1} was asked for.")
    with pytest.raises(AppError, match="at most 4096"):
        client.predict("x" * 4097, 8, 0.8, 0, 1.0, 1, api_name="/sample")
    with pytest.raises(AppError, match="at most 4096"):
        client.predict("x" * 4097, 8, 0.8, 0, 1.0, 1, api_name="/generate")


def _config(url: str) -> dict:
    with urllib.request.urlopen(url + "config", timeout=30) as response:
        return json.load(response)


def _component(config: dict, elem_id: str) -> dict:
    return next(c["props"] for c in config["components"] if c["props"].get("elem_id") == elem_id)


def test_the_run_menu_names_runs_under_runs_root_newest_first_sweeps_together(bench_url: str, runs: dict,
                                                                              bench_root: Path) -> None:
    config = _config(bench_url)
    menu = _component(config, "run-a")
    bpb = {name: f"{json.loads((bench_root / 'runs' / name / 'metrics.json').read_text())['val_bpb']:.3f}"
           for name in ("lf", "gpt")}
    assert [tuple(c) for c in menu["choices"]] == [
        (f"runs/gpt — GPT · {bpb['gpt']} bits/byte", "runs/gpt"),
        (f"multirun/sweep ▸ 0 — LFByteTransformer · {bpb['lf']} bits/byte", "multirun/sweep/0"),
        (f"multirun/sweep ▸ 1 — GPT · {bpb['gpt']} bits/byte", "multirun/sweep/1"),
        (f"runs/lf — LFByteTransformer · {bpb['lf']} bits/byte", "runs/lf"),
    ]
    assert menu["value"] == "runs/lf"  # the run given at start, by the same name
    assert [tuple(c) for c in _component(config, "run-b")["choices"]] == [("none", ""), *map(tuple, menu["choices"])]
    assert _component(config, "rescan")["value"] == "↻ Rescan runs"
    assert runs_root_of(bench_root / "multirun" / "sweep" / "0") == bench_root
    assert runs_root_of("/data/runs/x") == Path("/data/runs")  # no outputs/ above: the run's own folder
    # outside runs_root, a run keeps its absolute path and says so
    outside = menu_entries(bench_root / "multirun", str(bench_root / "runs" / "gpt"))
    assert outside[0].value == str(bench_root / "runs" / "gpt") and "(outside " in outside[0].label
    assert [e.value for e in outside[1:]] == ["sweep/0", "sweep/1"]


def test_the_curves_are_the_runs_metrics(bench_url: str, bench_root: Path) -> None:
    client = _pair(bench_url)
    by_step, by_time = client.predict(api_name="/curves")
    for name, run in (("A", "lf"), ("B", "gpt")):
        rows = [json.loads(line) for line in (bench_root / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        val = [(r["step"], pytest.approx(r["val_bpb"])) for r in rows if "val_bpb" in r]
        train_ = [(r["step"], pytest.approx(r["train_loss"] / LN2)) for r in rows if "train_loss" in r]
        timed = [(pytest.approx(r["elapsed_s"]), pytest.approx(r["val_bpb"])) for r in rows if "val_bpb" in r]
        assert len(val) == 2 and len(train_) == 6
        points = {s: [(d[0], d[2]) for d in by_step["data"] if d[3] == s and d[2] is not None]
                  for s in (f"{name} val", f"{name} train")}
        assert points == {f"{name} val": val, f"{name} train": train_}
        assert [(d[1], d[2]) for d in by_time["data"] if d[3] == f"{name} val" and d[2] is not None] == timed


def test_the_panel_says_how_two_runs_differ(bench_url: str, text_file: Path) -> None:
    client = _client(bench_url)
    _, panel = client.predict("runs/gpt", api_name="/select_run_b")
    for text in ("A: `runs/lf` · B: `runs/gpt`", "| model | LFByteTransformer, 213,396 parameters | GPT, ",
                 f"| data | `{text_file}` | `{text_file}` |", "| precision | fp32 | fp32 |",
                 "| world size | 1 | 1 |", "| training | completed at step 6 | completed at step 6 |",
                 "**Config differences** (", "| `model.arch` | lfbyte | gpt |", "| `model.num_layers` | 2 | 4 |",
                 "| `model.adapt_dim` | 16 | — |", "| **mlp_ratio** | **2.66667** | **4.0** |"):
        assert text in panel, text
    assert re.search(r"\| started \| 20\d\d-\d\d-\d\d \d\d:\d\d:\d\d", panel)
    assert re.search(r"\| training bytes/s \| [\d,]+ \| [\d,]+ \|", panel)
    _, panel = client.predict("", api_name="/select_run_b")  # none: one run again
    assert "B:" not in panel and "Config differences" not in panel


# ------------------------------------------------------------------------------ in the browser


@pytest.mark.slow
def test_browser_side_by_side_curves_stop_and_escapes(bench_url: str, runs: dict, bench_root: Path) -> None:
    with headless_chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(bench_url, wait_until="domcontentloaded")  # the app keeps a connection open: never "networkidle"
        page.locator("#run-panel").wait_for(timeout=60_000)
        _limits_before_submit(page)
        _choose_run_b(page, "runs/gpt")
        _curves_hold_every_point(page, bench_root)
        _side_by_side(page, runs)
        _stop_and_escapes(page)


def _in_a_textarea(text: str) -> str:
    """A browser's textarea gives back a carriage return as a line feed (the escaped view shows it as \\r)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _value(page, selector: str) -> str:
    return page.locator(selector).input_value()


def _wait_text(page, selector: str, text: str, timeout: float = 60_000) -> None:
    page.wait_for_function("([sel, t]) => { const el = document.querySelector(sel); "
                           "return el && el.innerText.includes(t); }", arg=[selector, text], timeout=timeout)


def _limits_before_submit(page) -> None:
    _wait_text(page, "#limits", "0 / 4,096 bytes in the prompt")
    page.locator("#prompt textarea").fill("é" * 2049)  # 4,098 bytes: the count is bytes, not characters
    _wait_text(page, "#limits", "4,098 / 4,096 bytes in the prompt: over the limit")
    page.locator("#prompt textarea").fill(PROMPT)
    _wait_text(page, "#limits", "16 / 4,096 bytes in the prompt")
    box = page.locator("#max-length input")
    box.fill("5000")
    box.press("Tab")
    _wait_text(page, "#limits", "Max Length 5000: a whole number from 1 to 2,000")
    page.locator("#submit").click()  # refused with a message, not clamped
    page.get_by_text(f"Max Length must be between 1 and {CAP}").first.wait_for(timeout=60_000)
    assert _value(page, "#max-length input") == "5000" and _value(page, "#output-a textarea") == ""


def _choose_run_b(page, name: str) -> None:
    page.locator("#run-b input").click()
    page.locator("ul[role=listbox] li", has_text=f"{name} —").first.click()
    _wait_text(page, "#run-panel", f"B: {name}")
    _wait_text(page, "#stats-b", name)


def _curves_hold_every_point(page, bench_root: Path) -> None:
    """Each run's val and train curves are drawn, one vertex per metrics.jsonl row, in its colour."""
    from lfbyte.app.records import COLORS

    expected = {}
    for pane, run in (("A", "lf"), ("B", "gpt")):
        rows = [json.loads(line) for line in (bench_root / "runs" / run / "metrics.jsonl").read_text().splitlines()]
        expected[COLORS[f"{pane} val"]] = sum("val_bpb" in r for r in rows)
        expected[COLORS[f"{pane} train"]] = sum("train_loss" in r for r in rows)
    script = ("(sel) => Array.from(document.querySelectorAll(sel)).map((p) => "
              "[p.getAttribute('stroke'), (p.getAttribute('d') || '').split(/[ML]/).length - 1])")
    drawn: dict = {}
    deadline = time.monotonic() + 60
    while drawn != expected and time.monotonic() < deadline:
        time.sleep(0.2)
        drawn = dict(page.evaluate(script, "#curve-step .mark-line path"))
    assert drawn == expected
    legend = page.locator("#curve-step .role-legend text").all_text_contents()
    assert {"A val", "A train", "B val", "B train"} <= set(legend)


def _side_by_side(page, runs: dict) -> None:
    page.locator("#max-length input").fill("40")
    page.locator("#seed input").fill("5")
    page.locator("#submit").click()
    for pane in ("a", "b"):
        _wait_text(page, f"#stats-{pane}", "40 of 40 bytes")
    for pane, run in (("a", "lf"), ("b", "gpt")):
        expected = generate_text(runs[run].model, PROMPT, 40, 0.8, None, None, 5)
        assert _value(page, f"#output-{pane} textarea") == _in_a_textarea(expected)


def _stop_and_escapes(page) -> None:
    page.locator("#max-length input").fill(str(CAP))
    page.locator("#submit").click()
    # wait on the stats, not the text: the panes still hold the previous 40-byte answer, which would pass a
    # length check before this run has sampled anything (Stop then lands on "0 of 2,000 bytes")
    page.wait_for_function("([cap, n]) => ['a', 'b'].every((p) => { const m = document.querySelector("
                           "`#stats-${p}`).innerText.match(/([\\d,]+) of ([\\d,]+) bytes/); "
                           "return m && m[2] === cap && Number(m[1].replaceAll(',', '')) >= n; })",
                           arg=[f"{CAP:,}", 20], timeout=60_000)
    page.locator("#stop").click()
    time.sleep(0.5)
    kept = [_value(page, f"#output-{p} textarea") for p in ("a", "b")]
    time.sleep(2)  # nothing arrives after Stop, and nothing is taken away
    assert [_value(page, f"#output-{p} textarea") for p in ("a", "b")] == kept
    stats = page.locator("#stats-a").inner_text()
    n = int(re.search(r"([\d,]+) of 2,000 bytes", stats).group(1).replace(",", ""))
    assert 20 <= n < CAP

    assert page.locator("#output-a").is_visible() and not page.locator("#escaped-a").is_visible()
    page.locator("#escapes input").check()
    page.locator("#escaped-a").wait_for(state="visible", timeout=10_000)
    assert not page.locator("#output-a").is_visible() and not page.locator("#output-b").is_visible()
    escaped = [_value(page, f"#escaped-{p} textarea") for p in ("a", "b")]
    for text, esc in zip(kept, escaped, strict=True):  # the same bytes, shown the other way, without sampling again
        assert esc.startswith("Once·upon·a·time")
        assert _in_a_textarea(unescape(esc).decode("utf-8", "replace")) == text
    page.locator("#escapes input").uncheck()
    page.locator("#output-a").wait_for(state="visible", timeout=10_000)
    assert [_value(page, f"#output-{p} textarea") for p in ("a", "b")] == kept
