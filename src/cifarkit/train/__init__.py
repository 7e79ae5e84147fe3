"""Training: the loop, schedules, optimizers, checkpoints, devices and metrics."""

from cifarkit.train.loop import train, train_seeds

__all__ = ["train", "train_seeds"]
