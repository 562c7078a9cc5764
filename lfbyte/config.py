"""Resolve a Hydra config to plain data once, and validate it before any data is read."""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from .errors import ConfigError
from .precision import PRECISIONS

SCHEDULES = ("cosine", "linear", "constant")
STRATEGIES = ("none", "ddp")


def to_plain(cfg: DictConfig | dict) -> dict[str, Any]:
    """Resolve interpolations (``${now:}`` and friends) here, in the parent, exactly once."""
    if isinstance(cfg, DictConfig):
        from .logger import register_resolvers  # ${lfbyte.multirun:...} in conf/logger/wandb.yaml

        register_resolvers()
        cfg = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    return dict(cfg)


def _check(problems: list[str], ok: bool, msg: str) -> None:
    if not ok:
        problems.append(msg)


def _is_int(v: Any, lo: int = 1) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo


def validate(cfg: dict[str, Any]) -> None:
    """Raise ConfigError with one line per problem, each naming the key and the allowed range."""
    p: list[str] = []
    for group in ("model", "data", "optimizer", "trainer", "distributed"):
        if not isinstance(cfg.get(group), dict):
            raise ConfigError(f"config group {group!r} is missing; is conf/ intact? (e.g. {group}=...)")
    m, t, o, d, dist = cfg["model"], cfg["trainer"], cfg["optimizer"], cfg["data"], cfg["distributed"]

    for key in ("seq_len", "embed_dim", "num_layers", "num_heads"):
        _check(p, _is_int(m.get(key)), f"model.{key}={m.get(key)!r} must be an integer >= 1")
    if _is_int(m.get("embed_dim")) and _is_int(m.get("num_heads")):
        _check(p, m["embed_dim"] % m["num_heads"] == 0,
               f"model.embed_dim={m['embed_dim']} must be divisible by model.num_heads={m['num_heads']}")
    if m.get("arch", "lfbyte") == "lfbyte":
        for key in ("adapt_dim", "adapt_rank", "num_experts", "top_k", "chunk_size", "conv_size"):
            if key in m:
                _check(p, _is_int(m[key]), f"model.{key}={m[key]!r} must be an integer >= 1")
        if _is_int(m.get("num_experts")) and _is_int(m.get("top_k")) and m["num_experts"] > 1:
            _check(p, m["top_k"] <= m["num_experts"],
                   f"model.top_k={m['top_k']} must be <= model.num_experts={m['num_experts']}")
    _check(p, isinstance(m.get("dropout", 0.0), (int, float)) and 0 <= m.get("dropout", 0.0) < 1,
           f"model.dropout={m.get('dropout')!r} must be in [0, 1)")

    for key in ("batch_size", "accumulation_steps", "eval_interval", "eval_windows", "log_interval", "keep_last"):
        _check(p, _is_int(t.get(key)), f"trainer.{key}={t.get(key)!r} must be an integer >= 1")
    for key in ("epochs", "max_steps", "checkpoint_interval"):
        _check(p, t.get(key) is None or _is_int(t.get(key)), f"trainer.{key}={t.get(key)!r} must be null or an integer >= 1")
    _check(p, t.get("max_time") is None or (isinstance(t["max_time"], (int, float)) and t["max_time"] > 0),
           f"trainer.max_time={t.get('max_time')!r} must be null or seconds > 0")
    _check(p, any(t.get(k) for k in ("epochs", "max_steps", "max_time")),
           "set at least one of trainer.epochs, trainer.max_steps, trainer.max_time")
    _check(p, t.get("precision") in PRECISIONS, f"trainer.precision={t.get('precision')!r} must be one of {list(PRECISIONS)}")
    _check(p, t.get("max_grad_norm") is None or (isinstance(t["max_grad_norm"], (int, float)) and t["max_grad_norm"] >= 0),
           f"trainer.max_grad_norm={t.get('max_grad_norm')!r} must be null or >= 0")
    _check(p, t.get("device") in ("auto", "cpu", "cuda"), f"trainer.device={t.get('device')!r} must be auto, cpu or cuda")

    _check(p, isinstance(o.get("lr"), (int, float)) and o["lr"] > 0, f"optimizer.lr={o.get('lr')!r} must be > 0")
    _check(p, _is_int(o.get("warmup_steps"), 0), f"optimizer.warmup_steps={o.get('warmup_steps')!r} must be an integer >= 0")
    _check(p, o.get("schedule") in SCHEDULES, f"optimizer.schedule={o.get('schedule')!r} must be one of {list(SCHEDULES)}")
    _check(p, isinstance(o.get("min_lr_ratio"), (int, float)) and 0 <= o["min_lr_ratio"] <= 1,
           f"optimizer.min_lr_ratio={o.get('min_lr_ratio')!r} must be in [0, 1]")
    _check(p, isinstance(o.get("weight_decay"), (int, float)) and o["weight_decay"] >= 0,
           f"optimizer.weight_decay={o.get('weight_decay')!r} must be >= 0")

    vf = d.get("val_fraction")
    _check(p, isinstance(vf, (int, float)) and 0 < vf < 1, f"data.val_fraction={vf!r} must be in (0, 1)")
    _check(p, dist.get("strategy") in STRATEGIES, f"distributed.strategy={dist.get('strategy')!r} must be one of {list(STRATEGIES)}")
    _check(p, _is_int(dist.get("nproc_per_node")), f"distributed.nproc_per_node={dist.get('nproc_per_node')!r} must be an integer >= 1")
    if dist.get("strategy") == "ddp" and _is_int(dist.get("nproc_per_node")) and t.get("device") == "cuda":
        import torch

        n = torch.cuda.device_count()
        _check(p, dist["nproc_per_node"] <= n,
               f"distributed.nproc_per_node={dist['nproc_per_node']} but only {n} GPU(s) are visible")
    if p:
        raise ConfigError("\n".join(p))
