"""Training: the loop and what it is built from (setup, clock, checkpoints, results, metrics).

`Trainer`, `train`, `resume` and `train_seeds` are imported on first use, so that importing a light part
of this package (its distributed helpers, its checkpoint store) does not load the whole training loop.
"""

from __future__ import annotations

import importlib

__all__ = ["Trainer", "resume", "train", "train_seeds"]


_HOMES = {"Trainer": "cifarkit.train.loop", "resume": "cifarkit.train.resuming", "train": "cifarkit.train.loop",
          "train_seeds": "cifarkit.train.seeds"}


def __getattr__(name: str):
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
