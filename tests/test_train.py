"""End to end: training runs from config to run directory; the CLI around it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cifarkit.cli import main
from cifarkit.config import list_recipes, load_config
from cifarkit.errors import ConfigError
from cifarkit.train import train
from cifarkit.train.checkpoint import load_checkpoint

TINY = ["model.kwargs.width=0.05", "train.batch_size=20", "train.eval_batch_size=50", "data.dataset=cifar10",
        "data.val_per_class=10"]


def tiny_config(tmp_path, fake_root, *extra):
    return load_config("elu-seed", [*TINY, f"data.data_dir={json.dumps(str(fake_root))}",
                                     f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=run",
                                     "train.steps=12", "train.eval_every=6", *extra])


def test_short_run_writes_events_metrics_and_checkpoints(tmp_path, fake_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    results = train(tiny_config(tmp_path, fake_root), log=lambda _: None)
    run = tmp_path / "run"
    assert {p.name for p in run.iterdir()} >= {"config.json", "metrics.jsonl", "best.pt", "last.pt",
                                               "results.json", "tensorboard"}
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"train/loss", "train/top1", "train/top5", "val/loss", "val/top1", "val/top5", "lr",
            "dropout/stack1"} <= set(tags)
    assert [e.step for e in events.Scalars("val/loss")] == [6, 12]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [6, 12]
    assert lines[-1]["val/loss"] == pytest.approx(events.Scalars("val/loss")[-1].value, rel=1e-6)
    last = load_checkpoint(run / "last.pt")
    assert last["step"] == 12 and last["config"]["recipe"] == "elu-seed"
    assert set(last) >= {"model", "optimizer", "preprocess", "rng", "loader", "classes"}
    assert json.loads((run / "results.json").read_text())["test"] == results["test"]
    assert 0 <= results["test"]["top1"] <= 1 and results["best_step"] in (6, 12)
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 12


def test_checkpoint_reloads_into_the_same_model(tmp_path, fake_root):
    from cifarkit.data.preprocess import Preprocess
    from cifarkit.models import create_model

    train(tiny_config(tmp_path, fake_root), log=lambda _: None)
    state = load_checkpoint(tmp_path / "run")
    model = create_model(state["config"]["model"]["name"], 10, **state["config"]["model"]["kwargs"])
    model.load_state_dict(state["model"])
    pre = Preprocess.from_state(state["preprocess"])
    assert model(pre(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))).shape == (1, 10)


def test_dropout_schedule_reaches_the_model(tmp_path, fake_root):
    config = tiny_config(tmp_path, fake_root, "schedule.dropout_events=[{step=6, set=[0,0.1,0.2,0.3,0.4,0.5,0]}]")
    train(config, log=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # steps 0..5 ran at the initial 0.5; the event at step 6 applies from the seventh update on
    assert lines[0]["dropout/stack2"] == pytest.approx(0.5)
    assert lines[1]["dropout/stack2"] == pytest.approx(0.1) and lines[1]["dropout/stack7"] == 0


def test_unwritable_run_directory_fails_at_start(tmp_path, fake_root):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    config = tiny_config(tmp_path, fake_root, f"train.out_dir={json.dumps(str(blocker))}")
    with pytest.raises(ConfigError, match="cannot (create|write to) the run directory"):
        train(config, log=lambda _: None)


def test_every_recipe_parses_and_resolves():
    for name in list_recipes():
        config = load_config(name)
        assert config.recipe == name and config.description


@pytest.mark.parametrize("override,message", [
    ("train.stepz=5", "unknown setting train.stepz; did you mean train.steps?"),
    ("train.steps=many", "should be an integer"),
    ("optim", "KEY=VALUE"),
])
def test_bad_overrides(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("elu-seed", [override])


def test_unknown_recipe():
    with pytest.raises(ConfigError, match="unknown recipe nope;"):
        load_config("nope")


def run_cli(*args, env_extra=None, cwd=None):
    import os

    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def test_cli_info_and_show(fake_root, tmp_path, capsys):
    assert main(["info", "--dataset", "cifar100", "--data-dir", str(fake_root)]) == 0
    out = capsys.readouterr().out
    assert "600 x 32 x 32 x 3" in out and "6-6 images per class" in out and "super00" in out
    assert main(["show", "--dataset", "cifar10", "--data-dir", str(fake_root), "--out", str(tmp_path)]) == 0
    from PIL import Image

    for name in ("cifar10-train-first16.png", "cifar10-train-classes.png"):
        assert Image.open(tmp_path / name).size[0] > 100


def test_cli_errors_are_one_clear_line(tmp_path):
    result = run_cli("info", "--data-dir", str(tmp_path / "missing"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith("cifarkit info: error:") and "does not exist" in result.stderr
    result = run_cli("train", "--no-download", env_extra={"CIFARKIT_CACHE_DIR": str(tmp_path / "c")}, cwd=tmp_path)
    assert result.returncode == 1 and "Traceback" not in result.stderr and "--data-dir" in result.stderr
    assert not (tmp_path / "c" / "cifar-100-python").exists()


def test_cli_summary_and_print_config(capsys):
    assert main(["summary"]) == 0
    assert "Total params: 42,607,204" in capsys.readouterr().out
    assert main(["train", "--recipe", "elu-paper", "--set", "train.steps=7", "--print-config"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["model"]["name"] == "elu_net_paper" and printed["train"]["steps"] == 7


@pytest.mark.slow
def test_narrow_elu_recipe_beats_chance_on_real_cifar10(real_cifar10, tmp_path):
    """300 steps of a 10%-width seed network on 10,000 real images: chance is 10%; a broken pipeline
    (wrong labels, unwhitened garbage, no gradient) stays there."""
    config = load_config("elu-seed", [
        "data.dataset=cifar10", f"data.data_dir={json.dumps(str(real_cifar10))}", "data.train_subset=10000",
        "model.kwargs.width=0.1", "model.kwargs.dropout=0.0", "optim.lr=0.03",
        "train.steps=300", "train.eval_every=100", f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=r"])
    results = train(config, log=print)
    assert results["test"]["top1"] > 0.25 and results["val"]["top1"] > 0.25


@pytest.mark.slow
def test_fast10_recipe_learns_real_cifar10_quickly(real_cifar10, tmp_path):
    """Two epochs of the CPU fast recipe on 10,000 real images: a broken pipeline (labels shuffled against
    images, wrong normalization, no augmentation bookkeeping) cannot reach 50%."""
    config = load_config("fast10-cpu", [
        f"data.data_dir={json.dumps(str(real_cifar10))}", "data.train_subset=10000", "train.budget_seconds=0",
        "train.epochs=2", "train.eval_every=1000", "train.batch_size=256",
        f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=f"])
    results = train(config, log=print)
    assert results["test"]["top1"] > 0.5 and results["test_tta"]["top1"] > 0.5


def test_budget_mode_ends_the_schedule_within_the_budget(tmp_path, fake_root):
    budget = 6.0
    config = tiny_config(tmp_path, fake_root, f"train.budget_seconds={budget}", "train.steps=1000000",
                         "schedule.name=linear", "schedule.final_lr_fraction=0.1", "train.eval_every=20")
    results = train(config, log=lambda _: None)
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert results["steps"] > 10  # the run went past calibration; how long it took is the planner's test below
    assert lines[-1]["lr"] < 0.25 * load_config("elu-seed").optim.lr  # the schedule ran to (near) its end


def test_budget_planner_plans_from_the_measured_speed():
    """Pure arithmetic on injected times (no wall-clock assertion): 10 steps in 5 s, 100 s budget, 2% margin."""
    from cifarkit.train.clock import BudgetPlanner

    planner = BudgetPlanner(100.0, eval_every=20)
    planner.started -= 5.0  # as if 5 s had passed
    planned = planner.plan(10, 1_000_000, just_evaluated=False)
    assert 10 + int((98 - 5.01) / 0.5) <= planned <= 10 + int((98 - 5.0) / 0.5)  # about 196 steps in all
    slower = BudgetPlanner(100.0, eval_every=20)
    slower.started -= 15.0  # 15 s for 10 steps, of which a validation pass took 10 s
    slower.record_eval(10.0)
    replanned = slower.plan(10, planned, just_evaluated=True)  # 0.5 s per step + 10 s per 20 steps
    assert 10 + int((98 - 15.01) / 1.0) <= replanned <= 10 + int((98 - 15.0) / 1.0)  # about 93 steps
    slower.started -= 200.0  # over the budget: stop now
    assert slower.plan(30, replanned, just_evaluated=False) == 30


def test_a_long_cpu_run_says_so_and_names_the_cpu_recipe(tmp_path, fake_root):
    lines = []
    config = tiny_config(tmp_path, fake_root, "train.steps=8", "train.eval_every=8")
    train(config, log=lines.append)
    projection = [line for line in lines if line.startswith("projected:")]
    assert len(projection) == 1 and "more steps x" in projection[0]  # logged once, after 5 steps
    from cifarkit.train.loop import projection_line

    seed = projection_line(165_000 - 5, 6.0, torch.device("cpu"), "cifar100", "runs/x", 10)  # 165k steps at 6 s
    assert "275.0 h on cpu" in seed and "meant for a GPU" in seed and "--recipe fast100-cpu" in seed
    # a long CPU recipe (hours, not days): no GPU verdict, but how it resumes and what trains in minutes
    long_run = projection_line(2_000, 6.6, torch.device("cpu"), "cifar100", "runs/long100-wide", 10)
    assert "3.7 h on cpu" in long_run and "GPU" not in long_run
    assert "a checkpoint every 10 minutes and at every validation" in long_run
    assert "`cifarkit train --resume runs/long100-wide`" in long_run and "--recipe fast100-cpu" in long_run
    assert "--recipe fast10-cpu` (CIFAR-10" in projection_line(2_000, 6.6, torch.device("cpu"), "cifar10")
    assert "more than two hours" not in projection_line(1_000, 6.6, torch.device("cpu"))  # 1.8 h: said plainly
    from cifarkit.config import load_config
    from cifarkit.train.clock import CPU_RECIPES

    for dataset, (recipe, _) in CPU_RECIPES.items():  # the recipes it names exist and train that dataset
        assert load_config(recipe).data.dataset == dataset


def test_project_times_real_steps_and_states_the_gpu_rate(capsys):
    """`train --project`: a few of the recipe's own training steps timed here, projected to the whole run,
    beside the H200 figure from the network's multiply-adds at a stated rate; no run folder."""
    from cifarkit.train.projection import CONV_TRAINING_UTILISATION, H200_BF16_FLOPS

    assert main(["train", "--recipe", "elu-seed", "--set", "model.kwargs.width=0.05", "--set", "train.batch_size=20",
                 "--device", "cpu", "--project"]) == 0
    out = capsys.readouterr().out
    assert "elu-seed: 165,000 steps of batch 20 x" in out and "measured here" in out and "stated rate" in out
    hours = float(out.split(" = ")[1].split(" h")[0].replace(",", ""))
    assert hours > 0
    macs = float(out.split("(")[2].split(" M multiply-adds")[0].replace(",", ""))
    # the H200 minutes follow from the multiply-adds: 6 FLOP per multiply-add per image (forward + backward)
    value, unit = out.split("about ")[1].split(" (")[0].split(" ", 1)
    seconds = float(value.replace(",", "")) * (60 if unit == "min" else 1)
    expected = 6 * macs * 1e6 * 20 * 165_000 / (H200_BF16_FLOPS * CONV_TRAINING_UTILISATION)
    assert seconds == pytest.approx(expected, rel=0.02, abs=0.1)


def _projected(capsys, *sets: str) -> tuple[int, float, str]:
    assert main(["train", "--recipe", "elu-seed", "--set", "model.kwargs.width=0.05", "--set", "train.batch_size=20",
                 "--set", "train.eval_batch_size=500", *[a for s in sets for a in ("--set", s)], "--device", "cpu",
                 "--project"]) == 0
    captured = capsys.readouterr()
    steps, rest = captured.out.split(": ", 1)[1].split(" steps of batch 20 x ")
    return int(steps.replace(",", "")), float(rest.split(" s measured")[0]), captured.err


def test_project_times_each_stretch_of_progressive_resizing_and_plans_as_the_run_does(capsys):
    """The Trainer's own step is timed: with progressive resizing, the small pictures' stretch and the full-size
    one apart; the steps are the run's plan over the split data/split.py sizes (10 epochs of 45,000 / 20)."""
    steps, _, err = _projected(capsys, "augment.resize_px=16", "augment.resize_fraction=0.5", "train.epochs=10")
    assert steps == 10 * (45_000 // 20)
    assert "elu-seed (steps from 0): timed step" in err and "elu-seed (steps from 11250): timed step" in err


def test_project_fits_a_budget_with_the_runs_own_planner(capsys):
    """In a budget, the steps that fit are the run planner's formula (validation passes and the margin
    included): fewer than the budget over the step time."""
    steps, step_seconds, _ = _projected(capsys, "train.budget_seconds=60", "train.eval_every=10")
    assert 1 <= steps <= 0.98 * 60 / step_seconds


def test_split_sizes_are_the_splits_the_data_gets():
    """The projection sizes the split without the data, by the same rule split_for applies to it."""
    import numpy as np

    from cifarkit.data import CifarData, get_spec, split_for
    from cifarkit.data.split import DataConfig, split_sizes

    spec = get_spec("cifar100")
    labels = np.arange(spec.train_size) % spec.num_classes
    data = CifarData(spec, np.zeros((0, 32, 32, 3), np.uint8), labels, labels[:0], labels[:0], [], Path("x"))
    for config in (DataConfig(), DataConfig(train_subset=5000), DataConfig(val_per_class=0),
                   DataConfig(train_subset=5000, val_per_class=3)):
        split = split_for(data, config)
        assert split_sizes(spec, config) == (len(split.train), len(split.val)), config


def test_the_validation_top1_can_choose_the_tested_checkpoint(tmp_path, fake_root):
    """train.select = "val_top1": the checkpoint of the highest validation top-1 (the first, on a tie) is the one
    tested, and results.json says so; every name the setting takes has its selection."""
    import typing

    from cifarkit.config import TrainConfig
    from cifarkit.train.results import SELECTIONS

    assert set(SELECTIONS) == set(typing.get_args(typing.get_type_hints(TrainConfig)["select"]))
    results = train(tiny_config(tmp_path, fake_root, 'train.select="val_top1"', "train.steps=18",
                                "train.eval_every=3"), log=lambda _: None)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    top1 = max(row["val/top1"] for row in rows)
    chosen = next(row["step"] for row in rows if row["val/top1"] == top1)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert results["selection"] == "highest validation top-1" and results["best_step"] == chosen == best["step"]
    assert results["val"]["top1"] == top1 and best["best_score"] == -top1


def test_a_checkpoint_from_before_train_select_reads_its_best_loss_as_the_best_score(tmp_path, trained_run):
    state = torch.load(trained_run / "last.pt", weights_only=False)
    state["best_val_loss"] = state.pop("best_score")
    torch.save({**state, "version": 2}, tmp_path / "old.pt")
    old = load_checkpoint(tmp_path / "old.pt")
    assert old["best_score"] == state["best_val_loss"] and "best_val_loss" not in old
