"""The 18-layer ELU network for CIFAR-100.

Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by Exponential Linear Units
(ELUs)", ICLR 2016: 24.28% test error on CIFAR-100 after 165k iterations.

Two variants from one builder:
- `elu_net_seed`: the Keras tutorial this project grew from, layer for layer (42,607,204 parameters): ELU only
  after the last convolution of each stack, and stack 3 opening with a 3x3 convolution.
- `elu_net_paper`: the paper's network (39,330,404 parameters): ELU after every convolution, and stack 3
  opening with a 1x1 convolution.
Both pad the 32x32 input by 4 zero pixels inside the model (40x40), use Keras "same" padding (a 2x2
convolution pads one row/column at the bottom/right) and "same" 2x2 max pooling (odd sizes round up).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import nn

from cifarkit.models.registry import register_model

# (out_channels, kernel_size) per convolution, per stack.
SEED_STACKS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((384, 3),),
    ((384, 1), (384, 2), (640, 2), (640, 2)),
    ((640, 3), (768, 2), (768, 2), (768, 2)),
    ((768, 1), (896, 2), (896, 2)),
    ((896, 3), (1024, 2), (1024, 2)),
    ((1024, 1), (1152, 2)),
    ((1152, 1),),
)
PAPER_STACKS = (SEED_STACKS[0], SEED_STACKS[1], ((640, 1), *SEED_STACKS[2][1:]), *SEED_STACKS[3:])


class SameConv2d(nn.Conv2d):
    """Stride-1 convolution with Keras "same" padding: for even kernels the extra pixel goes bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__(in_channels, out_channels, kernel_size)
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        self.same_pad = (before, after, before, after)  # F.pad order: left, right, top, bottom

    def forward(self, x):
        return super().forward(F.pad(x, self.same_pad))


def keras_init_(model: nn.Module) -> nn.Module:
    """Keras defaults: Glorot-uniform kernels, zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    return model


class EluNet(nn.Module):
    def __init__(
        self,
        stacks: Sequence[Sequence[tuple[int, int]]],
        num_classes: int = 100,
        elu_after_every_conv: bool = False,
        dropout: float | Sequence[float] = 0.5,
        width: float = 1.0,
        input_pad: int = 4,
    ):
        super().__init__()
        rates = [dropout] * len(stacks) if isinstance(dropout, (int, float)) else list(dropout)
        if len(rates) != len(stacks):
            raise ValueError(f"need one dropout rate per stack ({len(stacks)}), got {len(rates)}")
        if not all(isinstance(r, (int, float)) and 0 <= r < 1 for r in rates):
            raise ValueError(f"dropout rates must be numbers in [0, 1), got {rates}")
        if not (isinstance(width, (int, float)) and 0 < width <= 16) or not (isinstance(input_pad, int) and
                                                                             0 <= input_pad <= 16):
            raise ValueError(f"width must be in (0, 16] and input_pad an integer in [0, 16], got {width}, {input_pad}")
        layers: list[nn.Module] = [nn.ZeroPad2d(input_pad)]
        self.dropouts = nn.ModuleList()
        channels = 3
        for stack, rate in zip(stacks, rates, strict=True):
            for i, (out, kernel) in enumerate(stack):
                out = max(1, round(out * width))  # `width` < 1 gives the narrow variants used in tests
                layers.append(SameConv2d(channels, out, kernel))
                channels = out
                if elu_after_every_conv or i == len(stack) - 1:
                    layers.append(nn.ELU())
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil_mode: Keras "same" pooling, 5 -> 3
            dropout_layer = nn.Dropout(rate)
            self.dropouts.append(dropout_layer)
            layers.append(dropout_layer)
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(channels, num_classes)
        keras_init_(self)

    def set_dropout_rates(self, rates: Sequence[float]) -> None:
        for layer, rate in zip(self.dropouts, rates, strict=True):
            layer.p = float(rate)

    def dropout_rates(self) -> list[float]:
        return [layer.p for layer in self.dropouts]

    def forward(self, x):
        return self.classifier(self.flatten(self.features(x)))


@register_model
def elu_net_seed(num_classes: int = 100, dropout: float | Sequence[float] = 0.5, width: float = 1.0,
                 input_pad: int = 4) -> EluNet:
    """The seed tutorial's network: ELU at the end of each stack only (42,607,204 parameters at 100 classes)."""
    return EluNet(SEED_STACKS, num_classes, False, dropout, width, input_pad)


@register_model
def elu_net_paper(num_classes: int = 100, dropout: float | Sequence[float] = 0.5, width: float = 1.0,
                  input_pad: int = 4) -> EluNet:
    """The paper's network: ELU after every convolution, 1x1 first conv in stack 3 (39,330,404 parameters)."""
    return EluNet(PAPER_STACKS, num_classes, True, dropout, width, input_pad)
