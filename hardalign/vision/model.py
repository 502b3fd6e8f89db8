"""What every glimpse classifier shares: the multi-sample objective and single-rollout decoding.

A glimpse model implements :class:`hardalign.attention.HardAttention`; its proposal is its own
location policy pi, so the per-step log p term of step t is ``log pi(l_t | past)`` (it cancels
the rollout's ``log q``) plus the step's reward. Write ``a_t = log p(y | x, l_{1..t})`` for the
log-likelihood of the label after glimpse t. ``step_rewards`` chooses the per-step log weights
``l_t`` (docs/vision.md):

* ``final`` (RAM): ``l_t = 0`` for ``t < T`` and ``l_T = a_T``: one reward at the end.
* ``increments``: ``l_1 = a_1``, ``l_t = a_t - a_{t-1}``. They sum to ``a_T``, so the objective
  (and its pathwise gradient: the intermediate terms cancel) is exactly that of ``final``; only
  the score-function signals change. The reward-to-go of decision t is ``a_T - a_{t-1}``: the
  final log-likelihood minus what was known before glimpse t, which depends only on earlier
  glimpses (and the label), i.e. a baseline, so every estimator stays unbiased for the same
  objective; ``vimco-seq`` now has per-step weights to work with and differs from ``vimco``.
* ``sum`` (DRAM / Saccader style: a reward after every glimpse): ``l_t = a_t``, a *different*
  objective, ``sum_t a_t``, that also asks the early glimpses to classify; its pathwise
  gradient trains every intermediate prediction.

So the estimators see, per particle,

    log w^k = sum_t l_t^k,   objective (K > 1)  log (1/K) sum_k w^k

(``final`` and ``increments``: ``log w^k = log p(y | x, l^k)``). ``step_loss_weight`` adds an
auxiliary loss term ``step_nll = -step_loss_weight * mean_{t < T} a_t`` (mean over particles and
examples): the intermediate predictions are trained as classifiers (deep supervision) outside the
estimator. The location network never receives it (its inputs are detached), so the policy's
gradient is still only the estimator's. With ``increments`` it is what makes ``a_{t-1}`` a good
baseline; without it the intermediate predictions of ``increments`` are untrained (still unbiased).

Subclasses provide ``encode(batch) -> memory``, the protocol methods,
``location_policy(state, memory)`` (the distribution, used by both ``policy`` and ``update``)
and put the class logits after the step in ``state["logits"]`` (every step when
``self.classify_every_step``, else at least at the last) and baseline predictions in
``state["baselines"]`` (a tuple with one ``[N]`` tensor per step). Their training ``forward``
returns a :class:`hardalign.objective.LatentOutput` (:meth:`GlimpseModel.latent_output`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import distributions as D
from torch import nn

from hardalign.attention import Trajectory, rollout
from hardalign.objective import LatentOutput
from hardalign.sampling import unfold

__all__ = ["GlimpseModel", "images_to_float", "greedy_rollout", "STEP_REWARDS"]

#: the per-step log weights a glimpse model can give the estimators (module docstring)
STEP_REWARDS = ("final", "increments", "sum")


def images_to_float(images: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """uint8 ``[B, H, W]`` / ``[B, C, H, W]`` (or float already in [0, 1]) -> float ``[B, C, H, W]``."""
    if images.dim() == 3:
        images = images.unsqueeze(1)  # [B, H, W] -> [B, 1, H, W]
    if images.dim() != 4:
        raise ValueError(f"images must be [B, H, W] or [B, C, H, W], got shape {tuple(images.shape)}")
    if images.dtype == torch.uint8:
        return images.to(dtype) / 255.0
    if not images.is_floating_point():
        raise ValueError(f"images must be uint8 or floating point, got {images.dtype}")
    return images


def greedy_rollout(model: Any, memory: Any, *, num_steps: int) -> tuple[Any, torch.Tensor]:
    """Run the protocol with the mode of each policy (RAM: the mean; Categorical: the argmax).

    Same loop as :func:`hardalign.attention.rollout` with K = 1, but deterministic decisions.

    Returns:
        ``(final_state, locations [B, T, ...])``.
    """
    state = model.initial_state(memory)
    locations = []
    for _ in range(num_steps):
        dist = model.policy(state, memory)
        location = dist.mode.detach()
        glimpse = model.read(memory, location)
        state, _, _ = model.update(state, memory, location, glimpse)
        locations.append(location)
    return state, torch.stack(locations, dim=1)


class GlimpseModel(nn.Module):
    """Base class: estimator training through :func:`rollout` and single-rollout prediction.

    Subclasses set ``self.num_glimpses`` and implement ``encode``, ``initial_state``,
    ``location_policy``, ``read``, ``step`` (``(state, memory, location, glimpse) -> state``, with
    ``state["t"]`` advanced, ``state["logits"]`` the class logits after the step).
    """

    num_glimpses: int
    step_rewards: str = "final"
    step_loss_weight: float = 0.0

    def set_rewards(self, step_rewards: str = "final", step_loss_weight: float = 0.0) -> None:
        """Choose the per-step log weights and the auxiliary per-step loss (module docstring)."""
        if step_rewards not in STEP_REWARDS:
            raise ValueError(f"{type(self).__name__}: step_rewards must be one of {STEP_REWARDS}, got {step_rewards!r}")
        if step_loss_weight < 0:
            raise ValueError(f"{type(self).__name__}: step_loss_weight must be >= 0, got {step_loss_weight}")
        self.step_rewards = step_rewards
        self.step_loss_weight = float(step_loss_weight)

    @property
    def classify_every_step(self) -> bool:
        """Whether every step needs the class logits (per-step rewards or the auxiliary loss)."""
        return self.step_rewards != "final" or self.step_loss_weight > 0

    # ----- the HardAttention protocol -------------------------------------------------------
    def policy(self, state: dict, memory: dict) -> D.Distribution:
        return self.location_policy(state, memory)

    def update(self, state: dict, memory: dict, location: torch.Tensor, glimpse: torch.Tensor):
        # log pi(l_t | past), recomputed from the state the decision was made in: with the policy
        # as proposal it cancels log q in the log weight (value and gradient), see module docstring
        log_pi = self.location_policy(state, memory).log_prob(location)  # [N]
        previous = state.get("step_log_lik", ())
        state = self.step(state, memory, location, glimpse)
        log_p = log_pi
        labels = memory.get("labels")
        last = state["t"] == memory["num_steps"]
        if labels is not None and (last or self.classify_every_step):
            log_lik = torch.log_softmax(state["logits"], dim=-1).gather(-1, labels[:, None]).squeeze(-1)  # a_t [N]
            state["step_log_lik"] = previous + (log_lik,)
            if self.step_rewards == "sum":
                log_p = log_p + log_lik
            elif self.step_rewards == "increments":
                log_p = log_p + (log_lik - previous[-1] if previous else log_lik)
            elif last:
                log_p = log_p + log_lik
        return state, log_p, torch.ones_like(log_pi, dtype=torch.bool)

    # ----- training -------------------------------------------------------------------------
    def run(self, memory: dict, *, num_samples: int, num_steps: int | None = None, generator=None) -> Trajectory:
        """One batched rollout of ``num_samples`` particles (``num_steps`` defaults to ``num_glimpses``)."""
        num_steps = self.num_glimpses if num_steps is None else num_steps
        memory = dict(memory, num_steps=num_steps)
        return rollout(self, memory, num_samples=num_samples, num_steps=num_steps, generator=generator)

    def latent_output(self, memory: dict, *, num_samples: int, entropy_weight: float = 0.0) -> LatentOutput:
        """Roll out K particles: the training output the objective layer applies the estimator to.

        The baseline is the per-step prediction in ``state["baselines"]`` (from the state each
        decision was made in); ``entropy_bonus`` (``-entropy_weight`` times the policy's mean
        entropy per free step) is a loss term when ``entropy_weight > 0``, ``step_nll`` (the
        auxiliary cross-entropy of the predictions before the last glimpse, module docstring)
        when ``step_loss_weight > 0``; ``accuracy`` (after the last glimpse) and ``entropy`` are
        logged, and ``log_lik_first`` (``a_1``, after the first glimpse) when every step classifies.
        """
        traj = self.run(memory, num_samples=num_samples)
        logits = unfold(traj.final_state["logits"], num_samples)  # [K * B, C] -> [K, B, C]
        correct = (logits.argmax(-1) == memory["labels"]).to(logits.dtype)
        entropy = (traj.entropy.sum(-1) / traj.mask.sum(-1).clamp_min(1)).mean()  # per free step
        losses = {"entropy_bonus": -entropy_weight * entropy} if entropy_weight else {}
        step_log_lik = traj.final_state.get("step_log_lik", ())
        if self.step_loss_weight > 0 and len(step_log_lik) > 1:
            early = torch.stack(step_log_lik[:-1], dim=1)  # (T - 1) x [K * B] -> [K * B, T - 1]
            losses["step_nll"] = -self.step_loss_weight * early.mean()
        baselines = traj.final_state.get("baselines")
        baseline = unfold(torch.stack(baselines, dim=1), num_samples) if baselines else None  # [K * B, T] -> [K, B, T]
        metrics = {"entropy": entropy.detach(), "accuracy": correct.mean().detach()}
        if len(step_log_lik) == self.num_glimpses > 1:
            metrics["log_lik_first"] = step_log_lik[0].mean().detach()
        return LatentOutput(traj, baseline=baseline, losses=losses, metrics=metrics)

    # ----- prediction -----------------------------------------------------------------------
    @torch.no_grad()
    def predict(
        self,
        batch: dict,
        *,
        num_steps: int | None = None,
        mc_samples: int = 1,
        greedy: bool = False,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Class probabilities and the glimpse locations of the first rollout.

        Args:
            batch: ``{"images": ...}`` (labels are not needed).
            num_steps: glimpses (default ``num_glimpses``).
            mc_samples: M rollouts whose class probabilities are averaged (M = 1: one rollout,
                the honest single-rollout number; M > 1 is Monte Carlo averaging).
            greedy: take the policy's mode instead of sampling (then M must be 1).
            generator: optional generator for the sampled locations.

        Returns:
            ``(probs [B, C], locations [B, T, ...])``.
        """
        num_steps = self.num_glimpses if num_steps is None else num_steps
        memory = self.encode({key: value for key, value in batch.items() if key != "labels"})
        memory["num_steps"] = num_steps
        if greedy:
            if getattr(self, "policy_kind", None) == "random":
                raise ValueError("predict(): a random-location policy has no mode; evaluate it with greedy=False")
            if mc_samples != 1:
                raise ValueError("predict(): greedy decisions are deterministic; use mc_samples=1")
            state, locations = greedy_rollout(self, memory, num_steps=num_steps)
            return torch.softmax(state["logits"], -1), locations
        traj = self.run(memory, num_samples=mc_samples, num_steps=num_steps, generator=generator)
        probs = torch.softmax(unfold(traj.final_state["logits"], mc_samples), -1)  # [M, B, C]
        return probs.mean(0), traj.locations[0]
