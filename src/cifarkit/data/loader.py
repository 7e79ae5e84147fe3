"""A device-resident loader: the whole uint8 split lives on the training device, batches are index slices.

No worker processes and no per-image Python: each batch is gathered from the resident tensor, put through
the fitted `Preprocess`, then augmented with batched tensor operations. Randomness (the per-epoch order and
every augmentation draw) comes from seeded CPU generators, so a run is reproducible on any device and the
loader's whole state fits in a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.data.mixing import MIXES, Labels, MixedLabels, draw_mix, partner_positions
from cifarkit.errors import ConfigError
from cifarkit.settings import between, fraction, setting, within


@dataclass(frozen=True)
class AugmentConfig:
    # pixels added on each border before the random crop back to 32x32 (0: no crop)
    pad: int = setting(4, check=within(0, 17))
    pad_mode: Literal["zeros", "reflect"] = "zeros"
    flip: bool = True  # horizontal flips (see flip_mode)
    # "random": each image is flipped with probability 1/2 every time it is drawn. "alternate" (airbench94):
    # each image gets one random orientation for the run and the whole set is mirrored every other epoch, so
    # an image is seen both ways in any two consecutive epochs.
    flip_mode: Literal["random", "alternate"] = "random"
    # Progressive resizing (the CIFAR-100 speedrun record, E7): for the first `resize_fraction` of the run the
    # augmented training batch is scaled down to resize_px x resize_px (bilinear), which costs a fraction of a
    # full-size step; evaluation is always at full size. 0: off. Needs a network that takes any input size.
    resize_px: int = setting(0, check=within(0, 1024))
    resize_fraction: float = setting(0.0, check=fraction)
    # Batch mixing (cifarkit.data.mixing): "cutmix" pastes a box of a partner image into each image, "mixup" blends
    # the two; the loss is shared between both labels in proportion. The weight is drawn from Beta(mix_alpha,
    # mix_alpha); a batch is mixed with probability mix_probability, during the first mix_fraction of the run.
    mix: Literal["none", "cutmix", "mixup"] = "none"
    mix_alpha: float = setting(1.0, check=between(0, 100))
    mix_probability: float = setting(1.0, check=fraction)
    mix_fraction: float = setting(1.0, check=fraction)


PAD_MODES = {"zeros": "constant", "reflect": "reflect"}


def crop(x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, pad: int, pad_mode: str = "zeros") -> torch.Tensor:
    """Pad every image by `pad` pixels, then take the HxW window at (dy[i], dx[i]) of image i (batched gather)."""
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode=PAD_MODES[pad_mode])
    dy, dx = dy.to(x.device), dx.to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, :, None]  # n, h, 1
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, :]  # n, 1, w
    batch = torch.arange(n, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)  # n, c, h, w


def flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(3), x)


def draw_augmentation(n: int, config: AugmentConfig, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The random choices for `n` images (crop offsets, flips), drawn on the CPU from `generator`. Drawn for
    a whole global batch, then sliced per rank, so every image gets the same augmentation whatever the
    number of processes."""
    span = 2 * config.pad + 1
    return {"dy": torch.randint(0, span, (n,), generator=generator),
            "dx": torch.randint(0, span, (n,), generator=generator),
            "flip": torch.rand(n, generator=generator) < 0.5}


def apply_augmentation(x: torch.Tensor, draw: dict[str, torch.Tensor], config: AugmentConfig) -> torch.Tensor:
    x = crop(x, draw["dy"], draw["dx"], config.pad, config.pad_mode)
    return flip(x, draw["flip"]) if config.flip else x


def resize_for_step(x: torch.Tensor, step: int, total_steps: int, config: AugmentConfig) -> torch.Tensor:
    """The batch of `step` at the size progressive resizing gives it (unchanged once the low-res phase ends)."""
    if not config.resize_px or step >= config.resize_fraction * total_steps:
        return x
    return F.interpolate(x, size=(config.resize_px, config.resize_px), mode="bilinear", align_corners=False)


def to_device_images(images_nhwc: np.ndarray, device: torch.device | str) -> torch.Tensor:
    """uint8 NHWC array -> uint8 NCHW tensor on `device` (uint8: a quarter of float32's memory)."""
    return torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).contiguous().to(device)


def eval_batches(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, preprocess: torch.nn.Module
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The split in order, preprocessed, without augmentation; the last batch may be short."""
    for start in range(0, images.shape[0], batch_size):
        yield preprocess(images[start : start + batch_size]), labels[start : start + batch_size]


class DeviceLoader:
    """Endless training batches from a resident split: a fresh seeded permutation per epoch, full batches
    only (the remainder of each permutation is dropped), preprocessed then augmented on the device.

    Distributed: `batch_size` is the global batch. Every rank draws the same permutation and the same
    augmentation choices and keeps its own contiguous slice of each global batch, so within an epoch no image
    is repeated or missed across ranks, and N ranks see exactly the images (and augmentations) that one
    process would."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        batch_size: int,
        preprocess: torch.nn.Module,
        augment_config: AugmentConfig,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if images.shape[0] != labels.shape[0]:
            raise ConfigError("images and labels differ in length")
        self.check_batch(batch_size, images.shape[0], world_size)
        self.rank, self.world_size = rank, world_size
        self.shard = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
        self.images, self.labels = images, labels
        self.batch_size = batch_size
        self.preprocess = preprocess
        self.augment_config = augment_config
        self.order_generator = torch.Generator().manual_seed(seed)
        self.augment_generator = torch.Generator().manual_seed(seed + 1)
        self.epoch = 0
        self.position = 0  # batches already taken from the current epoch
        self._order: torch.Tensor | None = None
        # "alternate" flips: each image's orientation in even epochs, drawn once from the seed
        self.flip_parity = torch.rand(images.shape[0], generator=torch.Generator().manual_seed(seed + 2)) < 0.5

    @staticmethod
    def check_batch(batch_size: int, images: int, world_size: int = 1) -> None:
        """Refuse a batch the split cannot fill, or that does not split over the processes (before a run starts)."""
        if batch_size > images:
            raise ConfigError(f"train.batch_size {batch_size} exceeds the {images} training images; "
                              "lower train.batch_size (or use more data)")
        if batch_size % world_size:
            raise ConfigError(f"the global batch size {batch_size} does not split evenly over {world_size} processes; "
                              f"choose a train.batch_size divisible by {world_size}")

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.images.shape[0] // self.batch_size

    def epoch_indices(self) -> torch.Tensor:
        """This epoch's permutation of the split (drawn once per epoch)."""
        if self._order is None:
            self._order = torch.randperm(self.images.shape[0], generator=self.order_generator)
        return self._order

    def next_indices(self) -> torch.Tensor:
        if self.position >= len(self):
            self.epoch += 1
            self.position = 0
            self._order = None
        start = self.position * self.batch_size
        self.position += 1
        return self.epoch_indices()[start : start + self.batch_size]

    def next_batch(self, mix: bool = False) -> tuple[torch.Tensor, Labels]:
        """This rank's part of the next global batch; a new epoch (and permutation) starts when one runs out.
        `mix`: this batch may be mixed (augment.mix); its labels are then MixedLabels."""
        global_index = self.next_indices()
        draw = draw_augmentation(len(global_index), self.augment_config, self.augment_generator)
        if self.augment_config.flip_mode == "alternate":
            draw["flip"] = self.flip_parity[global_index] ^ bool(self.epoch % 2)
        x, y = self._augmented(global_index, draw, torch.arange(len(global_index))[self.shard])
        mixing = draw_mix(self.augment_generator, self.augment_config.mix_alpha,
                          self.augment_config.mix_probability) if mix else None
        if mixing is None:
            return x, y
        # each image's partner as one process would see it: the same picture, with the partner's own augmentation
        partner, partner_y = self._augmented(global_index, draw, partner_positions(len(global_index))[self.shard])
        weight, rng = mixing
        x, weight = MIXES[self.augment_config.mix](x, partner, weight, rng)
        return x, MixedLabels(y, partner_y, weight)

    def _augmented(self, global_index: torch.Tensor, draw: dict[str, torch.Tensor],
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The images at `positions` of the global batch, preprocessed and augmented as drawn, with their labels."""
        index = global_index[positions].to(self.images.device)
        x = self.preprocess(self.images[index])
        x = apply_augmentation(x, {k: v[positions] for k, v in draw.items()}, self.augment_config)
        return x, self.labels[index]

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "order_generator": self.order_generator.get_state(),
            "augment_generator": self.augment_generator.get_state(),
            "order": self._order,
        }

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position = state["epoch"], state["position"]
        self.order_generator.set_state(state["order_generator"])
        self.augment_generator.set_state(state["augment_generator"])
        self._order = state["order"]
