"""ResNet-18 for 32x32 inputs and Wide ResNets.

- He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR 2016; the CIFAR variant with
  a 3x3 stem and no initial pooling, as in pytorch-cifar / pytorch-cifar100 (ResNet-18: 75.61% on
  CIFAR-100 after 200 epochs in pytorch-cifar100's results).
- Zagoruyko & Komodakis, "Wide Residual Networks", BMVC 2016 (WRN-28-10: 81.2% on CIFAR-100; with
  AutoAugment 82.9%): pre-activation blocks, depth 6n+4, widths 16k/32k/64k.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from cifarkit.models.registry import register_model


class BasicBlock(nn.Module):
    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Sequential(nn.Conv2d(channels_in, channels_out, 1, stride, bias=False),
                                          nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    def __init__(self, blocks=(2, 2, 2, 2), num_classes: int = 100, width: int = 64):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        layers, channels = [], width
        for i, count in enumerate(blocks):
            out = width * 2**i
            for j in range(count):
                layers.append(BasicBlock(channels, out, 2 if (j == 0 and i > 0) else 1))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def embed(self, x):
        return self.pool(self.layers(self.stem(x)))

    def classify(self, features):
        return self.fc(features)

    def forward(self, x):
        return self.classify(self.embed(x))


class WideBlock(nn.Module):
    """Pre-activation wide basic block: BN-ReLU-conv3x3-(dropout)-BN-ReLU-conv3x3 (+ shortcut)."""

    def __init__(self, channels_in: int, channels_out: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(channels_in)
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.shortcut = None
        if stride != 1 or channels_in != channels_out:
            self.shortcut = nn.Conv2d(channels_in, channels_out, 1, stride, bias=False)

    def forward(self, x):
        pre = F.relu(self.bn1(x))
        out = self.conv2(self.dropout(F.relu(self.bn2(self.conv1(pre)))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


class WideResNet(nn.Module):
    def __init__(self, depth: int = 28, widen: int = 10, num_classes: int = 100, dropout: float = 0.0):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Wide ResNet depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        layers, channels = [], widths[0]
        for stage, out in enumerate(widths[1:]):
            for j in range(n):
                layers.append(WideBlock(channels, out, 2 if (j == 0 and stage > 0) else 1, dropout))
                channels = out
        self.layers = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def embed(self, x):
        return self.head(self.layers(self.stem(x)))

    def classify(self, features):
        return self.fc(features)

    def forward(self, x):
        return self.classify(self.embed(x))


@register_model
def resnet18(num_classes: int = 100, width: int = 64) -> ResNet:
    return ResNet((2, 2, 2, 2), num_classes, width)


@register_model
def wrn16_8(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(16, 8, num_classes, dropout)


@register_model
def wrn28_10(num_classes: int = 100, dropout: float = 0.0) -> WideResNet:
    return WideResNet(28, 10, num_classes, dropout)


class ResNetDBlock(nn.Module):
    """The CIFAR-100 speedrun record's basic block (crisostomi/cifar100-speedrun, E7, C100_RESNET_D=1): conv3x3
    (stride s) -> BN -> ReLU -> conv3x3 -> BN, plus a skip; ReLU after the sum. A downsampling skip is ResNet-D's
    (He et al., "Bag of Tricks", 2019): a 2x2 average pool, then a 1x1 convolution and BN, so that the skip sees
    every pixel instead of one in four."""

    def __init__(self, channels_in: int, channels_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels_in, channels_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels_out)
        self.conv2 = nn.Conv2d(channels_out, channels_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or channels_in != channels_out:
            pool = [nn.AvgPool2d(2, 2, ceil_mode=True)] if stride != 1 else []
            self.skip = nn.Sequential(*pool, nn.Conv2d(channels_in, channels_out, 1, bias=False),
                                      nn.BatchNorm2d(channels_out))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.skip(x))


class StagedResNet(nn.Module):
    """A 3x3 stem (conv, BN, ReLU) at full resolution, stages of `block`s (each stage after the first halves the
    resolution), global average pooling and a bias-free linear head: the CIFAR-100 speedrun's network, with its
    own blocks (`BasicBlock`: its baseline; `ResNetDBlock`: its record). Average pooling makes it take any input
    size, which progressive resizing (augment.resize_px) relies on."""

    def __init__(self, block: type[nn.Module], num_classes: int = 100, widths: tuple[int, ...] = (64, 128, 256),
                 blocks: tuple[int, ...] = (2, 2, 2)):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, padding=1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU())
        layers, channels = [], widths[0]
        for stage, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            for i in range(count):
                layers.append(block(channels, width, 2 if stage > 0 and i == 0 else 1))
                channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(channels, num_classes, bias=False)

    def embed(self, x):
        return F.adaptive_avg_pool2d(self.body(self.stem(x)), 1).flatten(1)

    def embed_levels(self, x):
        """(the stem's output after pooling, the features): HasLowLevelFeatures, for the outlier score."""
        stem = self.stem(x)
        return F.adaptive_avg_pool2d(stem, 1).flatten(1), F.adaptive_avg_pool2d(self.body(stem), 1).flatten(1)

    def classify(self, features):
        return self.head(features)

    def forward(self, x):
        return self.classify(self.embed(x))


def _check_resnet_d(widths=(64, 128, 256), blocks=(2, 2, 2)) -> None:
    for name, values in (("widths", widths), ("blocks", blocks)):
        if not (isinstance(values, (list, tuple)) and values
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)):
            raise ValueError(f"{name} must be a list of positive integers, got {values!r}")
    if len(widths) != len(blocks):
        raise ValueError(f"widths and blocks must have one entry per stage, got {len(widths)} and {len(blocks)}")


@register_model(check_options=_check_resnet_d)
def resnet_d(num_classes: int = 100, widths: tuple[int, ...] = (64, 128, 256),
             blocks: tuple[int, ...] = (2, 2, 2)) -> StagedResNet:
    """The CIFAR-100 speedrun record's ResNet-D (2.8M parameters at the default widths)."""
    return StagedResNet(ResNetDBlock, num_classes, tuple(widths), tuple(blocks))
