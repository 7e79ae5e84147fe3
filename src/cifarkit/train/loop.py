"""The training loop: `prepare_data`, `train_step`, `evaluate_batches`, `train(config)`.

One direction: data -> Preprocess (fitted on the training split) -> device loader -> model -> loss ->
optimizer. Schedules are pure functions of the step. Model selection uses the validation split only; the
test set is evaluated once, at the end, with the checkpoint that validation picked.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifarkit.config import Config
from cifarkit.data import CifarData, Split, load_dataset, stratified_split
from cifarkit.data.loader import DeviceLoader, eval_batches, to_device_images
from cifarkit.data.preprocess import Preprocess
from cifarkit.errors import ConfigError
from cifarkit.models import create_model
from cifarkit.train.averaging import WeightAverager
from cifarkit.train.checkpoint import atomic_write_bytes, load_checkpoint, save_checkpoint
from cifarkit.train.device import autocast, autocast_dtype, device_name_of, resolve_device, synchronize
from cifarkit.train.metrics import Accumulator, MetricsLog, evaluate_batches
from cifarkit.train.optim import build_optimizer, set_lr
from cifarkit.train.schedules import dropout_at, lr_at, validate_dropout_events


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
    subset = np.arange(len(labels)) if c.train_subset is None else np.arange(min(c.train_subset, len(labels)))
    val_per_class = data.spec.default_val_per_class if c.val_per_class is None else c.val_per_class
    if c.train_subset is not None and c.val_per_class is None:
        # keep the official proportion (10% held out) when training on a subset
        val_per_class = max(1, len(subset) // (10 * data.spec.num_classes))
    split = stratified_split(labels[subset], val_per_class, c.split_seed)
    split = Split(train=subset[split.train], val=subset[split.val])
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


def make_run_dir(config: Config) -> Path:
    """Create the run directory and prove it writable now, not after an hour of training."""
    name = config.train.run_name or f"{config.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
    run_dir = Path(config.train.out_dir) / name
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _progress_bar(total: int, initial: int):
    from tqdm import tqdm

    interactive = sys.stderr.isatty() and not os.environ.get("CI")
    return tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not interactive)


def plan_steps(t, steps_per_epoch: int) -> int:
    return max(1, round(t.epochs * steps_per_epoch)) if t.epochs is not None else t.steps


def build_model(config: Config, prepared: PreparedData, device: torch.device) -> torch.nn.Module:
    model = create_model(config.model.name, prepared.data.spec.num_classes, **config.model.kwargs).to(device)
    if hasattr(model, "init_from_data"):  # e.g. airbench's patch-whitening first convolution
        pick = torch.randperm(len(prepared.train_x), generator=torch.Generator().manual_seed(0))[:5000]
        model.init_from_data(prepared.preprocess(prepared.train_x[pick.to(device)]))
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model


class StepTimer:
    """Plans the number of steps that fit a wall-clock budget from the throughput of the first steps."""

    CALIBRATION_STEPS = 10

    def __init__(self, budget_seconds: float | None, started: float):
        self.budget, self.started = budget_seconds, started

    def planned_total(self, done: int, current_total: int) -> int:
        """After the calibration steps: the total that fits 97% of the budget; before and after: unchanged."""
        if self.budget is None or done != self.CALIBRATION_STEPS:
            return current_total
        elapsed = time.perf_counter() - self.started
        per_step = elapsed / done
        remaining = 0.97 * self.budget - elapsed
        return max(done, done + int(remaining / per_step))

    def out_of_time(self) -> bool:
        return self.budget is not None and time.perf_counter() - self.started > self.budget


def train(config: Config, log: Callable[[str], None] = _log, prepared: PreparedData | None = None) -> dict:
    """Run `config` to the end; returns the results that are also written to RUN_DIR/results.json."""
    t = config.train
    device = resolve_device(t.device)
    amp_dtype = autocast_dtype(t.amp, device)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log(f"run: {run_dir} | device: {device} | autocast: {amp_dtype or 'off'}")
    seed_everything(t.seed)

    prepared = prepared or prepare_data(config, device, log)
    data = prepared.data
    model = build_model(config, prepared, device)
    initial_dropout = model.dropout_rates() if hasattr(model, "dropout_rates") else []
    validate_dropout_events(config.schedule.dropout_events, len(initial_dropout))
    optimizer = build_optimizer(model, config.optim)
    averager = (WeightAverager(model, t.ema_decay, t.ema_every, t.lookahead, t.ema_ramp_power)
                if t.ema_decay > 0 else None)
    loader = DeviceLoader(prepared.train_x, prepared.train_y, t.batch_size, prepared.preprocess, config.augment,
                          seed=t.seed)
    forward = torch.compile(model) if t.compile else model
    total_steps = plan_steps(t, len(loader))
    metrics = MetricsLog(run_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {config.model.name} ({n_params:,} parameters) | "
        + (f"{t.budget_seconds:g}s budget" if t.budget_seconds else f"{total_steps} steps")
        + f" of batch {t.batch_size} ({len(loader)} steps per epoch)")

    def eval_model() -> torch.nn.Module:
        return averager.average if averager is not None else model

    def evaluate(x, y, tta: bool = False) -> dict:
        batches = eval_batches(x, y, t.eval_batch_size, prepared.preprocess)
        return evaluate_batches(eval_model(), batches, device, amp_dtype, tta=tta)

    def checkpoint_payload(step: int, val: dict) -> dict:
        return {
            "config": config.to_dict(),
            "step": step,
            "total_steps": total_steps,
            "model": eval_model().state_dict(),  # the weights that were validated
            "train_model": model.state_dict() if averager is not None else None,
            "preprocess": prepared.preprocess.to_state(),
            "optimizer": optimizer.state_dict(),
            "loader": loader.state_dict(),
            "rng": rng_state(),
            "val": val,
            "best_val_loss": best_val_loss,
            "class_names": data.class_names,
            "coarse_names": data.coarse_names,
            "fine_to_coarse": None if data.fine_to_coarse is None else data.fine_to_coarse.tolist(),
        }

    train_acc = Accumulator(device)
    best_val_loss, best_step = float("inf"), -1
    bar = _progress_bar(None if t.budget_seconds else total_steps, 0)
    started = time.perf_counter()
    timer = StepTimer(t.budget_seconds, started)
    eval_seconds = 0.0
    model.train()
    step = 0
    while step < total_steps:
        lr = lr_at(step, config.optim.lr, total_steps, config.schedule)
        set_lr(optimizer, lr)
        if initial_dropout:
            model.set_dropout_rates(dropout_at(step, initial_dropout, config.schedule.dropout_events))
        x, y = loader.next_batch()
        if config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if averager is not None:
            averager.update(model, step, total_steps)
        train_acc.add(logits.float(), y, loss)
        bar.update(1)
        step += 1

        if timer.budget is not None:
            synchronize(device)
            total_steps = timer.planned_total(step, total_steps)
            if timer.out_of_time():
                total_steps = step
        if step % t.eval_every == 0 or step == total_steps:
            eval_started = time.perf_counter()
            train_metrics = train_acc.result()
            train_acc.reset()
            if not np.isfinite(train_metrics["loss"]):
                raise ConfigError(f"training loss became {train_metrics['loss']} by step {step}; "
                                  "lower optim.lr or check the data")
            val = evaluate(prepared.val_x, prepared.val_y)
            scalars = {f"train/{k}": v for k, v in train_metrics.items()}
            scalars.update({f"val/{k}": v for k, v in val.items()})
            scalars["lr"] = lr
            for i, rate in enumerate(model.dropout_rates() if initial_dropout else []):
                scalars[f"dropout/stack{i + 1}"] = rate
            metrics.log(step, scalars)
            is_best = val["loss"] < best_val_loss
            if is_best:
                best_val_loss, best_step = val["loss"], step
            payload = checkpoint_payload(step, val)
            save_checkpoint(run_dir / "last.pt", payload)
            if is_best:
                save_checkpoint(run_dir / "best.pt", payload)
            line = (f"step {step}/{total_steps} | train loss {train_metrics['loss']:.4f} top1 "
                    f"{train_metrics['top1']:.4f} | val loss {val['loss']:.4f} top1 {val['top1']:.4f} top5 "
                    f"{val['top5']:.4f} | lr {lr:.3g}" + (" | best" if is_best else ""))
            bar.write(line) if not bar.disable else log(line)
            eval_seconds += time.perf_counter() - eval_started
    synchronize(device)
    elapsed = time.perf_counter() - started
    bar.close()
    metrics.close()

    # The test set, once: with the weights that the validation split chose.
    best = load_checkpoint(run_dir / "best.pt", map_location=device)
    eval_model().load_state_dict(best["model"])
    test_x, test_y = prepared.test_tensors(device)
    test = evaluate(test_x, test_y)
    results = {
        "recipe": config.recipe,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "parameters": n_params,
        "seed": t.seed,
        "steps": step,
        "epochs": step * t.batch_size / len(prepared.train_x),
        "device": device_name_of(device),
        "torch": torch.__version__,
        "train_seconds": elapsed,
        "train_seconds_without_eval": elapsed - eval_seconds,
        "images_per_second": step * t.batch_size / (elapsed - eval_seconds),
        "best_step": best_step,
        "val": best["val"],
        "test": test,
    }
    if t.tta:
        results["test_tta"] = evaluate(test_x, test_y, tta=True)
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"done: {step} steps in {elapsed:.1f}s | best step {best_step}: val top1 {best['val']['top1']:.4f} | "
        f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f}"
        + (f" | test top1 with flip TTA {results['test_tta']['top1']:.4f}" if t.tta else "") + f" | {run_dir}")
    results["run_dir"] = str(run_dir)
    return results


def train_seeds(config: Config, log: Callable[[str], None] = _log) -> dict:
    """Train `config.train.seeds` seeds (seed, seed+1, ...) on the same split; mean and std of the results.
    The runs go to RUN_DIR/seed<N>/ and the summary to RUN_DIR/summary.json."""
    t = config.train
    if t.seeds <= 1:
        return train(config, log)
    name = t.run_name or f"{config.recipe}-{datetime.now():%Y%m%d-%H%M%S}"
    root = make_run_dir(dataclasses.replace(config, train=dataclasses.replace(t, run_name=name)))
    prepared = prepare_data(config, resolve_device(t.device), log)
    runs = []
    for i in range(t.seeds):
        run_config = dataclasses.replace(config, train=dataclasses.replace(
            t, seed=t.seed + i, seeds=1, out_dir=str(root), run_name=f"seed{t.seed + i}"))
        runs.append(train(run_config, log, prepared))
    summary = summarize_runs(runs)
    (root / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    log(f"{t.seeds} seeds: test top1 {summary['test_top1']['mean']:.4f} +- {summary['test_top1']['std']:.4f}"
        + (f" | flip TTA {summary['test_tta_top1']['mean']:.4f} +- {summary['test_tta_top1']['std']:.4f}"
           if "test_tta_top1" in summary else "")
        + f" | train {summary['train_seconds']['mean']:.1f}s per seed | {root}")
    summary["run_dir"] = str(root)
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
        "val_top1": _mean_std([r["val"]["top1"] for r in runs]),
        "train_seconds": _mean_std([r["train_seconds"] for r in runs]),
        "images_per_second": _mean_std([r["images_per_second"] for r in runs]),
    }
    if all("test_tta" in r for r in runs):
        summary["test_tta_top1"] = _mean_std([r["test_tta"]["top1"] for r in runs])
    return summary
