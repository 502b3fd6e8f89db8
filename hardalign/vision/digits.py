"""Translated and cluttered digit canvases, generated with numpy from a seed (DESIGN.md section 6).

* ``translated``: each 28x28 digit pasted at a uniformly random position of a blank
  ``size x size`` canvas (RAM's 60x60 translated MNIST).
* ``cluttered``: the same, plus ``num_distractors`` random ``distractor_size`` crops taken from
  random *other* digits of the same pool and pasted at random positions (RAM's cluttered MNIST:
  60x60 with 4 crops of 8x8, 100x100 with 8). Overlaps combine by pixel-wise maximum.

Everything is vectorised over the batch (a Python loop over the few distractor *layers* only),
so 10,000 60x60 cluttered canvases take about half a second. The same seed gives the same canvases.
"""

from __future__ import annotations

import numpy as np

__all__ = ["VARIANTS", "make_canvas", "translate", "clutter"]

#: Known variants of :func:`make_canvas`.
VARIANTS = ("mnist", "translated", "cluttered")


def _window(top: np.ndarray, left: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Fancy indices ``(rows [N, h, 1], cols [N, 1, w])`` of an ``h x w`` window at each ``(top, left)``."""
    rows = top[:, None, None] + np.arange(height)[None, :, None]
    cols = left[:, None, None] + np.arange(width)[None, None, :]
    return rows, cols


def _corners(rng: np.random.Generator, n: int, size: tuple[int, int], window: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` uniform ``(top, left)`` positions of a ``window`` inside ``size`` (top drawn first)."""
    top = rng.integers(0, size[0] - window[0] + 1, n)
    left = rng.integers(0, size[1] - window[1] + 1, n)
    return top, left


def _paste_max(canvas: np.ndarray, patches: np.ndarray, top: np.ndarray, left: np.ndarray) -> None:
    """``canvas[n, top+i, left+j] = max(canvas[...], patches[n, i, j])`` for every n at once (in place)."""
    n, height, width = patches.shape
    rows, cols = _window(top, left, height, width)
    index = np.arange(n)[:, None, None]
    # each canvas receives exactly one patch per call, so the fancy-indexed write has no collisions
    canvas[index, rows, cols] = np.maximum(canvas[index, rows, cols], patches)


def _check(images: np.ndarray, size: int) -> None:
    if images.ndim != 3:
        raise ValueError(f"images must be [N, H, W], got shape {images.shape}")
    if images.shape[1] > size or images.shape[2] > size:
        raise ValueError(f"canvas size {size} is smaller than the {images.shape[1]}x{images.shape[2]} digits")


def translate(images: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Paste each digit at a uniformly random position of a blank ``size x size`` canvas.

    Args:
        images: ``[N, h, w]`` digits (any dtype; the canvas has the same dtype).
        size: side of the square canvas, ``>= max(h, w)``.
        rng: numpy generator (positions).

    Returns:
        ``[N, size, size]``.

    Example:
        >>> digits = np.ones((3, 28, 28), dtype=np.uint8)
        >>> out = translate(digits, 60, np.random.default_rng(0))
        >>> out.shape, int(out.sum())
        ((3, 60, 60), 2352)
    """
    _check(images, size)
    n = len(images)
    canvas = np.zeros((n, size, size), dtype=images.dtype)
    _paste_max(canvas, images, *_corners(rng, n, (size, size), images.shape[1:]))
    return canvas


def clutter(
    images: np.ndarray,
    size: int,
    rng: np.random.Generator,
    *,
    num_distractors: int,
    distractor_size: int = 8,
    pool: np.ndarray | None = None,
) -> np.ndarray:
    """Translate each digit and add ``num_distractors`` random crops of other digits.

    Each distractor is a ``distractor_size`` square cut at a random position of a random digit
    of ``pool`` (default: ``images`` itself) other than the one on the canvas, pasted at a random
    position of the canvas (pixel-wise maximum where it overlaps the digit).

    Args:
        images: ``[N, h, w]`` digits.
        size: canvas side.
        rng: numpy generator.
        num_distractors: crops per canvas (RAM: 4 on 60x60, 8 on 100x100).
        distractor_size: side of each crop (RAM: 8).
        pool: ``[M, h, w]`` digits to cut distractors from (use the same split to avoid leakage).

    Returns:
        ``[N, size, size]``.
    """
    canvas = translate(images, size, rng)
    pool = images if pool is None else pool
    if num_distractors < 0:
        raise ValueError(f"num_distractors must be >= 0, got {num_distractors}")
    if not 1 <= distractor_size <= min(pool.shape[1], pool.shape[2], size):
        raise ValueError(f"distractor_size={distractor_size} must lie in 1..{min(pool.shape[1], pool.shape[2], size)}")
    if num_distractors and len(pool) < 2 and pool is images:
        raise ValueError("clutter() needs at least 2 digits to cut distractors from other digits")
    n = len(images)
    for _ in range(num_distractors):
        source = rng.integers(0, len(pool), n)
        if pool is images:
            # never the digit itself: shift a collision to the next digit of the pool
            same = source == np.arange(n)
            source[same] = (source[same] + 1) % len(pool)
        crop = (distractor_size, distractor_size)
        rows, cols = _window(*_corners(rng, n, pool.shape[1:], crop), *crop)
        crops = pool[source[:, None, None], rows, cols]  # [N, d, d]
        _paste_max(canvas, crops, *_corners(rng, n, (size, size), crop))
    return canvas


def make_canvas(
    images: np.ndarray,
    variant: str,
    *,
    seed: int,
    size: int = 60,
    num_distractors: int = 4,
    distractor_size: int = 8,
) -> np.ndarray:
    """The images of one variant: ``mnist`` (unchanged), ``translated`` or ``cluttered``.

    Args:
        images: ``[N, 28, 28]`` digits.
        variant: one of :data:`VARIANTS`.
        seed: the canvases are a deterministic function of ``(images, variant, seed, ...)``.
        size, num_distractors, distractor_size: see :func:`clutter`.

    Returns:
        ``[N, H, W]`` of ``images``' dtype (``H = W = size`` except for ``mnist``).

    Example:
        >>> digits = np.random.default_rng(0).integers(0, 255, (4, 28, 28), dtype=np.uint8)
        >>> a = make_canvas(digits, "cluttered", seed=1, size=100, num_distractors=8)
        >>> b = make_canvas(digits, "cluttered", seed=1, size=100, num_distractors=8)
        >>> a.shape, bool((a == b).all())
        ((4, 100, 100), True)
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown digit variant {variant!r}; known: {VARIANTS}")
    rng = np.random.default_rng(seed)
    if variant == "mnist":
        return np.array(images, copy=True)
    if variant == "translated":
        return translate(images, size, rng)
    return clutter(images, size, rng, num_distractors=num_distractors, distractor_size=distractor_size)
