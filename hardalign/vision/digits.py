"""Translated and cluttered digit canvases, generated with numpy from a seed (docs/vision.md).

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

__all__ = ["VARIANTS", "make_canvas", "translate", "clutter", "affine_digits", "augment_digits"]

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


def affine_digits(images: np.ndarray, angles: np.ndarray, zooms: np.ndarray) -> np.ndarray:
    """Rotate each digit by ``angles[n]`` degrees (counter-clockwise as displayed, rows down) and
    scale it by ``zooms[n]`` about the image centre; bilinear resampling, zeros outside.

    Args:
        images: ``[N, h, w]`` digits (uint8 or float).
        angles: ``[N]`` degrees.
        zooms: ``[N]`` size factors (> 1 enlarges).

    Returns:
        ``[N, h, w]`` of ``images``' dtype (integers rounded and clipped).

    Example:
        >>> block = np.zeros((1, 4, 4), dtype=np.uint8); block[0, 0, :] = 9
        >>> affine_digits(block, np.array([90.0]), np.array([1.0]))[0, :, 0].tolist()
        [9, 9, 9, 9]
    """
    import torch
    import torch.nn.functional as F

    n = len(images)
    angle = np.deg2rad(np.asarray(angles, dtype=np.float64))
    zoom = np.asarray(zooms, dtype=np.float64)
    if angle.shape != (n,) or zoom.shape != (n,) or (zoom <= 0).any():
        raise ValueError(f"affine_digits: need {n} angles and {n} positive zooms, got shapes {angle.shape}, {zoom.shape}")
    # affine_grid maps each output pixel to the input point it reads (x right, y down): the
    # inverse of "rotate by angle, scale by zoom"
    cos, sin = np.cos(angle) / zoom, np.sin(angle) / zoom
    theta = np.zeros((n, 2, 3), dtype=np.float32)
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    source = torch.from_numpy(np.asarray(images, dtype=np.float32)).unsqueeze(1)  # [N, 1, h, w]
    grid = F.affine_grid(torch.from_numpy(theta), list(source.shape), align_corners=False)
    out = F.grid_sample(source, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(1).numpy()
    if np.issubdtype(images.dtype, np.integer):
        info = np.iinfo(images.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(images.dtype)


def augment_digits(images: np.ndarray, *, seed: int, rotation: float = 0.0, scale: float = 0.0) -> np.ndarray:
    """Random affine distortions of digits: a rotation and an isotropic rescaling about the centre.

    Each digit gets its own angle, uniform in ``[-rotation, rotation]`` degrees, and size factor,
    uniform in ``[1 - scale, 1 + scale]``, drawn from ``seed`` (:func:`affine_digits`): training
    canvases that are not copies of the same 3,500 shapes.

    Args:
        images: ``[N, h, w]`` digits (uint8 or float).
        seed: the distortions are a deterministic function of ``(images, seed)``.
        rotation: largest rotation in degrees (0: none).
        scale: largest relative change of size (0: none).

    Returns:
        ``[N, h, w]`` of ``images``' dtype; a copy of ``images`` when both are 0.
    """
    if rotation < 0 or not 0 <= scale < 1:
        raise ValueError(f"augment_digits: need rotation >= 0 and 0 <= scale < 1, got {rotation}, {scale}")
    if rotation == 0 and scale == 0:
        return np.array(images, copy=True)
    rng = np.random.default_rng(seed)
    n = len(images)
    return affine_digits(images, rng.uniform(-rotation, rotation, n), rng.uniform(1 - scale, 1 + scale, n))
