"""The one training loop every hardalign model family uses.

A run is a *task* (a model family: ``timit``, ``glimpse``, ``sbn``; see
:mod:`hardalign.train.tasks` for the contract) plus the trainer's options
(:class:`TrainConfig`): the estimator by registry name, K, the optimiser, budgets, logging,
checkpoints. :func:`train` runs it, single-process or under ``torchrun``;
:func:`evaluate_checkpoint` scores a checkpoint. See docs/training.md.

Example:
    >>> config = resolve_config({"task": "sbn"}, ["--estimator", "nvil", "--num-samples", "2"])
    >>> config.train.estimator, config.train.num_samples, config.task.layers
    ('nvil', 2, '200,200')
"""

from hardalign.train.checkpoint import load_checkpoint, save_checkpoint
from hardalign.train.config import TRAIN_KEYS, ConfigError, ResolvedConfig, TrainConfig, resolve_config, save_config
from hardalign.train.distributed import DistributedContext, setup_distributed
from hardalign.train.evaluate import evaluate_checkpoint
from hardalign.train.loop import NonFiniteLossError, TrainResult, seed_everything, train
from hardalign.train.run import LoadedRun, load_run
from hardalign.train.tasks import TASKS, build_task, get_task_class, shard_batches

__all__ = [
    "TrainConfig",
    "ResolvedConfig",
    "ConfigError",
    "TRAIN_KEYS",
    "resolve_config",
    "save_config",
    "train",
    "TrainResult",
    "NonFiniteLossError",
    "seed_everything",
    "evaluate_checkpoint",
    "load_run",
    "LoadedRun",
    "TASKS",
    "get_task_class",
    "build_task",
    "shard_batches",
    "save_checkpoint",
    "load_checkpoint",
    "DistributedContext",
    "setup_distributed",
]
