"""Every option of every config group, and every ``experiment=``, composes and passes the checks a run makes
before it reads data: a preset or recipe that no longer validates fails here, not in a user's sweep."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from lfbyte.config import CONF_DIR, to_plain, validate
from lfbyte.model import build_model

from .conftest import OPTUNA, compose_cfg

GROUPS = sorted(p.name for p in CONF_DIR.iterdir() if p.is_dir() and p.name != "hydra")
OPTIONS = [(group, f.stem) for group in GROUPS for f in sorted((CONF_DIR / group).glob("*.yaml"))]
PLUGIN_OPTIONS = {("hparams_search", "optuna"): OPTUNA}  # options that need a plugin of the cluster extra
NEEDS = {("data", "bytes"): ["data.path=/dev/null"]}  # a ??? the user must fill; validation does not read it


def test_every_group_has_options() -> None:
    assert {"model", "data", "optimizer", "trainer", "distributed", "logger", "experiment", "ablation"} <= set(GROUPS)
    assert len(OPTIONS) >= 30


@pytest.mark.parametrize(("group", "option"), [
    pytest.param(g, o, id=f"{g}={o}", marks=PLUGIN_OPTIONS.get((g, o), ())) for g, o in OPTIONS])
def test_every_option_composes_and_validates(group: str, option: str) -> None:
    cfg = compose_cfg(f"{group}={option}", *NEEDS.get((group, option), []))
    plain = to_plain(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]))
    validate(plain)
    with torch.device("meta"):
        model = build_model(plain["model"])
    assert model.num_parameters() > 0
    if group == "model":  # the preset file's own keys are what the model got
        from lfbyte.config import model_preset

        assert {k: plain["model"][k] for k in model_preset(option)} == model_preset(option)


def test_the_conf_dir_is_the_one_the_package_reads() -> None:
    assert (CONF_DIR / "train.yaml").is_file() and Path(CONF_DIR).name == "conf"
