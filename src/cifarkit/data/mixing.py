"""Batch mixing: CutMix (Yun et al., ICCV 2019) and mixup (Zhang et al., ICLR 2018).

A training image is blended with a partner from the same batch, and its loss is shared between the two labels in
proportion. A regulariser for long runs: without one, the long CIFAR-100 recipe memorised its training split (train
top-1 99.9%, validation 72.7%, the validation loss rising over the last fifth). Follows clovaai/CutMix-PyTorch's
`train.py` (one mixing weight and one box per batch, the weight drawn from Beta(alpha, alpha), the box's side
sqrt(1 - weight) of the image's, centred uniformly and clipped, the weight then set to the share actually kept;
mixing applied to a batch with probability `mix_probability`, 0.5 in its CIFAR commands). Two differences: the
partner of batch position i is position n-1-i of the global batch (its order is already a fresh random
permutation, and so every process forms the pairs one process would), and the draws come from the loader's
seeded generator, so a resumed run mixes as the uninterrupted one would.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class MixedLabels:
    """The labels of a mixed batch: each image is `weight` of `a`'s picture and 1 - weight of `b`'s."""

    a: torch.Tensor
    b: torch.Tensor
    weight: float

    def loss(self, logits: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        return (self.weight * F.cross_entropy(logits, self.a, label_smoothing=label_smoothing)
                + (1 - self.weight) * F.cross_entropy(logits, self.b, label_smoothing=label_smoothing))

    @property
    def dominant(self) -> torch.Tensor:
        """The label that makes up most of each image (what training accuracy is counted against)."""
        return self.a if self.weight >= 0.5 else self.b


Labels = torch.Tensor | MixedLabels


def training_loss(logits: torch.Tensor, labels: Labels, label_smoothing: float = 0.0) -> torch.Tensor:
    if isinstance(labels, MixedLabels):
        return labels.loss(logits, label_smoothing)
    return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)


def accuracy_labels(labels: Labels) -> torch.Tensor:
    return labels.dominant if isinstance(labels, MixedLabels) else labels


Mixed = tuple[torch.Tensor, float]  # the mixed batch, and the share of each image left its own


def cutmix(x: torch.Tensor, partner: torch.Tensor, weight: float, rng: np.random.Generator) -> Mixed:
    """Paste a box of the partners into the images; returns the batch and the share of each image left its own."""
    h, w = x.shape[-2:]
    side = math.sqrt(1.0 - weight)
    cut_h, cut_w = int(h * side), int(w * side)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    x1, x2 = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    mixed = x.clone()
    mixed[..., y1:y2, x1:x2] = partner[..., y1:y2, x1:x2]
    return mixed, 1.0 - float((y2 - y1) * (x2 - x1)) / (h * w)


def mixup(x: torch.Tensor, partner: torch.Tensor, weight: float, rng: np.random.Generator) -> Mixed:
    """Blend the images with their partners pixel by pixel."""
    return weight * x + (1.0 - weight) * partner, weight


MIXES: dict[str, Callable[[torch.Tensor, torch.Tensor, float, np.random.Generator], Mixed]] = {
    "cutmix": cutmix,
    "mixup": mixup,
}


def mixing_at(step: int, total_steps: int, mix: str, fraction: float) -> bool:
    """Whether the batch of `step` may be mixed: during the first `fraction` of the run."""
    return mix != "none" and step < fraction * total_steps


def draw_mix(generator: torch.Generator, alpha: float, probability: float) -> tuple[float, np.random.Generator] | None:
    """This batch's mixing weight and a generator for its box, drawn from the loader's seeded generator; None when
    the batch stays unmixed (probability 1 - `probability`)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    rng = np.random.default_rng(seed)
    if rng.random() >= probability:
        return None
    return float(rng.beta(alpha, alpha)), rng


def partner_positions(n: int) -> torch.Tensor:
    """The partner of global batch position i is n-1-i."""
    return torch.arange(n - 1, -1, -1)
