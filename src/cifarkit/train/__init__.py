"""Training: the loop, schedules, optimizers, checkpoints, devices and metrics."""

from cifarkit.train.loop import train

__all__ = ["train"]
