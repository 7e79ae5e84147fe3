"""The training loop: `prepare_data`, `train_step`, `evaluate_batches`, `train(config)`.

One direction: data -> Preprocess (fitted on the training split) -> device loader -> model -> loss ->
optimizer. Schedules are pure functions of the step. Model selection uses the validation split only; the
test set is evaluated once, at the end, with the checkpoint that validation picked.
"""

from __future__ import annotations

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
from cifarkit.train.checkpoint import atomic_write_bytes, save_checkpoint
from cifarkit.train.device import autocast, autocast_dtype, resolve_device, synchronize
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


def train(config: Config, log: Callable[[str], None] = _log) -> dict:
    """Run `config` to the end; returns the results that are also written to RUN_DIR/results.json."""
    t = config.train
    device = resolve_device(t.device)
    amp_dtype = autocast_dtype(t.amp, device)
    run_dir = make_run_dir(config)
    (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    log(f"run: {run_dir} | device: {device} | autocast: {amp_dtype or 'off'}")
    seed_everything(t.seed)

    prepared = prepare_data(config, device, log)
    data = prepared.data
    model = create_model(config.model.name, data.spec.num_classes, **config.model.kwargs).to(device)
    if config.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    initial_dropout = model.dropout_rates() if hasattr(model, "dropout_rates") else []
    validate_dropout_events(config.schedule.dropout_events, len(initial_dropout))
    optimizer = build_optimizer(model, config.optim)
    loader = DeviceLoader(prepared.train_x, prepared.train_y, t.batch_size, prepared.preprocess, config.augment,
                          seed=t.seed)
    metrics = MetricsLog(run_dir)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {config.model.name} ({n_params:,} parameters) | {t.steps} steps of batch {t.batch_size} "
        f"({len(loader)} steps per epoch)")

    def checkpoint_payload(step: int, val: dict) -> dict:
        return {
            "config": config.to_dict(),
            "step": step,
            "model": model.state_dict(),
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
    bar = _progress_bar(t.steps, 0)
    started = time.perf_counter()
    model.train()
    for step in range(t.steps):
        lr = lr_at(step, config.optim.lr, t.steps, config.schedule)
        set_lr(optimizer, lr)
        if initial_dropout:
            model.set_dropout_rates(dropout_at(step, initial_dropout, config.schedule.dropout_events))
        x, y = loader.next_batch()
        if config.model.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, amp_dtype):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=config.optim.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        train_acc.add(logits.float(), y, loss)
        bar.update(1)

        done = step + 1
        if done % t.eval_every == 0 or done == t.steps:
            train_metrics = train_acc.result()
            train_acc.reset()
            if not np.isfinite(train_metrics["loss"]):
                raise ConfigError(f"training loss became {train_metrics['loss']} by step {done}; "
                                  "lower optim.lr or check the data")
            val = evaluate_batches(model, eval_batches(prepared.val_x, prepared.val_y, t.eval_batch_size,
                                                       prepared.preprocess), device, amp_dtype)
            scalars = {f"train/{k}": v for k, v in train_metrics.items()}
            scalars.update({f"val/{k}": v for k, v in val.items()})
            scalars["lr"] = lr
            for i, rate in enumerate(model.dropout_rates() if initial_dropout else []):
                scalars[f"dropout/stack{i + 1}"] = rate
            metrics.log(done, scalars)
            is_best = val["loss"] < best_val_loss
            if is_best:
                best_val_loss, best_step = val["loss"], done
            payload = checkpoint_payload(done, val)
            save_checkpoint(run_dir / "last.pt", payload)
            if is_best:
                save_checkpoint(run_dir / "best.pt", payload)
            line = (f"step {done}/{t.steps} | train loss {train_metrics['loss']:.4f} top1 {train_metrics['top1']:.4f}"
                    f" | val loss {val['loss']:.4f} top1 {val['top1']:.4f} top5 {val['top5']:.4f} | lr {lr:.2g}"
                    + (" | best" if is_best else ""))
            bar.write(line) if not bar.disable else log(line)
    synchronize(device)
    elapsed = time.perf_counter() - started
    bar.close()
    metrics.close()

    # The test set, once: with the weights that the validation split chose.
    from cifarkit.train.checkpoint import load_checkpoint

    best = load_checkpoint(run_dir / "best.pt", map_location=device)
    model.load_state_dict(best["model"])
    test_x, test_y = prepared.test_tensors(device)
    test = evaluate_batches(model, eval_batches(test_x, test_y, t.eval_batch_size, prepared.preprocess), device,
                            amp_dtype)
    results = {
        "recipe": config.recipe,
        "dataset": config.data.dataset,
        "model": config.model.name,
        "parameters": n_params,
        "steps": t.steps,
        "device": str(device),
        "train_seconds": elapsed,
        "images_per_second": t.steps * t.batch_size / elapsed,
        "best_step": best_step,
        "val": best["val"],
        "test": test,
    }
    (run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    log(f"done in {elapsed:.1f}s | best step {best_step}: val top1 {best['val']['top1']:.4f} | "
        f"test top1 {test['top1']:.4f} top5 {test['top5']:.4f} | {run_dir}")
    results["run_dir"] = str(run_dir)
    return results
