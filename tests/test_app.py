"""The Gradio app end to end: a real server on a tiny trained run, driven by gradio_client and
(slow) by a headless Debian chromium through Playwright."""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from lfbyte.train import train

from .conftest import compose_cfg, headless_chromium, run_cli, serve_app, tiny_overrides

PROMPT = "Once upon a time"


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory: pytest.TempPathFactory, text_file: Path) -> Path:
    """``good``: a real tiny run; ``mismatch``: its checkpoint under a config it was not trained with
    (older, so ``good`` is the newest run)."""
    root = tmp_path_factory.mktemp("outputs")
    train(compose_cfg(*tiny_overrides(text_file)), root / "good")
    shutil.copytree(root / "good", root / "mismatch")
    cfg = yaml.safe_load((root / "mismatch" / "config.yaml").read_text())
    cfg["model"]["num_layers"] += 1
    (root / "mismatch" / "config.yaml").write_text(yaml.safe_dump(cfg))
    for ckpt in (root / "mismatch" / "checkpoints").iterdir():
        os.utime(ckpt, (1e9, 1e9))
    return root


@pytest.fixture(scope="module")
def app_url(runs_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m lfbyte.app`` with no run_dir (so it picks the newest run), until the module ends."""
    log_path = tmp_path_factory.mktemp("app") / "server.log"
    with serve_app(log_path, f"runs_root={runs_root}") as url:
        assert f"serving the newest run: {runs_root / 'good'}" in log_path.read_text()
        yield url


def _client(url: str):
    from gradio_client import Client

    return Client(url, verbose=False)


def test_client_gets_streamed_text(app_url: str) -> None:
    job = _client(app_url).submit(PROMPT, 60, 0.8, 0, 1.0, 7, api_name="/generate")
    final = job.result(timeout=120)
    assert final.startswith(PROMPT) and len(final) > len(PROMPT)
    partial = [out for out in job.outputs() if out]
    assert len(partial) >= 2 and all(final.startswith(p) for p in partial)  # it grew as bytes arrived


def test_panel_describes_the_run(app_url: str, runs_root: Path, text_file: Path) -> None:
    with urllib.request.urlopen(app_url + "config", timeout=30) as response:
        config = json.load(response)
    panel = next(c["props"]["value"] for c in config["components"] if c["props"].get("elem_id") == "run-panel")
    for text in ("A: `good` (newest run under", f"| path | `{runs_root / 'good'}` |",
                 "| checkpoint | `last.pth`, step 6 |", "| validation bits/byte |", "parameters",
                 f"| data | `{text_file}` |", "| precision | fp32 |", "| world size | 1 |", "| seq_len | 64 |",
                 "| mlp_ratio | 2.66667 |"):
        assert text in panel


def test_bad_requests_get_a_message_and_the_server_keeps_serving(app_url: str, runs_root: Path) -> None:
    from gradio_client.exceptions import AppError

    client = _client(app_url)
    with pytest.raises(AppError, match="at most 4096"):
        client.predict("x" * 5000, 20, 0.8, 0, 1.0, 1, api_name="/generate")
    with pytest.raises(AppError, match="2000"):  # the cap, whether Gradio or the app says it
        client.predict(PROMPT, 100_000, 0.8, 0, 1.0, 1, api_name="/generate")
    menu, panel = client.predict("mismatch", api_name="/select_run")  # runs are named relative to runs_root
    assert "Could not load" in panel and "does not match the model" in panel and menu == "good"
    text = client.predict(PROMPT, 20, 0.0, 0, 1.0, -1, api_name="/generate")
    assert text.startswith(PROMPT) and len(text) > len(PROMPT)


def test_a_bad_run_dir_at_startup_is_one_line(tmp_path: Path) -> None:
    for args, message in (
        ([f"run_dir={tmp_path / 'nope'}"], "does not exist"),
        ([f"runs_root={tmp_path}"], "no run with a checkpoint under"),
    ):
        proc = run_cli("lfbyte.app", *args, "num_threads=1", timeout=120)
        assert proc.returncode == 2 and message in proc.stderr
        assert proc.stderr.strip().startswith("error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_browser_types_a_prompt_and_sees_generated_text(app_url: str) -> None:
    with headless_chromium() as browser:
        page = browser.new_page()
        page.goto(app_url, wait_until="domcontentloaded")  # the app keeps a connection open: never "networkidle"
        page.locator("#run-panel").wait_for(timeout=60_000)
        assert "validation bits/byte" in page.locator("#run-panel").inner_text()
        page.locator("#prompt textarea").fill(PROMPT)
        page.locator("#submit").click()
        output = page.locator("#output-a textarea")
        page.wait_for_function(
            "([sel, n]) => { const el = document.querySelector(sel); return el && el.value.length > n; }",
            arg=["#output-a textarea", len(PROMPT)],
            timeout=120_000,
        )
        assert output.input_value().startswith(PROMPT)
