"""How long would a recipe take here? A few real training steps, timed, projected to the whole run.

The steps are the Trainer's own (`Trainer.train_step`, with the recipe's model, optimizer, batch size,
augmentation, autocast and compile) on synthetic resident data, each timed after synchronising the device; the
median is multiplied by the steps the run would plan.
For a GPU one has no access to, the projection is a stated rate instead: the network's multiply-adds and
the GPU's dense bf16 peak at a utilisation typical of convolutional training (said beside the figure).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
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


class TimedTrainer:
    """The Trainer's own training step (`Trainer.train_step`: schedules, mixing, progressive resizing, autocast,
    compile, averaging, the non-finite guard) on synthetic resident data, in a throw-away run folder, so a
    projection times exactly what a run does. `model` (a benchmark's reference implementation of the recipe's
    network) replaces the recipe's after it is built; `total_steps` is the run's length the schedules see."""

    def __init__(self, config: Config, device: torch.device, model: nn.Module | None = None,
                 total_steps: int | None = None):
        from cifarkit.data import get_spec
        from cifarkit.train.loop import Trainer

        # the starting weights do not change a step's cost, and synthetic data has no split to check them against
        train = dataclasses.replace(config.train, device=str(device), init_from=None)
        config = dataclasses.replace(config, train=train)
        self._folder = tempfile.TemporaryDirectory(prefix="cifarkit-projection-")
        prepared = _synthetic_data(config, device, get_spec(config.data.dataset))
        self.trainer = Trainer(config, log=lambda _: None, prepared=prepared, run_dir=Path(self._folder.name))
        if model is not None:
            self._use(model)
        if total_steps is not None:
            self.trainer.total_steps = total_steps
        self.device = device

    def _use(self, model: nn.Module) -> None:
        from cifarkit.models.protocol import FreezesParameters, HasDropoutSchedule
        from cifarkit.optim import build_optimizer
        from cifarkit.train.averaging import WeightAverager

        trainer, t = self.trainer, self.trainer.t
        model = model.to(trainer.run.device)
        if trainer.config.model.channels_last:
            model = model.to(memory_format=torch.channels_last)
        averager = (WeightAverager(model, t.ema_decay, t.ema_every, t.lookahead, t.ema_ramp_power)
                    if t.ema_decay > 0 else None)
        trainer.run = dataclasses.replace(
            trainer.run, model=model, train_module=model, forward=torch.compile(model) if t.compile else model,
            optimizer=build_optimizer(model, trainer.config.optim, t.batch_size), averager=averager,
            initial_dropout=model.dropout_rates() if isinstance(model, HasDropoutSchedule) else [])
        trainer.freezes = isinstance(model, FreezesParameters)

    def __call__(self) -> float:
        """One training step at the trainer's current step; its seconds, the device synchronised around it."""
        from cifarkit.device import synchronize

        synchronize(self.device)
        started = time.perf_counter()
        self.trainer.train_step()
        synchronize(self.device)
        return time.perf_counter() - started

    def time_steps(self, at_step: int, steps: int, warmup: int, log: Callable[[str], None] | None = None,
                   what: str = "") -> list[float]:
        """Seconds of `steps` steps from `at_step` (after `warmup` untimed ones, which also compile)."""
        self.trainer.step = at_step
        times = []
        for i in range(warmup + steps):
            times.append(self())
            if log is not None:
                kind = "warm-up step" if i < warmup else "timed step"
                log(f"{self.trainer.config.recipe}{what}: {kind} {i + 1}/{warmup + steps} took {times[-1]:.2f} s")
        return times[warmup:]


def _synthetic_data(config: Config, device: torch.device, spec):
    """Random pictures, two batches' worth, resident on the device as a run's are (no validation split)."""
    from cifarkit.data import CifarData, Split
    from cifarkit.data.loader import to_device_images
    from cifarkit.data.preprocess import Preprocess
    from cifarkit.train.setup import PreparedData

    count = max(config.train.batch_size * 2, 256)
    images = np.random.default_rng(0).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    num_classes = spec.num_classes
    labels = np.arange(count) % num_classes
    data = CifarData(spec, images, labels, images[:0], labels[:0],
                     [f"class {i}" for i in range(num_classes)], Path("synthetic"))
    x, y = to_device_images(images, device), torch.from_numpy(labels).to(device)
    # an unfitted Preprocess costs what a fitted one does (ZCA: one 3072x3072 matmul per batch)
    return PreparedData(data, Split(np.arange(count), np.arange(0)), Preprocess(config.preprocess).to(device),
                        x, y, x[:0], y[:0])


def training_step(config: Config, device: torch.device, model: nn.Module | None = None) -> Callable[[], float]:
    """A function that runs one full training step of `config` (the Trainer's) and returns its seconds."""
    return TimedTrainer(config, device, model)


def _phases(config: Config, total_steps: int) -> list[tuple[int, float]]:
    """(first step, share of the run) of each stretch whose steps cost alike: progressive resizing's small
    pictures, then full size."""
    a = config.augment
    if not a.resize_px or a.resize_fraction <= 0:
        return [(0, 1.0)]
    switch = min(total_steps - 1, math.ceil(a.resize_fraction * total_steps))
    return [(0, switch / total_steps), (switch, 1 - switch / total_steps)]


def project(config: Config, device: torch.device, steps: int = 5, warmup: int = 2,
            log: Callable[[str], None] | None = None) -> Projection:
    """The Trainer's step timed here (each stretch of progressive resizing apart), times the steps the run
    plans: `train/setup.py`'s plan over the split `data/split.py` sizes, or, in a budget, the steps the run's own
    planner fits (`train/clock.py`, a validation pass every `train.eval_every` steps, timed too)."""
    from cifarkit.data import get_spec
    from cifarkit.data.split import split_sizes
    from cifarkit.device import device_name_of
    from cifarkit.train.clock import steps_that_fit
    from cifarkit.train.setup import plan_steps

    spec = get_spec(config.data.dataset)
    train_images, val_images = split_sizes(spec, config.data)
    steps_per_epoch = max(1, train_images // config.train.batch_size)
    planned = plan_steps(config.train, steps_per_epoch)
    timer = TimedTrainer(config, device, total_steps=planned)
    medians = [(share, statistics.median(timer.time_steps(first, steps, warmup, log,
                                                          "" if share == 1 else f" (steps from {first})")))
               for first, share in _phases(config, planned)]
    step_seconds = sum(share * median for share, median in medians)
    total_steps = planned
    if config.train.budget:  # the run fills its budget, validation passes included
        per_eval = _validation_seconds(timer, val_images)
        total_steps = max(1, steps_that_fit(config.train.budget, 0.0, step_seconds, per_eval,
                                            config.train.eval_every))
    return Projection(config.recipe, total_steps, config.train.batch_size, step_seconds, device_name_of(device),
                      multiply_adds_per_image(timer.trainer.run.model, device))


def _validation_seconds(timer: TimedTrainer, images: int) -> float:
    """One validation pass over `images` synthetic pictures by the Trainer's own evaluation."""
    if not images:
        return 0.0
    x = timer.trainer.run.prepared.train_x
    x = x.repeat(math.ceil(images / len(x)), 1, 1, 1)[:images]
    y = torch.zeros(images, dtype=torch.long, device=x.device)
    started = time.perf_counter()
    timer.trainer.evaluate(x, y)
    return time.perf_counter() - started


def describe(p: Projection) -> str:
    gpu = f"{p.h200_hours * 60:,.1f} min" if p.h200_hours * 60 >= 1 else f"{p.h200_hours * 3600:,.1f} s of compute"
    return (f"{p.recipe}: {p.steps:,} steps of batch {p.batch_size} x {p.step_seconds:.2f} s measured here "
            f"({p.images_per_second:.0f} images/s on {p.device}) = {p.hours_here:,.1f} h; on one H200 about "
            f"{gpu} ({p.macs_per_image / 1e6:,.1f} M multiply-adds per image at "
            f"{CONV_TRAINING_UTILISATION:.0%} of its {H200_BF16_FLOPS / 1e12:.0f} TFLOP/s bf16, a stated rate, "
            "not a measurement)")
