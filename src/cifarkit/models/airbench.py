"""An airbench-style fast network for CIFAR.

Lineage: Keller Jordan's airbench (CIFAR-10 speed records: 94.01% in 2.59 s on an A100), itself from the
hlb-CIFAR10 / tysam-code line: a frozen, patch-whitening first convolution; three conv groups
(conv -> max-pool -> BatchNorm -> GELU -> conv -> BatchNorm -> GELU); BatchNorm with frozen scale; a
3x3 max-pool over the final map, which is 3x3 for a 32x32 input (the whitening convolution has no padding:
31 -> 15 -> 7 -> 3), so a global max, as in airbench94; a linear head whose output is scaled by 1/9.

The whitening layer's bias starts at zero, trains at the base learning rate (it is listed in
`kernel_like_parameters`, so the optimizer treats it like the kernels, not like the BatchNorm biases) and is
frozen after `whiten_bias_epochs` epochs (`frozen_parameters`), as in airbench94.

The first convolution is initialised from the training data (`init_from_data`): its filters are the
eigenvectors of the covariance of 2x2 image patches, scaled to unit variance, and their negatives -- so the
network starts on whitened input without a whitening step in the data pipeline.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from cifarkit.models.registry import register_model


class FrozenScaleBatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale is fixed at 1 (only the shift learns); momentum as in airbench."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = FrozenScaleBatchNorm(channels_out, bn_momentum)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False)
        self.norm2 = FrozenScaleBatchNorm(channels_out, bn_momentum)
        self.activation = nn.GELU()
        for conv in (self.conv1, self.conv2):  # identity-like start: half the filters are Dirac deltas
            torch.nn.init.dirac_(conv.weight[: conv.weight.shape[1]])

    def forward(self, x):
        x = self.activation(self.norm1(self.pool(self.conv1(x))))
        return self.activation(self.norm2(self.conv2(x)))


# The last pooling: airbench94's MaxPool2d(3), or a global max over the whole map. On a 32x32 input the map is
# 3x3 and the two are the same; they differ only on larger inputs.
FINAL_POOLS = {"airbench": lambda: nn.MaxPool2d(3), "global": lambda: nn.AdaptiveMaxPool2d(1)}


class AirbenchNet(nn.Module):
    # parameter names the optimizer groups with the kernels (base learning rate, kernel weight decay)
    kernel_like_parameters = ("whiten.bias",)

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256),
                 bn_momentum: float = 0.6, scaling_factor: float = 1 / 9, whiten_kernel: int = 2,
                 whiten_bias_epochs: int = 3, final_pool: str = "airbench", head_std: float | None = None):
        super().__init__()
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.whiten_bias_epochs = whiten_bias_epochs
        self.layers = nn.Sequential(
            nn.GELU(),
            ConvGroup(whiten_width, widths[0], bn_momentum),
            ConvGroup(widths[0], widths[1], bn_momentum),
            ConvGroup(widths[1], widths[2], bn_momentum),
            FINAL_POOLS[final_pool](),
            nn.Flatten(),
        )
        self.head = nn.Linear(widths[2], num_classes, bias=False)
        if head_std is not None:  # airbench94_muon: head weights rescaled to std 1 (with scaling_factor 1/width)
            with torch.no_grad():
                self.head.weight.mul_(head_std / self.head.weight.std())
        self.scaling_factor = scaling_factor

    @torch.no_grad()
    def init_from_data(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Whitening filters from 2x2 patches of (preprocessed) training images, NCHW float."""
        k = self.whiten.kernel_size[0]
        patches = images.unfold(2, k, 1).unfold(3, k, 1).transpose(1, 3).reshape(-1, 3, k, k).double()
        flat = patches.flatten(1)
        cov = flat.T @ flat / flat.shape[0]  # uncentered, as airbench94 (the inputs are mean-normalized)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).view(-1, 3, k, k).flip(0)
        self.whiten.weight.copy_(torch.cat([filters, -filters]).float())

    def frozen_parameters(self, epoch: int) -> list[nn.Parameter]:
        """Parameters that must not change in `epoch` (the loop drops their gradients before the update, which
        works unchanged under DDP and torch.compile, unlike toggling requires_grad)."""
        return [self.whiten.bias] if epoch >= self.whiten_bias_epochs else []

    def embed(self, x):
        return self.layers(self.whiten(x))

    def classify(self, features):
        return self.head(features) * self.scaling_factor

    def forward(self, x):
        return self.classify(self.embed(x))


def _check_options(widths=(64, 256, 256), head_std: float | None = None, **_) -> None:
    """The option values the builder needs, checked when the config is loaded (before any run folder exists)."""
    if len(widths) != 3 or not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
        raise ValueError(f"widths must be three positive integers, got {widths!r}")
    if head_std is not None and not head_std > 0:
        raise ValueError(f"head_std must be positive, got {head_std!r}")


@register_model(check_options=_check_options)
def airbench(num_classes: int = 10, widths: tuple[int, int, int] = (64, 256, 256), bn_momentum: float = 0.6,
             scaling_factor: float = 1 / 9, whiten_kernel: int = 2, whiten_bias_epochs: int = 3,
             final_pool: Literal["airbench", "global"] = "airbench", head_std: float | None = None) -> AirbenchNet:
    """airbench94-sized network (about 2M parameters)."""
    return AirbenchNet(num_classes, tuple(widths), bn_momentum, scaling_factor, whiten_kernel, whiten_bias_epochs,
                       final_pool, head_std)

