"""On-disk cache of unnormalised, unstacked features, so a second epoch does not recompute them.

An entry's key is a hash of the audio file (absolute path, size, modification time), the feature
options (:meth:`FeatureConfig.extraction_key`) and the noise condition (a JSON-able dict such as
``{"noise": "pink", "snr": 10.0, "offset": 1234, "file": ...}``, or None for clean audio). Entries
are ``.npy`` files written to a temporary name in the same directory and renamed into place
(``os.replace``), so an interrupted write never leaves a half-written entry behind; concurrent
writers (DataLoader workers, DDP ranks) of the same entry are harmless.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from hardalign._io import atomic_path
from hardalign.data.features import FeatureConfig

__all__ = ["FeatureCache"]


class FeatureCache:
    """A directory of cached feature matrices.

    Args:
        directory: where entries live (created on first write).

    Attributes:
        hits, misses: lookups answered from disk / not found (per process).

    Example:
        >>> import tempfile, torch
        >>> d = tempfile.mkdtemp()
        >>> cache = FeatureCache(d)
        >>> cache.get(__file__, FeatureConfig()) is None
        True
        >>> cache.put(__file__, FeatureConfig(), torch.ones(2, 3))
        >>> cache.get(__file__, FeatureConfig()).shape, cache.hits, cache.misses
        (torch.Size([2, 3]), 1, 1)
    """

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.hits = 0
        self.misses = 0

    def key(self, audio: str | os.PathLike, config: FeatureConfig, condition: dict | None = None) -> str:
        """The entry key: sha1 over the audio file's identity, feature options and noise condition."""
        path = Path(audio).resolve()
        try:
            st = path.stat()
            ident = [str(path), st.st_size, st.st_mtime_ns]
        except OSError:
            raise FileNotFoundError(f"cannot cache features of {path}: the audio file does not exist") from None
        blob = json.dumps([ident, config.extraction_key(), condition], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.npy"

    def get(self, audio, config: FeatureConfig, condition: dict | None = None) -> torch.Tensor | None:
        """The cached ``[T, D]`` features, or None."""
        path = self._path(self.key(audio, config, condition))
        try:
            arr = np.load(path, allow_pickle=False)
        except (FileNotFoundError, ValueError, EOFError, OSError):
            self.misses += 1
            return None
        self.hits += 1
        return torch.from_numpy(arr)

    def put(self, audio, config: FeatureConfig, features: torch.Tensor, condition: dict | None = None) -> None:
        """Store ``features`` (``[T, D]``) atomically."""
        path = self._path(self.key(audio, config, condition))
        # no fsync: an entry lost in a power cut is recomputed (an empty file reads as a miss)
        with atomic_path(path, fsync=False) as tmp:
            np.save(tmp, features.detach().cpu().float().numpy(), allow_pickle=False)
