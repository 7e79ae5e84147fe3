"""What a run reports: the test set once, with the weights validation chose (`test_once`), and the summary of
several seeds (`summarize_runs`), whose figures are cifarkit.stats.describe's."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from cifarkit.device import device_name_of
from cifarkit.files import atomic_write_text, json_text
from cifarkit.stats import describe
from cifarkit.train.checkpoint import load_checkpoint


@dataclass(frozen=True)
class Selection:
    """How the validation split picks the checkpoint the test set is run with (train.select)."""

    describes: str  # results.json's "selection"
    score: Callable[[dict], float]  # of a validation pass's figures; lower is better


SELECTIONS = {
    "val_loss": Selection("lowest validation loss", lambda val: val["loss"]),
    # label smoothing and batch mixing part the loss from the accuracy: in long100-cutmix the validation loss
    # bottomed out at step 3,053 of 3,440 at 74.12% top-1, while the last evaluation read 74.64%
    "val_top1": Selection("highest validation top-1", lambda val: -val["top1"]),
}


class FinishedRun(Protocol):
    """What the test pass reads of a run that has trained (the Trainer is one): written here, so this module needs
    nothing from the training loop that calls it."""

    config: Any  # the run's Config
    t: Any  # its TrainConfig
    run: Any  # its parts (cifarkit.train.setup.RunParts): device, prepared data, parameter count, processes
    run_dir: Path
    step: int
    skipped_steps: int
    best_step: int
    has_validation: bool
    wall_seconds: float
    clock: Any  # cifarkit.train.clock's: train_seconds, the optimizer steps' time across resumes
    log: Callable[[str], None]

    def eval_model(self) -> torch.nn.Module: ...

    def evaluate(self, x, y, tta: bool | str = False, what: str | None = None) -> dict: ...


def _chosen_checkpoint(trainer: FinishedRun) -> tuple[Path, str]:
    """The checkpoint the test set is run with, and why that one."""
    run_dir = trainer.run_dir
    if not trainer.has_validation:
        return run_dir / "last.pt", "last weights (no validation split: data.val_per_class = 0)"
    if (run_dir / "best.pt").exists():
        return run_dir / "best.pt", SELECTIONS[trainer.t.select].describes
    trainer.log("warning: the validation figures were never finite; testing the last checkpoint")
    return run_dir / "last.pt", "last weights (the validation figures were never finite)"


def test_once(trainer: FinishedRun, evaluate_test: bool = True) -> dict:
    """The test set, once: with the weights that the validation split chose (`evaluate_test=False`: the
    results without it, "test" is null). Writes RUN_DIR/results.json."""
    t, run, run_dir = trainer.t, trainer.run, trainer.run_dir
    chosen, selection = _chosen_checkpoint(trainer)
    best = load_checkpoint(chosen, map_location=run.device)
    trainer.eval_model().load_state_dict(best["model"])
    test_x, test_y = run.prepared.test_tensors(run.device) if evaluate_test else (None, None)
    if evaluate_test:
        views = "single view, then flip and flip+translate test-time augmentation" if t.tta else "single view"
        trainer.log(f"testing the weights of step {best['step']} ({selection}) on the {len(test_y):,} test "
                    f"images: {views}")
    test = trainer.evaluate(test_x, test_y, what="test") if evaluate_test else None
    train_seconds = trainer.clock.train_seconds
    results = {
        "recipe": trainer.config.recipe,
        "dataset": trainer.config.data.dataset,
        "model": trainer.config.model.name,
        "parameters": run.n_params,
        "seed": t.seed,
        "steps": trainer.step,
        "skipped_steps": trainer.skipped_steps,
        "epochs": trainer.step * t.batch_size / len(run.prepared.train_x),
        "device": device_name_of(run.device),
        "torch": torch.__version__,
        "train_seconds": train_seconds,  # optimizer steps only, across resumes
        "wall_seconds": trainer.wall_seconds,  # the loop's, validation passes included, across resumes
        "images_per_second": (trainer.step - trainer.skipped_steps) * t.batch_size / max(train_seconds, 1e-9),
        "train_images": len(run.prepared.train_x),
        "selection": selection,
        "best_step": trainer.best_step if trainer.has_validation else trainer.step,
        "val": best["val"],
        "test": test,
    }
    if t.tta and evaluate_test:
        results["test_tta"] = trainer.evaluate(test_x, test_y, tta="flip", what="test, flip TTA")
        results["test_tta_translate"] = trainer.evaluate(test_x, test_y, tta="flip_translate",
                                                         what="test, flip+translate TTA")
    if run.dist.is_main:
        atomic_write_text(run_dir / "results.json", json_text(results) + "\n")
    trainer.log(
        f"done: {trainer.step} steps, {train_seconds:.1f}s training ({trainer.wall_seconds:.1f}s with validation) | "
        + (f"best step {trainer.best_step}: val top1 {best['val']['top1']:.4f}" if best["val"] else selection)
        + (f" | test top1 {test['top1']:.4f} top5 {test['top5']:.4f}" if test else " | test not evaluated")
        + (f" | TTA: flip {results['test_tta']['top1']:.4f}, flip+translate "
           f"{results['test_tta_translate']['top1']:.4f}" if "test_tta" in results else "")
        + f" | {run_dir}")
    results["run_dir"] = str(run_dir)
    return results


def _figure(values: list[float]) -> dict:
    """describe's figures (n, mean, std, 95% interval), with the values themselves."""
    return {**describe(values), "values": [float(v) for v in values]}


def summarize_runs(runs: list[dict]) -> dict:
    summary = {
        "recipe": runs[0]["recipe"], "device": runs[0]["device"], "seeds": [r["seed"] for r in runs],
        "test_top1": _figure([r["test"]["top1"] for r in runs]),
        "test_top5": _figure([r["test"]["top5"] for r in runs]),
        "train_seconds": _figure([r["train_seconds"] for r in runs]),
        "wall_seconds": _figure([r["wall_seconds"] for r in runs]),
        "images_per_second": _figure([r["images_per_second"] for r in runs]),
    }
    if all(r["val"] for r in runs):  # none with data.val_per_class = 0
        summary["val_top1"] = _figure([r["val"]["top1"] for r in runs])
    if all("test_tta" in r for r in runs):
        summary["test_tta_top1"] = _figure([r["test_tta"]["top1"] for r in runs])
    if all("test_tta_translate" in r for r in runs):
        summary["test_tta_translate_top1"] = _figure([r["test_tta_translate"]["top1"] for r in runs])
    return summary
