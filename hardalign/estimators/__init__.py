"""Gradient estimators for discrete latent variables: REINFORCE, NVIL, VIMCO, sequential VIMCO.

Every estimator follows one call convention::

    out = estimator(log_weights, log_probs, mask=None, *, baseline=None, progress=None, alternative=None)

* ``log_weights``: per-step log weights ``l_t^k`` ``[K, B, T]`` (or per-sample totals ``[K, B]``);
  ``log w^k = sum_t l_t^k = log p(y, z^k | x) - log q(z^k | x, y)``. They carry the model's
  pathwise gradient; padding steps must be 0.
* ``log_probs``: ``log q`` of the sampled decisions ``[K, B, T]`` (or ``[K, B]``), differentiable in
  the proposal's parameters.
* ``mask``: bool ``[K, B, T]``, the steps whose decision gets a learning signal (padding and
  forced steps excluded).
* ``baseline``: an input-dependent baseline ``b_psi`` from the caller's network, ``[K, B]`` or
  ``[K, B, T]``. Every module has a read-only ``takes_baseline``: True for ``nvil`` and for
  ``reinforce`` with ``baseline="learned"`` (which requires it); pass the prediction only then.
  The estimator subtracts it detached and, when it requires grad, adds its regression onto the
  detached returns to the loss (``stats["baseline_loss"]``). The VIMCO variants refuse one.
* ``progress``: an integer ``[K, B, T]`` index, non-decreasing along T, a function of ``z^k_{<t}``
  (for the speech model: labels emitted before step t). Only ``vimco-seq`` uses it, to match
  steps across particles (unless ``align="time"``); every other estimator's signals do not
  depend on how steps align, and it ignores it.
* ``alternative``: for binary decisions, an :class:`Alternative` ``(taken [K, B, T] bool,
  log_weights [K, B, T])``: the sampled decision and the step log weight had the other been
  taken at that step (same past). ``vimco-seq`` (``lookahead=True``, the default) then weighs
  both branches of each step in its stand-in (and, with ``future_control``, subtracts the
  later decisions' innovations from each step's signal); the others ignore it. Its
  ``carries_log_q`` says whether the log weights carry ``-log q`` (``vimco-seq``'s
  ``weight_control="auto"`` reads it). Its optional ``values`` ``[2, K, B, T]`` (or a callable
  returning them) are the model's expected log weight of the later steps under each branch;
  ``vimco-seq`` (``values="auto"``, the default) builds the stand-ins from them instead of from
  the other particles.

Value checks cost a host synchronisation and are opt-in: ``check_finite=True`` (an option of every
module and pure function) raises a ValueError naming the argument for NaN (or ``+inf``) log
weights, non-finite ``log_q`` on masked-in steps, a non-finite baseline or a decreasing progress.

``out.loss`` is a scalar to minimise whose negative gradient is the gradient estimate;
``out.objective`` ``[B]``, ``out.signals`` and ``out.stats`` are detached.

Each estimator exists as a pure function (``reinforce_loss``, ``nvil_loss``, ``vimco_loss``,
``sequential_vimco_loss``) and as an ``nn.Module`` in :data:`ESTIMATORS` that holds the state
(moving averages, NVIL's running statistics); :func:`build_estimator` builds one by name.

Example:
    >>> import torch
    >>> from hardalign.estimators import build_estimator
    >>> logits = torch.zeros(5, requires_grad=True)
    >>> q = torch.distributions.Bernoulli(logits=logits.expand(8, 3, 5))  # K=8, B=3, T=5
    >>> z = q.sample()
    >>> log_weights = z * 0.5 - (1 - z) * 0.5  # a per-step reward
    >>> out = build_estimator("vimco-seq")(log_weights, q.log_prob(z))
    >>> out.loss.backward()
    >>> out.objective.shape, logits.grad.shape
    (torch.Size([3]), torch.Size([5]))
"""

from hardalign.estimators._baselines import leave_one_out_mean, reward_to_go
from hardalign.estimators._inputs import Alternative, EstimatorOutput
from hardalign.estimators._logspace import leave_one_out_logsumexp, log_mean_exp
from hardalign.estimators._nvil import NVIL, nvil_loss
from hardalign.estimators._registry import ESTIMATORS, build_estimator, estimator_options
from hardalign.estimators._reinforce import REINFORCE, reinforce_loss
from hardalign.estimators._surrogate import score_function_surrogate
from hardalign.estimators._vimco import VIMCO, SequentialVIMCO, sequential_vimco_loss, vimco_loss

__all__ = [
    "ESTIMATORS",
    "Alternative",
    "EstimatorOutput",
    "NVIL",
    "REINFORCE",
    "SequentialVIMCO",
    "VIMCO",
    "build_estimator",
    "estimator_options",
    "leave_one_out_logsumexp",
    "leave_one_out_mean",
    "log_mean_exp",
    "nvil_loss",
    "reinforce_loss",
    "reward_to_go",
    "score_function_surrogate",
    "sequential_vimco_loss",
    "vimco_loss",
]
