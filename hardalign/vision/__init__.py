"""Glimpse (hard attention) image classifiers: digits, the retina, RAM and a Saccader-style model.

Models implement :class:`hardalign.attention.HardAttention` and run through
:func:`hardalign.attention.rollout`; training goes through :mod:`hardalign.train` with the
``glimpse`` task (:class:`hardalign.vision.task.GlimpseTask`).
"""

from hardalign.vision.mnist import load_mnist, read_idx

__all__ = ["load_mnist", "read_idx"]
