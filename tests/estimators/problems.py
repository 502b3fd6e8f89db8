"""Small discrete-latent problems whose objectives can be enumerated exactly.

Each problem has proposal parameters ``phi`` and model parameters ``theta`` (both ``[N, D]``
leaves: N independent replicas of the same values, so one batched call yields N independent
gradient estimates). ``draw`` gives per-step log weights and log q for K particles of every
replica (``[K, N, T]``); ``sample`` adds a progress index ``[K, N, T]`` where the problem has one
(None otherwise); ``exact_objective`` enumerates the objective (the ELBO for K=1 or the K-sample
bound ``E log mean_k w^k``) for one replica, differentiably, in float64. With impossible states
(log weight ``-inf``) the K-sample bound counts the draws whose K particles are all impossible as
0, the convention of the VIMCO estimators.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import distributions as D

from hardalign.estimators import Alternative


class Draw(NamedTuple):
    log_weights: torch.Tensor  # [K, N, T]
    log_probs: torch.Tensor  # [K, N, T]
    progress: torch.Tensor | None  # [K, N, T] long, or None
    alternative: Alternative | None = None  # binary decisions: the other branch of every step


@dataclass
class Problem:
    name: str
    phi0: torch.Tensor  # [D]
    theta0: torch.Tensor  # [D]
    impossible_states = False  # some states have log weight -inf (only the VIMCO variants apply)

    def sample(self, phi, theta, num_samples, generator) -> Draw:
        return Draw(*self.draw(phi, theta, num_samples, generator), None)

    def leaves(self, replicas: int, dtype=torch.float64):
        phi = self.phi0.to(dtype).expand(replicas, -1).clone().requires_grad_(True)
        theta = self.theta0.to(dtype).expand(replicas, -1).clone().requires_grad_(True)
        return phi, theta


class IndependentBernoulli(Problem):
    """T independent Bernoulli steps; q(z_t) = sigmoid(phi_t); log p(z_t) + reward = z_t theta_t - softplus(theta_t) + r_t z_t."""

    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def __init__(self):
        super().__init__("bernoulli", torch.tensor([0.3, -0.2, 0.1]), torch.tensor([-0.4, 0.5, 0.2]))

    def step_terms(self, z, phi, theta):  # z [..., T] -> (log p + reward [..., T], log q [..., T])
        log_q = D.Bernoulli(logits=phi).log_prob(z)
        log_p = D.Bernoulli(logits=theta).log_prob(z) + self.reward.to(z) * z
        return log_p, log_q

    def decisions(self, phi, num_samples, generator):
        return torch.bernoulli(torch.sigmoid(phi).detach().expand(num_samples, *phi.shape), generator=generator)

    def draw(self, phi, theta, num_samples, generator):
        return self.sample(phi, theta, num_samples, generator)[:2]

    def sample(self, phi, theta, num_samples, generator) -> Draw:
        return binary_draw(self, self.decisions(phi, num_samples, generator), phi, theta, progress=False)

    def states(self):
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=len(self.phi0))), dtype=torch.float64)

    def exact_objective(self, phi, theta, num_samples):  # phi, theta [D]
        states = self.states()  # [S, T]
        log_p, log_q = self.step_terms(states, phi, theta)
        return _enumerate_bound((log_p - log_q).sum(-1), log_q.sum(-1), num_samples)


class SingleCategorical(Problem):
    """One categorical step over C values; q = softmax(phi); log p(z) + reward = log softmax(theta)_z + r_z."""

    reward = torch.tensor([0.5, -1.0, 1.5, 0.0], dtype=torch.float64)

    def __init__(self):
        super().__init__("categorical", torch.tensor([0.2, -0.3, 0.1, 0.4]), torch.tensor([0.0, 0.3, -0.2, 0.1]))

    def step_terms(self, z, phi, theta):  # z [...] long -> [..., 1]
        log_q = D.Categorical(logits=phi).log_prob(z)
        log_p = D.Categorical(logits=theta).log_prob(z) + self.reward.to(phi)[z]
        return log_p.unsqueeze(-1), log_q.unsqueeze(-1)

    def draw(self, phi, theta, num_samples, generator):
        probs = torch.softmax(phi.detach(), -1)
        z = torch.multinomial(probs, num_samples, replacement=True, generator=generator).T  # [K, N]
        log_p, log_q = self.step_terms(z, phi, theta)
        return log_p - log_q, log_q

    def exact_objective(self, phi, theta, num_samples):
        states = torch.arange(len(self.phi0))
        log_p, log_q = self.step_terms(states, phi, theta)
        return _enumerate_bound((log_p - log_q).sum(-1), log_q.sum(-1), num_samples)


class MarkovBernoulli(Problem):
    """T Bernoulli steps where z_t depends on z_{t-1}: logits phi_t + 1.5 z_{t-1} (q), theta_t - z_{t-1} (p),
    reward r_t z_t (1 - z_{t-1}) + offset (a constant per-step log-likelihood, as in real models where
    log p(y | z) is far below 0). Per-step weights are causal, so reward-to-go is unbiased."""

    reward = torch.tensor([1.0, -0.5, 2.0], dtype=torch.float64)

    def __init__(self, length: int = 3, offset: float = 0.0):
        gen = torch.Generator().manual_seed(length)
        super().__init__(
            f"markov{length}",
            0.5 * torch.randn(length, generator=gen, dtype=torch.float64),
            0.5 * torch.randn(length, generator=gen, dtype=torch.float64),
        )
        self.length, self.offset = length, offset
        if length != 3:
            self.reward = torch.randn(length, generator=gen, dtype=torch.float64)

    def step_terms(self, z, phi, theta):  # z [..., T]
        z_prev = torch.cat([torch.zeros_like(z[..., :1]), z[..., :-1]], dim=-1)
        log_q = D.Bernoulli(logits=phi + 1.5 * z_prev).log_prob(z)
        log_p = D.Bernoulli(logits=theta - z_prev).log_prob(z) + self.reward.to(z) * z * (1 - z_prev) + self.offset
        return log_p, log_q

    def draw(self, phi, theta, num_samples, generator):
        return self.sample(phi, theta, num_samples, generator)[:2]

    def sample(self, phi, theta, num_samples, generator) -> Draw:
        z_prev = torch.zeros(num_samples, phi.shape[0], dtype=phi.dtype)
        steps = []
        for t in range(self.length):
            probs = torch.sigmoid(phi[:, t].detach() + 1.5 * z_prev)
            z_prev = torch.bernoulli(probs, generator=generator)
            steps.append(z_prev)
        return binary_draw(self, torch.stack(steps, -1), phi, theta, progress=False)  # z [K, N, T]

    def states(self):
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.length)), dtype=torch.float64)

    def exact_objective(self, phi, theta, num_samples):
        log_p, log_q = self.step_terms(self.states(), phi, theta)
        return _enumerate_bound((log_p - log_q).sum(-1), log_q.sum(-1), num_samples)


class LabelCounter(Problem):
    """A toy hard alignment with label structure: T binary emit/skip decisions and U labels.

    The progress index is the counter ``c_t = sum_{i<t} z_i`` (labels emitted before t), the state
    that q and p condition on: q emits with logit ``phi_t - pace (c_t - U t / T)`` (it keeps pace with
    the labels; ``pace`` 0.8 by default), p with ``theta_t + 0.3 c_t``.
    Emitting label ``c`` at step t scores ``r[c, t]`` (label c fits best near its own time), a
    skip costs ``offset``; at the end every label not emitted costs 2 nats. With ``strict``,
    emitting more than U labels is impossible (log weight ``-inf`` from that step on), otherwise it
    costs 3 nats. Particles at the same t have emitted different numbers of labels, which is what
    progress alignment is for.

    With ``policy`` (speech-like: the proposal is the model's own alignment policy, so
    ``log p(z) - log q(z)`` cancels and ``log w`` is the reward ``log p(y | z)``): emitting label c at
    t costs ``-cost_c - 0.4 |t - centre_c| + theta_t`` with a label-specific ``cost_c`` in [1, 4]
    nats, skips cost nothing, a missing or an extra label 3 nats. Here the labels, not the frames,
    carry the log-likelihood, as in the speech model.
    """

    def __init__(
        self, length: int = 5, labels: int = 2, offset: float = -0.5, strict: bool = False, policy: bool = False, pace: float = 0.8
    ):
        gen = torch.Generator().manual_seed(100 + length)
        super().__init__(
            f"labels{length}" + ("-policy" if policy else "") + ("-strict" if strict else ""),
            0.3 * torch.randn(length, generator=gen, dtype=torch.float64),
            0.3 * torch.randn(length, generator=gen, dtype=torch.float64),
        )
        self.length, self.labels, self.offset, self.strict = length, labels, offset, strict
        self.impossible_states = strict
        centres = torch.linspace(0, length - 1, labels + 2, dtype=torch.float64)[1:-1]  # label u fits near centres[u]
        time = torch.arange(length, dtype=torch.float64)
        self.score = 1.5 - 0.6 * (time[None, :] - centres[:, None]).abs()  # [U, T]
        self.pace = labels * time / length  # labels due before t
        self.policy, self.coupling = policy, pace
        if policy:
            cost = 1.0 + 3.0 * torch.rand(labels, generator=gen, dtype=torch.float64)
            self.score = -cost[:, None] - 0.4 * (time[None, :] - centres[:, None]).abs()

    def step_terms(self, z, phi, theta):  # z [..., T] -> (log p [..., T], log q [..., T])
        counter = exclusive_count(z)  # labels emitted before t
        log_q = D.Bernoulli(logits=phi - self.coupling * (counter - self.pace.to(z))).log_prob(z)
        label = counter.long().clamp_max(self.labels - 1)
        time = torch.arange(self.length).expand_as(label)
        fits = self.score.to(z)[label, time]
        extra = counter >= self.labels  # an emission beyond the last label
        emission = torch.where(extra, torch.full_like(fits, -3.0), fits)
        if self.policy:  # log p(z) = log q(z): only the labels' log-likelihood remains
            log_p = log_q + z * (emission + theta)
            missing_cost = 3.0
        else:
            log_p = D.Bernoulli(logits=theta + 0.3 * counter).log_prob(z)
            log_p = log_p + torch.where(z > 0, emission, torch.full_like(fits, self.offset))
            missing_cost = 2.0
        missing = (self.labels - z.sum(-1)).clamp_min(0)  # labels never emitted
        log_p = torch.cat([log_p[..., :-1], log_p[..., -1:] - missing_cost * missing.unsqueeze(-1)], dim=-1)
        if self.strict:
            log_p = log_p.masked_fill(extra & (z > 0), float("-inf"))
        return log_p, log_q

    def sample(self, phi, theta, num_samples, generator) -> Draw:
        counter = torch.zeros(num_samples, phi.shape[0], dtype=phi.dtype)
        steps = []
        for t in range(self.length):
            probs = torch.sigmoid(phi[:, t].detach() - self.coupling * (counter - float(self.pace[t])))
            z_t = torch.bernoulli(probs, generator=generator)
            steps.append(z_t)
            counter = counter + z_t
        return binary_draw(self, torch.stack(steps, -1), phi, theta, progress=True)  # z [K, N, T]

    def draw(self, phi, theta, num_samples, generator):
        return self.sample(phi, theta, num_samples, generator)[:2]

    def states(self):
        return torch.tensor(list(itertools.product([0.0, 1.0], repeat=self.length)), dtype=torch.float64)

    def exact_objective(self, phi, theta, num_samples):
        log_p, log_q = self.step_terms(self.states(), phi, theta)
        return _enumerate_bound((log_p - log_q).sum(-1), log_q.sum(-1), num_samples)


def binary_draw(problem, z, phi, theta, *, progress: bool) -> Draw:
    """The draw of binary decisions ``z [K, N, T]``, with the other branch of every step: flip
    ``z_t`` alone and take step t's log weight (step t's terms depend on ``z_{<=t}`` only)."""
    log_p, log_q = problem.step_terms(z, phi, theta)
    columns = []
    for t in range(z.shape[-1]):
        flipped = z.clone()
        flipped[..., t] = 1 - flipped[..., t]
        other_p, other_q = problem.step_terms(flipped, phi, theta)
        columns.append((other_p - other_q)[..., t].detach())
    # a policy problem's log weights do not depend on q (log p carries log q): no weight control there
    alternative = Alternative(taken=z > 0.5, log_weights=torch.stack(columns, -1), carries_log_q=not getattr(problem, "policy", False))
    return Draw(log_p - log_q, log_q, exclusive_count(z).long() if progress else None, alternative)


def with_prefix_values(alternative: Alternative) -> Alternative:
    """The alternative with "model values" for the lookahead (``values="model"``): any function of
    ``z_{<=t}`` keeps the estimate unbiased; here one of the decisions so far (with step t's branch)
    and of the steps left."""
    z = alternative.taken.to(alternative.log_weights.dtype)
    count = exclusive_count(z)
    left = torch.arange(z.shape[-1] - 1, -1, -1, dtype=z.dtype)  # steps after t
    return alternative._replace(values=torch.stack([0.4 * (count + d) - 0.2 * left for d in (1, 0)]))


def exclusive_count(z: torch.Tensor) -> torch.Tensor:
    """``sum_{i < t} z_i`` along the last axis."""
    return torch.cat([torch.zeros_like(z[..., :1]), z.cumsum(-1)[..., :-1]], dim=-1)


def _enumerate_bound(log_w: torch.Tensor, log_q: torch.Tensor, num_samples: int) -> torch.Tensor:
    """``E_{z^1..z^K ~ q} log mean_k w^k`` by enumerating all S^K tuples of the S states; a tuple of
    impossible states only (all ``log w = -inf``) counts as 0."""
    num_states = log_w.shape[0]
    tuples = torch.tensor(list(itertools.product(range(num_states), repeat=num_samples)))  # [S^K, K]
    log_prob = log_q[tuples].sum(-1)
    tuple_log_w = log_w[tuples]  # [S^K, K]
    dead = (tuple_log_w == float("-inf")).all(-1)
    safe = torch.where(dead.unsqueeze(-1), torch.zeros_like(tuple_log_w), tuple_log_w)  # no NaN in logsumexp's backward
    bound = torch.where(dead, torch.zeros_like(log_prob), torch.logsumexp(safe, dim=-1) - math.log(num_samples))
    return (log_prob.exp() * bound).sum()


PROBLEMS = [IndependentBernoulli(), SingleCategorical(), MarkovBernoulli(3), LabelCounter(5), LabelCounter(5, policy=True)]
#: problems with impossible states: only the VIMCO variants have a finite objective there
IMPOSSIBLE_PROBLEMS = [LabelCounter(5, strict=True)]
