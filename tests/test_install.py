"""Installed like a library: build the wheel, install it into a fresh virtual environment (not editable), and
from a folder outside the repository train, generate, sweep, report and use a model config of the user's own.

The path a user takes (``pip install <wheel>``); slow: the fresh environment installs torch (the local CPU
wheel) and the other dependencies.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, cli_env


def _run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel (and only the wheel's declared dependencies) installed; returns its python."""
    root = tmp_path_factory.mktemp("install")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    wheels = root / "wheels"
    proc = _run([sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--no-build-isolation", "-q",
                 "-w", str(wheels)], cwd=root, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [wheel] = wheels.glob("lfbyte-*.whl")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True)
    python = root / "venv" / "bin" / "python"
    torch_pin = f"torch=={__import__('torch').__version__.split('+')[0]}"  # the CPU build this machine has
    for args in ([torch_pin], [str(wheel)]):
        proc = _run([str(python), "-m", "pip", "install", "-q", *args], cwd=root, env=env, timeout=1800)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return python


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's own project folder: its own model config, nothing of the repository's."""
    folder = tmp_path_factory.mktemp("my-project")
    (folder / "conf" / "model").mkdir(parents=True)
    (folder / "conf" / "model" / "my_model.yaml").write_text(
        "# composes with lfbyte's own presets: tiny, with a wider embedding\n"
        "defaults:\n  - tiny\n\nembed_dim: 48\nnum_heads: 3\n")
    return folder


def _env(project: Path) -> dict[str, str]:
    env = {k: v for k, v in cli_env().items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["LFBYTE_CACHE"] = str(project / ".cache")
    return env


def test_python_m_lfbyte_lists_the_commands_and_its_version(capsys: pytest.CaptureFixture) -> None:
    from lfbyte import __version__
    from lfbyte.__main__ import COMMANDS, main

    assert main(["--version"]) == 0 and capsys.readouterr().out == f"lfbyte {__version__}\n"
    assert main([]) == 0
    out = capsys.readouterr().out
    assert all(f"python -m lfbyte.{name} " in out for name in COMMANDS)
    assert main(["train"]) == 2 and capsys.readouterr().err.startswith("error: python -m lfbyte takes no command")


@pytest.mark.slow
def test_the_installed_package_runs_from_the_users_own_folder(installed: Path, project: Path) -> None:
    env, py = _env(project), str(installed)
    proc = _run([py, "-c", "import lfbyte, lfbyte.config as c; print(lfbyte.__file__); print(c.CONF_DIR)"],
                cwd=project, env=env)
    package_file, conf_dir = proc.stdout.split()
    assert str(REPO) not in package_file and Path(conf_dir) == Path(package_file).parent / "conf"

    proc = _run([py, "-m", "lfbyte", "--version"], cwd=project, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("lfbyte ")
    proc = _run([py, "-m", "lfbyte"], cwd=project, env=env)
    assert proc.returncode == 0 and "python -m lfbyte.train" in proc.stdout and "python -m lfbyte.report" in proc.stdout

    tiny = ["trainer.max_steps=3", "trainer.epochs=null", "trainer.batch_size=2", "trainer.eval_interval=3",
            "trainer.eval_windows=4", "trainer.sample_length=8", "trainer.num_threads=1", "trainer.progress=false"]
    # the user's model config, found through hydra.searchpath, composing with the package's tiny preset
    proc = _run([py, "-m", "lfbyte.train", "model=my_model", "hydra.searchpath=[file://conf]", *tiny,
                 "hydra.run.dir=outputs/runs/mine"], cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = project / "outputs" / "runs" / "mine"
    assert (run / "checkpoints" / "last.pth").is_file()
    import yaml

    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert model["embed_dim"] == 48 and model["num_layers"] == 2  # the user's width on tiny's depth

    proc = _run([py, "-m", "lfbyte.train", "model=my_modle", "hydra.searchpath=[file://conf]", *tiny],
                cwd=project, env=env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: model=my_modle is not an option (did you mean my_model?); choose one of: base, gpt_base, gpt_mini, "
        "gpt_small, gpt_tiny, mini, my_model, small, tiny"]

    proc = _run([py, "-m", "lfbyte.generate", f"run_dir={run}", "prompt=The", "max_length=16", "num_threads=1"],
                cwd=project, env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("The"), proc.stderr[-2000:]

    proc = _run([py, "-m", "lfbyte.train", "-m", "model=tiny", "seed=1,2", *tiny, "trainer.sample_length=0",
                 "hydra.sweep.dir=outputs/multirun/seeds"], cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run([py, "-m", "lfbyte.report", "outputs/multirun/seeds", "--no-plot"], cwd=project, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "(2 jobs, 0 not completed)" in proc.stdout

    # the benchmark subpackage ships too (with its own config)
    proc = _run([py, "-m", "lfbyte.bench.decode", "preset=tiny", "seq_len=64", "contexts=[8]", "new_bytes=2",
                 "repeats=1", "num_threads=1"], cwd=project, env=env)
    assert proc.returncode == 0 and "| 8 |" in proc.stdout, proc.stderr[-2000:]
