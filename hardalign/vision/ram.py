"""The Recurrent Attention Model (RAM, Mnih et al. 2014) on the hard-attention protocol.

Per step t (``N = K * B`` folded rows):

* policy: ``l_t ~ Normal(tanh(W_l h_{t-1}), sigma^2 I)`` with a *fixed* sigma; the log-prob is
  of the raw sample, which is clamped to ``[-1, 1]`` only afterwards, when it is read;
* read: the :class:`~hardalign.vision.retina.Retina` at ``clamp(l_t)``;
* glimpse network: ``g_t = relu(W_g f(rho) + W_gl relu(W_pl l_t))`` with ``f(rho) = relu(W_p rho)``
  (``glimpse_net: mlp``, RAM's) or a small convolutional network over the retina's scales
  stacked as channels (``glimpse_net: conv``: two 3x3 convolutions of 16 and 32 channels, each
  followed by 2x2 max-pooling, then a linear layer);
* core: ``h_t = LSTM(g_t, h_{t-1})`` (or RAM's ``relu(W_h h_{t-1} + W_x g_t)``); ``h_0 = 0``, or
  with ``context=True`` (DRAM's context network, Ba et al. 2015, in its simplest form)
  ``h_0 = tanh(W_0 pool(x))`` from the whole image average-pooled to the retina's patch size, so
  that the first glimpse's location already depends on the image;
* classifier ``softmax(W_c h_t)`` at the last step (at every step with per-step rewards or the
  auxiliary per-step loss, :mod:`hardalign.vision.model`); NVIL's baseline ``b_t = w_b h_{t-1} + c``.

Gradient routing: the location network reads ``h_{t-1}`` detached, and the location fed to the
glimpse network is the (detached) sample, so the classifier's log-likelihood never reaches the
location network and the location network's only gradient is the estimator's score-function
term. (With ``detach_policy_input=False`` the score-function term also trains the core, as in
the paper's end-to-end REINFORCE; the classification gradient still never reaches ``W_l``.)
``policy="random"`` draws locations uniformly from ``[-1, 1]^2`` instead (the random-glimpse
control: the same model with an untrained, uniform policy).
"""

from __future__ import annotations

import torch
from torch import distributions as D
from torch import nn

from hardalign.objective import LatentOutput
from hardalign.vision.model import GlimpseModel, images_to_float
from hardalign.vision.retina import Retina

__all__ = ["RAM"]

POLICIES = ("learned", "random")
CORES = ("lstm", "rnn")
GLIMPSE_NETS = ("mlp", "conv")


class ConvGlimpse(nn.Module):
    """``[N, S, C, p, p]`` retina patches -> ``[N, out_features]``: the scales stacked as channels,
    conv3x3(16) - relu - maxpool2 - conv3x3(32) - relu - maxpool2 - linear - relu."""

    def __init__(self, in_channels: int, patch_size: int, out_features: int, widths: tuple[int, int] = (16, 32)):
        super().__init__()
        self.convs = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(widths[0], widths[1], 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        side = patch_size // 4
        if side < 1:
            raise ValueError(f"glimpse_net='conv' needs patch_size >= 4, got {patch_size}")
        self.linear = nn.Linear(widths[1] * side * side, out_features)

    def forward(self, glimpse: torch.Tensor) -> torch.Tensor:
        x = glimpse.flatten(1, 2)  # [N, S, C, p, p] -> [N, S * C, p, p]
        return torch.relu(self.linear(self.convs(x).flatten(1)))


class RAM(GlimpseModel):
    """Recurrent Attention Model.

    Args:
        in_channels: image channels (1 or 3).
        num_classes: classifier outputs.
        num_glimpses: T.
        patch_size, num_scales, scale_factor: the retina.
        glimpse_hidden: width of the what / where branches of the glimpse network.
        hidden_size: glimpse feature and core state size.
        core: ``lstm`` or ``rnn``.
        location_std: fixed sigma of the Gaussian policy (in the ``[-1, 1]`` location units).
        policy: ``learned`` or ``random``.
        detach_policy_input: the location network (and NVIL baseline) see ``h`` detached.
        glimpse_net: ``mlp`` (RAM's) or ``conv`` for the "what" branch.
        context: start the core from a coarse view of the whole image instead of zeros.
        step_rewards, step_loss_weight: per-step log weights (``final``, ``increments``, ``sum``)
            and the auxiliary per-step cross-entropy (:mod:`hardalign.vision.model`).

    Example:
        >>> from hardalign.estimators import build_estimator
        >>> from hardalign.objective import training_terms
        >>> model = RAM(num_glimpses=3, patch_size=4, num_scales=2, glimpse_hidden=8, hidden_size=16)
        >>> batch = {"images": torch.rand(5, 1, 20, 30), "labels": torch.randint(0, 10, (5,))}
        >>> terms = training_terms(model(batch, num_samples=2, step=0), build_estimator("vimco"))
        >>> terms["loss"].shape, {"loss", "objective", "accuracy", "entropy", "ess"} <= set(terms)
        (torch.Size([]), True)
    """

    def __init__(
        self,
        *,
        in_channels: int = 1,
        num_classes: int = 10,
        num_glimpses: int = 6,
        patch_size: int = 12,
        num_scales: int = 3,
        scale_factor: int = 2,
        glimpse_hidden: int = 128,
        hidden_size: int = 256,
        core: str = "lstm",
        location_std: float = 0.15,
        policy: str = "learned",
        detach_policy_input: bool = True,
        glimpse_net: str = "mlp",
        context: bool = False,
        step_rewards: str = "final",
        step_loss_weight: float = 0.0,
    ):
        super().__init__()
        if glimpse_net not in GLIMPSE_NETS:
            raise ValueError(f"RAM: glimpse_net must be one of {GLIMPSE_NETS}, got {glimpse_net!r}")
        self.set_rewards(step_rewards, step_loss_weight)
        if policy not in POLICIES:
            raise ValueError(f"RAM: policy must be one of {POLICIES}, got {policy!r}")
        if core not in CORES:
            raise ValueError(f"RAM: core must be one of {CORES}, got {core!r}")
        if location_std <= 0:
            raise ValueError(f"RAM: location_std must be > 0, got {location_std}")
        if num_glimpses < 1:
            raise ValueError(f"RAM: num_glimpses must be >= 1, got {num_glimpses}")
        self.num_glimpses = num_glimpses
        self.in_channels = in_channels
        self.hidden_size = hidden_size
        self.location_std = location_std
        self.policy_kind = policy
        self.core_kind = core
        self.detach_policy_input = detach_policy_input
        self.retina = Retina(patch_size, num_scales, scale_factor)
        retina_size = num_scales * in_channels * patch_size * patch_size
        # glimpse network: what (patches) and where (location) branches, then a joint layer
        if glimpse_net == "conv":
            self.what = ConvGlimpse(num_scales * in_channels, patch_size, glimpse_hidden)
        else:
            self.what = nn.Linear(retina_size, glimpse_hidden)
        self.where = nn.Linear(2, glimpse_hidden)
        self.glimpse_what = nn.Linear(glimpse_hidden, hidden_size)
        self.glimpse_where = nn.Linear(glimpse_hidden, hidden_size)
        if core == "lstm":
            self.core = nn.LSTMCell(hidden_size, hidden_size)
        else:
            self.core_input = nn.Linear(hidden_size, hidden_size)
            self.core_hidden = nn.Linear(hidden_size, hidden_size)
        self.locator = nn.Linear(hidden_size, 2)  # the location network (mean of the policy)
        self.baseline_net = nn.Linear(hidden_size, 1)  # NVIL's input-dependent baseline
        self.classifier = nn.Linear(hidden_size, num_classes)
        # DRAM-style context network: the coarse whole image -> the core's initial state
        self.context = nn.Linear(in_channels * patch_size * patch_size, hidden_size) if context else None

    # ----- memory and state -------------------------------------------------------------------
    def encode(self, batch: dict) -> dict:
        """``{"images", ["labels"]}`` -> the rollout memory (float images ``[B, C, H, W]``)."""
        images = images_to_float(batch["images"], self.classifier.weight.dtype)
        if images.shape[1] != self.in_channels:
            raise ValueError(f"RAM was built for {self.in_channels} channel(s), got images of shape {tuple(images.shape)}")
        # the retina's summed-area table, once per image (every glimpse reads it: Retina.read)
        memory = {"images": images, "retina_table": self.retina.integral(images)}
        if self.context is not None:
            coarse = nn.functional.adaptive_avg_pool2d(images, self.retina.patch_size).flatten(1)  # [B, C * p * p]
            memory["context"] = torch.tanh(self.context(coarse))  # [B, hidden], folded for K by rollout
        if batch.get("labels") is not None:
            memory["labels"] = batch["labels"]
        return memory

    def initial_state(self, memory: dict) -> dict:
        images = memory["images"]
        zeros = images.new_zeros(images.shape[0], self.hidden_size)
        h = memory["context"] if self.context is not None else zeros
        return {"h": h, "c": zeros, "t": 0, "baselines": (), "logits": None}

    # ----- protocol ---------------------------------------------------------------------------
    def location_policy(self, state: dict, memory: dict) -> D.Distribution:
        h = state["h"].detach() if self.detach_policy_input else state["h"]
        if self.policy_kind == "random":
            low = h.new_full((h.shape[0], 2), -1.0)
            return D.Independent(D.Uniform(low, torch.ones_like(low), validate_args=False), 1)
        mean = torch.tanh(self.locator(h))  # [N, 2]
        return D.Independent(D.Normal(mean, torch.full_like(mean, self.location_std), validate_args=False), 1)

    def read(self, memory: dict, location: torch.Tensor) -> torch.Tensor:
        # the log-prob was taken of the raw sample; the retina sees the clamped one
        images = memory["images"]
        height, width = images.shape[-2:]
        return self.retina.read(memory["retina_table"], location.clamp(-1.0, 1.0), height, width, images.dtype)  # [N, S, C, p, p]

    def step(self, state: dict, memory: dict, location: torch.Tensor, glimpse: torch.Tensor) -> dict:
        location = location.detach().clamp(-1.0, 1.0)  # never a path into the location network
        what = self.what(glimpse) if isinstance(self.what, ConvGlimpse) else torch.relu(self.what(glimpse.flatten(1)))
        where = torch.relu(self.where(location))
        features = torch.relu(self.glimpse_what(what) + self.glimpse_where(where))  # [N, hidden]
        h_prev = state["h"]
        baseline = self.baseline_net(h_prev.detach() if self.detach_policy_input else h_prev).squeeze(-1)  # [N]
        if self.core_kind == "lstm":
            h, c = self.core(features, (h_prev, state["c"]))
        else:
            h, c = torch.relu(self.core_input(features) + self.core_hidden(h_prev)), state["c"]
        t = state["t"] + 1
        logits = self.classifier(h) if (t == memory["num_steps"] or self.classify_every_step) else None
        return {"h": h, "c": c, "t": t, "baselines": state["baselines"] + (baseline,), "logits": logits}

    # ----- training ---------------------------------------------------------------------------
    def forward(self, batch: dict, *, num_samples: int, step: int = 0) -> LatentOutput:
        """Training: K glimpse sequences per image (:meth:`GlimpseModel.latent_output`)."""
        return self.latent_output(self.encode(batch), num_samples=num_samples)

    # ----- pictures ---------------------------------------------------------------------------
    def glimpse_boxes(self, locations: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Pixel boxes of every scale of every glimpse, ``[B, T, S, 4]`` as (top, left, bottom, right).

        Args:
            locations: raw locations ``[B, T, 2]`` (clamped here, as the retina does).
        """
        from hardalign.vision.retina import glimpse_boxes

        flat = locations.clamp(-1.0, 1.0).reshape(-1, 2)
        boxes = [glimpse_boxes(flat, height, width, size) for size in self.retina.sizes()]
        return torch.stack(boxes, dim=1).reshape(*locations.shape[:-1], len(boxes), 4)
