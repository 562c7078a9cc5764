"""Resolve a Hydra config to plain data once, and validate it before any data is read."""

from __future__ import annotations

import difflib
import math
import os
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from .errors import ConfigError
from .precision import precision_problem


def _conf_dir() -> Path:
    """The shipped configs: ``lfbyte/conf`` in an installed wheel, the repository's ``conf/`` in a clone."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    return here.parent / "conf"  # a broken install: Hydra's "config not found" names this path


CONF_DIR = _conf_dir()
SCHEDULES = ("cosine", "linear", "constant")
STRATEGIES = ("none", "ddp", "fsdp")
NONFINITE = ("stop", "skip")
BACKENDS = ("auto", "gloo", "nccl")
# Groups whose keys are fixed by the files in conf/<group>/; model options are checked by the model itself.
CHECKED_GROUPS = ("data", "optimizer", "distributed", "trainer", "logger")
TOP_LEVEL = ("model", *CHECKED_GROUPS, "seed")
KEYS_HINT = "python -m lfbyte.train --cfg job prints every key"
MAX_SEED = 2**63 - 2**16  # torch seeds are 64-bit; each rank adds its rank
# An evaluation sample is decoded byte by byte inside the training loop (and in lockstep on every rank when
# sharded), so it has to stay short: 16 KiB took 10 s (tiny) to 39 s (small) on one CPU thread.
MAX_SAMPLE_LENGTH = 16_384
# max_time, a stop signal and checkpoints act between optimizer steps; one step runs this many forward/backward passes
MAX_ACCUMULATION = 4096
MAX_CONV = 1024  # model.conv_size, model.short_conv: bytes a causal convolution looks back


def to_plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """Resolve interpolations (``${now:}`` and friends) here, in the parent, exactly once."""
    if isinstance(cfg, DictConfig):
        from .logger import register_resolvers  # ${lfbyte.multirun:...} in conf/logger/wandb.yaml

        register_resolvers()
        try:
            cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
        except MissingMandatoryValue as e:  # a ??? in conf/, e.g. data=bytes has no default path
            raise ConfigError(f"{e.full_key} must be set: add {e.full_key}=... to the command line") from None
        except OmegaConfBaseException as e:  # e.g. prompt=${nosuch}
            key = getattr(e, "full_key", None)
            where = f"{key}: " if key else ""
            raise ConfigError(f"{where}{str(e).strip().splitlines()[0]}; write a literal $ as \\$") from None
    return dict(cfg)


@cache
def known_keys(group: str) -> frozenset[str]:
    """Every key that some shipped ``conf/<group>/*.yaml`` defines: the schema is the config files."""
    keys: set[str] = set()
    for f in (CONF_DIR / group).glob("*.yaml"):
        data = yaml.safe_load(f.read_text()) or {}
        if isinstance(data, dict):
            keys.update(k for k in data if k != "defaults")
    return frozenset(keys)


@cache
def required_keys(group: str) -> frozenset[str]:
    """Keys every complete option of ``conf/<group>/`` sets: the defaults live there, so code reads them as
    ``cfg[group][key]`` and a config without one (a hand-built dict, a ``~key``) is refused by name."""
    sets = []
    for f in (CONF_DIR / group).glob("*.yaml"):
        data = yaml.safe_load(f.read_text()) or {}
        if isinstance(data, dict) and "defaults" not in data:  # an option extending another one is checked there
            sets.append(set(data))
    return frozenset(set.intersection(*sets)) if sets else frozenset()


def did_you_mean(name: str, choices: Any, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, sorted(choices), n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def _unknown_keys(cfg: dict[str, Any]) -> list[str]:
    out = [f"{k} is not a known config group or key{did_you_mean(k, TOP_LEVEL)}; the groups are {', '.join(TOP_LEVEL)}"
           for k in cfg if k not in TOP_LEVEL]
    for group in CHECKED_GROUPS:
        known = known_keys(group)
        if not known or not isinstance(cfg.get(group), dict):
            continue
        out += [f"{group}.{k} is not a known option{did_you_mean(k, known, group + '.')}; {KEYS_HINT}"
                for k in cfg[group] if k not in known]
    return out


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_problem(value: Any, key: str) -> str | None:
    """torch CPU threads per process: null (torch's default) or up to this machine's cores."""
    cpus = usable_cpus()
    if value is None or is_int(value, 1, cpus):
        return None
    return f"{key}={value!r} must be null (torch's default) or an integer in 1..{cpus} (this machine's cores)"


def check_threads(value: Any, key: str = "num_threads") -> None:
    """Raise the :func:`threads_problem` line, if any."""
    if problem := threads_problem(value, key):
        raise ConfigError(problem)


def _check(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(msg)


def is_int(v: Any, lo: float = 1, hi: float = math.inf) -> bool:
    """An int (a bool is not one) in [lo, hi]: what a config value or request parameter must be."""
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def is_number(v: Any) -> bool:
    """A finite int or float (a bool is not one; an int past float's range is not finite)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(v)
    except OverflowError:  # an int beyond 1.8e308
        return False


def model_preset(name: str) -> dict[str, Any]:
    """The ``model=<name>`` option (conf/model/<name>.yaml) as a plain dict of model keys.

    A preset that also carries its tuned optimizer settings is a ``_global_`` file with a ``model:``
    section; only that section is returned."""
    path = CONF_DIR / "model" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))
        raise ConfigError(f"model={name} is not an option; choose one of {known}")
    data = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    return dict(data["model"]) if isinstance(data.get("model"), dict) else data


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError with one line per problem, each naming the key and the allowed range."""
    p: list[str] = []
    for group in ("model", "data", "optimizer", "trainer", "distributed"):
        if not isinstance(cfg.get(group), dict):
            raise ConfigError(f"config group {group!r} is missing; is conf/ intact? (e.g. {group}=...)")
    m, t, o, d, dist = cfg["model"], cfg["trainer"], cfg["optimizer"], cfg["data"], cfg["distributed"]
    missing = [f"{group}.{key}" for group in CHECKED_GROUPS if isinstance(cfg.get(group), dict)
               for key in sorted(required_keys(group) - set(cfg[group]))] + (["seed"] if "seed" not in cfg else [])
    if missing:
        raise ConfigError(f"{', '.join(missing)} missing: every option of conf/<group>/ sets them; compose the "
                          "config with Hydra (lfbyte.train) or set them, e.g. from conf/trainer/default.yaml")

    for key in ("seq_len", "embed_dim", "num_layers", "num_heads"):
        _check(p, is_int(m.get(key)), f"model.{key}={m.get(key)!r} must be an integer >= 1")
    if is_int(m.get("embed_dim")) and is_int(m.get("num_heads")):
        _check(p, m["embed_dim"] % m["num_heads"] == 0,
               f"model.embed_dim={m['embed_dim']} must be divisible by model.num_heads={m['num_heads']}")
    if m.get("arch", "lfbyte") == "lfbyte":
        for key in ("adapt_dim", "num_experts", "top_k", "chunk_size", "conv_size"):
            if key in m:
                _check(p, is_int(m[key]), f"model.{key}={m[key]!r} must be an integer >= 1")
        if "short_conv" in m:
            _check(p, is_int(m["short_conv"], lo=0),
                   f"model.short_conv={m['short_conv']!r} must be an integer >= 0 (0 or 1: no short convolution)")
        for key in ("conv_size", "short_conv"):  # decoding a byte loops over the K-byte window (K² work per layer:
            # 65,536 hung the evaluation sample), and taps past seq_len only ever see zeros
            if is_int(m.get(key), lo=0):
                _check(p, m[key] <= MAX_CONV, f"model.{key}={m[key]} must be at most {MAX_CONV} bytes (the recipes "
                       "use 4; taps reaching past model.seq_len only ever see zeros)")
        if "adapt_rank" in m:
            _check(p, is_int(m["adapt_rank"], lo=0),
                   f"model.adapt_rank={m['adapt_rank']!r} must be an integer >= 0 (0: no adaptive part)")
        for key in ("data_decay", "channel_decay"):
            if key in m:
                _check(p, isinstance(m[key], bool), f"model.{key}={m[key]!r} must be true or false")
        if "delta_rule" in m and is_int(m.get("num_layers")):
            from .model.lfbyte import DELTA_LAYERS, valid_delta_rule

            _check(p, valid_delta_rule(m["delta_rule"], m["num_layers"]),
                   DELTA_LAYERS.format(p="model.", value=m["delta_rule"], n=m["num_layers"]))
        if m.get("channel_decay") is True and m.get("mixer_kernel") == "fla":
            from .model.token_mixing import CHANNEL_DECAY_NO_FLA

            _check(p, False, CHANNEL_DECAY_NO_FLA.format(p="model."))
        delta = m.get("delta_rule")
        if (delta is True or isinstance(delta, (list, tuple)) and delta) and (
                m.get("channel_decay") is True or m.get("mixer_kernel") == "fla"):
            from .model.token_mixing import DELTA_RULE_ALONE

            _check(p, False, DELTA_RULE_ALONE.format(p="model."))
        if "mixer_kernel" in m:
            from .model.kernels import MIXER_KERNELS

            _check(p, m["mixer_kernel"] in MIXER_KERNELS,
                   f"model.mixer_kernel={m['mixer_kernel']!r} must be one of {list(MIXER_KERNELS)}")
        if is_int(m.get("num_experts")) and is_int(m.get("top_k")) and m["num_experts"] > 1:
            _check(p, m["top_k"] <= m["num_experts"],
                   f"model.top_k={m['top_k']} must be <= model.num_experts={m['num_experts']}")
    _check(p, is_number(m.get("dropout", 0.0)) and 0 <= m.get("dropout", 0.0) < 1,
           f"model.dropout={m.get('dropout')!r} must be in [0, 1)")
    if m.get("attn_dropout") is not None:
        _check(p, is_number(m["attn_dropout"]) and 0 <= m["attn_dropout"] < 1,
               f"model.attn_dropout={m['attn_dropout']!r} must be in [0, 1), or null for model.dropout")
    if "mlp_ratio" in m:
        _check(p, is_number(m["mlp_ratio"]) and 0 < m["mlp_ratio"] <= 1024,
               f"model.mlp_ratio={m['mlp_ratio']!r} must be a number in (0, 1024]")
    for key in ("moe_balance_weight", "moe_z_weight"):
        if key in m:
            _check(p, is_number(m[key]) and m[key] >= 0, f"model.{key}={m[key]!r} must be a finite number >= 0")

    for key in ("batch_size", "accumulation_steps", "eval_interval", "eval_windows", "log_interval", "keep_last"):
        _check(p, is_int(t.get(key)), f"trainer.{key}={t.get(key)!r} must be an integer >= 1")
    _check(p, not is_int(t.get("accumulation_steps")) or t["accumulation_steps"] <= MAX_ACCUMULATION,
           f"trainer.accumulation_steps={t.get('accumulation_steps')!r} must be in 1..{MAX_ACCUMULATION}: max_time, "
           "a stop signal and checkpoints wait for the end of an optimizer step; for a larger step raise "
           "trainer.batch_size or add processes")
    es, sl = t.get("eval_scored"), m.get("seq_len")
    _check(p, es is None or (is_int(es) and (not is_int(sl) or es <= sl)),
           f"trainer.eval_scored={es!r} must be null or an integer in 1..model.seq_len ({sl!r}): the bytes scored "
           "at the end of each validation window")
    for key in ("epochs", "max_steps", "checkpoint_interval"):
        _check(p, t.get(key) is None or is_int(t.get(key)), f"trainer.{key}={t.get(key)!r} must be null or an integer >= 1")
    _check(p, t.get("max_time") is None or (is_number(t["max_time"]) and t["max_time"] > 0),
           f"trainer.max_time={t.get('max_time')!r} must be null or seconds > 0")
    _check(p, any(t.get(k) for k in ("epochs", "max_steps", "max_time")),
           "set at least one of trainer.epochs, trainer.max_steps, trainer.max_time")
    _check(p, (problem := precision_problem(t.get("precision"))) is None, problem or "")
    _check(p, t.get("max_grad_norm") is None or (is_number(t["max_grad_norm"]) and t["max_grad_norm"] >= 0),
           f"trainer.max_grad_norm={t.get('max_grad_norm')!r} must be null or >= 0")
    _check(p, t.get("device") in ("auto", "cpu", "cuda"), f"trainer.device={t.get('device')!r} must be auto, cpu or cuda")
    _check(p, t.get("stop_at_step") is None or is_int(t.get("stop_at_step")),
           f"trainer.stop_at_step={t.get('stop_at_step')!r} must be null or an integer >= 1")
    p += filter(None, [threads_problem(t.get("num_threads"), "trainer.num_threads")])
    _check(p, is_int(t["sample_length"], 0) and t["sample_length"] <= MAX_SAMPLE_LENGTH,
           f"trainer.sample_length={t.get('sample_length')!r} must be an integer in 0..{MAX_SAMPLE_LENGTH} (0: no "
           "samples); longer texts: python -m lfbyte.generate run_dir=... max_length=N")
    _check(p, t.get("peak_tflops") is None or (is_number(t["peak_tflops"]) and t["peak_tflops"] > 0),
           f"trainer.peak_tflops={t.get('peak_tflops')!r} must be null or TFLOP/s > 0")
    for key in ("compile", "progress", "overwrite", "allow_changes", "check_memory"):
        _check(p, isinstance(t[key], bool), f"trainer.{key}={t.get(key)!r} must be true or false")
    for key in ("resume", "save_path", "sample_prompt"):
        _check(p, t.get(key) is None or isinstance(t[key], str), f"trainer.{key}={t.get(key)!r} must be null or a string")
    _check(p, t["on_nonfinite"] in NONFINITE,
           f"trainer.on_nonfinite={t.get('on_nonfinite')!r} must be one of {list(NONFINITE)}")
    _check(p, is_int(t.get("max_skipped_steps")),
           f"trainer.max_skipped_steps={t.get('max_skipped_steps')!r} must be an integer >= 1")

    _check(p, is_number(o.get("lr")) and o["lr"] > 0, f"optimizer.lr={o.get('lr')!r} must be a finite number > 0")
    _check(p, is_int(o.get("warmup_steps"), 0), f"optimizer.warmup_steps={o.get('warmup_steps')!r} must be an integer >= 0")
    _check(p, o.get("schedule") in SCHEDULES, f"optimizer.schedule={o.get('schedule')!r} must be one of {list(SCHEDULES)}")
    _check(p, is_number(o.get("min_lr_ratio")) and 0 <= o["min_lr_ratio"] <= 1,
           f"optimizer.min_lr_ratio={o.get('min_lr_ratio')!r} must be in [0, 1]")
    _check(p, is_number(o.get("weight_decay")) and o["weight_decay"] >= 0,
           f"optimizer.weight_decay={o.get('weight_decay')!r} must be >= 0")

    betas = o.get("betas")
    _check(p, isinstance(betas, list) and len(betas) == 2 and all(is_number(b) and 0 <= b < 1 for b in betas),
           f"optimizer.betas={betas!r} must be two numbers in [0, 1), e.g. [0.9, 0.95]")
    _check(p, is_number(o.get("eps")) and o["eps"] > 0, f"optimizer.eps={o.get('eps')!r} must be > 0")
    _check(p, is_int(cfg["seed"], 0, MAX_SEED), f"seed={cfg.get('seed')!r} must be an integer in 0..{MAX_SEED}")

    for key in ("path", "cache_dir"):
        _check(p, d.get(key) is None or isinstance(d[key], str), f"data.{key}={d.get(key)!r} must be null or a path")
    _check(p, isinstance(dist["master_addr"], str),
           f"distributed.master_addr={dist.get('master_addr')!r} must be a host name or address")
    vf = d.get("val_fraction")
    _check(p, is_number(vf) and 0 < vf < 1, f"data.val_fraction={vf!r} must be in (0, 1)")
    noise = d.get("input_noise", 0.0)
    _check(p, is_number(noise) and 0 <= noise < 1, f"data.input_noise={noise!r} must be in [0, 1) (0: off)")
    _check(p, dist.get("strategy") in STRATEGIES, f"distributed.strategy={dist.get('strategy')!r} must be one of {list(STRATEGIES)}")
    _check(p, is_int(dist.get("nproc_per_node")), f"distributed.nproc_per_node={dist.get('nproc_per_node')!r} must be an integer >= 1")
    _check(p, dist["backend"] in BACKENDS,
           f"distributed.backend={dist.get('backend')!r} must be one of {list(BACKENDS)}")
    if dist.get("strategy") == "fsdp":
        _check(p, isinstance(dist.get("reshard_after_forward"), bool),
               f"distributed.reshard_after_forward={dist.get('reshard_after_forward')!r} must be true or false "
               "(distributed=fsdp sets it)")
    port = dist.get("master_port")
    _check(p, port is None or is_int(port, 1, 65535),
           f"distributed.master_port={port!r} must be null (a free port) or an integer in 1..65535")
    p += _unknown_keys(cfg)
    if not p:
        p += _hardware_problems(t, dist, m)
    if p:
        raise ConfigError("\n".join(p))


def _hardware_problems(t: dict[str, Any], dist: dict[str, Any], m: dict[str, Any]) -> list[str]:
    """What this machine cannot run: checked in the launching process, before anything is spawned."""
    import torch

    from .device import resolve_device
    from .distributed import under_torchrun
    from .model.kernels import fla_problem
    from .precision import resolve_precision

    try:
        device = resolve_device(t["device"], "trainer.device").type
    except ConfigError as e:
        return [str(e)]
    p: list[str] = []
    try:
        precision = resolve_precision(t["precision"], torch.device(device))
        if dist["strategy"] == "fsdp" and precision == "fp16":
            p.append(f"distributed=fsdp does not support trainer.precision=fp16"
                     f"{' (what precision=auto picks on this GPU)' if t['precision'] == 'auto' else ''}; "
                     "use bf16 or fp32")
    except ConfigError as e:
        p.append(str(e))
    if m.get("arch", "lfbyte") == "lfbyte" and m.get("mixer_kernel") == "fla":
        p += filter(None, [fla_problem(device)])
    if dist["backend"] == "nccl" and device != "cuda":
        p.append(f"distributed.backend=nccl needs CUDA GPUs, but trainer.device is {device}; "
                 "use distributed.backend=gloo (or auto)")
    if dist["strategy"] == "fsdp" and dist["backend"] == "gloo" and device == "cuda":
        p.append("distributed=fsdp on GPUs needs nccl's all-gather and reduce-scatter of GPU tensors; "
                 "use distributed.backend=nccl (or auto)")
    n = dist["nproc_per_node"]
    if dist["strategy"] in ("ddp", "fsdp") and not under_torchrun():
        if device == "cuda":
            gpus = torch.cuda.device_count()
            _check(p, n <= gpus, f"distributed.nproc_per_node={n} but only {gpus} GPU(s) are visible; "
                                 f"use distributed.nproc_per_node={gpus} or less")
        else:
            cpus = usable_cpus()
            _check(p, n <= cpus, f"distributed.nproc_per_node={n} but this machine has {cpus} CPU core(s); CPU "
                                 f"workers need a core each: use distributed.nproc_per_node={cpus} or less")
    return p


def check_output_dir(path: str | Path, what: str) -> None:
    """``path`` could be created and written: its nearest existing ancestor is a writable directory, and
    no name on the way is longer than that filesystem allows."""
    p = Path(path).absolute()
    created: list[str] = []
    try:
        while not p.exists() and p != p.parent:
            created.append(p.name)
            p = p.parent
    except OSError as e:  # e.g. ENAMETOOLONG from stat()
        raise ConfigError(f"{what} cannot be created ({e.strerror or e}); choose a shorter path") from None
    try:
        name_max = os.pathconf(p, "PC_NAME_MAX") if p.is_dir() else 255
    except (OSError, ValueError):
        name_max = 255
    for name in created:
        if len(os.fsencode(name)) > name_max:
            raise ConfigError(f"{what} cannot be created: the name {name[:40]!r}… is {len(os.fsencode(name))} bytes, "
                              f"more than the {name_max} this filesystem allows; choose a shorter path")
    if not p.is_dir():
        raise ConfigError(f"{what}={path} cannot be created: {p} is a file, not a folder; choose another path")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{what}={path} cannot be created: {p} is not writable; choose another path")
