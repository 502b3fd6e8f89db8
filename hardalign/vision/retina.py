"""A batched multi-resolution retina: square patches of growing size around a location, resized.

Coordinates: a location ``l = (x, y)`` in ``[-1, 1]^2`` maps to the continuous pixel
coordinate ``c_x = (x + 1) / 2 * W`` and ``c_y = (y + 1) / 2 * H`` of an ``H x W`` image (pixel
``i`` covers ``[i, i + 1)``), so ``(-1, -1)`` is the top-left corner, ``(1, 1)`` the bottom-right
corner, and ``x`` and ``y`` are scaled by the width and height separately (non-square images).
Scale ``s`` (``s = 0 .. num_scales - 1``) cuts the ``w_s x w_s`` patch, ``w_s = patch_size *
scale_factor**s``, whose top-left pixel is ``round(c - w_s / 2)`` (``floor(. + 0.5)``): at the
centre of a 28x28 image an 8x8 patch covers pixels 10..17. Pixels outside the image read 0.
Larger patches are average-pooled by ``scale_factor**s`` down to ``patch_size x patch_size``.

The cut is one gather per scale over the whole batch (no per-example Python loop): the image
is zero-padded once by the largest patch's half-width and indexed with per-example row and
column index grids. :meth:`Retina.integral` + :meth:`Retina.read` give the same patches faster
when an image is read many times (every glimpse of a rollout): the zero-padded image's summed-area
table is computed once, in float64, and each pooled pixel is four lookups in it, so a scale costs
``patch_size^2`` reads whatever its size.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Retina", "location_to_pixels", "glimpse_boxes"]


def location_to_pixels(location: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Continuous pixel coordinates ``(c_x, c_y)`` of locations in ``[-1, 1]^2``.

    Args:
        location: ``[N, 2]`` as ``(x, y)``.
        height, width: image size.

    Returns:
        ``[N, 2]``: ``((x + 1) / 2 * width, (y + 1) / 2 * height)``.

    Example:
        >>> location_to_pixels(torch.tensor([[-1.0, 0.0], [1.0, 1.0]]), 28, 40).tolist()
        [[0.0, 14.0], [40.0, 28.0]]
    """
    size = torch.tensor([width, height], dtype=location.dtype, device=location.device)
    return (location + 1) / 2 * size


def glimpse_boxes(location: torch.Tensor, height: int, width: int, box_size: int) -> torch.Tensor:
    """Pixel boxes ``(top, left, bottom, right)`` (bottom/right exclusive) the retina cuts at a scale.

    Args:
        location: ``[N, 2]`` as ``(x, y)`` in ``[-1, 1]``.
        height, width: image size.
        box_size: side of the patch in pixels.

    Returns:
        long ``[N, 4]``, possibly outside the image (the retina reads zeros there).
    """
    centre = location_to_pixels(location, height, width)
    corner = torch.floor(centre - box_size / 2 + 0.5).long()  # [N, 2] as (left, top)
    left, top = corner[:, 0], corner[:, 1]
    return torch.stack([top, left, top + box_size, left + box_size], dim=-1)


class Retina(nn.Module):
    """Multi-resolution glimpse sensor (Mnih et al. 2014), batched.

    Args:
        patch_size: side ``w_0`` of the smallest patch, and of every returned patch.
        num_scales: number of concentric patches ``k``.
        scale_factor: each patch is ``scale_factor`` times wider than the previous one.

    Shapes:
        ``images [N, C, H, W]``, ``location [N, 2]`` -> ``[N, num_scales, C, patch_size, patch_size]``.

    Example:
        >>> retina = Retina(patch_size=4, num_scales=2)
        >>> images = torch.arange(64.0).reshape(1, 1, 8, 8)
        >>> out = retina(images, torch.zeros(1, 2))
        >>> out.shape
        torch.Size([1, 2, 1, 4, 4])
        >>> out[0, 0, 0, 0].tolist()   # rows 2..5, columns 2..5 of the image
        [18.0, 19.0, 20.0, 21.0]
    """

    def __init__(self, patch_size: int, num_scales: int = 1, scale_factor: int = 2):
        super().__init__()
        if patch_size < 1 or num_scales < 1 or scale_factor < 1:
            raise ValueError(
                f"Retina: patch_size, num_scales and scale_factor must be >= 1, got {patch_size}, {num_scales}, {scale_factor}"
            )
        self.patch_size = patch_size
        self.num_scales = num_scales
        self.scale_factor = scale_factor

    def sizes(self) -> list[int]:
        """Side in pixels of each scale's patch before resizing."""
        return [self.patch_size * self.scale_factor**s for s in range(self.num_scales)]

    def forward(self, images: torch.Tensor, location: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4:
            raise ValueError(f"Retina: images must be [N, C, H, W], got shape {tuple(images.shape)}")
        if location.shape != (images.shape[0], 2):
            raise ValueError(f"Retina: location must be [N, 2] = [{images.shape[0]}, 2], got {tuple(location.shape)}")
        n, channels, height, width = images.shape
        largest = self.sizes()[-1]
        pad = largest  # enough for any box whose centre lies in the image (locations are clamped to [-1, 1])
        padded = F.pad(images, (pad, pad, pad, pad))  # [N, C, H + 2p, W + 2p], zeros outside
        batch_index = torch.arange(n, device=images.device)[:, None, None]  # [N, 1, 1]
        patches = []
        for size in self.sizes():
            box = glimpse_boxes(location, height, width, size)  # [N, 4]
            offsets = torch.arange(size, device=images.device)
            # padded coordinates, clamped so that a location outside [-1, 1] reads only padding
            rows = (box[:, 0:1] + pad + offsets).clamp(0, height + 2 * pad - 1)  # [N, size]
            cols = (box[:, 1:2] + pad + offsets).clamp(0, width + 2 * pad - 1)  # [N, size]
            # advanced indices separated by the channel slice -> result [N, size, size, C]
            patch = padded[batch_index, :, rows[:, :, None], cols[:, None, :]]
            patch = patch.permute(0, 3, 1, 2)  # [N, C, size, size]
            factor = size // self.patch_size
            if factor > 1:
                patch = F.avg_pool2d(patch, factor)  # resized to the smallest patch
            patches.append(patch)
        return torch.stack(patches, dim=1)  # [N, num_scales, C, patch, patch]

    def table_pad(self) -> int:
        """Zero padding of :meth:`integral`'s table on each side."""
        return self.sizes()[-1] // 2 + 1

    def integral(self, images: torch.Tensor) -> torch.Tensor:
        """Summed-area table of the zero-padded images, float64 ``[N, C, H + 2p + 1, W + 2p + 1]``.

        ``table[..., r, c]`` is the sum of the padded image's pixels above row ``r`` and left of
        column ``c``; ``p`` (:meth:`table_pad`) is half the largest patch side plus one, enough
        for any box centred in the image. Read it with :meth:`read`.
        """
        if images.dim() != 4:
            raise ValueError(f"Retina: images must be [N, C, H, W], got shape {tuple(images.shape)}")
        pad = self.table_pad()
        padded = F.pad(images.to(torch.float64), (pad, pad, pad, pad))  # [N, C, H + 2p, W + 2p]
        table = padded.cumsum(-1).cumsum(-2)
        return F.pad(table, (1, 0, 1, 0))  # a zero row and column in front

    def read(self, table: torch.Tensor, location: torch.Tensor, height: int, width: int, dtype: torch.dtype) -> torch.Tensor:
        """The patches of :meth:`forward` from :meth:`integral`'s table of ``height x width`` images.

        Returns:
            ``[N, num_scales, C, patch_size, patch_size]`` in ``dtype`` (equal to ``forward``'s up
            to float64 rounding).
        """
        n = table.shape[0]
        if location.shape != (n, 2):
            raise ValueError(f"Retina: location must be [N, 2] = [{n}, 2], got {tuple(location.shape)}")
        pad = self.table_pad()
        if table.shape[-2:] != (height + 2 * pad + 1, width + 2 * pad + 1):
            raise ValueError(f"Retina: a table of {height}x{width} images is {height + 2 * pad + 1}x{width + 2 * pad + 1}, got {tuple(table.shape)}")
        limit_rows, limit_cols = height + 2 * pad, width + 2 * pad  # last valid padded index + 1
        flat = table.flatten(2)  # [N, C, (H + 2p + 1) * (W + 2p + 1)]
        stride = table.shape[-1]
        channels = table.shape[1]
        steps = torch.arange(self.patch_size + 1, device=table.device)
        patches = []
        for size in self.sizes():
            factor = size // self.patch_size
            box = glimpse_boxes(location, height, width, size)  # [N, 4]
            # block boundaries in padded coordinates (table index = padded index, thanks to the
            # front zero row), clamped to the table: whatever lies beyond it is zero padding, so a
            # clamped-away part of a box adds nothing, as forward's zero reads do
            rows = (box[:, 0:1] + pad + factor * steps).clamp(0, limit_rows)  # [N, p + 1]
            cols = (box[:, 1:2] + pad + factor * steps).clamp(0, limit_cols)  # [N, p + 1]
            index = (rows[:, :, None] * stride + cols[:, None, :]).flatten(1)  # [N, (p + 1)^2]
            corners = flat.gather(2, index[:, None, :].expand(-1, channels, -1))
            corners = corners.reshape(n, channels, self.patch_size + 1, self.patch_size + 1)
            sums = corners[..., 1:, 1:] - corners[..., :-1, 1:] - corners[..., 1:, :-1] + corners[..., :-1, :-1]
            patches.append((sums / (factor * factor)).to(dtype))  # [N, C, p, p]
        return torch.stack(patches, dim=1)  # [N, num_scales, C, patch, patch]
