"""Several seeds of one config on the same split, and their summary (cifarkit.train.results.summarize_runs)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

from cifarkit.config import Config
from cifarkit.files import atomic_write_text, json_text
from cifarkit.stats import mean_std_text
from cifarkit.train import distributed
from cifarkit.train.loop import train
from cifarkit.train.results import summarize_runs
from cifarkit.train.setup import make_run_dir, prepare_data, print_line, set_up_process


def train_seeds(config: Config, log: Callable[[str], None] = print_line) -> dict:
    """Train `config.train.seeds` seeds (seed, seed+1, ...) on the same split. Always returns one shape: the
    summary of `summarize_runs` (n, mean, std, 95% interval and values of each figure), with every run's
    results under "runs". One seed trains in RUN_DIR itself; several go to RUN_DIR/seed<N>/ with
    RUN_DIR/summary.json. Under torchrun the process group exists before the data is placed, and only rank 0
    writes."""
    t = config.train
    if t.seeds <= 1:
        results = train(config, log)
        return {**summarize_runs([results]), "runs": [results], "run_dir": results["run_dir"]}
    dist_info, device, _ = set_up_process(config)  # what each seed's Trainer then finds already set up
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
        atomic_write_text(root / "summary.json", json_text(summary) + "\n")
    quiet(f"{t.seeds} seeds: test top1 {mean_std_text(summary['test_top1'])}"
          + "".join(f" | {label} {mean_std_text(summary[key])}"
                    for key, label in (("test_tta_top1", "flip TTA"), ("test_tta_translate_top1", "flip+translate"))
                    if key in summary)
          + f" | train {summary['train_seconds']['mean']:.1f}s per seed | {root}")
    return summary
