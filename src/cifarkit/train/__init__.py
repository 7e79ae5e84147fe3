"""Training: the loop, schedules, optimizers, checkpoints, devices and metrics.

`Trainer`, `train`, `resume` and `train_seeds` are imported on first use, so that importing a light part
of this package (its schedules, its optimizer registry) does not load the whole training loop.
"""

from __future__ import annotations

import importlib

__all__ = ["Trainer", "resume", "train", "train_seeds"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(importlib.import_module("cifarkit.train.loop"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
