"""What a training run is built from, before its first step: the data placed on the device, the run folder,
the random generators, the model, and every part of the run (`set_up_run`: process group, determinism,
optimizer, weight averaging, loader, DDP, compile), gathered in one `RunParts`."""

from __future__ import annotations

import fcntl
import os
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel

from cifarkit.config import Config
from cifarkit.data import CifarData, Split, load_dataset, split_for
from cifarkit.data.loader import DeviceLoader, to_device_images
from cifarkit.data.preprocess import Preprocess
from cifarkit.device import choose_autocast, resolve_device
from cifarkit.errors import ConfigError
from cifarkit.files import atomic_write_bytes
from cifarkit.models import create_model
from cifarkit.models.protocol import HasDropoutSchedule, InitFromData
from cifarkit.optim import build_optimizer, scaled_lr
from cifarkit.schedules import validate_dropout_events
from cifarkit.train import distributed
from cifarkit.train.averaging import WeightAverager
from cifarkit.train.clock import duration_text
from cifarkit.train.guard import ensure_momentum_buffers


def print_line(line: str) -> None:
    """The default log of a run: stdout."""
    print(line, flush=True)  # flushed: lines reach CI logs and pipes as they happen


@dataclass
class PreparedData:
    data: CifarData
    split: Split
    preprocess: Preprocess
    train_x: torch.Tensor  # uint8 NCHW on the device
    train_y: torch.Tensor
    val_x: torch.Tensor
    val_y: torch.Tensor

    def test_tensors(self, device) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device_images(self.data.test_images, device), torch.from_numpy(self.data.test_labels).to(device)


def prepare_data(config: Config, device: torch.device, log: Callable[[str], None] = print_line) -> PreparedData:
    c = config.data
    data = load_dataset(c.dataset, c.data_dir, download=c.download)
    labels = data.train_labels
    split = split_for(data, c)
    log(f"data: {c.dataset} from {data.source_description}; {len(split.train)} train / {len(split.val)} val "
        f"/ {len(data.test_labels)} test images")
    started = time.perf_counter()
    preprocess = Preprocess(config.preprocess).fit(data.train_images[split.train]).to(device)
    seconds = time.perf_counter() - started
    log(f"preprocess: {config.preprocess.normalize} fitted on the training split in {seconds:.1f}s")

    def tensors(index):
        return to_device_images(data.train_images[index], device), torch.from_numpy(labels[index]).to(device)

    train_x, train_y = tensors(split.train)
    val_x, val_y = tensors(split.val)
    return PreparedData(data, split, preprocess, train_x, train_y, val_x, val_y)


RUN_CLAIM = ".cifarkit-run"  # created exclusively by the one run that owns the folder


class RunClaim:
    """This process's claim on a run folder: an exclusive lock on its claim file, which the kernel releases
    when the process ends, however it ends (a killed run leaves nothing held). A second process that would
    train the same run (two `--resume` at once) is refused before it writes anything."""

    def __init__(self, run_dir: Path):
        self.fd: int | None = None  # released at collection even when opening it fails
        try:
            self.fd = os.open(run_dir / RUN_CLAIM, os.O_CREAT | os.O_RDWR | getattr(os, "O_CLOEXEC", 0),
                                          0o644)
        except OSError as e:
            raise ConfigError(f"cannot claim the run directory {run_dir}: {e.strerror}") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.release()
            raise ConfigError(f"another process is training {run_dir} right now; wait for it to finish (or stop "
                              f"it), then resume with: cifarkit train --resume {run_dir}") from None

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    __del__ = release


def make_run_dir(config: Config) -> Path:
    """Create a new run directory and prove it writable now, not after an hour of training.

    A folder that already holds anything is never written into by a new run: a name given with
    train.run_name is refused (resume it, or choose another name); a default name (recipe-date-time) that is
    taken gets a suffix (-2, -3, ...)."""
    explicit = config.train.run_name
    out_dir = Path(config.train.out_dir)
    base = explicit or f"{config.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
    for attempt in range(1, 1000):
        run_dir = out_dir / (base if attempt == 1 else f"{base}-{attempt}")
        try:
            run_dir.mkdir(parents=True, exist_ok=explicit is not None)
            # The claim is the marker created with O_EXCL, in a new folder or an empty one the user made: of two
            # runs started at the same instant exactly one creates it (checking "empty" then writing raced).
            if explicit is None or not any(p.name != RUN_CLAIM for p in run_dir.iterdir()):
                os.close(os.open(run_dir / RUN_CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
                break
        except FileExistsError:
            pass
        except NotADirectoryError:
            raise ConfigError(f"cannot create the run directory {run_dir}: a file is in the way; choose another "
                              "--run-name or --out-dir") from None
        except OSError as e:
            raise ConfigError(f"cannot create the run directory {run_dir}: {e.strerror}; choose another with "
                              "--out-dir") from None
        if explicit:
            raise ConfigError(f"{run_dir} already exists and holds files; a new run never writes into it. "
                              f"Continue that run with: cifarkit train --resume {run_dir}, or choose another "
                              "--run-name")
    else:
        raise ConfigError(f"999 run folders named {base}-N exist in {out_dir}; choose another --run-name")
    try:
        atomic_write_bytes(run_dir / ".write-test", b"ok")
        (run_dir / ".write-test").unlink()
    except OSError as e:
        raise ConfigError(f"cannot write to the run directory {run_dir}: {e.strerror}; choose another with "
                          "--out-dir or free some space") from None
    return run_dir


def rng_state() -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = (kind, torch.from_numpy(keys.copy()), pos, has_gauss, cached)
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy(), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Progress:
    """Long work shows progress: a bar on a terminal; elsewhere (a log file, CI, a pipe) a line at most every
    `every` seconds -- "train: step 120/1290 (9%), 4.21 s/step, about 1.4 h left" -- so that a run's progress
    is visible whatever reads its output. `write` puts a line above the bar (or logs it)."""

    def __init__(self, total: int | None, initial: int = 0, what: str = "train", unit: str = "step",
                 log: Callable[[str], None] = print_line, enabled: bool = True, every: float = 30.0):
        from tqdm import tqdm

        interactive = enabled and sys.stderr.isatty() and not os.environ.get("CI")
        self.bar = tqdm(total=total, initial=initial, unit=unit, dynamic_ncols=True, disable=not interactive,
                        desc=what if what != "train" else None)
        self.lines = enabled and not interactive
        self.total, self.done, self.what, self.unit, self.log, self.every = total, initial, what, unit, log, every
        self.started = self.last = time.monotonic()
        self.first = initial

    @property
    def disable(self) -> bool:
        return self.bar.disable

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.done += n
        now = time.monotonic()
        if self.lines and now - self.last >= self.every:
            self.last = now
            rate = (now - self.started) / max(self.done - self.first, 1)
            line = f"{self.what}: {self.unit} {self.done:,}" + (f"/{self.total:,} ({self.done / self.total:.0%})"
                                                               if self.total else "")
            line += f", {rate:.3g} s/{self.unit}" if rate >= 0.01 else f", {1 / rate:,.0f} {self.unit}s/s"
            if self.total:
                line += f", about {duration_text(rate * (self.total - self.done))} left"
            self.log(line)

    def write(self, line: str) -> None:
        self.bar.write(line) if not self.bar.disable else self.log(line)

    def close(self) -> None:
        self.bar.close()


def with_progress(batches, images: int, what: str, log: Callable[[str], None], enabled: bool = True):
    """(inputs, labels) batches passed through, with the progress of a pass over `images` images shown."""
    progress = Progress(images, what=what, unit="image", log=log, enabled=enabled, every=10.0)
    try:
        for x, y in batches:
            yield x, y
            progress.update(len(y))
    finally:
        progress.close()


def progress_bar(total: int | None, initial: int, enabled: bool = True,
                 log: Callable[[str], None] = print_line) -> Progress:
    return Progress(total, initial, log=log, enabled=enabled)


def plan_steps(t, steps_per_epoch: int) -> int:
    return max(1, round(t.epochs * steps_per_epoch)) if t.epochs else t.steps


def build_model(config: Config, prepared: PreparedData, device: torch.device,
                weights: dict[str, torch.Tensor] | None = None) -> torch.nn.Module:
    """The network, initialised as its builder does, or from `weights` (train.init_from's)."""
    model = create_model(config.model.name, prepared.data.spec.num_classes, **config.model.kwargs).to(device)
    if weights is not None:
        model.load_state_dict(weights)
    elif isinstance(model, InitFromData):  # e.g. airbench's patch-whitening first convolution
        pick = torch.randperm(len(prepared.train_x), generator=torch.Generator().manual_seed(0))[:5000]
        model.init_from_data(prepared.preprocess(prepared.train_x[pick.to(device)]))
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


def check_disk_space(run_dir: Path, model: torch.nn.Module, keep: int) -> None:
    """Fail at start-up, not after an hour, when the checkpoints will not fit on the disk."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = parameter_bytes * 4 * (keep + 1)  # weights + optimizer state (+ averaged weights), per kept file
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"{run_dir} has {free / 2**20:.0f} MiB free; {keep} checkpoints of this model need about "
                          f"{needed / 2**20:.0f} MiB. Free some space, lower train.keep_checkpoints, or choose "
                          "another --out-dir")




@dataclass
class RunParts:
    """Everything a run is made of, built once (`set_up_run`); the Trainer holds it beside its running state."""

    config: Config
    dist: distributed.DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    amp_reason: str
    prepared: PreparedData
    model: torch.nn.Module  # the network itself (what is saved and evaluated)
    train_module: torch.nn.Module  # what the training step calls: the model, or DDP around it
    forward: Callable  # train_module, compiled where train.compile asks
    optimizer: torch.optim.Optimizer
    averager: WeightAverager | None
    loader: DeviceLoader
    base_lr: float  # optim.lr scaled for the global batch
    initial_dropout: list[float]  # the model's dropout rates at step 0 (empty: no dropout schedule)

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())


def set_up_process(config: Config) -> tuple[distributed.DistInfo, torch.device, tuple[torch.dtype | None, str]]:
    """The process group (under torchrun), this process's device, its autocast (dtype, and why), and
    determinism where asked: everything that can refuse the config before the data is read or a folder made."""
    t = config.train
    dist = distributed.setup(t.device)
    if dist.enabled and t.budget:
        raise ConfigError("train.budget_seconds plans steps from one process's speed; use it without torchrun")
    device = distributed.device_for(dist, resolve_device(t.device))
    amp = choose_autocast(t.amp, device)
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    return dist, device, amp


def set_up_run(config: Config, dist: distributed.DistInfo, device: torch.device,
               amp: tuple[torch.dtype | None, str], prepared: PreparedData,
               weights: dict[str, torch.Tensor] | None = None) -> RunParts:
    """The model (seeded alike on every rank; from `weights` where given), optimizer, averaging, loader, DDP and
    compile."""
    t = config.train
    amp_dtype, amp_reason = amp
    seed_everything(t.seed)  # the same initial weights on every rank
    model = build_model(config, prepared, device, weights)
    if dist.enabled and t.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if dist.rank:
        torch.manual_seed(t.seed + 1000 * dist.rank)  # each rank its own dropout masks
    initial_dropout = model.dropout_rates() if isinstance(model, HasDropoutSchedule) else []
    validate_dropout_events(config.schedule.dropout_events, len(initial_dropout))
    optimizer = build_optimizer(model, config.optim, t.batch_size)
    ensure_momentum_buffers(optimizer)
    averager = (WeightAverager(model, t.ema_decay, t.ema_every, t.lookahead, t.ema_ramp_power)
                if t.ema_decay > 0 else None)
    loader = DeviceLoader(prepared.train_x, prepared.train_y, t.batch_size, prepared.preprocess, config.augment,
                          seed=t.seed, rank=dist.rank, world_size=dist.world_size)
    train_module = model
    if dist.enabled:
        train_module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    forward = torch.compile(train_module) if t.compile else train_module
    return RunParts(config, dist, device, amp_dtype, amp_reason, prepared, model, train_module, forward, optimizer,
                    averager, loader, scaled_lr(config.optim, t.batch_size), initial_dropout)
