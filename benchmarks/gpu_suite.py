"""The GPU suite: one command, a fixed wall-clock budget, JSON and a log in one folder.

    python benchmarks/gpu_suite.py --data-dir DIR --out OUT [--budget-seconds 540] [--device cuda]

1. `fast100` and `fast10-muon` (airbench94_muon's recipe, with a 100-class head) on CIFAR-100 (`--dataset`;
   CIFAR-10 with `--dataset cifar10 --fast-recipes fast10,fast10-muon`), each in its share of
   half the budget: a first run that pays for warm-up (CUDA context, cuDNN autotuning, torch.compile if the
   recipe asks for it) is timed and reported on its own; then as many seeds as fit, each timed after
   synchronising the device. Reported: mean and spread of test accuracy (single view, flip,
   flip+translate), training seconds per seed, images/s.
2. The two ELU networks' training throughput (synchronised step times) and the projected time of 165k
   iterations.
3. `elu-seed` on the same dataset for the steps that fit in what is left (the same loop as a full run); or,
   with `--long-recipe`, that long recipe instead, for as many epochs as fit in what is left: its steps are
   timed first (`cifarkit.train.projection`, both stretches of progressive resizing), the epochs chosen from
   them, and the run is then an ordinary epoch-based run (its schedule ends at its end; the validation split
   picks its checkpoint; the test set once). Its model is written beside the report as `long-model.pt`
   (the chosen checkpoint without the training state), which `cifarkit predict`, `refit-head`, `calibrate`
   and `scripts/package_pretrained.py` take like a run folder's best.pt.

Everything is written to OUT/gpu_suite.json (and OUT/gpu_suite.log), section by section as they finish, so
a run that is cut short still leaves its figures. On a CPU with a tiny budget it runs the same code paths
(the tests do). The real CIFAR-100 pack is larger than one device call carries: see the project's GPU notes
for carrying it in parts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from elu_throughput import measure  # noqa: E402

from cifarkit.checkpoints import TRAINING_ONLY, checkpoint_bytes, load_checkpoint  # noqa: E402
from cifarkit.config import load_config  # noqa: E402
from cifarkit.device import device_name_of, resolve_device  # noqa: E402
from cifarkit.errors import ConfigError  # noqa: E402
from cifarkit.experiments.sweep import PreparedCache  # noqa: E402
from cifarkit.files import atomic_write_bytes  # noqa: E402
from cifarkit.stats import mean_std_text  # noqa: E402
from cifarkit.train import train  # noqa: E402
from cifarkit.train.projection import project  # noqa: E402
from cifarkit.train.results import summarize_runs  # noqa: E402
from cifarkit.train.stopping import TrainingInterrupted  # noqa: E402


class Suite:
    def __init__(self, out: Path, budget: float):
        self.out, self.budget, self.started = out, budget, time.perf_counter()
        out.mkdir(parents=True, exist_ok=True)
        self.report: dict = {}
        self.log_file = open(out / "gpu_suite.log", "a")

    def left(self) -> float:
        return self.budget - (time.perf_counter() - self.started)

    def log(self, line: str) -> None:
        print(line, flush=True)
        self.log_file.write(line + "\n")
        self.log_file.flush()

    def save(self, section: str, value) -> None:
        self.report[section] = value
        (self.out / "gpu_suite.json").write_text(json.dumps(self.report, indent=2) + "\n")


def fast_section(suite: Suite, args, device, recipe: str, seconds: float, cache: PreparedCache) -> None:
    overrides = [f"data.dataset={json.dumps(args.dataset)}", f"data.data_dir={json.dumps(args.data_dir)}",
                 f"train.device={json.dumps(str(device))}", "train.budget_seconds=0",
                 f"train.out_dir={json.dumps(str(suite.out / 'runs'))}", "train.checkpoint_minutes=0",
                 *([f"train.steps={args.fast10_steps}", "train.epochs=0"] if args.fast10_steps else []),
                 *args.set]
    config = load_config(recipe, overrides)
    prepared = cache.get(config, suite.log)  # the fast recipes share their data: prepared once
    deadline = time.perf_counter() + seconds

    def one(seed: int, name: str) -> dict:
        run = load_config(recipe, [*overrides, f"train.seed={seed}", f"train.run_name={json.dumps(name)}"])
        return train(run, suite.log, prepared)

    warmup = one(0, f"{recipe}-warmup")  # pays for first-use costs; reported, not averaged
    suite.save(f"{recipe}_warmup", {"train_seconds": warmup["train_seconds"], "test_top1": warmup["test"]["top1"]})
    runs = []
    while not runs or (time.perf_counter() + runs[-1]["wall_seconds"] * 1.3 < deadline and len(runs) < args.max_seeds):
        runs.append(one(len(runs), f"{recipe}-seed{len(runs)}"))
        summary = summarize_runs(runs)
        suite.save(recipe, {**summary, "epochs": runs[0]["epochs"], "steps": runs[0]["steps"]})
    top1 = summary["test_top1"]
    suite.log(f"{recipe}: {top1['n']} seeds | test top1 {mean_std_text(top1)} | "
              f"train {summary['train_seconds']['mean']:.2f}s per seed (warm-up run {warmup['train_seconds']:.2f}s) "
              f"| {summary['images_per_second']['mean']:.0f} images/s")


def elu_throughput_section(suite: Suite, args, device) -> None:
    results = {}
    for recipe in ("elu-seed", "elu-paper"):
        times = measure(recipe, device, args.elu_steps, 3, 100, "auto", args.elu_width)
        median = statistics.median(times)
        results[recipe] = {"median_step_seconds": median, "images_per_second": 100 / median,
                           "projected_165k_hours": 165_000 * median / 3600, "timed_steps": len(times)}
        suite.log(f"{recipe}: {100 / median:.0f} images/s | 165k iterations in {165_000 * median / 3600:.2f} h")
        suite.save("elu_throughput", results)


def elu_run_section(suite: Suite, args, device) -> None:
    per_step = suite.report.get("elu_throughput", {}).get("elu-seed", {}).get("median_step_seconds", 1.0)
    seconds = max(0.0, suite.left() - 60)  # leave a minute for data, the test pass and writing
    steps = max(1, min(165_000, int(seconds / per_step * 0.8)))
    config = load_config("elu-seed", [
        f"data.dataset={json.dumps(args.dataset)}", f"data.data_dir={json.dumps(args.data_dir)}",
        f"train.device={json.dumps(str(device))}", f"train.out_dir={json.dumps(str(suite.out / 'runs'))}",
        f"train.run_name=elu-seed-{args.dataset}", f"train.steps={steps}", f"train.eval_every={max(1, steps // 4)}",
        "train.checkpoint_minutes=0", *args.elu_set])
    result = train(config, suite.log)
    suite.save(f"elu_seed_{args.dataset}", {k: result[k] for k in ("steps", "train_seconds", "images_per_second",
                                                                   "test", "val")})


def long_section(suite: Suite, args, device, cache: PreparedCache) -> None:
    """`--long-recipe` for as many whole epochs as fit in what is left of the budget (module docstring, 3)."""
    run_name = f"{args.long_recipe}-{device.type}"
    overrides = [f"data.dataset={json.dumps(args.dataset)}", f"data.data_dir={json.dumps(args.data_dir)}",
                 f"train.device={json.dumps(str(device))}", "train.budget_seconds=0", "train.checkpoint_minutes=0",
                 f"train.out_dir={json.dumps(str(suite.out / 'runs'))}", "train.keep_checkpoints=1",
                 f"train.run_name={json.dumps(run_name)}", *args.long_set]
    config = load_config(args.long_recipe, overrides)
    prepared = cache.get(config, suite.log)  # first: a data problem fails before minutes of timing
    steps_per_epoch = max(1, len(prepared.train_x) // config.train.batch_size)
    projection = project(config, device, steps=5, warmup=3, log=suite.log)
    seconds = suite.left() - args.long_margin  # the test pass (with TTA) and writing the model come after
    if seconds <= 0:
        raise ConfigError(f"no time is left for {args.long_recipe} after timing it; raise --budget-seconds or "
                          "--long-seconds")
    # the timed steps run on resident synthetic data without validation passes or checkpoints: a real run's step
    # took 1.16x the timed one on an H200 (0.0327 s against 0.0281 s for long100-wide), hence --long-overhead
    per_epoch = args.long_overhead * projection.step_seconds * steps_per_epoch
    epochs = max(1, min(args.long_max_epochs, int(seconds / per_epoch)))
    suite.log(f"{args.long_recipe}: {projection.step_seconds:.3f} s a step (both resizing stretches, timed) "
              f"-> {epochs} epochs in the {seconds:.0f} s left")
    suite.save("long_plan", {"recipe": args.long_recipe, "step_seconds": projection.step_seconds,
                             "epochs": epochs, "seconds_for_training": seconds, "overrides": args.long_set})
    eval_every = steps_per_epoch * max(1, min(args.long_eval_epochs, epochs))
    config = load_config(args.long_recipe, [*overrides, f"train.epochs={epochs}", f"train.eval_every={eval_every}"])
    result = train(config, suite.log, prepared)
    checkpoint = load_checkpoint(suite.out / "runs" / run_name)  # the one the run tested: best.pt, else last.pt
    portable = {k: v for k, v in checkpoint.items() if k not in TRAINING_ONLY and k not in ("format", "version")}
    atomic_write_bytes(suite.out / "long-model.pt", checkpoint_bytes(portable))
    suite.save("long", {"recipe": args.long_recipe, "epochs": epochs, "overrides": args.long_set,
                        **{k: result.get(k) for k in ("steps", "train_seconds", "images_per_second", "val", "test",
                                                      "test_tta", "test_tta_translate", "best_step")}})
    suite.log(f"{args.long_recipe}: {epochs} epochs in {result['train_seconds']:.0f} s | test top1 "
              f"{result['test']['top1']:.4f} | model {suite.out / 'long-model.pt'}")


def guarded(suite: Suite, name: str, section, *arguments) -> None:
    """One section; a failure is logged and saved, and the suite goes on to the next (the figures of the others
    are worth having)."""
    try:
        section(suite, *arguments)
    except TrainingInterrupted:
        raise  # a stop asked for (Ctrl-C, SIGTERM) stops the suite, not only this section
    except Exception as e:  # noqa: BLE001  (any failure of one section)
        suite.log(f"{name} failed: {type(e).__name__}: {e}")
        suite.save(f"{name}_error", f"{type(e).__name__}: {e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="folder with cifar-100-python/ (or cifar-10-batches-py/)")
    parser.add_argument("--dataset", default="cifar100", choices=["cifar100", "cifar10"])
    parser.add_argument("--out", default="gpu-suite")
    parser.add_argument("--budget-seconds", type=float, default=540)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-seeds", type=int, default=20)
    parser.add_argument("--elu-steps", type=int, default=20, help="timed steps per ELU network")
    parser.add_argument("--elu-width", type=float, default=1.0, help="ELU width multiplier (CPU tests)")
    parser.add_argument("--fast-recipes", default="fast100,fast10-muon", help="comma-separated fast recipes")
    parser.add_argument("--fast10-steps", type=int, help="cut the fast recipes to this many steps (CPU tests)")
    parser.add_argument("--set", action="append", default=[], help="extra fast-recipe overrides (CPU tests)")
    parser.add_argument("--elu-set", action="append", default=[], help="extra elu-seed overrides (CPU tests)")
    parser.add_argument("--long-recipe", help="train this recipe in what is left, not elu-seed (e.g. long100-wide)")
    parser.add_argument("--long-seconds", type=float, default=0.0, help="seconds kept for --long-recipe")
    parser.add_argument("--long-margin", type=float, default=60.0, help="seconds kept after it: test pass, writing")
    parser.add_argument("--long-max-epochs", type=int, default=400)
    parser.add_argument("--long-overhead", type=float, default=1.3,
                        help="a real step's cost over the timed one (validation passes and checkpoints included)")
    parser.add_argument("--long-eval-epochs", type=int, default=5, help="a validation pass every N epochs")
    parser.add_argument("--long-set", action="append", default=[], help="extra long-recipe overrides")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":  # every run's shapes are fixed: cuDNN's autotuning pays for itself within a run
        torch.backends.cudnn.benchmark = True
    suite = Suite(Path(args.out), args.budget_seconds)
    suite.save("machine", {"device": device_name_of(device), "torch": torch.__version__,
                           "cuda": torch.version.cuda, "budget_seconds": args.budget_seconds})
    suite.log(f"device {device_name_of(device)} | torch {torch.__version__} | budget {args.budget_seconds:.0f}s")
    recipes = [r for r in args.fast_recipes.split(",") if r]
    fast_deadline = time.perf_counter() + 0.5 * (suite.left() - args.long_seconds)
    cache = PreparedCache()
    for i, recipe in enumerate(recipes):  # half the budget, shared out evenly among the recipes still to run
        seconds = (fast_deadline - time.perf_counter()) / (len(recipes) - i)
        guarded(suite, recipe, fast_section, args, device, recipe, seconds, cache)
    guarded(suite, "elu_throughput", elu_throughput_section, args, device)
    if args.long_recipe:
        guarded(suite, "long", long_section, args, device, cache)  # the fast recipes' data, where it is the same
    else:
        guarded(suite, "elu_seed", elu_run_section, args, device)
    suite.save("total_seconds", time.perf_counter() - suite.started)
    suite.log(f"suite done in {time.perf_counter() - suite.started:.0f}s | {suite.out / 'gpu_suite.json'}")
    failed = [name[: -len("_error")] for name in suite.report if name.endswith("_error")]
    if failed:  # the figures of the rest are written; the exit status still says not all of it ran
        sys.exit(f"gpu_suite: {', '.join(failed)} failed (see {suite.out / 'gpu_suite.log'})")


if __name__ == "__main__":
    try:
        main()
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        print(f"gpu_suite: stopped ({str(e) or 'interrupted'}); the sections that finished are in --out's "
              "gpu_suite.json and gpu_suite.log", file=sys.stderr)
        sys.exit(130)
