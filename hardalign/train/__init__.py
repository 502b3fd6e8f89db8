"""The one training loop every hardalign model family uses.

A run is a *task* (a model family: ``timit``, ``glimpse``, ``sbn``; see
:mod:`hardalign.train.tasks` for the contract) plus the trainer's options
(:class:`TrainConfig`): the estimator by registry name, K, the optimiser, budgets, logging,
checkpoints. :func:`train` runs it, single-process or under ``torchrun``; :func:`evaluate`
scores a checkpoint.
"""

from hardalign.train.checkpoint import load_checkpoint, save_checkpoint
from hardalign.train.config import ConfigError, ResolvedConfig, TrainConfig, resolve_config, save_config
from hardalign.train.tasks import TASKS, build_task, get_task_class, shard_batches

__all__ = [
    "TrainConfig",
    "ResolvedConfig",
    "ConfigError",
    "resolve_config",
    "save_config",
    "TASKS",
    "get_task_class",
    "build_task",
    "shard_batches",
    "save_checkpoint",
    "load_checkpoint",
]
