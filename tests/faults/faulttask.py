"""The toy task with injectable faults in its data (NaN features)."""

from __future__ import annotations

from dataclasses import dataclass

from tests.train.toytask import ToyConfig, ToyTask


@dataclass
class FaultyConfig(ToyConfig):
    nan_features: bool = False  # every example's features are NaN (as from a corrupt feature cache)


class FaultyTask(ToyTask):
    Config = FaultyConfig

    def __init__(self, config, train_config, **kwargs):
        super().__init__(config, train_config, **kwargs)
        if config.nan_features:
            self.x[:] = float("nan")
