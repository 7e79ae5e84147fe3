"""CIFAR-100 at equal wall-clock time: cifarkit's fast recipe beside the two published fast CIFAR-100 lines,
in one run on one machine.

    python benchmarks/cifar100_speedrun.py --data-dir DIR --budget 600 --seeds 2
    python benchmarks/cifar100_speedrun.py --data-dir DIR --budget 1800 --rows fast100-cpu-30 --seeds 2

Rows (each trained on the same 45,000-image training split, validated on the same 5,000 held-out images and
tested once on the 10,000 test images, single view):
- `fast100-cpu` (and `fast100-cpu-30` at 30 minutes): cifarkit's recipe, through `cifarkit train`.
- `record100`: the CIFAR-100 speedrun's record recipe (crisostomi/cifar100-speedrun, "E7", 2026-07: 71.05% in 7
  epochs on an A100): ResNet-D, Muon with a momentum warm-up, lookahead, warmup-stable-decay, label smoothing
  0.15, progressive resizing (the first half at 20 px), through `cifarkit train --recipe record100` (see that
  recipe for its source and the CPU changes).
- `airbench94_muon-100`: airbench94_muon (KellerJordan/cifar10-airbench) with a 100-class head, as cifarkit's
  translation `fast10-muon` (batch 2000, its Muon and Nesterov rates), its step count fitted to the budget.
- `resnet-muon` (crisostomi/cifar100-speedrun, cifar100-benchmark/train_cifar100_resnet_muon.py: 70.58% plain
  in 16 epochs on an A100): its recipe re-implemented here from the script's text -- a 3-stage ResNet (widths
  64/128/256, 2 basic blocks each, BatchNorm, ReLU, average pool, bias-free linear head), Muon (5 fp32
  Newton-Schulz steps, momentum 0.95, decoupled weight decay 2e-4, update scaled by sqrt(max(1, fan_out /
  fan_in))) on every weight with 2+ dimensions, Nesterov SGD lr 0.02 / momentum 0.9 on the rest, cosine decay,
  label smoothing 0.05, batch 1024, reflect-pad-4 crops and flips, normalised by the CIFAR-100 mean/std. Its
  two CPU adaptations: bf16 autocast where the CPU runs bf16 natively instead of fp16 weights, and the
  epoch count fitted to the budget from the speed of its first steps (the schedule then ends at the budget).

Prints every row, the CPU model and its flags, torch version and threads, and the ratios against the
anchors (accuracy at equal time; time to the anchors' accuracy from the validation curve). Results go to
OUT/results.json, one entry per row, seed and budget; a run already there is not run again, so the same command
continues an interrupted benchmark.

The accuracy-against-time curve: several budgets in one command, finished long runs (epoch-based recipes,
their own training time) beside them, a Markdown table and a PNG plot:

    python benchmarks/cifar100_speedrun.py --data-dir DIR --budget 600,1800,3600,7200 --seeds 1 \
        --rows fast100-cpu,record100 --long RUNS/long100-cutmix --curve docs/images/accuracy-vs-time.png

`--render-only` draws the table and plot from the runs recorded so far and trains nothing (it lists the runs
left out), so asking for a second seed while re-rendering cannot start hours of training.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from cifarkit.config import load_config
from cifarkit.device import autocast, choose_autocast, cpu_bf16_flags, describe_cpu
from cifarkit.files import atomic_write_text
from cifarkit.models.resnet import BasicBlock, StagedResNet  # the anchor's block is the standard one, exactly
from cifarkit.train import train
from cifarkit.train.setup import prepare_data

# cifarkit rows: the recipe and what changes for the benchmark (its budget comes from --budget)
CIFARKIT_ROWS = {
    "fast100-cpu": ("fast100-cpu", []),
    "fast100-cpu-30": ("fast100-cpu-30", []),
    "airbench94_muon-100": ("fast10-muon", ["data.dataset=cifar100"]),
    # the speedrun's current record (E7), re-implemented from its script as a cifarkit recipe (record100.toml
    # states the CPU changes); fitted to the budget like the others: its epochs become the budget's steps, and
    # its schedule, momentum warm-up and progressive resizing keep their fractions of the run
    "record100": ("record100", []),
}
ANCHOR_ROWS = ("resnet-muon",)
DEFAULT_ROWS = ("fast100-cpu", "record100", "airbench94_muon-100", "resnet-muon")


# -- the ResNet + Muon anchor, from its published recipe ---------------------------------------------------------

def SpeedrunResNet(num_classes: int = 100, widths=(64, 128, 256), blocks=(2, 2, 2)) -> nn.Module:  # noqa: N802
    """The anchor's network: cifarkit's StagedResNet with the standard basic block (the record's differs only in
    its downsampling skip), exactly the script's layers."""
    return StagedResNet(BasicBlock, num_classes, widths, blocks)


@torch.no_grad()
def newton_schulz5(matrix: torch.Tensor) -> torch.Tensor:
    """The anchor's orthogonalisation: 5 quintic Newton-Schulz steps in fp32 on the matrix normalised to norm 1."""
    x = matrix.reshape(matrix.shape[0], -1).float()
    if x.norm() == 0:
        return torch.zeros_like(matrix)
    tall = x.shape[0] > x.shape[1]
    x = x.T if tall else x
    x = x / (x.norm() + 1e-7)
    for _ in range(5):
        gram = x @ x.T
        x = 3.4445 * x + (-4.7750 * gram + 2.0315 * gram @ gram) @ x
    return (x.T if tall else x).reshape(matrix.shape).to(matrix.dtype)


class AnchorMuon(torch.optim.Optimizer):
    def __init__(self, params, lr: float, momentum: float, weight_decay: float):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                p.mul_(1 - group["lr"] * group["weight_decay"])
                buffer = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buffer.mul_(group["momentum"]).add_(p.grad)
                update = newton_schulz5(buffer)
                fan_out = update.shape[0]
                scale = math.sqrt(max(1.0, fan_out / max(1, update.numel() // fan_out)))
                p.add_(update, alpha=-group["lr"] * scale)


def crop_flip(x: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (torch.arange(h).view(1, h) + dy.view(b, 1)).view(b, 1, h, 1).expand(b, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (torch.arange(w).view(1, w) + dx.view(b, 1)).view(b, 1, 1, w).expand(b, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(b, generator=generator) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)


def accuracy(model, images, labels, mean, std, dtype, device, batch=1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad(), autocast(device, dtype):
        for i in range(0, len(images), batch):
            x = ((images[i : i + batch].float() / 255 - mean) / std).contiguous(memory_format=torch.channels_last)
            correct += (model(x).argmax(1) == labels[i : i + batch]).sum().item()
    model.train()
    return correct / len(images)


def run_resnet_muon(prepared, budget: float, seed: int, log=print) -> dict:
    device = torch.device("cpu")
    dtype, _ = choose_autocast("auto", device)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y = prepared.train_x.cpu(), prepared.train_y.cpu()
    val_x, val_y = prepared.val_x.cpu(), prepared.val_y.cpu()
    test_x = torch.from_numpy(prepared.data.test_images).permute(0, 3, 1, 2).contiguous()
    test_y = torch.from_numpy(prepared.data.test_labels).long()
    mean = torch.tensor((0.5071, 0.4867, 0.4408)).view(1, 3, 1, 1)  # the anchor's constants
    std = torch.tensor((0.2675, 0.2565, 0.2761)).view(1, 3, 1, 1)
    model = SpeedrunResNet().to(memory_format=torch.channels_last)
    muon = AnchorMuon([p for p in model.parameters() if p.ndim >= 2], lr=0.035, momentum=0.95, weight_decay=2e-4)
    sgd = torch.optim.SGD([p for p in model.parameters() if p.ndim < 2], lr=0.02, momentum=0.9, nesterov=True)
    batch = min(1024, len(train_x))  # the anchor's batch (smaller only for the tests' tiny fake data)
    steps_per_epoch = len(train_x) // batch
    total_steps, step, train_seconds, curve = None, 0, 0.0, []
    timing_steps = 5
    while total_steps is None or step < total_steps:
        order = torch.randperm(len(train_x), generator=generator)[: steps_per_epoch * batch]
        for start in range(0, len(order), batch):
            started = time.perf_counter()
            index = order[start : start + batch]
            x = ((crop_flip(train_x[index].float() / 255, generator) - mean) / std)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, dtype):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), train_y[index], label_smoothing=0.05)
            loss.backward()
            progress = step / total_steps if total_steps else 0.0
            factor = 0.5 * (1 + math.cos(math.pi * progress))
            muon.param_groups[0]["lr"], sgd.param_groups[0]["lr"] = 0.035 * factor, 0.02 * factor
            muon.step()
            sgd.step()
            muon.zero_grad(set_to_none=True)
            sgd.zero_grad(set_to_none=True)
            step += 1
            train_seconds += time.perf_counter() - started
            if total_steps is None and step == timing_steps:  # fit the epoch count to the budget
                total_steps = max(timing_steps + 1, int(budget / (train_seconds / timing_steps)))
                log(f"resnet-muon: {train_seconds / step:.2f}s per step -> {total_steps} steps "
                    f"({total_steps / steps_per_epoch:.2f} epochs) in {budget:.0f}s")
            if step % steps_per_epoch == 0 or step == total_steps:
                curve.append({"step": step, "train_seconds": train_seconds,
                              "val_top1": accuracy(model, val_x, val_y, mean, std, dtype, device)})
                log(f"resnet-muon step {step}/{total_steps} | val top1 {curve[-1]['val_top1']:.4f} | "
                    f"{train_seconds:.0f}s")
            if step == total_steps:
                break
    return {"row": "resnet-muon", "seed": seed, "test_top1": accuracy(model, test_x, test_y, mean, std, dtype, device),
            "val_top1": curve[-1]["val_top1"], "train_seconds": train_seconds, "steps": step,
            "epochs": step / steps_per_epoch, "images_per_second": step * batch / train_seconds, "curve": curve}


# -- cifarkit rows ------------------------------------------------------------------------------------------------

def run_cifarkit(row: str, budget: float, seed: int, data_dir: str | None, out: Path, sets: list[str],
                 log=print) -> dict:
    recipe, extra = CIFARKIT_ROWS[row]
    overrides = [*extra, *sets, f"train.budget_seconds={budget}", f"train.seed={seed}", "train.device=\"cpu\"",
                 f"train.out_dir={json.dumps(str(out / 'runs'))}", f"train.run_name=\"{row}-{budget:.0f}s-seed{seed}\""]
    if data_dir:
        overrides.append(f"data.data_dir={json.dumps(data_dir)}")
    results = train(load_config(recipe, overrides), log=log)
    curve = validation_curve(out / "runs" / f"{row}-{budget:.0f}s-seed{seed}", results)
    return {"row": row, "recipe": recipe, "seed": seed, "test_top1": results["test"]["top1"],
            "test_tta_top1": (results.get("test_tta") or {}).get("top1"), "val_top1": results["val"]["top1"],
            "train_seconds": results["train_seconds"], "steps": results["steps"], "epochs": results["epochs"],
            "images_per_second": results["images_per_second"], "curve": curve}


def validation_curve(run_dir: Path, results: dict) -> list[dict]:
    """(step, training seconds, val top-1) at each validation pass of a cifarkit run, from its metrics.jsonl;
    seconds are the run's mean seconds per step times the step (validation passes are not training time)."""
    from cifarkit.runlog import read_metrics

    seconds_per_step = results["train_seconds"] / results["steps"]
    return [{"step": r["step"], "train_seconds": r["step"] * seconds_per_step, "val_top1": r["val/top1"]}
            for r in read_metrics(run_dir) if "val/top1" in r]


def time_to(curve: list[dict], target: float) -> float | None:
    """Training seconds at which the validation curve first reaches `target` (None: never)."""
    return next((p["train_seconds"] for p in curve if p["val_top1"] >= target), None)


def summarize(rows: dict[str, list[dict]]) -> list[str]:
    lines = []
    for name, runs in rows.items():
        tops = [r["test_top1"] for r in runs]
        spread = f" +- {statistics.stdev(tops) * 100:.2f}" if len(tops) > 1 else ""
        lines.append(f"{name:22s} test top1 {statistics.mean(tops) * 100:.2f}%{spread} (n={len(tops)}) | "
                     f"{statistics.mean(r['epochs'] for r in runs):.2f} epochs in "
                     f"{statistics.mean(r['train_seconds'] for r in runs):.0f}s | "
                     f"{statistics.mean(r['images_per_second'] for r in runs):.0f} img/s")
    ours = [n for n in rows if n.startswith("fast100")]
    anchors = [n for n in rows if not n.startswith("fast100")]
    for mine in ours:
        mean_mine = statistics.mean(r["test_top1"] for r in rows[mine])
        for anchor in anchors:
            mean_anchor = statistics.mean(r["test_top1"] for r in rows[anchor])
            anchor_val = statistics.mean(r["val_top1"] for r in rows[anchor])
            anchor_time = statistics.mean(r["train_seconds"] for r in rows[anchor])
            reach = [time_to(r["curve"], anchor_val) for r in rows[mine]]
            when = (f"reaches {anchor}'s final val top1 ({anchor_val:.4f}) after "
                    f"{statistics.mean(reach):.0f}s = {statistics.mean(reach) / anchor_time:.2f}x its time"
                    if all(t is not None for t in reach) else f"does not reach {anchor}'s final val top1")
            lines.append(f"{mine} vs {anchor}: accuracy at equal time {mean_mine * 100:.2f} vs "
                         f"{mean_anchor * 100:.2f} ({(mean_mine - mean_anchor) * 100:+.2f} points); {when}")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir")
    parser.add_argument("--budget", type=budgets, default=[600.0], metavar="SECONDS[,SECONDS...]",
                        help="training seconds per run; several, comma-separated, for a curve (default 600)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--anchor-seeds", type=int, default=1, help="seeds for the anchor rows (default 1)")
    parser.add_argument("--rows", default=",".join(DEFAULT_ROWS),
                        help=f"comma-separated, from {', '.join([*CIFARKIT_ROWS, *ANCHOR_ROWS])}")
    parser.add_argument("--out", default="runs/cifar100_speedrun")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="an override for every row's data and cifarkit recipe (tests: data.val_per_class=2)")
    parser.add_argument("--long", action="append", default=[], metavar="RUN_DIR",
                        help="a finished long run to put on the curve at its own training time (repeatable)")
    parser.add_argument("--curve", metavar="PNG", help="write the accuracy-against-time plot here")
    parser.add_argument("--render-only", action="store_true",
                        help="train nothing: print the tables and draw the plot from the runs already recorded, "
                             "and list the runs the command would still train")
    args = parser.parse_args()
    long_runs = [long_run_point(Path(d)) for d in args.long]  # checked before hours of training, not after

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.json"
    info = describe_cpu()
    record = json.loads(results_path.read_text()) if results_path.exists() else {"machine": info, "runs": []}
    print(f"cpu: {info['cpu']} | flags: {' '.join(info['flags'])} | native bf16: "
          f"{', '.join(cpu_bf16_flags()) or 'no'} | torch {info['torch']} | threads {info['threads']}", flush=True)
    rows_asked = args.rows.split(",")
    unknown = [row for row in rows_asked if row not in CIFARKIT_ROWS and row not in ANCHOR_ROWS]
    if unknown:
        raise SystemExit(f"unknown row {unknown[0]!r}: choose from {', '.join([*CIFARKIT_ROWS, *ANCHOR_ROWS])}")
    prepared = None
    missing = []
    for budget in args.budget:  # the shortest first: the first figures come soonest
        for row in rows_asked:
            seeds = args.seeds if row.startswith("fast100") else args.anchor_seeds
            for seed in range(seeds):
                if any(r["row"] == row and r["seed"] == seed and r["budget"] == budget for r in record["runs"]):
                    continue
                if args.render_only:  # a rendering must never start hours of training
                    missing.append(f"{row} seed {seed} at {budget:.0f}s")
                    continue
                if row in CIFARKIT_ROWS:
                    result = run_cifarkit(row, budget, seed, args.data_dir, out, args.set)
                else:
                    if prepared is None:
                        data = ["data.dataset=cifar100"] + ([f"data.data_dir={json.dumps(args.data_dir)}"]
                                                            if args.data_dir else [])
                        prepared = prepare_data(load_config("fast100-cpu", [*data, *args.set]), torch.device("cpu"))
                    result = run_resnet_muon(prepared, budget, seed)
                result["budget"] = budget
                record["runs"].append(result)
                atomic_write_text(results_path, json.dumps(record, indent=2) + "\n")
                print(f"{row} seed {seed}, {budget:.0f}s: test top1 {result['test_top1']:.4f} | val "
                      f"{result['val_top1']:.4f} | {result['epochs']:.2f} epochs, {result['train_seconds']:.0f}s",
                      flush=True)
    if missing:
        print(f"not run (--render-only), left out of the figures: {'; '.join(missing)}", flush=True)
    for budget in args.budget:
        rows = runs_at(record, budget, out)
        if not rows:
            continue
        print(f"\nCIFAR-100, {budget:.0f}s of training per run, single view, {info['cpu']}:")
        for line in summarize(rows):
            print(line)
        for name, runs in rows.items():
            if name in CIFARKIT_ROWS:
                print(ceiling_line(name, statistics.mean(r["images_per_second"] for r in runs)))
    if len(args.budget) > 1 or long_runs or args.curve:
        series = curve_series(record, rows_asked, args.budget)
        print(f"\nTest top-1 against training time, single view, mean +- std over seeds ({info['cpu']}):\n")
        print("\n".join(curve_table(series, args.budget, long_runs)))
        if args.curve:
            from cifarkit.plots import accuracy_against_time

            path = accuracy_against_time(
                {row: [(b / 60, m, sd) for b, (m, sd, _) in by_budget.items()] for row, by_budget in series.items()},
                {name: (seconds / 60, top1) for name, seconds, top1 in long_runs}, Path(args.curve),
                f"CIFAR-100 test top-1 against CPU training time ({info['cpu']}, {info['threads']} threads)")
            print(f"\nplot: {path}")


def budgets(text: str) -> list[float]:
    """--budget's value: one or more positive seconds, comma-separated, returned shortest first."""
    try:
        values = sorted({float(part) for part in text.split(",")})
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not seconds, e.g. 600 or 600,1800") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: budgets are positive seconds, e.g. 600 or 600,1800")
    return values


def runs_at(record: dict, budget: float, out: Path) -> dict[str, list[dict]]:
    """The runs of one budget, by row, with the validation curve read back for runs recorded without it."""
    rows: dict[str, list[dict]] = {}
    for r in record["runs"]:
        if r["budget"] == budget:
            run_dir = out / "runs" / f"{r['row']}-{r['budget']:.0f}s-seed{r['seed']}"
            if r["row"] in CIFARKIT_ROWS and not r["curve"] and (run_dir / "metrics.jsonl").is_file():
                r["curve"] = validation_curve(run_dir, {"train_seconds": r["train_seconds"], "steps": r["steps"]})
            rows.setdefault(r["row"], []).append(r)
    return rows


def long_run_point(run_dir: Path) -> tuple[str, float, float]:
    """(label, training seconds, test top-1) of a finished cifarkit run, from its results.json."""
    path = run_dir / "results.json"
    if not path.is_file():
        raise SystemExit(f"cifar100_speedrun: error: {run_dir} has no results.json: name a finished cifarkit run")
    results = json.loads(path.read_text())
    return f"{results['recipe']} ({results['epochs']:.0f} epochs)", results["train_seconds"], results["test"]["top1"]


def curve_series(record: dict, rows: list[str], budgets_asked: list[float]) -> dict[str, dict]:
    """row -> budget -> (mean test top-1, std over seeds, seeds), for the rows and budgets asked that ran."""
    series: dict[str, dict] = {}
    for row in rows:
        for budget in budgets_asked:
            tops = [r["test_top1"] for r in record["runs"] if r["row"] == row and r["budget"] == budget]
            if tops:
                std = statistics.stdev(tops) if len(tops) > 1 else 0.0
                series.setdefault(row, {})[budget] = (statistics.mean(tops), std, len(tops))
    return series


def curve_table(series: dict[str, dict], budgets_asked: list[float],
                long_runs: list[tuple[str, float, float]]) -> list[str]:
    """The curve as a Markdown table, a line per recipe and training time: the budget-fitted rows, shortest
    budget first, then the long runs at their own training time."""
    lines = ["| recipe | training time | test top-1 (single view) | seeds |", "| --- | --- | --- | --- |"]
    for budget in budgets_asked:
        for row, by_budget in series.items():
            if budget in by_budget:
                mean, std, n = by_budget[budget]
                spread = f" ± {std * 100:.2f}" if n > 1 else ""
                lines.append(f"| `{row}` | {budget / 60:g} min | {mean * 100:.2f}%{spread} | {n} |")
    lines += [f"| `{name}`, long run | {seconds / 3600:.1f} h | {top1 * 100:.2f}% | 1 |"
              for name, seconds, top1 in long_runs]
    return lines


def ceiling_line(row: str, images_per_second: float) -> str:
    """How far a training step is from this CPU's physical limit: the FLOP/s it achieves (forward + backward =
    3 forward passes, 2 FLOP per multiply-add) against a large matrix product's rate in bf16 and fp32."""
    from cifarkit.models import create_model
    from cifarkit.train.projection import matmul_flops, multiply_adds_per_image

    recipe, extra = CIFARKIT_ROWS[row]
    config = load_config(recipe, extra)
    model = create_model(config.model.name, 100, **config.model.kwargs)
    macs = multiply_adds_per_image(model, torch.device("cpu"))
    achieved = 6 * macs * images_per_second
    bf16, fp32 = matmul_flops(torch.bfloat16), matmul_flops(torch.float32)
    return (f"{row}: {macs / 1e6:.0f} M multiply-adds per image forward; training at {images_per_second:.0f} img/s "
            f"does {achieved / 1e9:.0f} GFLOP/s = {achieved / bf16:.0%} of this CPU's bf16 matmul rate "
            f"({bf16 / 1e9:.0f} GFLOP/s) and {achieved / fp32:.0%} of its fp32 rate ({fp32 / 1e9:.0f} GFLOP/s)")


if __name__ == "__main__":
    from cifarkit.errors import CifarkitError

    try:
        main()
    except CifarkitError as e:  # a missing dataset, a bad --set: one line, as the CLI says it
        raise SystemExit(f"cifar100_speedrun: error: {e}") from None
