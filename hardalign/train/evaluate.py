"""Score a trained checkpoint on a split and write the results as JSON and Markdown.

``hardalign evaluate --checkpoint exp/run/checkpoint.pt --split test`` rebuilds the task and
model from the config stored in the checkpoint (:func:`hardalign.train.run.load_run`;
command-line overrides still apply, e.g. ``--eval-num-samples 1000``), calls the task's
``evaluate`` and writes ``eval-<split>.json`` and ``eval-<split>.md`` beside the checkpoint (the run's ``out_dir`` for its own checkpoint).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from hardalign.train.checkpoint import atomic_write_bytes
from hardalign.train.config import ResolvedConfig
from hardalign.train.run import load_run

__all__ = ["evaluate_checkpoint", "results_markdown"]


def evaluate_checkpoint(
    config: ResolvedConfig | str | os.PathLike | None = None,
    *,
    checkpoint: str | os.PathLike | None = None,
    split: str = "test",
    overrides: Sequence[str] | dict[str, Any] | None = None,
    write: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint with its task's ``evaluate``.

    Args:
        config: a resolved config, a YAML file, or ``None`` to use the config stored in
            ``checkpoint``.
        checkpoint: the checkpoint file; default ``<out_dir>/checkpoint.pt`` of ``config``.
        split: ``dev`` or ``test``.
        overrides: applied on top of the config (``["--eval-num-samples", "1000"]``).
        write: write ``eval-<split>.json`` and ``eval-<split>.md`` beside the checkpoint (its run's
            ``out_dir`` unless the checkpoint was copied or averaged elsewhere: reports never
            overwrite those of the run it came from).

    Returns:
        ``{"task", "model", "uses_estimator", "estimator", "num_samples", "split", "step",
        "checkpoint", "metrics": {...}}``.

    Raises:
        ValueError: neither a config nor a checkpoint was given, or ``split`` is unknown.
        FileNotFoundError: the checkpoint does not exist (named).
    """
    if split not in ("dev", "test"):
        raise ValueError(f"split must be dev or test, got {split!r}")
    if config is None and checkpoint is None:
        raise ValueError("evaluate: give a config (--config FILE) or a checkpoint (--checkpoint PATH)")
    config, task, model, step, checkpoint, train_wall_s = load_run(checkpoint, overrides=overrides, config=config)
    tc = config.train
    with torch.no_grad():
        metrics = dict(task.evaluate(model, split))
    # the training time recorded in the checkpoint, not the task's own clock (it starts at load)
    if train_wall_s is not None:
        metrics["train_wall_s"] = train_wall_s
    else:
        metrics.pop("train_wall_s", None)
    result = {
        "task": tc.task,
        "model": type(model).__name__,
        # False for a model without a discrete latent (e.g. the CTC baseline): the estimator is unused
        "uses_estimator": bool(getattr(model, "uses_estimator", True)),
        "estimator": tc.estimator,
        "estimator_options": dict(tc.estimator_options),
        "num_samples": tc.num_samples,
        "split": split,
        "step": step,
        "checkpoint": str(checkpoint),
        "metrics": metrics,
    }
    if write:
        out_dir = Path(checkpoint).parent
        atomic_write_bytes(out_dir / f"eval-{split}.json", (json.dumps(result, indent=2) + "\n").encode("utf-8"))
        atomic_write_bytes(out_dir / f"eval-{split}.md", results_markdown(result).encode("utf-8"))
    return result


def results_markdown(result: dict[str, Any]) -> str:
    """A small Markdown report of one evaluation (what :func:`evaluate_checkpoint` writes).

    Example:
        >>> print(results_markdown({"task": "sbn", "estimator": "vimco", "num_samples": 4, "split": "test",
        ...                         "step": 10, "checkpoint": "c.pt", "metrics": {"bound": -99.5}}))
        # sbn: test
        <BLANKLINE>
        estimator `vimco`, K = 4, step 10, checkpoint `c.pt`
        <BLANKLINE>
        | metric | value |
        |---|---|
        | bound | -99.5 |
        <BLANKLINE>
        >>> print(results_markdown({"task": "timit", "model": "CTCRecognizer", "uses_estimator": False, "split": "dev",
        ...                         "step": 5, "checkpoint": "c.pt", "metrics": {}}).splitlines()[2])
        model `CTCRecognizer` (no discrete latent, no estimator), step 5, checkpoint `c.pt`
    """
    options = result.get("estimator_options") or {}
    extra = f" ({', '.join(f'{k}={v}' for k, v in options.items())})" if options else ""
    if result.get("uses_estimator", True):
        trained = f"estimator `{result['estimator']}`{extra}, K = {result['num_samples']}"
    else:
        trained = f"model `{result.get('model')}` (no discrete latent, no estimator)"
    lines = [
        f"# {result['task']}: {result['split']}",
        "",
        f"{trained}, step {result['step']}, checkpoint `{result['checkpoint']}`",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in result["metrics"].items():
        lines.append(f"| {name} | {value:.6g} |" if isinstance(value, float) else f"| {name} | {value} |")
    return "\n".join(lines) + "\n"
