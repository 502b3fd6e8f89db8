"""The training loop every hardalign model family runs, read top to bottom.

config -> distributed setup -> seed -> task -> model -> estimator -> optimiser -> resume ->
step loop (forward, backward, clip, step; log, checkpoint, evaluate) -> final checkpoint and
evaluation. Model families plug in through the task contract (:mod:`hardalign.train.tasks`),
never by subclassing the trainer.

Outputs in ``out_dir``: ``checkpoint.pt`` (the newest; ``checkpoint-STEP.pt`` for the newest
``keep_checkpoints`` steps, each written atomically; see :mod:`hardalign.train.checkpoint`) with
``config.yaml`` (the resolved flat config) beside it, ``metrics.jsonl`` (one JSON object per log or evaluation:
``{"step", "split", <every loss term>, "lr", "grad_norm", ...}``) and TensorBoard events under
``tensorboard/``.

The device is synchronised with the host only at the logging interval (and at checkpoints and
evaluations): loss terms are summed on the device between logs. A non-finite loss or gradient
norm is recorded on the device at the step where it first occurs and raised as
:class:`NonFiniteLossError` at the next sync point, before any checkpoint could be overwritten
with the damaged parameters.
"""

from __future__ import annotations

import json
import math
import random
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from hardalign.objective import training_terms
from hardalign.train.checkpoint import CHECKPOINT_FORMAT, CheckpointError, find_resume_checkpoint, rng_state, save_checkpoint, set_rng_state
from hardalign.train.config import ResolvedConfig, TrainConfig, save_config
from hardalign.train.health import check_eval, check_train  # the health report (host floats, no extra sync)
from hardalign.train.distributed import DistributedContext, cleanup_distributed, setup_distributed
from hardalign.train.tasks import build_task

__all__ = ["train", "TrainResult", "TrainingStep", "NonFiniteLossError", "seed_everything", "CHECKPOINT_NAME", "CONFIG_NAME"]

CHECKPOINT_NAME = "checkpoint.pt"
CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"


class NonFiniteLossError(FloatingPointError):
    """The loss (or the gradient norm) became NaN or infinite; the message names the step and terms."""


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; metrics are rank 0's view).

    Attributes:
        step: optimiser steps done in total (including those before a resume).
        epoch: the epoch the run stopped in.
        stopped_by: ``max_steps``, ``max_epochs`` or ``max_minutes``.
        checkpoint: path of the final checkpoint.
        train_metrics: the last logged training terms (averaged over the log interval).
        eval_metrics: the final evaluation on ``eval_split`` (empty on ranks other than 0).
    """

    step: int
    epoch: int
    stopped_by: str
    checkpoint: Path
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    """Seed python's, numpy's and torch's (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _build_optimizer(config: TrainConfig, parameters: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
    parameters = [p for p in parameters if p.requires_grad]
    if not parameters:
        raise ValueError("the task's model has no trainable parameters")
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(parameters, lr=config.lr, weight_decay=config.weight_decay)


def _lr_factor(config: TrainConfig, clock: dict[str, float] | None = None):
    """Multiplier of the base learning rate at a given step (linear warm-up, then constant or cosine).

    ``clock["fraction"]`` (when given) is the fraction of the time budget spent, which the training
    loop updates at each log interval: the cosine follows whichever of steps and time is further on.
    """

    def factor(step: int) -> float:
        if config.warmup_steps and step < config.warmup_steps:
            return (step + 1) / config.warmup_steps
        if config.lr_schedule == "cosine":
            span = max(1, config.max_steps - config.warmup_steps)
            progress = min(1.0, max((step - config.warmup_steps) / span, clock["fraction"] if clock else 0.0))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {key: _to_device(value, device) for key, value in batch.items()}
    if isinstance(batch, (list, tuple)) and any(isinstance(value, torch.Tensor) for value in batch):
        return type(batch)(_to_device(value, device) for value in batch)
    return batch


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class _Meter:
    """Sums the step's loss terms on the device and remembers the first non-finite step.

    Nothing here synchronises with the host; :meth:`sync` is the one sync point per log interval.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.sums: dict[str, torch.Tensor] = {}
        self.count = 0
        self.bad_step = torch.full((), -1, dtype=torch.long, device=device)
        self.bad_terms: dict[str, torch.Tensor] = {}

    def update(self, step: int, terms: dict[str, torch.Tensor]) -> None:
        for name, value in terms.items():  # metadata only: no sync
            if not isinstance(value, torch.Tensor) or value.numel() != 1:
                shape = list(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise TypeError(f"the model's term {name!r} must be a 0-dim tensor (the trainer logs it as a scalar), got {shape}")
        values = {name: value.detach().float().reshape(()) for name, value in terms.items()}
        for name, value in values.items():
            self.sums[name] = self.sums[name] + value if name in self.sums else value.clone()
        self.count += 1
        finite = torch.isfinite(values["loss"]) & torch.isfinite(values.get("grad_norm", values["loss"]))
        first = (~finite) & (self.bad_step < 0)
        self.bad_step = torch.where(first, torch.full_like(self.bad_step, step), self.bad_step)
        for name, value in values.items():
            previous = self.bad_terms.get(name, torch.zeros_like(value))
            self.bad_terms[name] = torch.where(first, value, previous)

    def sync(self, ctx: DistributedContext, stop_flag: bool = False, spent: float = 0.0) -> tuple[dict[str, float], int, dict[str, float], bool, float]:
        """Averages over the interval and ranks, the first bad step (-1: none) and its terms,
        whether any rank wants to stop, and the largest fraction of the time budget ``spent`` on
        any rank. One device-to-host transfer (and one all-reduce)."""
        names = sorted(self.sums)
        means = torch.stack([self.sums[name] / max(self.count, 1) for name in names]) if names else torch.zeros(0, device=self.device)
        means = ctx.all_reduce_mean(means)
        flags = torch.stack([self.bad_step.to(torch.float32), torch.tensor(float(stop_flag), device=self.device), torch.tensor(float(spent), device=self.device)])
        flags = ctx.all_reduce_max(flags)
        bad_names = sorted(self.bad_terms)
        bad_values = torch.stack([self.bad_terms[name] for name in bad_names]) if bad_names else torch.zeros(0, device=self.device)
        # the sync point: everything above stayed on the device
        host = torch.cat([means, flags, bad_values]).tolist()
        averages = dict(zip(names, host[: len(names)]))
        bad_step, stop, spent = int(host[len(names)]), bool(host[len(names) + 1]), host[len(names) + 2]
        bad_terms = dict(zip(bad_names, host[len(names) + 3 :]))
        self.sums, self.count = {}, 0
        return averages, bad_step, bad_terms, stop, spent


    def first_bad(self, ctx: DistributedContext | None) -> tuple[int, dict[str, float]]:
        """The first non-finite step on any rank (-1: none) and its terms (a sync point; with
        ``ctx=None`` this rank's only, without a collective)."""
        flag = self.bad_step.to(torch.float32).reshape(1)
        if ctx is not None:
            flag = ctx.all_reduce_max(flag)
        bad_names = sorted(self.bad_terms)
        host = torch.cat([flag] + [self.bad_terms[name].reshape(1) for name in bad_names]).tolist()
        return int(host[0]), dict(zip(bad_names, host[1:]))


class _Logger:
    """metrics.jsonl, TensorBoard and console lines, on rank 0 only."""

    def __init__(self, config: TrainConfig, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.writer = None
        self.metrics_file = None
        if not enabled:
            return
        self.metrics_file = open(out_dir / METRICS_NAME, "a", encoding="utf-8")
        if config.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out_dir / "tensorboard"))

    def log(self, step: int, split: str, values: dict[str, Any], echo: str | None = None) -> None:
        if not self.enabled:
            return
        record = {"step": step, "split": split, **values}
        self.metrics_file.write(json.dumps(record) + "\n")
        self.metrics_file.flush()
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    self.writer.add_scalar(f"{split}/{name}", value, step)
            self.writer.flush()
        if echo is not None:
            from tqdm import tqdm

            tqdm.write(echo, file=sys.stderr)

    def close(self) -> None:
        if self.metrics_file is not None:
            self.metrics_file.close()
        if self.writer is not None:
            self.writer.close()


def _format(values: dict[str, float]) -> str:
    return " ".join(f"{name}={value:.4g}" if isinstance(value, float) else f"{name}={value}" for name, value in values.items())


class TrainingStep(nn.Module):
    """The model and the estimator as one module whose forward returns the loss terms.

    The model rolls out (``model(batch, num_samples=K, step=i)``) and
    :func:`hardalign.objective.training_terms` applies the estimator; under ``torchrun`` this
    module is what DistributedDataParallel wraps, so that everything the loss depends on is
    computed inside the wrapped forward. A model with a ``budget_spent`` attribute has it set
    before each step to the fraction of the training budget spent (steps or minutes, whichever is
    further on, agreed by the ranks at each log interval), e.g. for a warm-up stage.
    """

    def __init__(self, model: nn.Module, estimator: nn.Module):
        super().__init__()
        self.model = model
        self.estimator = estimator

    def forward(self, batch: Any, *, num_samples: int, step: int) -> dict[str, torch.Tensor]:
        return training_terms(self.model(batch, num_samples=num_samples, step=step), self.estimator)


@dataclass
class _Run:
    """Everything a checkpoint holds, and where the run stands (step, epoch, batch in the epoch)."""

    config: ResolvedConfig
    model: nn.Module
    estimator: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    last_checkpoint_step: int | None = None
    wall_s_before: float = 0.0  # training seconds of earlier invocations (from the checkpoint)
    eval_s: float = 0.0  # seconds this invocation spent evaluating
    clock: float = field(default_factory=time.monotonic)  # when this invocation was built

    def train_wall_s(self, now: float | None = None) -> float:
        """Training wall-clock so far over every invocation, evaluation excluded (``train_wall_s``)."""
        return self.wall_s_before + (time.monotonic() if now is None else now) - self.clock - self.eval_s


def _save(run: _Run, ctx: DistributedContext, path: Path) -> None:
    """Write the checkpoint (rank 0) with every rank's RNG state; a collective."""
    rng = ctx.gather_objects(rng_state())
    if ctx.is_main:
        save_checkpoint(
            path,
            {
                "format": CHECKPOINT_FORMAT,
                "step": run.step,
                "epoch": run.epoch,
                "batch_in_epoch": run.batch_in_epoch,
                "model": run.model.state_dict(),
                "optimizer": run.optimizer.state_dict(),
                "scheduler": run.scheduler.state_dict(),
                "estimator": run.estimator.state_dict(),
                "rng": rng,
                "world_size": ctx.world_size,
                "config": run.config.to_dict(),
                "train_wall_s": run.train_wall_s(),
            },
            keep=run.config.train.keep_checkpoints,
        )
        save_config(run.config, path.parent / CONFIG_NAME)
    run.last_checkpoint_step = run.step


def _resume(run: _Run, ctx: DistributedContext, path: Path, state: dict[str, Any]) -> Any:
    """Load a checkpoint's ``state`` into ``run``; returns this rank's RNG state to restore at the batch (or None)."""
    run.model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    run.estimator.load_state_dict(state["estimator"])
    run.step, run.epoch, run.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    run.last_checkpoint_step = run.step
    run.wall_s_before = float(state.get("train_wall_s", 0.0))
    if ctx.is_main:
        print(f"resumed from {path} at step {run.step} (epoch {run.epoch}, batch {run.batch_in_epoch})", file=sys.stderr)
    if state.get("world_size") == ctx.world_size:
        return state["rng"][ctx.rank]
    # a different number of ranks cannot replay the same streams; start fresh ones
    seed_everything(run.config.train.seed + 7919 * ctx.rank + run.step)
    return None


def _evaluate(task: Any, run: _Run, ctx: DistributedContext, logger: "_Logger", split: str) -> dict[str, float]:
    """Evaluate on rank 0 without shifting the training random streams; the others wait."""
    metrics: dict[str, float] = {}
    started = time.monotonic()
    if ctx.is_main:
        saved = rng_state()
        run.model.eval()
        with torch.no_grad():
            metrics = dict(task.evaluate(run.model, split))
        # the training wall-clock across resumes, evaluation excluded (in place of a task's own estimate)
        wall_s = {"train_wall_s": run.train_wall_s(now=started)}
        metrics.update(wall_s if "train_wall_s" in metrics else {})
        run.model.train()
        set_rng_state(saved)
        logger.log(run.step, split, {**metrics, **wall_s}, echo=f"step {run.step} {split}: {_format(metrics)}")

        check_eval(logger, run.config, task, run.step, metrics)
    ctx.barrier()
    run.eval_s += time.monotonic() - started
    return metrics


def _raise_if_bad(bad_step: int, bad_terms: dict[str, float], run: _Run, path: Path, cause: BaseException | None = None) -> None:
    if bad_step < 0:
        return
    kept = (
        f"the last good checkpoint {str(path)!r} (step {run.last_checkpoint_step}) is kept"
        if run.last_checkpoint_step is not None
        else "no checkpoint had been written"
    )
    raise NonFiniteLossError(
        f"non-finite loss at step {bad_step} ({_format(bad_terms)}); training stopped and {kept}. "
        "Lower --lr, set --grad-clip, or check the model's log-probabilities for -inf."
    ) from cause


def _raise_if_bad_batch(batch: Any, run: _Run, path: Path, cause: BaseException) -> None:
    """After a failed step only (no sync otherwise): name non-finite input values, the usual root
    cause of a distribution rejecting NaN parameters, and the utterances or examples they are in."""
    tensors = batch.items() if isinstance(batch, dict) else enumerate(batch if isinstance(batch, (list, tuple)) else [batch])
    bad = [str(name) for name, value in tensors
           if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all())]
    if not bad:
        return
    ids = batch.get("ids") if isinstance(batch, dict) else None
    where = f" (examples {list(ids)[:8]})" if isinstance(ids, (list, tuple)) else ""
    kept = (
        f"the last good checkpoint {str(path)!r} (step {run.last_checkpoint_step}) is kept"
        if run.last_checkpoint_step is not None
        else "no checkpoint had been written"
    )
    raise NonFiniteLossError(
        f"step {run.step + 1}: the batch holds NaN or infinite values in {', '.join(bad)}{where}; the input data are "
        f"damaged (a corrupt audio or feature file?); training stopped and {kept}"
    ) from cause


def _epoch_batches(task: Any, run: _Run) -> Iterator[Any]:
    """This epoch's batches, past those done before a resume (the order is replayed, not redrawn)."""
    batches = iter(task.train_batches(run.epoch))
    for _ in range(run.batch_in_epoch):
        next(batches, None)
    return batches


def train(config: ResolvedConfig) -> TrainResult:
    """Train the configured task with the configured estimator; resumable, torchrun-aware.

    Args:
        config: from :func:`hardalign.train.resolve_config`.

    Returns:
        a :class:`TrainResult`.

    Raises:
        NonFiniteLossError: the loss or gradient norm became NaN/inf; names the step and every
            term at that step. The last checkpoint written before it is left untouched.
        FileExistsError: ``out_dir`` already holds a checkpoint and ``resume`` is not set.
        CheckpointError: ``resume=auto`` found checkpoints but none loads, or one needs
            ``--trust-checkpoint`` / a conversion (:func:`hardalign.train.checkpoint.find_resume_checkpoint`).
    """
    tc = config.train
    ctx = setup_distributed(tc.device)
    try:
        return _train(config, ctx)
    finally:
        cleanup_distributed(ctx)


def _train(config: ResolvedConfig, ctx: DistributedContext) -> TrainResult:
    from tqdm import tqdm

    from hardalign.estimators import build_estimator

    tc = config.train
    out_dir = Path(tc.out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    # the newest checkpoint that loads (damaged ones skipped with a warning; never a silent fresh start)
    resume_from, resume_state, warnings = find_resume_checkpoint(
        checkpoint_path, tc.resume, map_location=ctx.device, trust=tc.trust_checkpoint
    )
    stored_estimator = resume_state.get("config", {}).get("estimator") if resume_from is not None else None
    if stored_estimator is not None and stored_estimator != tc.estimator:
        # an exact resume replays the same run; the estimators' states (NVIL's running statistics,
        # vimco-seq's fit) do not carry over from one estimator to another. Checked before anything
        # in out_dir (its config.yaml included) is written.
        raise CheckpointError(
            f"{resume_from}: this run was trained with estimator {stored_estimator!r}, the config asks for "
            f"{tc.estimator!r}; resume it with --estimator {stored_estimator}, or train the other estimator "
            f"in a new --out-dir"
        )
    if ctx.is_main:
        for warning in warnings:
            print(warning, file=sys.stderr)
        if tc.resume is not None and resume_from is None:
            print(f"resume={tc.resume}: no checkpoint in {str(out_dir)!r} yet; starting at step 0", file=sys.stderr)

    # -- build: seed, task, model, estimator, optimiser (identical initialisation on every rank) --
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / CONFIG_NAME)
    seed_everything(tc.seed)
    task = build_task(tc.task, config.task, tc, device=ctx.device, rank=ctx.rank, world_size=ctx.world_size)
    model = task.build_model().to(ctx.device)
    estimator = build_estimator(tc.estimator, **tc.estimator_options).to(ctx.device)
    optimizer = _build_optimizer(tc, model.parameters())
    budget_clock = {"fraction": 0.0}  # of max_minutes spent, agreed by the ranks at each log interval
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_factor(tc, budget_clock))
    run = _Run(config, model, estimator, optimizer, scheduler)
    parameters = [p for p in model.parameters() if p.requires_grad]
    max_norm = tc.grad_clip if tc.grad_clip else float("inf")

    # -- resume (or start each rank's own sampling stream; step 0 of one process is the plain seed) --
    pending_rng = _resume(run, ctx, resume_from, resume_state) if resume_from is not None else None
    if resume_from is None:
        seed_everything(tc.seed + 7919 * ctx.rank)
    training_step = ctx.wrap(TrainingStep(model, estimator))
    training_step.train()
    logger = _Logger(tc, out_dir, enabled=ctx.is_main)
    meter = _Meter(ctx.device)
    progress = tqdm(total=tc.max_steps, initial=run.step, disable=not (ctx.is_main and tc.progress), desc="train", dynamic_ncols=True)

    # -- the step loop: epochs until max_steps, max_epochs or max_minutes --
    started = interval_started = time.monotonic()
    interval_steps = 0
    train_metrics: dict[str, float] = {}
    stopped_by = "max_steps"
    try:
        while run.step < tc.max_steps and stopped_by == "max_steps":
            if tc.max_epochs is not None and run.epoch >= tc.max_epochs:
                stopped_by = "max_epochs"
                break
            seen = run.batch_in_epoch
            batches = _epoch_batches(task, run)
            if pending_rng is not None:  # the random streams as they were at this batch
                set_rng_state(pending_rng)
                pending_rng = None
            for batch in batches:
                seen += 1
                batch = _to_device(batch, ctx.device)
                if hasattr(model, "budget_spent"):  # models with budget-driven stages (e.g. a CTC warm-up)
                    model.budget_spent = max(run.step / tc.max_steps, budget_clock["fraction"])
                # forward (rollout + estimator), backward, clip, step
                try:
                    terms = training_step(batch, num_samples=tc.num_samples, step=run.step)
                    optimizer.zero_grad(set_to_none=True)
                    terms["loss"].backward()
                except Exception as error:
                    # NaN parameters from an earlier non-finite step often fail here first (e.g. a
                    # distribution rejecting NaN logits): report the root cause, not the symptom
                    _raise_if_bad(*meter.first_bad(None), run, checkpoint_path, cause=error)
                    _raise_if_bad_batch(batch, run, checkpoint_path, cause=error)
                    raise
                grad_norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
                optimizer.step()
                scheduler.step()
                run.step += 1
                run.batch_in_epoch += 1
                interval_steps += 1
                meter.update(run.step, {**terms, "grad_norm": grad_norm})
                progress.update(1)

                # log (the one host sync per interval), checkpoint, evaluate, stop
                last = run.step >= tc.max_steps
                elapsed_min = (time.monotonic() - started) / 60
                out_of_time = tc.max_minutes is not None and elapsed_min >= tc.max_minutes
                if run.step % tc.log_every == 0 or last or (out_of_time and not ctx.active):
                    spent = elapsed_min / tc.max_minutes if tc.max_minutes else 0.0
                    averages, bad_step, bad_terms, any_rank_stops, spent = meter.sync(ctx, out_of_time, spent)
                    budget_clock["fraction"] = spent
                    _raise_if_bad(bad_step, bad_terms, run, checkpoint_path)
                    now = time.monotonic()
                    averages["lr"] = scheduler.get_last_lr()[0]
                    averages["steps_per_s"] = interval_steps / max(now - interval_started, 1e-9)
                    interval_started, interval_steps = now, 0
                    train_metrics = averages
                    logger.log(run.step, "train", {"epoch": run.epoch, **averages})

                    check_train(logger, run.config, task, run.step, averages)
                    if ctx.is_main and tc.progress:
                        progress.set_postfix(loss=f"{averages['loss']:.4g}", refresh=False)
                    if any_rank_stops and not last:  # every rank leaves at the same step
                        stopped_by = "max_minutes"
                if tc.checkpoint_every and run.step % tc.checkpoint_every == 0 and not last:
                    _raise_if_bad(*meter.first_bad(ctx), run, checkpoint_path)  # never overwrite a good checkpoint with damaged parameters
                    _save(run, ctx, checkpoint_path)
                if tc.eval_every and run.step % tc.eval_every == 0 and not last:
                    _evaluate(task, run, ctx, logger, tc.eval_split)
                if last or stopped_by != "max_steps":
                    break
            else:
                if seen == 0:
                    raise ValueError(f"task {tc.task!r} yielded no training batches in epoch {run.epoch} (is batch_size larger than the data?)")
                run.epoch += 1
                run.batch_in_epoch = 0
        progress.close()

        # -- stop: final checkpoint and evaluation --
        _raise_if_bad(*meter.first_bad(ctx), run, checkpoint_path)
        _save(run, ctx, checkpoint_path)
        eval_metrics = _evaluate(task, run, ctx, logger, tc.eval_split)
    finally:
        progress.close()
        logger.close()
    return TrainResult(run.step, run.epoch, stopped_by, checkpoint_path, train_metrics, eval_metrics)
