"""The training loop: one process's view of a (possibly distributed) run.

Composes model, data, optimizer, precision, DDP or FSDP, checkpoints and logger from a
plain resolved config dict. Follows nanoGPT's loop (accumulate without syncing gradients
until the last micro-step, loss / micro-steps, clip after unscale, warmup + cosine) and
adds exact resume, atomic (and, under FSDP, sharded) checkpoints and clean pre-emption.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from .checkpoint import (
    checkpoint_dir,
    is_sharded_checkpoint,
    load_checkpoint,
    make_checkpoint,
    restore_model,
    restore_sharded,
    restore_training,
    resume_latest,
    save_checkpoint,
    save_sharded,
)
from .data import WindowSampler, eval_windows, load_corpus, split_corpus
from .device import resolve_device
from .distributed import (
    DistInfo,
    accumulate,
    all_reduce,
    full_value,
    gather_objects,
    init_process_group,
    pick_backend,
    shard_model,
)
from .errors import LFByteError, describe
from .logger import Logger
from .model import build_model
from .precision import autocast, resolve_precision, slow_precision_warning

LN2 = math.log(2.0)


def make_optimizer(model: torch.nn.Module, opt: dict, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2) only, never on biases, norms or decay rates."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": opt["weight_decay"]},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # fused (CPU and CUDA): one kernel per step, and it takes a device flag (``found_inf``) that skips the
    # update without the host looking at it; see Trainer.train_step
    return torch.optim.AdamW(groups, lr=opt["lr"], betas=tuple(opt["betas"]), eps=opt["eps"], fused=True)


def lr_at(progress: float, step: int, opt: dict) -> float:
    """Linear warmup over ``warmup_steps`` then the schedule over training ``progress`` in [0, 1]."""
    lr, warmup = opt["lr"], opt["warmup_steps"]
    if step < warmup:
        return lr * (step + 1) / warmup
    floor = lr * opt["min_lr_ratio"]
    p = min(max(progress, 0.0), 1.0)
    if opt["schedule"] == "constant":
        return lr
    if opt["schedule"] == "linear":
        return floor + (lr - floor) * (1 - p)
    return floor + 0.5 * (lr - floor) * (1 + math.cos(math.pi * p))


def rng_state() -> dict:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.asarray(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


@dataclass
class StepResult:
    """What one update did, as device tensors: reading them waits for the device, so :meth:`Trainer.fit`
    reads a whole interval's at once (every ``log_interval`` steps, and before evaluations and saves)."""

    loss: torch.Tensor  # mean training loss over micro-batches and ranks
    grad_norm: torch.Tensor  # before clipping
    by_scaler: torch.Tensor  # bool: fp16 gradients overflowed with a finite loss (GradScaler's routine skip)
    router_stats: list


class NonFiniteError(LFByteError):
    """The weights in memory led to a NaN/inf: they are not checkpointed, the last good checkpoint stays newest."""


class Trainer:
    def __init__(self, cfg: dict, run_dir: Path, info: DistInfo = DistInfo()) -> None:
        self.cfg, self.run_dir, self.info = cfg, Path(run_dir), info
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        tc, dc = cfg["trainer"], cfg["data"]
        self.tc, self.opt_cfg = tc, cfg["optimizer"]
        self.device = resolve_device(tc["device"], "trainer.device", info.local_rank)
        if tc.get("num_threads"):
            torch.set_num_threads(int(tc["num_threads"]))
        if info.enabled and not torch.distributed.is_initialized():
            init_process_group(info, pick_backend(cfg["distributed"]["backend"], self.device), self.device)
        self.precision = resolve_precision(tc["precision"], self.device)

        seed = int(cfg["seed"])
        torch.manual_seed(seed + info.rank)  # dropout differs per rank; weights are synced by DDP
        random.seed(seed + info.rank)
        np.random.seed((seed + info.rank) % 2**32)

        self.corpus = load_corpus(dc.get("path"), dc.get("cache_dir"))
        self.seq_len = int(cfg["model"]["seq_len"])
        self.train_split, self.val_split = split_corpus(self.corpus, dc["val_fraction"], self.seq_len)
        self.sampler = WindowSampler(self.corpus, self.train_split, self.seq_len, seed, float(dc.get("input_noise", 0.0)))

        torch.manual_seed(seed)  # identical initial weights on every rank
        self.sharded = cfg["distributed"]["strategy"] == "fsdp"
        if self.sharded:  # built on the CPU; each rank moves only its shard to the device
            self.model = shard_model(build_model(cfg["model"]), self.precision, self.device,
                                     bool(cfg["distributed"]["reshard_after_forward"]))
        else:
            self.model = build_model(cfg["model"]).to(self.device)
        torch.manual_seed(seed + info.rank)
        self.optimizer = make_optimizer(self.model, self.opt_cfg, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

        self.batch_size, self.accum = int(tc["batch_size"]), int(tc["accumulation_steps"])
        self.bytes_per_step = self.batch_size * self.accum * info.world_size * self.seq_len
        # training FLOPs per byte: forward + backward ≈ 3× the forward matmul FLOPs (the x axis of equal-compute plots)
        self.flops_per_byte = 3 * self.model.flops_per_token(self.seq_len)
        self.steps_per_epoch = max(1, math.ceil(len(self.train_split) / self.bytes_per_step))
        limits = []
        if tc.get("epochs"):
            limits.append(int(tc["epochs"]) * self.steps_per_epoch)
        if tc.get("max_steps"):
            limits.append(int(tc["max_steps"]))
        self.total_steps = min(limits) if limits else None
        self.max_time = float(tc["max_time"]) if tc.get("max_time") else None
        assert self.total_steps or self.max_time, "validate() requires epochs, max_steps or max_time"

        self.ckpt_dir = checkpoint_dir(cfg, self.run_dir)
        self.step, self.elapsed_before, self.bytes_seen = 0, 0.0, 0
        self.skipped_steps = self.skipped_in_a_row = 0  # updates not applied: non-finite loss/gradients
        # the same rule on the device, so that no step waits for the host to decide: non-finite steps in a
        # row, and whether the run has stopped (every later update is skipped until the host raises)
        self._in_a_row = torch.zeros((), dtype=torch.int64, device=self.device)
        self._halted = torch.zeros((), dtype=torch.bool, device=self.device)
        self._pending: list[tuple[int, float, StepResult]] = []  # steps whose results the host has not read
        self.saved_step: int | None = None
        self.best_val: float | None = None
        self.last_eval: dict[str, float] = {}
        self.resumed_from: str | None = None
        self._maybe_resume(tc.get("resume"))

        self.train_model: torch.nn.Module = self.model
        if tc.get("compile"):
            # static shapes: a recompile for the evaluation's batch would otherwise turn on dynamic shapes, and
            # inductor (torch 2.13) fails on the chunked mixer's symbolic sizes
            self.train_model = torch.compile(self.model, dynamic=False)
        if info.enabled and not self.sharded:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_model = DDP(self.train_model, device_ids=ids)
        self.logger = Logger(self.run_dir, cfg.get("logger", {}), cfg, enabled=info.is_main)
        if self.logger.path.is_file() and self.logger.path.stat().st_size:  # a resume, or a restart from scratch
            self.logger.mark("resume", self.step, checkpoint=self.resumed_from)
        self._stop_signal: int | None = None

    # ---------------------------------------------------------------- resume
    def _maybe_resume(self, resume: str | None) -> None:
        if not resume:
            return
        # weights=False: a sharded checkpoint's shards are read by restore_sharded, each rank its own part
        if resume == "auto":
            found = resume_latest(self.ckpt_dir, map_location=self.device, warn=self.info.is_main, weights=False)
            if found is None:
                return  # nothing to resume: a fresh start
            path, ckpt = found
        else:
            path, ckpt = Path(resume), load_checkpoint(resume, map_location=self.device, weights=False)
        source = "this run's model config"
        if self.sharded or is_sharded_checkpoint(path):
            self.load_state_dict(restore_sharded(self.model, self.optimizer, self.scaler, ckpt, path, source))
        else:
            restore_model(self.model, ckpt, path, source)
            self.load_state_dict(restore_training(ckpt, path, self.optimizer, self.scaler))
        for group in self.optimizer.param_groups:  # loading restores the saved flags: before fused AdamW ran on
            group.update(fused=True, foreach=None)  # the CPU, checkpoints said fused=None (found_inf needs fused)
        self.resumed_from = str(path)
        self.saved_step = self.step
        if self.info.is_main:
            print(f"resumed from {path} at step {self.step}", flush=True)

    def state_dict(self, rngs: list[dict] | None = None) -> dict[str, Any]:
        """The trainer's own counters, data position and RNG states (``rngs``: every rank's, else this one's)."""
        return {
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "elapsed_s": self.elapsed(),
            "bytes_seen": self.bytes_seen,
            "best_val": self.best_val,
            "skipped_steps": self.skipped_steps,
            "sampler": self.sampler.state_dict(),
            "rng": rngs if rngs is not None else [rng_state()],
            "world_size": self.info.world_size,
        }

    def load_state_dict(self, st: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict`; RNG states are restored only for the same world size."""
        self.step, self.elapsed_before, self.bytes_seen = st["step"], st["elapsed_s"], st["bytes_seen"]
        self.best_val = st.get("best_val")
        self.skipped_steps = st.get("skipped_steps", 0)
        self.sampler.load_state_dict(st["sampler"])
        rngs = st["rng"]
        if len(rngs) == self.info.world_size:
            set_rng_state(rngs[self.info.rank])

    def _save(self, epoch_end: int | None = None, collective: bool = True) -> None:
        # every rank's dropout RNG, for exact resume; after a failure a peer may never arrive, so rank 0 saves
        # alone (its own RNG only: a resume then restores none, as for a changed world size)
        rngs = gather_objects(rng_state(), self.info) if collective else [rng_state()]
        self.saved_step = self.step
        keep = int(self.tc["keep_last"])
        if self.sharded:  # every rank writes its shard
            payload = make_checkpoint(self.model, self.cfg, self.last_eval, self.optimizer, self.scaler,
                                      self.state_dict(rngs), sharded=True)
            save_sharded(self.model, self.optimizer, payload, self.ckpt_dir, self.step, keep, epoch_end)
            return
        if not self.info.is_main:
            return
        payload = make_checkpoint(self.model, self.cfg, self.last_eval, self.optimizer, self.scaler,
                                  self.state_dict(rngs))
        save_checkpoint(payload, self.ckpt_dir, self.step, keep, epoch_end)

    # ------------------------------------------------------------------ loop
    def elapsed(self) -> float:
        return self.elapsed_before + (time.perf_counter() - self._t0)

    def progress(self) -> float:
        p = 0.0
        if self.total_steps:
            p = self.step / self.total_steps
        if self.max_time:
            p = max(p, self.elapsed() / self.max_time)
        return p

    def _on_signal(self, signum: int, _frame: object) -> None:
        self._stop_signal = signum

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        scored = self.tc.get("eval_scored") or self.seq_len  # the last `scored` targets of each window count
        starts = eval_windows(self.val_split, self.seq_len, int(self.tc["eval_windows"]), scored)
        mine = starts[self.info.rank :: self.info.world_size]
        total = torch.zeros(2, dtype=torch.float64, device=self.device)
        # a sharded forward is a collective: every rank runs as many batches as the busiest one (an idle
        # rank re-reads a window and does not count it)
        per_rank = math.ceil(len(starts) / self.info.world_size)
        batches = math.ceil(per_rank / self.batch_size) if self.sharded else math.ceil(len(mine) / self.batch_size)
        for i in range(0, batches * self.batch_size, self.batch_size):
            chunk = mine[i : i + self.batch_size]
            x, y = self.sampler.read(chunk if len(chunk) else starts[:1])
            if scored < self.seq_len:
                y = y.clone()  # y shares storage with x
                y[:, : self.seq_len - scored] = -1  # context only: not scored
            with autocast(self.device, self.precision):
                out = self.model(x.to(self.device), y.to(self.device))
            if len(chunk):
                total[0] += out.loss.double() * y.shape[0] * scored
                total[1] += y.shape[0] * scored
        all_reduce(total)
        self.model.train()
        val_loss = (total[0] / total[1]).item()
        return {"val_loss": val_loss, "val_bpb": val_loss / LN2}

    def train_step(self, lr: float) -> StepResult:
        """One optimizer update at learning rate ``lr`` over ``accumulation_steps`` micro-batches.

        Never waits for the device: a non-finite loss or gradient norm (on any rank: they are all-reduced)
        skips the update inside the fused AdamW kernel (``found_inf``), and ``trainer.on_nonfinite`` /
        ``max_skipped_steps`` are applied on the device too (a stopped run skips every later update). The host
        reads the results later (:meth:`_read_pending`), raises or warns naming the step, and logs. Does not
        advance :attr:`step`, log or save: :meth:`fit` does (the bench times this alone)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        batches = self.sampler.step_batches(self.batch_size, self.accum, self.info.rank, self.info.world_size)
        noise = self.sampler.step_noise(self.batch_size, self.accum, self.info.rank, self.info.world_size)
        loss_sum = torch.zeros((), device=self.device)
        stats: list = []
        for j, starts in enumerate(batches):
            x, y = self.sampler.read(starts, None if noise is None else noise[j])
            x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
            with accumulate(self.model if self.sharded else self.train_model, last=j == len(batches) - 1):
                with autocast(self.device, self.precision):
                    out = self.train_model(x, y)
                    loss = out.training_loss
                self.scaler.scale(loss / self.accum).backward()
            loss_sum += out.loss.detach()
            stats = out.router_stats
        self.scaler.unscale_(self.optimizer)
        max_norm = self.tc["max_grad_norm"]
        grad_norm = full_value(  # under FSDP: the norm over every rank's gradient shards
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm if max_norm else float("inf")))
        # every rank decides alike: the mean loss over ranks and the grad norm (equal on all ranks after DDP's
        # all-reduce or FSDP's norm over shards); a NaN/inf anywhere poisons the sum
        health = torch.stack([loss_sum / self.accum, grad_norm.to(loss_sum.dtype)])
        all_reduce(health)
        loss, gnorm = (health / self.info.world_size).unbind()
        bad = ~torch.isfinite(health).all()
        # overflowing fp16 gradients are the GradScaler's business (it halves the scale), counted toward
        # max_skipped_steps but never a stop on their own
        by_scaler = bad & torch.isfinite(loss) if self.precision == "fp16" else torch.zeros_like(bad)
        self._in_a_row = torch.where(bad, self._in_a_row + 1, 0)
        stop = bad & ~by_scaler if self.tc["on_nonfinite"] == "stop" else torch.zeros_like(bad)
        skip = bad | self._halted
        self._halted = self._halted | stop | (self._in_a_row >= int(self.tc["max_skipped_steps"]))
        self.optimizer.found_inf, self.optimizer.grad_scale = skip.float(), None  # read by the fused kernel
        self.optimizer.step()
        self.scaler.update()  # fp16: from the overflow check unscale_ recorded (no-op otherwise)
        self.optimizer.zero_grad(set_to_none=True)
        return StepResult(loss, gnorm, by_scaler, stats)

    def _read_pending(self) -> list[tuple[int, float, float, float, StepResult]]:
        """Read every step not yet read (one wait for the device) and apply the non-finite rule to each, in
        order, as the device did: warnings and ``skipped_steps`` rows at their own steps, or the error naming
        the step at which the run stopped (the device skipped every update after it)."""
        pending = self._pending
        if not pending:
            return []
        values = torch.stack([torch.stack([r.loss.float(), r.grad_norm.float(), r.by_scaler.float()])
                              for _, _, r in pending]).tolist()
        done = []
        for i, ((step, lr, result), (loss, gnorm, by_scaler)) in enumerate(zip(pending, values, strict=True)):
            self._pending = pending[i + 1 :]  # replayed one by one: an error part-way leaves the rest unread
            if math.isfinite(loss) and math.isfinite(gnorm):
                self.skipped_in_a_row = 0
                done.append((step, lr, loss, gnorm, result))
                continue
            try:
                self._nonfinite(loss, gnorm, step, by_scaler=bool(by_scaler))
            except NonFiniteError:
                # the weights are those after the last good step: say so in the counters
                self.bytes_seen -= (self.step - (step - 1)) * self.bytes_per_step
                self.step = step - 1
                raise
            self.logger.log({"skipped_steps": self.skipped_steps}, step)
        return done

    def _nonfinite(self, loss: float, grad_norm: float, step: int, by_scaler: bool = False) -> None:
        """A NaN/inf loss or gradient at ``step``: its update was not applied."""
        what = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {grad_norm}"
        kept = (f"the last good checkpoint (step {self.saved_step}) is kept in {self.ckpt_dir}"
                if self.saved_step is not None else "no checkpoint had been written yet")
        advice = "Lower optimizer.lr" + (f" or use trainer.precision=fp32 (this run is {self.precision})"
                                         if self.precision != "fp32" else "")
        if not by_scaler and self.tc["on_nonfinite"] == "stop":
            raise NonFiniteError(f"non-finite {what} at step {step}; the update was not applied and {kept}. "
                              f"{advice}, or set trainer.on_nonfinite=skip")
        self.skipped_steps += 1
        self.skipped_in_a_row += 1
        limit = int(self.tc["max_skipped_steps"])  # conf/trainer/default.yaml owns the default
        if self.skipped_in_a_row >= limit:
            raise NonFiniteError(f"non-finite {what} at {limit} steps in a row (up to step {step}); stopping, and "
                              f"{kept}. {advice}")
        if self.info.is_main and not by_scaler:  # the scaler's calibration skips are routine: metrics only
            print(f"warning: non-finite {what} at step {step}; update skipped "
                  f"({self.skipped_steps} skipped so far)", file=sys.stderr, flush=True)

    def _should_stop(self, collective: bool) -> tuple[bool, str]:
        """Every rank stops at the same step, for the same reason. Step limits are the same on every rank;
        a signal or ``max_time`` is agreed on by one collective, whose result the host must read, so with
        several processes it runs only when ``collective`` (the steps where fit reads results anyway) and a
        stop may come up to ``log_interval`` steps later. One process reads its own flags every step."""
        interrupted = self._stop_signal is not None
        late = self.max_time is not None and self.elapsed() >= self.max_time
        if self.info.enabled:
            if collective:
                flags = torch.tensor([float(interrupted), float(late)], device=self.device)
                all_reduce(flags, torch.distributed.ReduceOp.MAX)
                interrupted, late = (bool(f) for f in flags.tolist())
            else:
                interrupted = late = False
        if interrupted:
            return True, "interrupted"
        if self.tc.get("stop_at_step") is not None and self.step >= int(self.tc["stop_at_step"]):
            return True, "stopped"
        if self.total_steps is not None and self.step >= self.total_steps:
            return True, "completed"
        if late:
            return True, "completed"
        return False, ""

    def fit(self) -> dict[str, Any]:
        tc, info = self.tc, self.info
        self._t0 = time.perf_counter()
        handlers = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        bar = None
        if info.is_main and tc["progress"]:
            from tqdm import tqdm

            bar = tqdm(total=self.total_steps, initial=self.step, desc="train", dynamic_ncols=True,
                       mininterval=1.0, file=sys.stderr)
        if info.is_main:
            n = self.model.num_parameters()
            print(f"model {self.cfg['model'].get('arch', 'lfbyte')}: {n:,} parameters | data {self.corpus.name}: "
                  f"{len(self.train_split):,} train / {len(self.val_split):,} val bytes | "
                  f"precision {self.precision} | device {self.device} x{info.world_size} | run {self.run_dir}",
                  flush=True)
            if warning := slow_precision_warning(self.precision, self.device):
                print(warning, file=sys.stderr, flush=True)
        if self._samples() and self.step == 0:
            self._sample(max_length=2)  # sampling that would fail at the first evaluation fails now, before training
        eval_interval, log_interval = int(tc["eval_interval"]), int(tc["log_interval"])
        ckpt_interval = tc.get("checkpoint_interval")
        window_t, window_bytes = time.perf_counter(), 0
        status = "completed"
        try:
            while True:
                stop, status = self._should_stop(collective=self.step % log_interval == 0)
                if stop:
                    break
                lr = lr_at(self.progress(), self.step, self.opt_cfg)
                self._pending.append((self.step + 1, lr, self.train_step(lr)))
                self.step += 1
                self.bytes_seen += self.bytes_per_step
                window_bytes += self.bytes_per_step
                if bar is not None:
                    bar.update(1)
                epoch_end = self.step % self.steps_per_epoch == 0
                evaluate = self.step % eval_interval == 0 or epoch_end
                save = epoch_end or bool(ckpt_interval and self.step % int(ckpt_interval) == 0)
                log = self.step % log_interval == 0 or self.step == 1
                if not (log or evaluate or save):
                    continue  # nothing on the host needs this step's numbers yet: the device runs ahead
                for step, lr_, loss, grad_norm, result in self._read_pending():
                    if step != self.step or not log:
                        continue
                    now = time.perf_counter()
                    bps = window_bytes / max(now - window_t, 1e-9)
                    window_t, window_bytes = now, 0
                    row = {"train_loss": loss, "lr": lr_, "grad_norm": grad_norm, "bytes_per_s": bps,
                           "epoch": self.step / self.steps_per_epoch, "elapsed_s": self.elapsed()}
                    row["model_tflops"] = self.flops_per_byte * bps / 1e12
                    if tc.get("peak_tflops"):  # model_tflops counts every rank's bytes
                        row["mfu"] = row["model_tflops"] / (float(tc["peak_tflops"]) * info.world_size)
                    for i, st in enumerate(result.router_stats):
                        row[f"moe/layer{i}/router_entropy"] = st.router_entropy
                        row[f"moe/layer{i}/balance_loss"] = st.balance_loss
                        load = st.expert_load.float() / st.expert_load.sum().clamp_min(1)
                        for e, frac in enumerate(load.tolist()):
                            row[f"moe/layer{i}/expert{e}_load"] = frac
                    self.logger.log(row, self.step)
                    if bar is not None:
                        bar.set_postfix(loss=f"{loss:.3f}", bpb=f"{loss / LN2:.3f}", bytes_s=f"{bps:,.0f}")
                if evaluate:
                    self._eval_and_log(bar)
                if epoch_end:
                    self._save(epoch_end=self.step // self.steps_per_epoch)
                elif save:
                    self._save()
            self._read_pending()  # the steps since the last read, before the final evaluation and save
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
            if bar is not None:
                bar.close()
        if self.step == 0 or self.step % eval_interval or not self.last_eval:
            self._eval_and_log(None)
        self._save()
        result = self._write_metrics(status)
        self.logger.finish()
        if status == "interrupted" and info.is_main:
            print(f"interrupted: checkpoint saved at step {self.step} in {self.ckpt_dir}; "
                  "rerun with trainer.resume=auto to continue", flush=True)
        return result

    def _eval_and_log(self, bar: Any) -> None:
        metrics = self.evaluate()
        self.last_eval = metrics
        if self.best_val is None or metrics["val_loss"] < self.best_val:
            self.best_val = metrics["val_loss"]
        self.logger.log({**metrics, "elapsed_s": self.elapsed(), "train_flops": self.flops_per_byte * self.bytes_seen},
                        self.step)
        msg = f"step {self.step}: val_loss {metrics['val_loss']:.4f} | val_bpb {metrics['val_bpb']:.4f}"
        if self.info.is_main:
            (bar.write if bar is not None else print)(msg)
        if self._samples():
            self.logger.log_text("samples", self._sample(), self.step)  # the logger writes on rank 0 only

    def _samples(self) -> bool:
        """This rank generates the evaluation samples: rank 0, or every rank in lockstep when sharded
        (each forward all-gathers the parameters, so every rank must run it; all compute the same bytes)."""
        return bool(self.tc.get("sample_length")) and (self.info.is_main or self.sharded)

    def _sample(self, max_length: int | None = None) -> str:
        """A short generated text to watch quality by eye (seeded by the step; no global RNG is used)."""
        from .generate import generate_text

        self.model.eval()
        try:
            return generate_text(self.model, self.tc.get("sample_prompt") or "",
                                 int(self.tc["sample_length"]) if max_length is None else max_length,
                                 temperature=0.8, seed=self.step)
        except LFByteError as e:
            raise LFByteError(f"sampling at evaluation fails: {e}; set trainer.sample_length=0 to train without "
                              "samples") from e
        finally:
            self.model.train()

    def fail(self, error: BaseException) -> None:
        """After a failure: keep what training reached (a checkpoint, unless the weights went non-finite) and
        leave ``metrics.json`` with ``status: failed`` and the reason. Never raises: the error itself matters."""
        nonfinite, cause, note = isinstance(error, NonFiniteError), "", ""
        if not nonfinite:  # steps the host has not read yet may have stopped the run already
            try:
                self._read_pending()
            except NonFiniteError as e:
                nonfinite, cause = True, f"; before that: {e}"
            except Exception:  # noqa: BLE001 - e.g. the device that failed the run cannot be read either
                pass
            try:  # the device's own word on whether the weights are past a stop (whatever was replayed)
                nonfinite = nonfinite or bool(self._halted.item())
            except Exception:  # noqa: BLE001
                nonfinite = True  # unknown: do not save weights that may be past a non-finite step
        if self.sharded and self.step > (self.saved_step or 0):
            # a sharded save needs every rank, and after a failure a peer may never arrive
            kept = f"the last checkpoint (step {self.saved_step})" if self.saved_step is not None else "no checkpoint"
            note = f"; steps after {self.saved_step or 0} are lost ({kept} is in {self.ckpt_dir})"
        elif self.step > (self.saved_step or 0) and not nonfinite:
            try:
                self._save(collective=False)
                note = f"; training up to step {self.step} is saved in {self.ckpt_dir}"
            except Exception as e:  # noqa: BLE001 - e.g. the disk that failed the run is full
                note = f"; the checkpoint at step {self.step} could not be written ({e})"
        elif self.saved_step is not None:
            note = f"; the last good checkpoint (step {self.saved_step}) is in {self.ckpt_dir}"
        note = cause + note
        try:
            self._write_metrics("failed", error=describe(error) + note)
        except Exception:  # noqa: BLE001
            pass

    def _write_metrics(self, status: str, error: str | None = None) -> dict[str, Any]:
        elapsed = self.elapsed()
        result = {
            "status": status,
            **({"error": error} if error else {}),
            **self.last_eval,
            "best_val_loss": self.best_val,
            "step": self.step,
            "epoch": self.step / self.steps_per_epoch,
            "elapsed_s": elapsed,
            "bytes_seen": self.bytes_seen,
            "train_flops": self.flops_per_byte * self.bytes_seen,
            "bytes_per_s": self.bytes_seen / max(elapsed, 1e-9),
            "skipped_steps": self.skipped_steps,
            "parameters": self.model.num_parameters(),
            "precision": self.precision,
            "world_size": self.info.world_size,
            "threads_per_process": torch.get_num_threads(),
            "resumed_from": self.resumed_from,
        }
        if self.info.is_main:
            tmp = self.run_dir / ".metrics.json.tmp"
            tmp.write_text(json.dumps(result, indent=2) + "\n")
            os.replace(tmp, self.run_dir / "metrics.json")
        return result

    def close(self, completed: bool = False) -> None:
        self.logger.finish(exit_code=1)
        if self.info.enabled and torch.distributed.is_initialized():
            if completed:
                # Leave together: a rank that tears gloo down and exits while rank 0 is still
                # writing the last checkpoint aborts at interpreter exit now and then (SIGABRT,
                # "terminate called without an active exception"; ~1 run in 10 on CPU).
                torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def train_worker(info: DistInfo, cfg: dict, run_dir: str) -> dict[str, Any]:
    """Entry for one process (spawned DDP worker, torchrun rank, or the job itself)."""
    trainer = Trainer(cfg, Path(run_dir), info)
    completed = False
    try:
        result = trainer.fit()
        completed = True
        return result
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt):
            trainer.fail(e)
        raise
    finally:
        trainer.close(completed)  # after a failure, no barrier: a peer may never arrive
