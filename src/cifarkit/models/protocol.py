"""What a cifarkit model is: an `nn.Module` mapping a batch of preprocessed images (N, 3, 32, 32) to logits
(N, num_classes), plus the optional hooks below, each a small runtime-checkable Protocol. Training, the
optimizer and checkpoints look for a hook with `isinstance(model, Hook)`, never by spelling its name.

A builder registered with `register_model` may also declare, at registration, a check of its options (run
when a config is loaded, before anything is built) and how many dropout layers its schedule sets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class InitFromData(Protocol):
    def init_from_data(self, images: torch.Tensor) -> None:
        """Set weights from preprocessed training images before the first step (airbench's patch whitening);
        called once by the trainer with a fixed sample of 5,000 images."""


@runtime_checkable
class FreezesParameters(Protocol):
    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        """The parameters that take no update in `epoch` (0-based): their gradients are dropped for that step."""


@runtime_checkable
class HasDropoutSchedule(Protocol):
    def dropout_rates(self) -> list[float]:
        """The current rate of each scheduled dropout layer (what `schedule.dropout_events` sets)."""

    def set_dropout_rates(self, rates: Sequence[float]) -> None:
        """Set every scheduled dropout layer's rate, one rate per layer."""


@runtime_checkable
class HasKernelLikeParameters(Protocol):
    # parameters (full names) that the optimizer treats as kernels (base rate, kernel decay) although they are
    # not a convolution's or linear layer's weight (airbench's whitening bias)
    kernel_like_parameters: tuple[str, ...]


@runtime_checkable
class HasFeatures(Protocol):
    """A network whose logits are `classify(embed(x))`: `embed` gives the penultimate layer after pooling, (N, D),
    the features a head for new classes is taught on (`cifarkit teach`) and that the export outputs as `features`.
    For a network whose last layer is a convolution (the ELU paper's), the features are the flattened logits."""

    def embed(self, x: torch.Tensor) -> torch.Tensor: ...

    def classify(self, features: torch.Tensor) -> torch.Tensor: ...


@runtime_checkable
class HasLowLevelFeatures(Protocol):
    """A HasFeatures network that also gives its first stage's output after pooling, (N, E): what a picture looks
    like to its first filters (colours, edges, gradients), from the same pass. The outlier score reads it beside the
    features: a picture unlike any photo at that level (a colour wheel, a flat colour) can still land among the
    training pictures in the penultimate layer."""

    def embed_levels(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(low-level features (N, E), features (N, D)); the features are `embed(x)`'s."""
