"""The ELU paper's networks for CIFAR.

Clevert, Unterthiner & Hochreiter, "Fast and Accurate Deep Network Learning by Exponential Linear Units
(ELUs)", ICLR 2016: 24.28% test error on CIFAR-100 after 165k iterations with the 18-layer network.

Three variants from one class:
- `elu_net_seed`: the Keras tutorial this project grew from, layer for layer (42,607,204 parameters): ELU only
  after the last convolution of each stack, and stack 3 opening with a 3x3 convolution.
- `elu_net_paper`: the paper's 18-layer network (39,330,404 parameters): ELU after every convolution, and
  stack 3 opening with a 1x1 convolution.
- `elu11_paper`: the paper's 11-layer network of its comparison of activation functions (1,669,028
  parameters at 100 classes). Its last "stack", [1x100x1], is the output layer: a 1x1 convolution with one
  unit per class (100 on CIFAR-100, 10 on CIFAR-10) and no activation, whose pooled 1x1 output is the logits.
All pad the 32x32 input by 4 zero pixels inside the model (40x40), use Keras "same" padding (a 2x2
convolution pads one row/column at the bottom/right) and "same" 2x2 max pooling (odd sizes round up): the
paper does not say how its seven poolings keep a spatial size above 1x1 or how its 2x2 convolutions pad, and
this is how the seed's model does both (40 -> 20 -> 10 -> 5 -> 3 -> 2 -> 1 -> 1).

Every variant takes `activation` (see cifarkit.models.activations; default ELU, as published) and
`batchnorm` (batch normalization after each convolution, before its activation; default off). The defaults
build exactly the networks above, weights included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.models.activations import ACTIVATION_TYPES, ActivationName, commutes_with_max, make_activation
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
# The comparison network, section "Comparison of Activation Functions": stacks of (layers x units x field)
# [1x192x5], [1x192x1, 1x240x3], [1x240x1, 1x260x2], [1x260x1, 1x280x2], [1x280x1, 1x300x2], [1x300x1], and the
# output stack [1x100x1] (one unit per class, added by the builder).
ELU11_STACKS: tuple[tuple[tuple[int, int], ...], ...] = (
    ((192, 5),),
    ((192, 1), (240, 3)),
    ((240, 1), (260, 2)),
    ((260, 1), (280, 2)),
    ((280, 1), (300, 2)),
    ((300, 1),),
)
ELU11_DROPOUT = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.0)  # on the last layer of each stack, as in the paper


class SameConv2d(nn.Conv2d):
    """Stride-1 convolution with Keras "same" padding: for even kernels the extra pixel goes bottom/right.

    Odd kernels pad symmetrically, which the convolution does itself (no padded copy of the input); only the
    2x2 kernels need an explicit bottom/right `F.pad`."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        before = (kernel_size - 1) // 2
        after = kernel_size - 1 - before
        super().__init__(in_channels, out_channels, kernel_size, padding=before if before == after else 0)
        self.same_pad = (before, after, before, after)  # F.pad order: left, right, top, bottom
        self.pads_itself = before == after

    def forward(self, x):
        return super().forward(x if self.pads_itself else F.pad(x, self.same_pad))


def _observed(module: nn.Module | None) -> bool:
    """A layer something watches (a forward hook: the activation probe, a summary): it runs on its full input,
    in its place, so that the watcher sees the output the layer-by-layer network has."""
    return module is not None and bool(module._forward_hooks or module._forward_pre_hooks)


def reference_forward(net: EluNet, x: torch.Tensor) -> torch.Tensor:
    """The network as first written: every layer in order, each convolution after an explicit "same" `F.pad`.
    `EluNet.forward` must compute the same function (tests/test_models.py); benchmarks/elu_throughput.py
    measures the two against each other."""
    for layer in net.features:
        if isinstance(layer, SameConv2d):
            x = F.conv2d(F.pad(x, layer.same_pad), layer.weight, layer.bias)
        else:
            x = layer(x)
    return net.classifier(net.flatten(x))


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
        activation: str = "elu",
        activation_param: float | None = None,
        batchnorm: bool = False,
        conv_head: bool = False,
    ):
        """`conv_head`: the last stack ends in a 1x1 convolution with `num_classes` units and no activation,
        whose output is the logits (the 11-layer network); otherwise a dense layer follows the last stack."""
        super().__init__()
        stacks = [list(stack) for stack in stacks]
        if conv_head:
            stacks.append([(num_classes, 1)])
        rates = [dropout] * len(stacks) if isinstance(dropout, (int, float)) else list(dropout)
        if len(rates) != len(stacks):
            raise ValueError(f"need one dropout rate per stack ({len(stacks)}), got {len(rates)}")
        if not all(isinstance(r, (int, float)) and 0 <= r < 1 for r in rates):
            raise ValueError(f"dropout rates must be numbers in [0, 1), got {rates}")
        if not (isinstance(width, (int, float)) and 0 < width <= 16) or not (isinstance(input_pad, int) and
                                                                             0 <= input_pad <= 16):
            raise ValueError(f"width must be in (0, 16] and input_pad an integer in [0, 16], got {width}, {input_pad}")
        make_activation(activation, activation_param)  # an unknown name or a stray parameter fails here
        layers: list[nn.Module] = [nn.ZeroPad2d(input_pad)]
        self.dropouts = nn.ModuleList()
        channels = 3
        for s, (stack, rate) in enumerate(zip(stacks, rates, strict=True)):
            for i, (out, kernel) in enumerate(stack):
                is_output = conv_head and s == len(stacks) - 1
                out = out if is_output else max(1, round(out * width))  # width < 1: the narrow test variants
                layers.append(SameConv2d(channels, out, kernel))
                channels = out
                if is_output:
                    continue
                if batchnorm:  # after the convolution, before its activation
                    layers.append(nn.BatchNorm2d(out))
                if elu_after_every_conv or i == len(stack) - 1:
                    layers.append(make_activation(activation, activation_param))
            layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))  # ceil_mode: Keras "same" pooling, 5 -> 3
            dropout_layer = nn.Dropout(rate)
            self.dropouts.append(dropout_layer)
            layers.append(dropout_layer)
        self.features = nn.Sequential(*layers)
        # activations directly followed by a max-pooling that the forward pass may run pool-first
        commutes = commutes_with_max(activation, activation_param)
        self._pool_first = frozenset(
            i for i in range(len(layers) - 1)
            if commutes and isinstance(layers[i], ACTIVATION_TYPES) and isinstance(layers[i + 1], nn.MaxPool2d))
        self.flatten = nn.Flatten()
        self.classifier = nn.Identity() if conv_head else nn.Linear(channels, num_classes)
        keras_init_(self)

    def set_dropout_rates(self, rates: Sequence[float]) -> None:
        for layer, rate in zip(self.dropouts, rates, strict=True):
            layer.p = float(rate)

    def dropout_rates(self) -> list[float]:
        return [layer.p for layer in self.dropouts]

    def forward(self, x):
        return self.classify(self.embed(x))

    def classify(self, features):
        return self.classifier(features)

    def embed(self, x):
        layers = self.features
        i = 0
        while i < len(layers):
            layer = layers[i]
            pool = layers[i + 1] if i + 1 < len(layers) else None
            if i in self._pool_first and not (_observed(layer) or _observed(pool)):
                # max-pooling commutes with a non-decreasing activation: pooling first applies the
                # activation (forward and backward) to a quarter of the values, with the same result
                x = layer(pool(x))
                i += 2
            else:
                x = layer(x)
                i += 1
        return self.flatten(x)


def _check_activation(activation: str = "elu", activation_param: float | None = None, **_) -> None:
    make_activation(activation, activation_param)


def _variant(name: str, doc: str, stacks, elu_after_every_conv: bool, conv_head: bool = False,
             default_dropout: float | Sequence[float] = 0.5):
    """A registered builder of one EluNet variant; all variants take the same options (one signature)."""

    def build(num_classes: int = 100, dropout: float | Sequence[float] = default_dropout, width: float = 1.0,
              input_pad: int = 4, activation: ActivationName = "elu", activation_param: float | None = None,
              batchnorm: bool = False) -> EluNet:
        return EluNet(stacks, num_classes, elu_after_every_conv, dropout, width, input_pad, activation,
                      activation_param, batchnorm, conv_head=conv_head)

    build.__name__ = build.__qualname__ = name
    build.__doc__ = doc
    # the activation is checked when the config is loaded; one dropout layer per stack (the output stack of
    # the 11-layer net included) is what schedule.dropout_events sets
    return register_model(build, check_options=_check_activation, dropout_layers=len(stacks) + conv_head)


elu_net_seed = _variant(
    "elu_net_seed", "The seed tutorial's network: ELU at the end of each stack only (42,607,204 parameters at 100 "
    "classes).", SEED_STACKS, elu_after_every_conv=False)
elu_net_paper = _variant(
    "elu_net_paper", "The paper's network: ELU after every convolution, 1x1 first conv in stack 3 (39,330,404 "
    "parameters).", PAPER_STACKS, elu_after_every_conv=True)
elu11_paper = _variant(
    "elu11_paper", "The paper's 11-layer comparison network (1,669,028 parameters at 100 classes; `width` scales "
    "every layer but the output).", ELU11_STACKS, elu_after_every_conv=True, conv_head=True,
    default_dropout=ELU11_DROPOUT)
