"""The training loop: `prepare_data`, then a `Trainer` (`train_step`, `validate_and_save`, `fit`,
`test_once`); `train(config)`, `resume(run_dir)` and `train_seeds(config)` on top.

One direction: data -> Preprocess (fitted on the training split) -> device loader -> model -> loss ->
optimizer. Schedules are pure functions of the step. Model selection uses the validation split only; the
test set is evaluated once, at the end, with the checkpoint that validation picked.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from cifarkit.bundle import ModelBundle
from cifarkit.checkpoints import FOR_RESUME, check_payload
from cifarkit.config import Config, apply_overrides, config_from_dict
from cifarkit.data import CifarData, Split, load_dataset, split_for
from cifarkit.data.loader import DeviceLoader, eval_batches, to_device_images
from cifarkit.data.preprocess import Preprocess
from cifarkit.device import autocast, choose_autocast, device_name_of, resolve_device, synchronize
from cifarkit.errors import CheckpointError, CifarkitError, ConfigError
from cifarkit.files import atomic_write_bytes, atomic_write_text
from cifarkit.models import create_model
from cifarkit.models.protocol import FreezesParameters, HasDropoutSchedule, InitFromData
from cifarkit.optim import build_optimizer, scaled_lr, set_lr
from cifarkit.runlog import MetricsLog
from cifarkit.schedules import dropout_at, lr_at, validate_dropout_events
from cifarkit.train import distributed
from cifarkit.train.averaging import WeightAverager
from cifarkit.train.checkpoint import CheckpointStore, load_checkpoint
from cifarkit.train.guard import UpdateGuard, ensure_momentum_buffers
from cifarkit.train.metrics import Accumulator, evaluate_batches
from cifarkit.train.probe import PROBE_IMAGES, ActivationProbe


def _log(line: str) -> None:
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


def prepare_data(config: Config, device: torch.device, log: Callable[[str], None] = _log) -> PreparedData:
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


def _progress_bar(total: int | None, initial: int, enabled: bool = True):
    from tqdm import tqdm

    interactive = enabled and sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not interactive)


def plan_steps(t, steps_per_epoch: int) -> int:
    return max(1, round(t.epochs * steps_per_epoch)) if t.epochs else t.steps


def build_model(config: Config, prepared: PreparedData, device: torch.device) -> torch.nn.Module:
    model = create_model(config.model.name, prepared.data.spec.num_classes, **config.model.kwargs).to(device)
    if isinstance(model, InitFromData):  # e.g. airbench's patch-whitening first convolution
        pick = torch.randperm(len(prepared.train_x), generator=torch.Generator().manual_seed(0))[:5000]
        model.init_from_data(prepared.preprocess(prepared.train_x[pick.to(device)]))
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class BudgetPlanner:
    """Fits a run to a wall-clock budget (training plus validation passes). The number of steps is planned
    after a few calibration steps and re-planned after every validation pass from the measured time per step
    and per pass, so the learning-rate schedule still ends at its end instead of being cut short."""

    CALIBRATION_STEPS = 10
    MARGIN = 0.98

    def __init__(self, budget_seconds: float | None, eval_every: int):
        self.budget, self.eval_every = budget_seconds, eval_every
        self.started = time.perf_counter()
        self.eval_seconds, self.evals = 0.0, 0

    def record_eval(self, seconds: float) -> None:
        self.eval_seconds += seconds
        self.evals += 1

    def plan(self, done: int, total: int, just_evaluated: bool) -> int:
        if self.budget is None:
            return total
        elapsed = time.perf_counter() - self.started
        if elapsed > self.budget:
            return done
        if done != self.CALIBRATION_STEPS and not just_evaluated:
            return total
        per_step = (elapsed - self.eval_seconds) / done
        per_eval = self.eval_seconds / self.evals if self.evals else 0.0
        left = (self.MARGIN * self.budget - elapsed) / (per_step + per_eval / self.eval_every)
        return max(done + 1, done + int(left))


PROJECTION_STEPS = 5  # steps timed before the projected duration of the run is logged
CPU_RECIPE = "fast10-cpu"  # what a CPU user is pointed to when a recipe would take hours


def _duration(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


class TrainingStopped(CifarkitError):
    """The run stopped early (a signal, a non-finite loss); the message says how to go on."""

    exit_code = 1


class TrainingInterrupted(TrainingStopped):
    exit_code = 130


class StopRequests:
    """SIGINT/SIGTERM: the first asks the loop to finish its step, save and exit; a second SIGINT exits at
    once (Python's own KeyboardInterrupt)."""

    def __init__(self):
        self.signal_name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal_name = signal.Signals(signum).name
        signal.signal(signal.SIGINT, signal.default_int_handler)  # the second Ctrl-C is not caught

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def check_disk_space(run_dir: Path, model: torch.nn.Module, keep: int) -> None:
    """Fail at start-up, not after an hour, when the checkpoints will not fit on the disk."""
    parameter_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    needed = parameter_bytes * 4 * (keep + 1)  # weights + optimizer state (+ averaged weights), per kept file
    free = shutil.disk_usage(run_dir).free
    if free < needed:
        raise ConfigError(f"{run_dir} has {free / 2**20:.0f} MiB free; {keep} checkpoints of this model need about "
                          f"{needed / 2**20:.0f} MiB. Free some space, lower train.keep_checkpoints, or choose "
                          "another --out-dir")


class Trainer:
    """One training run: builds everything from the config (or restores it from a checkpoint), then `fit`."""

    def __init__(self, config: Config, log: Callable[[str], None] = _log, prepared: PreparedData | None = None,
                 run_dir: Path | None = None, resume_from: dict | None = None,
                 on_validation: Callable[[int, dict], None] | None = None):
        t = self.t = config.train
        # called with (step, validation metrics) after every validation pass and its checkpoint; it may raise
        # to stop the run there (a tuner's pruner does)
        self.on_validation = on_validation
        self.dist = distributed.setup(t.device)
        if self.dist.enabled and t.budget_seconds:
            raise ConfigError("train.budget_seconds plans steps from one process's speed; use it without torchrun")
        self.config = config
        self.log = log = log if self.dist.is_main else (lambda _: None)  # one voice: rank 0's
        self.device = distributed.device_for(self.dist, resolve_device(t.device))
        self.amp_dtype, amp_reason = choose_autocast(t.amp, self.device)
        if t.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
        # the data first: nothing is written before the config is valid and the data is found
        self.prepared = prepared = prepared or prepare_data(config, self.device, log)
        DeviceLoader.check_batch(t.batch_size, len(prepared.train_y), self.dist.world_size)
        if self.dist.is_main:
            run_dir = run_dir or make_run_dir(config)
            atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
        self.run_dir = Path(distributed.broadcast_object(str(run_dir)))
        log(f"run: {self.run_dir} | device: {self.device} | autocast: {amp_reason}"
            + (f" | {self.dist.world_size} processes" if self.dist.enabled else ""))
        seed_everything(t.seed)  # the same initial weights on every rank

        self.model = build_model(config, prepared, self.device)
        if self.dist.enabled and t.sync_batchnorm:
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        if self.dist.rank:
            torch.manual_seed(t.seed + 1000 * self.dist.rank)  # each rank its own dropout masks
        self.initial_dropout = self.model.dropout_rates() if isinstance(self.model, HasDropoutSchedule) else []
        validate_dropout_events(config.schedule.dropout_events, len(self.initial_dropout))
        self.optimizer = build_optimizer(self.model, config.optim, t.batch_size)
        ensure_momentum_buffers(self.optimizer)
        self.averager = (WeightAverager(self.model, t.ema_decay, t.ema_every, t.lookahead, t.ema_ramp_power)
                         if t.ema_decay > 0 else None)
        self.guard = UpdateGuard(self._protected_tensors, self.device)
        self.seen_nonfinite = 0  # non-finite steps the guard has undone and this run has acted on
        self.loader = DeviceLoader(prepared.train_x, prepared.train_y, t.batch_size, prepared.preprocess,
                                   config.augment, seed=t.seed, rank=self.dist.rank, world_size=self.dist.world_size)
        self.train_module = self.model
        if self.dist.enabled:
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_module = DistributedDataParallel(self.model, device_ids=device_ids)
        self.forward = torch.compile(self.train_module) if t.compile else self.train_module
        self.base_lr = scaled_lr(config.optim, t.batch_size)
        self.store = CheckpointStore(self.run_dir, t.keep_checkpoints)
        if self.dist.is_main:
            check_disk_space(self.run_dir, self.model, t.keep_checkpoints)
        self.train_acc = Accumulator(self.device)
        self.step, self.total_steps = 0, plan_steps(t, len(self.loader))
        self.best_val_loss, self.best_step = float("inf"), -1
        self.skipped_steps = 0
        self.train_seconds = 0.0  # across resumes
        self._since: float | None = None  # when training time was last banked (None: not training now)
        self.lr = config.optim.lr
        self.wall_seconds = 0.0
        if resume_from is not None:
            self._restore(resume_from)
        self.metrics = (MetricsLog(self.run_dir, resume_after=self.step if resume_from is not None else None)
                        if self.dist.is_main else None)
        self.n_params = sum(p.numel() for p in self.model.parameters())
        self.probe = self._activation_probe() if t.log_activations else None
        log(f"model: {config.model.name} ({self.n_params:,} parameters) | "
            + (f"{t.budget_seconds:g}s budget" if t.budget_seconds else f"{self.total_steps} steps")
            + f" of batch {t.batch_size} ({len(self.loader)} steps per epoch)"
            + (f" | resumed at step {self.step}" if resume_from is not None else ""))

    def _activation_probe(self) -> ActivationProbe:
        """A fixed batch: the first validation images, or the first training images without a validation split."""
        p = self.prepared
        source = p.val_x if len(p.val_x) else p.train_x
        return ActivationProbe(p.preprocess(source[:PROBE_IMAGES]))

    def _activation_scalars(self) -> dict[str, float]:
        return self.probe.measure(self.eval_model(), self.device, self.amp_dtype) if self.probe else {}

    # -- state ------------------------------------------------------------------------------------------------
    def eval_model(self) -> torch.nn.Module:
        return self.averager.average if self.averager is not None else self.model

    def payload(self, val: dict | None) -> dict:
        """A checkpoint: the model bundle (what using the model needs) and what resuming needs besides."""
        data = self.prepared.data
        bundle = ModelBundle(
            config=self.config.to_dict(), step=self.step,
            model=self.eval_model().state_dict(),  # the weights that are validated and used afterwards
            preprocess=self.prepared.preprocess.to_state(), class_names=data.class_names,
            coarse_names=data.coarse_names,
            fine_to_coarse=None if data.fine_to_coarse is None else data.fine_to_coarse.tolist(), val=val or {})
        return {
            **bundle.to_state(),
            "val": val,  # None before any validation pass (the bundle reads it as {})
            "total_steps": self.total_steps,
            "train_model": self.model.state_dict() if self.averager is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "loader": self.loader.state_dict(),
            "train_accumulator": {"sums": self.train_acc.sums.cpu(), "count": self.train_acc.count},
            "rng": rng_state(),
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "skipped_steps": self.skipped_steps,
            "train_seconds": self.train_seconds,
        }

    def _restore(self, state: dict) -> None:
        self.model.load_state_dict(state["train_model"] if state.get("train_model") is not None else state["model"])
        if self.averager is not None:
            self.averager.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.loader.load_state_dict(state["loader"])
        self.train_acc.load(state["train_accumulator"]["sums"], state["train_accumulator"]["count"])
        self.step, self.total_steps = state["step"], state["total_steps"]
        self.best_val_loss, self.best_step = state["best_val_loss"], state["best_step"]
        self.skipped_steps, self.train_seconds = state["skipped_steps"], state["train_seconds"]
        set_rng_state(state["rng"])
        if self.dist.rank:  # a checkpoint holds rank 0's generators; the others derive theirs
            torch.manual_seed(self.t.seed + 1000 * self.dist.rank + self.step)

    # -- the loop ---------------------------------------------------------------------------------------------
    def train_step(self) -> None:
        config, step = self.config, self.step
        lr = lr_at(step, self.base_lr, self.total_steps, config.schedule)
        set_lr(self.optimizer, lr)
        if self.initial_dropout:
            self.model.set_dropout_rates(dropout_at(step, self.initial_dropout, config.schedule.dropout_events))
        x, y = self.loader.next_batch()
        if config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        self.guard.snapshot()  # before the forward pass, which updates BatchNorm statistics
        with autocast(self.device, self.amp_dtype):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.optim.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for param in self.frozen_parameters(step):
            param.grad = None  # SGD skips a parameter without a gradient: no update, no decay, no momentum
        self.optimizer.step()
        if self.averager is not None:
            self.averager.update(self.model, step, self.total_steps)
        finite = self._step_was_finite(loss)
        self.guard.settle(finite, step)  # a non-finite step is undone, on the device
        self.train_acc.add(logits.float(), y, loss, keep=finite)
        self.step += 1
        self.lr = lr
        if self.device.type != "cuda":  # reading the flag costs nothing here: act on it at once, as always
            self.check_nonfinite()

    def _step_was_finite(self, loss: torch.Tensor) -> torch.Tensor:
        """A 0-dim device flag: the loss, and the weights the step produced, are finite on every process."""
        with torch.no_grad():
            finite = torch.isfinite(loss) & torch.stack([p.isfinite().all() for p in self.model.parameters()]).all()
            return distributed.all_reduce_(finite.to(torch.int32), op=distributed.MIN).bool()

    def check_nonfinite(self) -> None:
        """Act on the steps the guard undid since the last check: stop (saving the good state) or count them."""
        bad, first = self.guard.read()
        if bad == self.seen_nonfinite:
            return
        new, self.seen_nonfinite = bad - self.seen_nonfinite, bad
        if not self.t.skip_nonfinite:
            raise self._stop_on_nonfinite(first)
        self.skipped_steps += new
        self.log(f"warning: non-finite loss at step {first + 1}; {new} step(s) skipped ({self.skipped_steps} so far)")

    def _protected_tensors(self) -> list[torch.Tensor]:
        """Every tensor a training step may change (what the guard restores after a non-finite step)."""
        tensors = [p for p in self.model.parameters() if p.requires_grad] + list(self.model.buffers())
        tensors += [s["momentum_buffer"] for s in self.optimizer.state.values() if s.get("momentum_buffer") is not None]
        if self.averager is not None:
            tensors += list(self.averager.average.parameters()) + list(self.averager.average.buffers())
        return tensors

    def weights_are_finite(self) -> bool:
        models = [self.model] + ([self.averager.average] if self.averager is not None else [])
        return all(bool(torch.isfinite(p).all()) for m in models for p in m.parameters())

    def _stop_on_nonfinite(self, step: int) -> TrainingStopped:
        """The bad update was undone. If the weights are finite they are saved as the last good state; should they
        not be (they cannot, unless a checkpoint was loaded so), nothing is saved and the newest file is named."""
        advice = (f"Lower optim.lr, or resume and skip such steps with: cifarkit train --resume {self.run_dir} "
                  "--set train.skip_nonfinite=true")
        what = f"the training loss (or the weights it would give) is not finite at step {step + 1}"
        if self.weights_are_finite():
            path = self.save(check=False)
            return TrainingStopped(f"{what}; stopped without applying that update. The last good state is saved in "
                                   f"{path}. {advice}")
        earlier = self.store.step_files()
        where = f"the newest checkpoint, {earlier[0]}, predates them" if earlier else "no checkpoint was written yet"
        return TrainingStopped(f"{what} and the weights are no longer finite; nothing was saved ({where}). {advice}")

    def frozen_parameters(self, step: int) -> list[torch.nn.Parameter]:
        """The model's parameters frozen at this step's epoch (e.g. airbench's whitening bias after 3 epochs)."""
        if not isinstance(self.model, FreezesParameters):
            return []
        return self.model.frozen_parameters(step // len(self.loader))

    def evaluate(self, x, y, tta: bool | str = False) -> dict:
        """Each rank evaluates its share of the split; the sums are all-reduced."""
        shard = slice(self.dist.rank, None, self.dist.world_size)
        batches = eval_batches(x[shard], y[shard], self.t.eval_batch_size, self.prepared.preprocess)
        return evaluate_batches(self.eval_model(), batches, self.device, self.amp_dtype, tta=tta)

    @property
    def has_validation(self) -> bool:
        """False with data.val_per_class = 0: every training image trains, and the last weights are kept."""
        return len(self.prepared.val_y) > 0

    def validate_and_save(self, bar) -> None:
        self.check_nonfinite()
        train_metrics = self.train_acc.result()
        self.train_acc.reset()
        if not self.has_validation:
            self._log_train_only(train_metrics, bar)
            return
        val = self.evaluate(self.prepared.val_x, self.prepared.val_y)
        scalars = {f"train/{k}": v for k, v in train_metrics.items()}
        scalars.update({f"val/{k}": v for k, v in val.items()})
        scalars["lr"] = self.lr
        scalars.update(self._activation_scalars())
        for i, rate in enumerate(self.model.dropout_rates() if self.initial_dropout else []):
            scalars[f"dropout/stack{i + 1}"] = rate
        if self.metrics is not None:
            self.metrics.log(self.step, scalars)
        is_best = val["loss"] < self.best_val_loss
        if is_best:
            self.best_val_loss, self.best_step = val["loss"], self.step
        self.save(val, best=is_best)
        line = (f"step {self.step}/{self.total_steps} | train loss {train_metrics['loss']:.4f} top1 "
                f"{train_metrics['top1']:.4f} | val loss {val['loss']:.4f} top1 {val['top1']:.4f} top5 "
                f"{val['top5']:.4f} | lr {self.lr:.3g}" + (" | best" if is_best else ""))
        bar.write(line) if not bar.disable else self.log(line)
        if self.on_validation is not None:
            self.on_validation(self.step, val)

    def _log_train_only(self, train_metrics: dict, bar) -> None:
        scalars = {f"train/{k}": v for k, v in train_metrics.items()}
        scalars["lr"] = self.lr
        scalars.update(self._activation_scalars())
        if self.metrics is not None:
            self.metrics.log(self.step, scalars)
        self.save()
        line = (f"step {self.step}/{self.total_steps} | train loss {train_metrics['loss']:.4f} top1 "
                f"{train_metrics['top1']:.4f} | no validation split | lr {self.lr:.3g}")
        bar.write(line) if not bar.disable else self.log(line)

    def _log_projection(self, seconds: float, steps: int) -> None:
        """After a few steps: how long the whole run will take here; on a slow device, what to try instead."""
        left = (self.total_steps - self.step) * seconds / steps
        line = (f"projected: {self.total_steps - self.step:,} more steps x {seconds / steps:.2f}s = "
                f"{_duration(left)} on {device_name_of(self.device)}")
        if left > 2 * 3600 and self.device.type != "cuda":
            line += (f". That is more than two hours: this recipe is meant for a GPU. On a CPU, try "
                     f"`cifarkit train --recipe {CPU_RECIPE}` (CIFAR-10 in 10 minutes), or set "
                     "train.budget_seconds to fit this one to a wall-clock budget")
        self.log(line)

    def _bank_train_time(self) -> None:
        """Add the training time since the last call to `train_seconds` (validation passes excluded), so every
        checkpoint stores a current figure, whenever it is written."""
        if self._since is None:  # inside a validation pass
            return
        now = time.perf_counter()
        self.train_seconds += now - self._since
        self._since = now

    def save(self, val: dict | None = None, best: bool = False, check: bool = True) -> Path:
        """Rank 0 writes; every rank returns the path. Pending non-finite steps are acted on first."""
        if check:
            self.check_nonfinite()
        self._bank_train_time()
        path = self.store.folder / f"step-{self.step:08d}.pt"
        if self.dist.is_main:
            path = self.store.save(self.payload(val), self.step, best=best)
        return path

    def fit(self, evaluate_test: bool = True) -> dict:
        """Train to the end; then the test set once (`evaluate_test=False`: never, as when tuning)."""
        try:
            return self._fit(evaluate_test)
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            raise TrainingStopped(
                f"{e.strerror} writing {e.filename or 'the run'} at step {self.step}; the checkpoints written "
                f"before are kept. Free some space, then continue with: cifarkit train --resume {self.run_dir}"
            ) from None

    def _fit(self, evaluate_test: bool) -> dict:
        t = self.t
        bar = _progress_bar(None if t.budget_seconds else self.total_steps, self.step, self.dist.is_main)
        fit_started = self._since = time.perf_counter()
        planner = BudgetPlanner((t.budget_seconds or None) if self.step == 0 else None, t.eval_every)
        last_save = time.monotonic()
        self.train_module.train()
        first_step = self.step
        with StopRequests() as stop:
            while self.step < self.total_steps:
                self.train_step()
                bar.update(1)
                if self.step == first_step + PROJECTION_STEPS and not planner.budget:
                    self._log_projection(time.perf_counter() - fit_started, PROJECTION_STEPS)
                if planner.budget is not None:
                    synchronize(self.device)
                    self.total_steps = planner.plan(self.step, self.total_steps, just_evaluated=False)
                if self.step % t.eval_every == 0 or self.step == self.total_steps:
                    synchronize(self.device)
                    self._bank_train_time()
                    self._since, eval_started = None, time.perf_counter()
                    self.validate_and_save(bar)
                    self._since = time.perf_counter()  # the validation pass is not training time
                    planner.record_eval(self._since - eval_started)
                    if self.step < self.total_steps:
                        self.total_steps = planner.plan(self.step, self.total_steps, just_evaluated=True)
                    last_save = time.monotonic()
                elif (t.checkpoint_every and self.step % t.checkpoint_every == 0) or (
                        t.checkpoint_minutes and time.monotonic() - last_save > 60 * t.checkpoint_minutes):
                    self.save()
                    last_save = time.monotonic()
                if distributed.agree(stop.signal_name is not None, self.device):
                    bar.close()
                    self.save()
                    raise TrainingInterrupted(
                        f"{stop.signal_name or 'a stop signal'} received: stopped after step {self.step} and saved a "
                        f"checkpoint. Resume with: cifarkit train --resume {self.run_dir}")
        synchronize(self.device)
        self.check_nonfinite()
        self.wall_seconds = time.perf_counter() - fit_started
        bar.close()
        if self.metrics is not None:
            self.metrics.close()
        distributed.barrier()  # best.pt is on disk for every rank
        return self.test_once(evaluate_test)

    def test_once(self, evaluate_test: bool = True) -> dict:
        """The test set, once: with the weights that the validation split chose (`evaluate_test=False`: the
        results without it, "test" is null)."""
        t, run_dir = self.t, self.run_dir
        chosen = run_dir / "best.pt"
        if not self.has_validation:
            chosen, selection = run_dir / "last.pt", "last weights (no validation split: data.val_per_class = 0)"
        elif chosen.exists():
            selection = "lowest validation loss"
        else:  # no validation loss was ever finite: report the last weights, and say so
            self.log("warning: the validation loss was never finite; testing the last checkpoint")
            chosen, selection = run_dir / "last.pt", "last weights (the validation loss was never finite)"
        best = load_checkpoint(chosen, map_location=self.device)
        self.eval_model().load_state_dict(best["model"])
        test_x, test_y = self.prepared.test_tensors(self.device) if evaluate_test else (None, None)
        test = self.evaluate(test_x, test_y) if evaluate_test else None
        results = {
            "recipe": self.config.recipe,
            "dataset": self.config.data.dataset,
            "model": self.config.model.name,
            "parameters": self.n_params,
            "seed": t.seed,
            "steps": self.step,
            "skipped_steps": self.skipped_steps,
            "epochs": self.step * t.batch_size / len(self.prepared.train_x),
            "device": device_name_of(self.device),
            "torch": torch.__version__,
            "train_seconds": self.train_seconds,  # optimizer steps only, across resumes
            "wall_seconds": self.wall_seconds,  # this process's loop, validation passes included
            "images_per_second": (self.step - self.skipped_steps) * t.batch_size / max(self.train_seconds, 1e-9),
            "train_images": len(self.prepared.train_x),
            "selection": selection,
            "best_step": self.best_step if self.has_validation else self.step,
            "val": best["val"],
            "test": test,
        }
        if t.tta and evaluate_test:
            results["test_tta"] = self.evaluate(test_x, test_y, tta="flip")
            results["test_tta_translate"] = self.evaluate(test_x, test_y, tta="flip_translate")
        if self.dist.is_main:
            atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        self.log(f"done: {self.step} steps, {self.train_seconds:.1f}s training ({self.wall_seconds:.1f}s with "
                 f"validation) | "
                 + (f"best step {self.best_step}: val top1 {best['val']['top1']:.4f}" if best["val"] else selection)
                 + (f" | test top1 {test['top1']:.4f} top5 {test['top5']:.4f}" if test else " | test not evaluated")
                 + (f" | TTA: flip {results['test_tta']['top1']:.4f}, flip+translate "
                    f"{results['test_tta_translate']['top1']:.4f}" if "test_tta" in results else "")
                 + f" | {run_dir}")
        results["run_dir"] = str(run_dir)
        return results


def train(config: Config, log: Callable[[str], None] = _log, prepared: PreparedData | None = None,
          on_validation: Callable[[int, dict], None] | None = None, evaluate_test: bool = True) -> dict:
    """Run `config` to the end; returns the results that are also written to RUN_DIR/results.json."""
    return Trainer(config, log, prepared, on_validation=on_validation).fit(evaluate_test)


def check_resume_overrides(overrides: list[str]) -> None:
    from cifarkit.config import RESUMABLE_SETTINGS, parse_override

    for text in overrides:
        key = ".".join(parse_override(text)[0])
        if key not in RESUMABLE_SETTINGS:
            raise ConfigError(f"--set {key} cannot change when resuming (the run would no longer be the one that was "
                              f"started); settings that may change: {', '.join(RESUMABLE_SETTINGS)}. To train with "
                              "other values, start a new run")


def resume(run_dir: str | Path, overrides: list[str] | None = None, log: Callable[[str], None] = _log,
           prepared: PreparedData | None = None, on_validation: Callable[[int, dict], None] | None = None,
           evaluate_test: bool = True) -> dict:
    """Continue the run in `run_dir` from its newest intact checkpoint, exactly where it stopped."""
    run_dir = Path(run_dir)
    check_resume_overrides(overrides or [])
    if not run_dir.is_dir():
        raise CheckpointError(f"{run_dir} is not a run directory")
    state = check_payload(CheckpointStore(run_dir).load_latest(log), run_dir, FOR_RESUME)
    config = config_from_dict(apply_overrides(state["config"], overrides or []))
    log(f"resuming {run_dir} from step {state['step']}")
    return Trainer(config, log, prepared, run_dir=run_dir, resume_from=state, on_validation=on_validation).fit(
        evaluate_test)


def train_seeds(config: Config, log: Callable[[str], None] = _log) -> dict:
    """Train `config.train.seeds` seeds (seed, seed+1, ...) on the same split. Always returns one shape: the
    summary of `summarize_runs` (mean, std, n and values of each figure), with every run's results under
    "runs". One seed trains in RUN_DIR itself; several go to RUN_DIR/seed<N>/ with RUN_DIR/summary.json.
    Under torchrun the process group exists before the data is placed, and only rank 0 writes."""
    t = config.train
    if t.seeds <= 1:
        results = train(config, log)
        return {**summarize_runs([results]), "runs": [results], "run_dir": results["run_dir"]}
    dist_info = distributed.setup(t.device)
    device = distributed.device_for(dist_info, resolve_device(t.device))
    quiet = log if dist_info.is_main else (lambda _: None)
    prepared = prepare_data(config, device, quiet)  # before any folder: the data must be found first
    root = None
    if dist_info.is_main:
        name = t.run_name or f"{config.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
        root = make_run_dir(dataclasses.replace(config, train=dataclasses.replace(t, run_name=name)))
    root = Path(distributed.broadcast_object(str(root)))
    runs = []
    for i in range(t.seeds):
        run_config = dataclasses.replace(config, train=dataclasses.replace(
            t, seed=t.seed + i, seeds=1, out_dir=str(root), run_name=f"seed{t.seed + i}"))
        runs.append(train(run_config, log, prepared))
    summary = {**summarize_runs(runs), "runs": runs, "run_dir": str(root)}
    if dist_info.is_main:
        atomic_write_text(root / "summary.json", json.dumps(summary, indent=2) + "\n")
    quiet(f"{t.seeds} seeds: test top1 {summary['test_top1']['mean']:.4f} +- {summary['test_top1']['std']:.4f}"
          + "".join(f" | {label} {summary[key]['mean']:.4f} +- {summary[key]['std']:.4f}"
                    for key, label in (("test_tta_top1", "flip TTA"), ("test_tta_translate_top1", "flip+translate"))
                    if key in summary)
          + f" | train {summary['train_seconds']['mean']:.1f}s per seed | {root}")
    return summary


def _mean_std(values: list[float]) -> dict:
    array = np.asarray(values, dtype=np.float64)
    return {"mean": float(array.mean()), "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
            "n": len(array), "values": array.tolist()}


def summarize_runs(runs: list[dict]) -> dict:
    summary = {
        "recipe": runs[0]["recipe"], "device": runs[0]["device"], "seeds": [r["seed"] for r in runs],
        "test_top1": _mean_std([r["test"]["top1"] for r in runs]),
        "test_top5": _mean_std([r["test"]["top5"] for r in runs]),
        "train_seconds": _mean_std([r["train_seconds"] for r in runs]),
        "wall_seconds": _mean_std([r["wall_seconds"] for r in runs]),
        "images_per_second": _mean_std([r["images_per_second"] for r in runs]),
    }
    if all(r["val"] for r in runs):  # none with data.val_per_class = 0
        summary["val_top1"] = _mean_std([r["val"]["top1"] for r in runs])
    if all("test_tta" in r for r in runs):
        summary["test_tta_top1"] = _mean_std([r["test_tta"]["top1"] for r in runs])
    if all("test_tta_translate" in r for r in runs):
        summary["test_tta_translate_top1"] = _mean_std([r["test_tta_translate"]["top1"] for r in runs])
    return summary
