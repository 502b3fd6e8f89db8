"""The task contract: how a model family plugs into the one training loop.

A *task* bundles a model family's own options, data and evaluation. The trainer
(:func:`hardalign.train.train`) owns everything else: config, seeding, the estimator, the
optimiser, gradient clipping, logging, checkpoints, resume and torch.distributed. Tasks are
registered by name in :data:`TASKS` as ``"module:Class"`` import strings, imported only when
used, so that ``hardalign train`` for one family never imports the others.

The contract, as the trainer calls it::

    class SomeTask:
        Config = SomeTaskConfig
            # a @dataclass of the task's own options: flat scalar fields with defaults
            # (str / int / float / bool / None, or ``X | None``). Merged with TrainConfig into one
            # flat namespace for YAML and --kebab-case overrides; a field name that clashes with
            # a TrainConfig field is an error (see hardalign.train.config.TRAIN_KEYS).

        def __init__(self, config, train_config, *, device, rank=0, world_size=1):
            # config: a SomeTaskConfig; train_config: the TrainConfig (read batch_size, seed,
            # num_samples, estimator from it). Load or index the data here (no downloads).

        def build_model(self) -> torch.nn.Module:
            # called once per process after seeding; the trainer moves it to the device, wraps it
            # in DistributedDataParallel when world_size > 1 and builds the optimiser over
            # model.parameters() (include any input-dependent baseline network in the model).
            # Its training forward is called as
            #     model(batch, *, num_samples: int, step: int) -> LatentOutput | dict[str, Tensor]
            # with the batch already on the device; the model never sees the estimator. A
            # hardalign.objective.LatentOutput (trajectory [K, B, T], optional baseline
            # prediction, extra loss terms by name, detached metrics) becomes the loss in
            # hardalign.objective.training_terms; a model without latent decisions returns a
            # dict whose "loss" is the scalar to minimise, every other entry a detached 0-dim
            # term. Never call .item() in forward: the trainer syncs only at its logging interval.

        def train_batches(self, epoch: int) -> Iterable[dict]:
            # this rank's shard of the epoch's training batches: dicts of tensors (non-tensor
            # values such as utterance ids are allowed and left alone); the trainer moves the
            # tensors to the device. batch_size in TrainConfig is the GLOBAL batch: with
            # world_size ranks each yields batch_size // world_size examples per step, and the
            # ranks must yield the same number of batches. Must be a deterministic function of
            # (train_config.seed, epoch, rank, world_size) that does not draw from the global
            # RNGs (use hardalign.data.sampling: shard_batches / BucketBatchSampler), so
            # that resuming mid-epoch replays the same order.

        def evaluate(self, model, split: str) -> dict[str, float]:
            # e.g. {"per": 0.153} or {"bound": -98.2}; split is "dev" or "test". Called on rank 0
            # only, with the unwrapped model in eval mode under torch.no_grad(); it must not call
            # collective operations (so no estimator calls in training mode). The trainer saves
            # and restores all RNG states around it, so evaluation never perturbs training.

Optional: a task may define ``metrics_to_minimize: tuple[str, ...]`` (for documentation and
the report tables; the trainer does not select checkpoints by it).

Example:
    >>> sorted(TASKS)
    ['glimpse', 'sbn', 'timit']
    >>> batches = list(shard_batches(10, 4, seed=0, epoch=0, rank=1, world_size=2))
    >>> [len(b) for b in batches]
    [2, 2]
"""

from __future__ import annotations

import importlib
from typing import Any

import torch

from hardalign.data.sampling import shard_batches  # re-exported: the one sharding mechanism lives in the data layer

__all__ = ["TASKS", "get_task_class", "build_task", "shard_batches"]

#: Registered tasks: name -> "module:Class" (imported lazily by :func:`get_task_class`).
TASKS: dict[str, str] = {
    "timit": "hardalign.speech.task:SpeechTask",
    "glimpse": "hardalign.vision.task:GlimpseTask",
    "sbn": "hardalign.sbn:SBNTask",
}


def get_task_class(name: str) -> type:
    """Import and return the task class registered as ``name``.

    Raises:
        ValueError: ``name`` is not in :data:`TASKS` (the message lists the registered names).
        ImportError: the registered module or class cannot be imported.
    """
    if name not in TASKS:
        from hardalign._checks import did_you_mean

        raise ValueError(f"unknown task {name!r}{did_you_mean(name, TASKS)} (registered tasks: {', '.join(sorted(TASKS))})")
    module_name, _, class_name = TASKS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportError(f"task {name!r} is registered as {TASKS[name]!r} but {module_name} cannot be imported: {error}") from error
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"task {name!r}: module {module_name} has no class {class_name!r}") from None


def build_task(
    name: str,
    config: Any,
    train_config: Any,
    *,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
) -> Any:
    """Instantiate the task registered as ``name`` with its config and the trainer's config."""
    task_class = get_task_class(name)
    return task_class(config, train_config, device=device, rank=rank, world_size=world_size)
