"""Plain typed configuration: the trainer's options and the task's, in one flat namespace.

A run is described by two dataclasses: :class:`TrainConfig` (the trainer's options, the same
for every model family) and the task's own ``Config`` (see :mod:`hardalign.train.tasks`). Both
are filled from one *flat* YAML mapping of scalars and from command-line overrides with the
same names in kebab-case::

    # exp.yaml
    task: sbn
    estimator: vimco
    num_samples: 8
    layers: "200,200"        # an SBN option

    hardalign train --config exp.yaml --estimator nvil --num-samples 4 --lr 3e-4

Values are checked against the field types (``int``, ``float``, ``bool``, ``str`` and
``X | None``); an unknown key or a wrong type is a :class:`ConfigError` that names the key, the
source (file or command line) and the nearest valid key. ``estimator_options`` is the one
mapping-valued key: a YAML mapping of scalars, or ``key=value,key=value`` on the command line.
Nothing in a config is ever imported or executed: objects are built from registry names.

Example:
    >>> @dataclass
    ... class ToyConfig:   # a task's own options
    ...     hidden: int = 16
    >>> cfg = resolve_config({"estimator": "vimco", "hidden": 8}, ["--num-samples", "8"],
    ...                      task_config_class=ToyConfig)
    >>> cfg.train.estimator, cfg.train.num_samples, cfg.task.hidden
    ('vimco', 8, 8)
"""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, Union

import yaml

from hardalign._checks import did_you_mean

__all__ = [
    "TrainConfig",
    "ResolvedConfig",
    "ConfigError",
    "TRAIN_KEYS",
    "RENAMED_KEYS",
    "RETIRED_KEYS",
    "resolve_config",
    "load_yaml",
    "parse_overrides",
    "save_config",
    "check_run",
]


class ConfigError(ValueError):
    """A config key is unknown or its value has the wrong type."""


@dataclass
class TrainConfig:
    """The trainer's options (every model family shares them).

    Attributes:
        task: registered task name (``timit``, ``glimpse``, ``sbn``; see ``hardalign.train.TASKS``).
        estimator: registered estimator name (``reinforce``, ``nvil``, ``vimco``, ``vimco-seq``).
        estimator_options: keyword options for ``build_estimator`` (e.g. ``{"baseline": "loo"}``).
        num_samples: K, particles per example passed to the model.
        lr: learning rate of the optimiser.
        optimizer: ``adam``, ``adamw`` or ``sgd``.
        weight_decay: decoupled for ``adamw``, L2 for the others.
        lr_schedule: ``constant`` or ``cosine``: to 0 at the end of the run, after ``warmup_steps``
            of linear warm-up. The end is ``max_steps``, or with ``max_minutes`` whichever comes
            first: the schedule follows the larger of the step fraction and the fraction of this
            invocation's time budget spent, which all ranks agree on at every log interval (the
            learning rate holds between intervals). A time-budgeted cosine run is therefore not
            bit-reproducible (its learning rates depend on the machine's speed).
        warmup_steps: linear warm-up steps from 0 to ``lr``.
        batch_size: the GLOBAL batch size (split evenly over ranks under torchrun).
        max_steps: optimiser steps to train for (counting steps done before a resume).
        max_epochs: optional cap on epochs.
        max_minutes: optional wall-clock budget for this invocation; the run stops cleanly with a
            checkpoint when it is spent.
        grad_clip: clip the global gradient norm to this value (``None`` or 0: no clipping).
        seed: seeds python, numpy and torch (each rank uses ``seed + rank`` for sampling).
        out_dir: where checkpoints, ``config.yaml``, ``metrics.jsonl``, TensorBoard events and
            evaluation results go.
        device: ``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        log_every: steps between log lines (the only place training syncs with the device).
        eval_every: steps between evaluations on ``eval_split`` (0: only at the end).
        eval_split: split evaluated during training (``dev``).
        checkpoint_every: steps between checkpoints (0: only at the end).
        keep_checkpoints: how many checkpoints to keep: ``checkpoint.pt`` is the newest and,
            with N >= 2, ``checkpoint-STEP.pt`` the newest N steps (``checkpoint.pt`` is a hard
            link to the newest of them), so a damaged newest file has an older one to fall back to.
        resume: ``None`` (start fresh; refuses an ``out_dir`` that already holds a checkpoint),
            ``auto`` (the newest checkpoint in ``out_dir`` that loads, skipping damaged ones;
            fresh only when there is none) or a checkpoint path.
        trust_checkpoint: open checkpoints with a full unpickle (``weights_only=False``), which
            can run code: only for old files you made yourself (see docs/reliability.md).
        progress: show a tqdm progress bar (rank 0 only).
        tensorboard: write TensorBoard events under ``out_dir/tensorboard``.
        health_checks: warn (stderr and ``metrics.jsonl``) when training stalls (:mod:`hardalign.train.health`).
    """

    task: str = "sbn"
    estimator: str = "vimco"
    estimator_options: dict = field(default_factory=dict)
    num_samples: int = 4
    lr: float = 1e-3
    optimizer: str = "adam"
    weight_decay: float = 0.0
    lr_schedule: str = "constant"
    warmup_steps: int = 0
    batch_size: int = 32
    max_steps: int = 1000
    max_epochs: Union[int, None] = None
    max_minutes: Union[float, None] = None
    grad_clip: Union[float, None] = None
    seed: int = 0
    out_dir: str = "exp/run"
    device: str = "auto"
    log_every: int = 50
    eval_every: int = 0
    eval_split: str = "dev"
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: Union[str, None] = None
    trust_checkpoint: bool = False
    progress: bool = True
    tensorboard: bool = True
    health_checks: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check value ranges (types are checked when the config is parsed)."""
        def bad(name: str, rule: str) -> ConfigError:
            return ConfigError(f"{name}={getattr(self, name)!r}: {rule}")

        for name in ("num_samples", "batch_size", "log_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")
        for name in ("max_steps", "warmup_steps", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise bad(name, "must be >= 0")
        if self.lr <= 0:
            raise bad("lr", "must be > 0")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise bad("optimizer", "must be one of adam, adamw, sgd")
        if self.lr_schedule not in ("constant", "cosine"):
            raise bad("lr_schedule", "must be constant or cosine")
        if self.grad_clip is not None and self.grad_clip < 0:
            raise bad("grad_clip", "must be >= 0 (0 or null: no clipping)")
        if self.max_minutes is not None and self.max_minutes <= 0:
            raise bad("max_minutes", "must be > 0 (null: no budget)")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise bad("max_epochs", "must be >= 1 (null: no cap)")
        if self.eval_split not in ("dev", "test"):
            raise bad("eval_split", "must be dev or test")
        if not isinstance(self.estimator_options, dict):
            raise bad("estimator_options", "must be a mapping of option names to scalars")
        for key, value in self.estimator_options.items():
            if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float, bool))):
                raise ConfigError(f"estimator_options: {key!r}: {value!r} is not a scalar option")


#: The trainer's keys; task configs must not reuse them.
TRAIN_KEYS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))


@dataclass
class ResolvedConfig:
    """One run's configuration: the trainer's part, the task's part, and the flat view of both."""

    train: TrainConfig
    task: Any

    def to_dict(self) -> dict[str, Any]:
        """The flat mapping (trainer keys first), as saved beside each checkpoint."""
        flat = dataclasses.asdict(self.train)
        flat["estimator_options"] = dict(self.train.estimator_options)
        flat.update(dataclasses.asdict(self.task))
        return flat


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _type_name(annotation: Any) -> str:
    if annotation is type(None):
        return "null"
    args = typing.get_args(annotation)
    if args and (typing.get_origin(annotation) in (Union, types.UnionType)):
        return " or ".join(_type_name(a) for a in args)
    return getattr(annotation, "__name__", str(annotation))


def _coerce(key: str, value: Any, annotation: Any, source: str) -> Any:
    """Check ``value`` against ``annotation``; ints are accepted where floats are expected."""
    origin = typing.get_origin(annotation)
    if origin in (Union, types.UnionType):
        for option in typing.get_args(annotation):
            try:
                return _coerce(key, value, option, source)
            except ConfigError:
                continue
    elif annotation is type(None):
        if value is None:
            return None
    elif annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 3e-4 as a string
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `--layers 200` or `out_dir: 2024` read as numbers by YAML
    elif annotation is dict or origin is dict:
        if isinstance(value, Mapping):
            return dict(value)
    else:
        raise ConfigError(f"{source}: key {key!r} has an unsupported type {annotation!r} in its dataclass")
    raise ConfigError(f"{source}: {key} must be {_type_name(annotation)}, got {value!r} ({type(value).__name__})")


#: Config keys that were renamed: old name -> new name. An old name in a YAML file or on the
#: command line is an error naming the new one; in a checkpoint's stored config it is read as the
#: new one (:func:`hardalign.train.run.load_run`).
RENAMED_KEYS = {"eval_samples": "eval_num_samples", "mix_scale": "mix_speaker"}

#: Config keys that were retired: name -> what to use instead. In a YAML file or on the command
#: line such a key is an error saying so; in a checkpoint's stored config it is dropped.
RETIRED_KEYS = {
    "learned_baseline": "the model always offers its baseline network; give reinforce the option "
    "--estimator-options baseline=learned (nvil always uses it)",
    "train_noise": "it was split into noise and snr: use --noise white --snr 0:15 for the old --train-noise white:0:15 "
    "(YAML: noise: white, snr: \"0:15\"; several types: --noise white,pink,babble)",
}


def _unknown_key(key: str, valid: Sequence[str], source: str) -> ConfigError:
    if key in RETIRED_KEYS:
        return ConfigError(f"{source}: key {key!r} was retired: {RETIRED_KEYS[key]}")
    if RENAMED_KEYS.get(key) in valid:
        new = RENAMED_KEYS[key]
        return ConfigError(f"{source}: key {key!r} was renamed {new!r} (--{new.replace('_', '-')} on the command line)")
    return ConfigError(f"{source}: unknown key {key!r}{did_you_mean(key, valid)} (valid keys: {', '.join(sorted(valid))})")


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a flat YAML mapping of scalars (``estimator_options`` may be a mapping of scalars).

    Raises:
        ConfigError: the file is missing, is not a mapping, or a value is a list or nested mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {error}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, got {type(data).__name__}")
    for key, value in data.items():
        if key == "estimator_options" and isinstance(value, dict):
            continue
        if isinstance(value, (list, dict)):
            raise ConfigError(f"config file {str(path)!r}: {key} must be a scalar, got a {type(value).__name__}")
    return data


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _parse_scalar(text: str) -> Any:
    """Read one command-line value with YAML's scalar rules (``3`` int, ``3e-4`` float, ``null``)."""
    # YAML reads an empty document as null; on the command line ``--eval-noise ""`` means the empty string
    if not text.strip():
        return ""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    # YAML 1.1 reads 5:20 as the base-60 number 320; on the command line it is a range (an SNR)
    if isinstance(value, int) and ":" in text:
        return text.strip()
    # YAML 1.1 reads 3e-4 as a string (its float syntax needs a dot); accept it as a float here
    if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)
    return value if isinstance(value, (str, int, float, bool)) or value is None else text


def _parse_options(text: str) -> dict[str, Any]:
    """``baseline=loo,decay=0.9`` -> ``{"baseline": "loo", "decay": 0.9}`` (empty string: ``{}``)."""
    options: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(f"command line: estimator-options item {item!r} must look like name=value")
        options[name.strip().replace("-", "_")] = _parse_scalar(value.strip())
    return options


def parse_overrides(argv: Sequence[str]) -> dict[str, Any]:
    """Turn ``["--num-samples", "16", "--grad-clip=5"]`` into ``{"num_samples": 16, "grad_clip": 5}``.

    Keys are kebab-case versions of the config names (``--no-progress`` sets ``progress`` to
    false; a flag without a value sets it true). Values are parsed as YAML scalars. Types are
    checked later, by :func:`resolve_config`.

    Example:
        >>> parse_overrides(["--estimator", "vimco", "--lr=3e-4", "--no-tensorboard"])
        {'estimator': 'vimco', 'lr': 0.0003, 'tensorboard': False}
    """
    overrides: dict[str, Any] = {}
    items = list(argv)
    i = 0
    while i < len(items):
        item = items[i]
        if not item.startswith("--") or len(item) == 2:
            raise ConfigError(f"command line: expected --key value, got {item!r}")
        name, sep, text = item[2:].partition("=")
        if not sep:
            if i + 1 < len(items) and not items[i + 1].startswith("--"):
                text = items[i + 1]
                i += 1
            elif name.startswith("no-"):
                name, text = name[3:], "false"
            else:
                text = "true"
        key = name.replace("-", "_")
        overrides[key] = _parse_options(text) if key == "estimator_options" else _parse_scalar(text)
        i += 1
    return overrides


def resolve_config(
    base: str | os.PathLike | Mapping[str, Any] | None = None,
    overrides: Sequence[str] | Mapping[str, Any] | None = None,
    *,
    task_config_class: type | None = None,
) -> ResolvedConfig:
    """Build the run's :class:`ResolvedConfig` from a YAML file (or a mapping) plus overrides.

    The task is named by the ``task`` key (default ``sbn``); its ``Config`` dataclass is looked
    up in the task registry unless ``task_config_class`` is given. Every key must belong to
    exactly one of the two dataclasses.

    Args:
        base: a YAML file path, an already-loaded mapping, or ``None`` (all defaults).
        overrides: ``--kebab-case value`` strings from the command line, or a mapping of
            snake_case keys to values (applied after ``base``).
        task_config_class: the task's config dataclass (default: ``get_task_class(task).Config``).

    Returns:
        the trainer's and the task's configs.

    Raises:
        ConfigError: an unknown key (naming the nearest valid one), a wrong type, a task config
            field clashing with a trainer key, or a value out of range.
    """
    if base is None:
        values, source = {}, "config"
    elif isinstance(base, Mapping):
        values, source = dict(base), "config"
    else:
        values, source = load_yaml(base), f"config file {str(base)!r}"
    if overrides is None:
        extra: dict[str, Any] = {}
    elif isinstance(overrides, Mapping):
        extra = dict(overrides)
    else:
        extra = parse_overrides(overrides)
    task_name = extra.get("task", values.get("task", TrainConfig.task))
    if not isinstance(task_name, str):
        raise ConfigError(f"task must be a registered task name (str), got {task_name!r}")
    if task_config_class is None:
        from hardalign.train.tasks import get_task_class

        task_config_class = get_task_class(task_name).Config
    train_types = _field_types(TrainConfig)
    task_types = _field_types(task_config_class)
    clashes = sorted(set(train_types) & set(task_types))
    if clashes:
        raise ConfigError(
            f"task {task_name!r}: {task_config_class.__name__} reuses trainer keys {clashes}; rename them in the task's Config"
        )
    valid = list(train_types) + list(task_types)
    train_kwargs: dict[str, Any] = {}
    task_kwargs: dict[str, Any] = {}
    for values_here, where in ((values, source), (extra, "command line")):
        for key, value in values_here.items():
            if key in train_types:
                train_kwargs[key] = _coerce(key, value, train_types[key], where)
            elif key in task_types:
                task_kwargs[key] = _coerce(key, value, task_types[key], where)
            else:
                raise _unknown_key(key, valid, where)
    try:
        train = TrainConfig(**train_kwargs)
        task = task_config_class(**task_kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as error:
        raise ConfigError(f"task {task_name!r} config: {error}") from error
    _check_estimator(train)
    return ResolvedConfig(train=train, task=task)


def _check_estimator(train: TrainConfig) -> None:
    """Catch a misspelt estimator or option now, not after the data are loaded."""
    from hardalign.estimators import ESTIMATORS, estimator_options

    if train.estimator not in ESTIMATORS:
        raise _unknown_value("estimator", train.estimator, list(ESTIMATORS))
    valid = estimator_options(train.estimator)
    for option in train.estimator_options:
        if option not in valid:
            raise ConfigError(
                f"estimator_options: {train.estimator!r} has no option {option!r}{did_you_mean(option, valid)} "
                f"(its options: {', '.join(sorted(valid)) or 'none'}; clear them with --estimator-options '')"
            )
    _probe_estimator(train)


def _probe_estimator(train: TrainConfig) -> None:
    """Build the estimator once and call it on zeros with K = num_samples: its own checks (option
    values, K >= 2 for leave-one-out baselines) fail now, as a config error, not at the first step."""
    import torch

    from hardalign.estimators import build_estimator

    try:
        estimator = build_estimator(train.estimator, **train.estimator_options)
    except (TypeError, ValueError) as error:
        raise ConfigError(f"estimator_options: {error}") from None
    shape = (train.num_samples, 1, 2)  # [K, B, T]
    try:
        with torch.no_grad():
            zeros = torch.zeros(shape, dtype=torch.float64)
            estimator(zeros, zeros, baseline=zeros if getattr(estimator, "takes_baseline", False) else None)
    except ValueError as error:  # the estimator's message says what it needs and how to fix it
        raise ConfigError(f"num_samples={train.num_samples} with estimator={train.estimator!r}: {error}") from None


def _unknown_value(key: str, value: str, valid: Sequence[str]) -> ConfigError:
    return ConfigError(f"{key}={value!r} is not registered{did_you_mean(value, valid)} (valid: {', '.join(valid)})")


def save_config(config: ResolvedConfig, path: str | os.PathLike) -> None:
    """Write the flat resolved config as YAML, atomically (a reader never sees half a file)."""
    from hardalign._io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config.to_dict(), sort_keys=False, default_flow_style=False))


def check_run(config: ResolvedConfig, *, training: bool = True) -> None:
    """Check what the run will need from the machine, before anything is created or loaded.

    :func:`resolve_config` already checked every key, type, range, the estimator with its options
    against ``num_samples``, and the task's own options (the speech task opens its noise folders
    there). This adds what depends on the machine and the file system:

    * ``device`` is available (``cuda`` on a machine without CUDA is an error, not a fallback);
    * every input folder of the task (a ``*_dir`` or ``*_root`` key other than ``out_dir``) exists;
    * ``out_dir`` can be created (its nearest existing parent is a writable folder);
    * with ``training``: ``resume`` names an existing file or folder, and a fresh run
      (``resume`` unset) does not start over a run that already has checkpoints.

    Raises:
        ConfigError: one line naming the key, the path and the fix.
    """
    from hardalign.train.distributed import resolve_device

    tc = config.train
    try:
        resolve_device(tc.device)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    for key, value in dataclasses.asdict(config.task).items():
        if (key.endswith("_dir") or key.endswith("_root")) and isinstance(value, str) and value:
            if not Path(value).is_dir():
                raise ConfigError(f"{key}={value!r}: no such folder (check the path, or prepare the data first)")
    out_dir = Path(tc.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ConfigError(f"out_dir={tc.out_dir!r} exists and is not a folder; choose another --out-dir")
    parent = out_dir
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"out_dir={tc.out_dir!r}: cannot create it ({str(parent)!r} is not writable); choose another --out-dir")
    if not training:
        return
    from hardalign.train.checkpoint import checkpoint_files

    newest = out_dir / "checkpoint.pt"
    if tc.resume is None:
        existing = ([newest] if newest.exists() else []) + checkpoint_files(newest)
        if existing:
            raise ConfigError(
                f"out_dir {tc.out_dir!r} already holds checkpoints ({existing[0].name}); "
                "continue it with --resume auto, or choose another --out-dir"
            )
    elif tc.resume != "auto" and not Path(tc.resume).exists():
        raise ConfigError(f"resume={tc.resume!r}: no such checkpoint file (use --resume auto to continue out_dir's newest)")
