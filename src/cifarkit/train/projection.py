"""How long would a recipe take here? A few real training steps, timed, projected to the whole run.

The steps are the recipe's own (its model, optimizer, batch size, augmentation and autocast) on synthetic
resident data, each timed after synchronising the device; the median is multiplied by the recipe's steps.
For a GPU one has no access to, the projection is a stated rate instead: the network's multiply-adds and
the GPU's dense bf16 peak at a utilisation typical of convolutional training (said beside the figure).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.config import Config

# one H200: 989 TFLOP/s dense bf16 (NVIDIA's data sheet); convolutional training reaches about 40% of it
H200_BF16_FLOPS = 989e12
CONV_TRAINING_UTILISATION = 0.4


@dataclass(frozen=True)
class Projection:
    recipe: str
    steps: int
    batch_size: int
    step_seconds: float  # median measured here
    device: str
    macs_per_image: int  # forward multiply-adds

    @property
    def hours_here(self) -> float:
        return self.steps * self.step_seconds / 3600

    @property
    def images_per_second(self) -> float:
        return self.batch_size / self.step_seconds

    @property
    def h200_hours(self) -> float:
        """Forward + backward = 3 forward passes, 2 FLOP per multiply-add, at the stated H200 rate."""
        flops = 6 * self.macs_per_image * self.batch_size * self.steps
        return flops / (H200_BF16_FLOPS * CONV_TRAINING_UTILISATION) / 3600


def multiply_adds_per_image(model: torch.nn.Module, device: torch.device) -> int:
    """Forward multiply-adds of convolutions and linear layers for one 32x32 picture (hooks, not a formula)."""
    total = 0

    def count(module, inputs, output):
        nonlocal total
        if isinstance(module, torch.nn.Conv2d):
            kernel = module.kernel_size[0] * module.kernel_size[1] * module.in_channels // module.groups
            total += output[0].numel() * kernel
        elif isinstance(module, torch.nn.Linear):
            total += module.in_features * module.out_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32, device=device))
    model.train(was_training)
    for hook in hooks:
        hook.remove()
    return total


def matmul_flops(dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 5) -> float:
    """This CPU's rate on a large square matrix product in `dtype` (what convolutions become at best), FLOP/s:
    the physical ceiling a training step is measured against."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - started)
    return 2 * size**3 / statistics.median(times)


def time_training_steps(config: Config, device: torch.device, steps: int = 5, warmup: int = 2,
                        num_classes: int = 100, model: nn.Module | None = None,
                        log: Callable[[str], None] | None = None) -> list[float]:
    """Seconds of each of `steps` full training steps of `config` (after `warmup` untimed ones); with `log`, a
    line per step (a step of a large recipe takes a minute on a small CPU)."""
    step = training_step(config, device, num_classes, model)
    times = []
    for i in range(warmup + steps):
        times.append(step())
        if log is not None:
            kind = "warm-up step" if i < warmup else "timed step"
            log(f"{config.recipe}: {kind} {i + 1}/{warmup + steps} took {times[-1]:.2f} s")
    return times[warmup:]


def training_step(config: Config, device: torch.device, num_classes: int = 100,
                  model: nn.Module | None = None) -> Callable[[], float]:
    """A function that runs one full training step of `config` and returns its seconds: the recipe's model
    (or `model`: a benchmark's reference implementation of the same network), optimizer, batch size,
    augmentation, autocast and memory format, on synthetic resident data, timed after synchronising."""
    from cifarkit.data.loader import DeviceLoader
    from cifarkit.data.preprocess import Preprocess
    from cifarkit.device import autocast, autocast_dtype, synchronize
    from cifarkit.models import create_model
    from cifarkit.optim import build_optimizer

    batch = config.train.batch_size
    memory_format = torch.channels_last if config.model.channels_last else torch.contiguous_format
    model = (model or create_model(config.model.name, num_classes, **config.model.kwargs)).to(device)
    model = model.to(memory_format=memory_format)
    optimizer = build_optimizer(model, config.optim)
    images = torch.randint(0, 256, (max(batch * 2, 256), 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, num_classes, (images.shape[0],), device=device)
    # an unfitted Preprocess costs what a fitted one does (ZCA: one 3072x3072 matmul per batch)
    loader = DeviceLoader(images, labels, batch, Preprocess(config.preprocess).to(device), config.augment)
    dtype = autocast_dtype(config.train.amp, device)

    def step() -> float:
        synchronize(device)
        started = time.perf_counter()
        x, y = loader.next_batch()
        x = x.contiguous(memory_format=memory_format)
        with autocast(device, dtype):
            loss = F.cross_entropy(model(x).float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        synchronize(device)
        return time.perf_counter() - started

    return step


def project(config: Config, device: torch.device, steps: int = 5,
            log: Callable[[str], None] | None = None) -> Projection:
    from cifarkit.data import get_spec
    from cifarkit.device import device_name_of
    from cifarkit.models import create_model
    from cifarkit.train.setup import plan_steps

    spec = get_spec(config.data.dataset)
    times = time_training_steps(config, device, steps, num_classes=spec.num_classes, log=log)
    model = create_model(config.model.name, spec.num_classes, **config.model.kwargs).to(device)
    step_seconds = statistics.median(times)
    if config.train.budget:  # the run plans its steps to fill the budget
        total_steps = max(1, int(config.train.budget / step_seconds))
    else:  # as the training loop plans them: epochs over the training split, else train.steps
        val = spec.default_val_per_class if config.data.val_per_class is None else config.data.val_per_class
        images = min(config.data.train_subset or spec.train_size, spec.train_size) - val * spec.num_classes
        total_steps = plan_steps(config.train, max(1, images // config.train.batch_size))
    return Projection(config.recipe, total_steps, config.train.batch_size, step_seconds, device_name_of(device),
                      multiply_adds_per_image(model, device))


def describe(p: Projection) -> str:
    gpu = f"{p.h200_hours * 60:,.1f} min" if p.h200_hours * 60 >= 1 else f"{p.h200_hours * 3600:,.1f} s of compute"
    return (f"{p.recipe}: {p.steps:,} steps of batch {p.batch_size} x {p.step_seconds:.2f} s measured here "
            f"({p.images_per_second:.0f} images/s on {p.device}) = {p.hours_here:,.1f} h; on one H200 about "
            f"{gpu} ({p.macs_per_image / 1e6:,.1f} M multiply-adds per image at "
            f"{CONV_TRAINING_UTILISATION:.0%} of its {H200_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16, a stated rate, "
            "not a measurement)")
