"""Rebuild a trained run (config, task, model) from its checkpoint: the one loader every command uses.

``hardalign evaluate``, ``hardalign decode``, ``hardalign plot alignment`` and ``hardalign plot
glimpses`` all start from :func:`load_run`: it reads the checkpoint, resolves the config stored in
it (or a given one) with command-line overrides on top, builds the task on the device, and loads
the weights into a fresh model in eval mode.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import torch

from hardalign.train.checkpoint import load_checkpoint
from hardalign.train.config import RENAMED_KEYS, RETIRED_KEYS, ResolvedConfig, resolve_config
from hardalign.train.distributed import resolve_device
from hardalign.train.loop import CHECKPOINT_NAME, seed_everything
from hardalign.train.tasks import build_task, get_task_class

__all__ = ["LoadedRun", "load_run"]


class LoadedRun(NamedTuple):
    """What :func:`load_run` rebuilt."""

    config: ResolvedConfig
    task: Any
    model: torch.nn.Module  # in eval mode, on ``task.device``
    step: int  # training steps taken when the checkpoint was written (-1 if not recorded)
    checkpoint: Path
    train_wall_s: float | None = None  # training seconds (evaluation excluded) when it was written


def load_run(
    checkpoint: str | os.PathLike | None,
    *,
    overrides: Sequence[str] | dict[str, Any] | None = None,
    device: str | torch.device | None = None,
    config: ResolvedConfig | str | os.PathLike | None = None,
    expect_task: str | None = None,
    trust: bool = False,
) -> LoadedRun:
    """Rebuild the config, task and model of a trained run (model in eval mode).

    Args:
        checkpoint: the checkpoint file; ``None`` means ``<out_dir>/checkpoint.pt`` of ``config``.
        overrides: applied on top of the config (``["--eval-num-samples", "1000"]`` or a dict).
        device: where to build the task and model (``auto``, ``cpu``, ``cuda:N``); default the
            config's ``device``.
        config: a resolved config or a YAML file to use instead of the one stored in the checkpoint.
        expect_task: the task the run must be (``"timit"`` for a speech command); ``None``: any.
        trust: open the checkpoint with a full unpickle (only for files you made yourself; see
            :func:`hardalign.train.checkpoint.load_checkpoint`); also on when a given ``config``
            sets ``trust_checkpoint``.

    Returns:
        a :class:`LoadedRun` ``(config, task, model, step, checkpoint)``.

    Raises:
        ValueError: neither a checkpoint nor a config was given; the checkpoint holds no config
            and none was given; or the run is not an ``expect_task`` run.
        FileNotFoundError: the checkpoint does not exist (named).
    """
    if checkpoint is None and config is None:
        raise ValueError("give a checkpoint (--checkpoint PATH) or a config (--config FILE)")
    if isinstance(config, ResolvedConfig):
        config = resolve_config(config.to_dict(), overrides) if overrides else config
    elif config is not None:
        config = resolve_config(config, overrides)
    path = Path(checkpoint) if checkpoint is not None else Path(config.train.out_dir) / CHECKPOINT_NAME
    trust = trust or bool(config is not None and config.train.trust_checkpoint)
    if not trust and isinstance(overrides, (list, tuple)):  # --trust-checkpoint with only a checkpoint given
        from hardalign.train.config import parse_overrides

        trust = parse_overrides(overrides).get("trust_checkpoint") is True
    state = load_checkpoint(path, trust=trust)  # on the CPU; load_state_dict copies onto the model's device
    if config is None:
        if "config" not in state:
            raise ValueError(f"checkpoint {str(path)!r} holds no config; pass --config FILE")
        # a run saved before a key was renamed stores the old name: read it as the new one; retired
        # keys are dropped, and keys added since take the value such runs were trained with
        task_class = get_task_class(state["config"].get("task", "sbn"))
        # a task may translate its own old keys first (e.g. the speech task's train_noise -> noise + snr)
        raw = getattr(task_class, "upgrade_stored_config", dict)(dict(state["config"]))
        stored = {RENAMED_KEYS.get(key, key): value for key, value in raw.items() if key not in RETIRED_KEYS}
        legacy = getattr(task_class, "legacy_defaults", {})
        stored = {**legacy, **stored}
        config = resolve_config(stored, overrides)
    if expect_task is not None and config.train.task != expect_task:
        raise ValueError(f"checkpoint {str(path)!r} is a {config.train.task!r} run, not a {expect_task!r} run")
    device = resolve_device(str(device) if device is not None else config.train.device)
    seed_everything(config.train.seed)
    task = build_task(config.train.task, config.task, config.train, device=device)
    model = task.build_model().to(device)
    model.load_state_dict(state["model"])
    model.eval()
    wall = state.get("train_wall_s")
    return LoadedRun(config, task, model, int(state.get("step", -1)), path, float(wall) if wall is not None else None)
