"""Batched K-particle sampling that stays on the tensors' device.

Particles are folded into the batch axis so that one batched pass runs all K particles of all B
examples: a tensor ``[B, ...]`` becomes ``[K * B, ...]`` with the particle index outermost
(row ``k * B + b`` is particle ``k`` of example ``b``), and :func:`unfold` turns ``[K * B, ...]``
back into ``[K, B, ...]``. :func:`sample` draws from any :class:`torch.distributions.Distribution`
with an optional :class:`torch.Generator`, without ``.item()``, ``.cpu()`` or other host syncs,
so a step loop built on it runs asynchronously on CUDA.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import distributions as D

__all__ = ["fold", "unfold", "fold_tree", "sample"]


def fold(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Repeat ``x`` for each of ``num_samples`` particles along the batch axis.

    Args:
        x: ``[B, ...]``.
        num_samples: K >= 1.

    Returns:
        ``[K * B, ...]`` with row ``k * B + b`` equal to ``x[b]``.

    Example:
        >>> fold(torch.tensor([1, 2]), 3).tolist()
        [1, 2, 1, 2, 1, 2]
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    # [B, ...] -> [K, B, ...] (a view) -> [K * B, ...] (one copy)
    return x.unsqueeze(0).expand(num_samples, *x.shape).reshape(num_samples * x.shape[0], *x.shape[1:])


def unfold(x: torch.Tensor, num_samples: int) -> torch.Tensor:
    """Split the folded batch axis of ``x`` into particles: ``[K * B, ...] -> [K, B, ...]``.

    Example:
        >>> unfold(torch.arange(6), 3).tolist()
        [[0, 1], [2, 3], [4, 5]]
    """
    if x.shape[0] % num_samples:
        raise ValueError(
            f"cannot unfold a leading axis of size {x.shape[0]} into num_samples={num_samples} particles: "
            "the folded axis must be K * B"
        )
    return x.reshape(num_samples, x.shape[0] // num_samples, *x.shape[1:])


def fold_tree(tree: Any, num_samples: int) -> Any:
    """Apply :func:`fold` to every tensor in a (nested) tuple, list or dict; other leaves pass through."""
    if isinstance(tree, torch.Tensor):
        return fold(tree, num_samples)
    if isinstance(tree, dict):
        return {key: fold_tree(value, num_samples) for key, value in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):  # namedtuple
        return type(tree)(*(fold_tree(value, num_samples) for value in tree))
    if isinstance(tree, (list, tuple)):
        return type(tree)(fold_tree(value, num_samples) for value in tree)
    return tree


def sample(dist: D.Distribution, generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw one sample of ``dist`` (shape ``batch_shape + event_shape``), never differentiable.

    Without a generator this is ``dist.sample()``. With one, the draw uses that generator:
    Bernoulli by comparing uniforms with ``probs``, Categorical and OneHotCategorical by the
    Gumbel-max trick (no ``multinomial``, which can synchronise), Normal by ``loc + scale * eps``,
    ``Independent`` by sampling its base, and any other distribution with an ``icdf`` by inverse
    transform. Everything stays on the distribution's device and dtype.

    Args:
        dist: a batched ``torch.distributions.Distribution``.
        generator: optional ``torch.Generator`` on the same device as ``dist``'s parameters.

    Returns:
        a detached tensor of shape ``dist.batch_shape + dist.event_shape``.

    Raises:
        TypeError: a generator was given for a distribution with none of the above.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> z = sample(D.Bernoulli(probs=torch.full((4,), 0.5)), g)
        >>> z.shape, z.dtype
        (torch.Size([4]), torch.float32)
    """
    with torch.no_grad():
        if generator is None:
            return dist.sample()
        if isinstance(dist, D.Independent):
            return sample(dist.base_dist, generator)
        if isinstance(dist, D.Bernoulli):
            probs = dist.probs
            uniform = torch.rand(probs.shape, dtype=probs.dtype, device=probs.device, generator=generator)
            return (uniform < probs).to(probs.dtype)
        if isinstance(dist, (D.Categorical, D.OneHotCategorical)):
            logits = dist.logits
            uniform = torch.rand(logits.shape, dtype=logits.dtype, device=logits.device, generator=generator)
            # Gumbel-max: argmax(logits + Gumbel noise) ~ Categorical(logits); tiny keeps log finite.
            tiny = torch.finfo(logits.dtype).tiny
            gumbel = -torch.log(-torch.log(uniform.clamp_min(tiny)))
            index = torch.argmax(logits + gumbel, dim=-1)
            if isinstance(dist, D.OneHotCategorical):
                return torch.nn.functional.one_hot(index, logits.shape[-1]).to(logits.dtype)
            return index
        if isinstance(dist, D.Normal):
            eps = torch.randn(dist.loc.shape, dtype=dist.loc.dtype, device=dist.loc.device, generator=generator)
            return dist.loc + dist.scale * eps
        try:
            shape = dist.batch_shape + dist.event_shape
            reference = dist.mean
            uniform = torch.rand(shape, dtype=reference.dtype, device=reference.device, generator=generator)
            return dist.icdf(uniform)
        except NotImplementedError:
            raise TypeError(
                f"sample(): cannot draw from {type(dist).__name__} with an explicit generator "
                "(supported: Bernoulli, Categorical, OneHotCategorical, Normal, Independent, or any "
                "distribution with icdf); pass generator=None to use the global RNG"
            ) from None
