"""Pictures of glimpse paths: each test image with its glimpse boxes and the path between them.

:func:`plot_glimpses` draws a grid of images; on each, glimpse t's boxes (the finest and coarsest
retina scales for RAM, the receptive field of the chosen cell for the Saccader-style model) and a numbered path
through the box centres, titled with the true and predicted class. Matplotlib's Agg backend is
used (no display needed). ``hardalign plot glimpses`` (:mod:`hardalign.commands.vision`) draws
it for a trained checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

__all__ = ["plot_glimpses"]


def plot_glimpses(
    model: torch.nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    path: str | os.PathLike,
    *,
    num_steps: int | None = None,
    greedy: bool = False,
    columns: int = 4,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Draw glimpse paths and boxes on ``images`` and save a PNG.

    Args:
        model: a trained RAM or Saccader (with ``predict`` and ``glimpse_boxes``).
        images: uint8 or float ``[N, C, H, W]`` (``C`` 1 or 3).
        labels: ``[N]`` true classes (for the titles).
        path: output PNG.
        num_steps: glimpses (default: the model's).
        greedy: use the policy's mode instead of one sampled rollout.
        columns: images per row.
        seed: seed of the sampled rollout.
        title: figure title.

    Returns:
        the PNG path.
    """
    from matplotlib.patches import Rectangle

    from hardalign._figures import pyplot, save_figure

    plt = pyplot()

    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"images must be [N, 1 or 3, H, W], got shape {tuple(images.shape)}")
    generator = torch.Generator(device=images.device).manual_seed(seed)
    with torch.no_grad():
        probs, locations = model.predict({"images": images}, num_steps=num_steps, greedy=greedy, generator=generator)
    height, width = images.shape[-2:]
    boxes = model.glimpse_boxes(locations, height, width).cpu()  # [N, T, S, 4]
    shown = images.float() / (255.0 if images.dtype == torch.uint8 else 1.0)
    predicted = probs.argmax(-1).cpu()
    n = images.shape[0]
    rows = (n + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.2 * columns, 2.3 * rows), squeeze=False)
    colours = plt.get_cmap("autumn")
    steps = boxes.shape[1]
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= n:
            continue
        picture = shown[index].permute(1, 2, 0).cpu().numpy()
        axis.imshow(picture.squeeze(-1) if picture.shape[-1] == 1 else picture, cmap="gray", vmin=0, vmax=1)
        centres = []
        for t in range(steps):
            colour = colours(t / max(steps - 1, 1))
            for s in sorted({0, boxes.shape[2] - 1}):  # the finest and the coarsest scale
                top, left, bottom, right = boxes[index, t, s].tolist()
                # pixel i covers [i - 0.5, i + 0.5] in imshow's coordinates
                axis.add_patch(
                    Rectangle((left - 0.5, top - 0.5), right - left, bottom - top, fill=False, edgecolor=colour,
                              linewidth=1.2 if s == 0 else 0.6, linestyle="-" if s == 0 else ":")
                )
            top, left, bottom, right = boxes[index, t, 0].tolist()
            centres.append(((left + right) / 2 - 0.5, (top + bottom) / 2 - 0.5))
        xs, ys = zip(*centres)
        axis.plot(xs, ys, "-", color="cyan", linewidth=0.8)
        for t, (x, y) in enumerate(centres):
            axis.text(x, y, str(t + 1), color="cyan", fontsize=6, ha="center", va="center")
        axis.set_xlim(-0.5, width - 0.5)
        axis.set_ylim(height - 0.5, -0.5)
        ok = int(predicted[index]) == int(labels[index])
        axis.set_title(f"y={int(labels[index])} pred={int(predicted[index])}", fontsize=8, color="black" if ok else "red")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return save_figure(figure, path, dpi=80)
