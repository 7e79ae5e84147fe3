"""Training: the loop, schedules, optimizers, checkpoints, devices and metrics."""

from cifarkit.train.loop import Trainer, resume, train, train_seeds

__all__ = ["Trainer", "resume", "train", "train_seeds"]
