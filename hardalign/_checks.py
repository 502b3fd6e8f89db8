"""Boundary checks on tensor arguments: rank, shape, dtype, device (metadata only, no host sync).

Every public entry point that takes tensors validates them here once, so that a wrong shape fails
with a message that names the argument, gives the expected and the actual shape, and says how to
fix it, instead of an opaque broadcasting error deep inside. Value checks (NaN, empty masks) would
need a host synchronisation on CUDA and are not done here.
"""

from __future__ import annotations

from typing import Sequence

import torch


def shape_str(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_floating(name: str, x: object) -> torch.Tensor:
    """``x`` must be a floating-point tensor."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name}: expected a floating-point tensor, got dtype {x.dtype}; convert it with .float()")
    return x


def check_rank(name: str, x: torch.Tensor, ranks: Sequence[int], layout: str) -> None:
    """``x.dim()`` must be one of ``ranks``; ``layout`` names the axes, e.g. ``"[K, B, T] or [K, B]"``."""
    if x.dim() not in ranks:
        raise ValueError(f"{name}: expected shape {layout}, got {shape_str(x.shape)} ({x.dim()} dimensions)")


def check_same_shape(name: str, x: torch.Tensor, reference_name: str, reference: torch.Tensor, layout: str) -> None:
    """``x`` must have exactly the shape of ``reference``."""
    if x.shape != reference.shape:
        raise ValueError(
            f"{name}: expected shape {layout} = {shape_str(reference.shape)} (the shape of {reference_name}), "
            f"got {shape_str(x.shape)}"
        )


def check_same_device_dtype(name: str, x: torch.Tensor, reference_name: str, reference: torch.Tensor) -> None:
    if x.device != reference.device:
        raise ValueError(f"{name}: is on {x.device} but {reference_name} is on {reference.device}; move both to one device")
    if torch.is_floating_point(x) and x.dtype != reference.dtype:
        raise TypeError(f"{name}: has dtype {x.dtype} but {reference_name} has {reference.dtype}; use one dtype")


def check_mask(name: str, mask: torch.Tensor, reference_name: str, reference: torch.Tensor, layout: str, *, meaning: str = "True = the step counts") -> None:
    """A bool tensor of ``reference``'s shape on its device; ``meaning`` says what True stands for in the error."""
    if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
        got = mask.dtype if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise TypeError(f"{name}: expected a bool tensor ({meaning}), got {got}")
    check_same_shape(name, mask, reference_name, reference, layout)
    if mask.device != reference.device:
        raise ValueError(f"{name}: is on {mask.device} but {reference_name} is on {reference.device}")


def did_you_mean(name: str, choices, *, cutoff: float = 0.5) -> str:
    """``"; did you mean 'x'?"`` for the valid choice nearest to a misspelt ``name`` (``""`` if none is close).

    Example:
        >>> "unknown key 'num_sample'" + did_you_mean("num_sample", ["num_samples", "seed"])
        "unknown key 'num_sample'; did you mean 'num_samples'?"
    """
    import difflib

    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=cutoff)
    return f"; did you mean {close[0]!r}?" if close else ""
