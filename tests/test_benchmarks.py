"""The benchmark scripts run end to end on the CPU with tiny budgets (their figures are not checked here:
figures come from full runs, see the README)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_suite_runs_every_section_on_the_cpu(tmp_path, fake_root):
    out = tmp_path / "suite"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--data-dir", str(fake_root), "--out", str(out),
         "--device", "cpu", "--budget-seconds", "20", "--fast10-steps", "2", "--set", "model.kwargs={widths=[8,16,16]}",
         "--set", "train.batch_size=64", "--set", "train.eval_every=2", "--set", "data.val_per_class=2",
         "--max-seeds", "2", "--elu-steps", "1", "--elu-width", "0.05", "--elu-set", "model.kwargs.width=0.05",
         "--elu-set", "train.batch_size=50", "--elu-set", "data.val_per_class=2"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["machine"]["device"] == "cpu" and "train_seconds" in report["fast100_warmup"]
    for recipe in ("fast100", "fast10-muon"):  # on CIFAR-100, the suite's default
        assert report[recipe]["test_top1"]["n"] >= 1 and report[recipe]["steps"] == 2
        assert "train_seconds" in report[f"{recipe}_warmup"]
    assert set(report["elu_throughput"]) == {"elu-seed", "elu-paper"}
    assert report["elu_throughput"]["elu-seed"]["projected_165k_hours"] > 0
    assert report["elu_seed_cifar100"]["steps"] >= 1 and 0 <= report["elu_seed_cifar100"]["test"]["top1"] <= 1
    assert "suite done" in (out / "gpu_suite.log").read_text()


def long_suite(fake_root, out, budget: int, *options: str) -> list[str]:
    """gpu_suite's command with only the ELU throughput and the long section, on a tiny long100-wide."""
    return [sys.executable, str(BENCHMARKS / "gpu_suite.py"), "--data-dir", str(fake_root), "--out", str(out),
            "--device", "cpu", "--budget-seconds", str(budget), "--fast-recipes", "", "--elu-steps", "1",
            "--elu-width", "0.05", "--long-recipe", "long100-wide", "--long-set", "train.compile=false",
            "--long-set", "model.kwargs={widths=[8,16,16],blocks=[1,1,1]}", "--long-set", "train.batch_size=32",
            "--long-set", "data.val_per_class=2", *options]


def test_gpu_suite_long_section_fits_its_epochs_and_writes_a_portable_model(tmp_path, fake_root):
    out = tmp_path / "suite"
    result = subprocess.run(long_suite(fake_root, out, 40, "--long-margin", "5", "--long-max-epochs", "2"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert "long_error" not in report, report.get("long_error")
    plan, long = report["long_plan"], report["long"]
    assert plan["step_seconds"] > 0 and 1 <= plan["epochs"] <= 2 and long["epochs"] == plan["epochs"]
    assert 0 <= long["test"]["top1"] <= 1 and "test_tta_translate" in long
    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.loading import load_model

    portable = load_checkpoint(out / "long-model.pt")
    assert "optimizer" not in portable and "train_model" not in portable
    run_best = load_checkpoint(out / "runs" / "long100-wide-cpu" / "best.pt")
    assert all(portable["model"][k].equal(v) for k, v in run_best["model"].items())
    assert load_model(str(out / "long-model.pt")) is not None


def test_gpu_suite_reports_a_failed_section_and_exits_non_zero(tmp_path, fake_root):
    out = tmp_path / "suite"
    result = subprocess.run(long_suite(fake_root, out, 20, "--long-recipe", "no-such-recipe"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode != 0 and "long failed" in result.stderr.splitlines()[-1]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert "no-such-recipe" in report["long_error"] and "elu_throughput" in report  # the rest still ran


def test_gpu_suite_stops_on_ctrl_c_and_keeps_what_finished(tmp_path, fake_root):
    import signal
    import time

    out = tmp_path / "suite"
    process = subprocess.Popen(long_suite(fake_root, out, 600, "--long-max-epochs", "400", "--long-eval-epochs", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    checkpoints = out / "runs" / "long100-wide-cpu" / "checkpoints"  # one per validation pass, each every epoch
    deadline = time.monotonic() + 300
    while not any(checkpoints.glob("step-*.pt")) and process.poll() is None:
        assert time.monotonic() < deadline, "the long run never reached its first validation pass"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 130 and "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("gpu_suite: stopped (SIGINT received")
    report = json.loads((out / "gpu_suite.json").read_text())
    assert "long_plan" in report and "long" not in report and "total_seconds" not in report  # stopped, not done


def test_typescript_throughput_runs_both_sides():
    package = BENCHMARKS.parent / "web" / "packages" / "classify"
    if shutil.which("node") is None or not (package / "dist" / "node.js").is_file():
        pytest.skip("needs node and the built library (cd web && npm ci && npm run build)")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "typescript_throughput.py"), "--images", "64",
                             "--batch-size", "32", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from prepared pixels" in result.stdout and "Node/Python" in result.stdout


def test_cifar100_speedrun_runs_every_row_and_resumes(tmp_path, fake_root):
    """The benchmark's code paths with seconds-long budgets on fake data (its figures come from real runs)."""
    out = tmp_path / "speedrun"
    command = [sys.executable, str(BENCHMARKS / "cifar100_speedrun.py"), "--data-dir", str(fake_root), "--out",
               str(out), "--budget", "3", "--seeds", "1",
               "--rows", "fast100-cpu,record100,airbench94_muon-100,resnet-muon",
               "--set", "data.val_per_class=2", "--set", "train.eval_every=2", "--set", "train.batch_size=64"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert sorted(r["row"] for r in record["runs"]) == ["airbench94_muon-100", "fast100-cpu", "record100",
                                                         "resnet-muon"]
    assert all(0 <= r["test_top1"] <= 1 and r["steps"] >= 1 for r in record["runs"])
    assert "fast100-cpu vs resnet-muon: accuracy at equal time" in result.stdout
    assert "of this CPU's bf16 matmul rate" in result.stdout and "flags:" in result.stdout
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)  # every row done: none runs
    assert again.returncode == 0 and len(json.loads((out / "results.json").read_text())["runs"]) == 4


def test_cifar100_speedrun_draws_the_curve_over_budgets_and_long_runs(tmp_path, fake_root):
    """Several budgets in one command, a finished run at its own training time, the table and the plot."""
    out = tmp_path / "speedrun"
    common = [sys.executable, str(BENCHMARKS / "cifar100_speedrun.py"), "--data-dir", str(fake_root), "--out",
              str(out), "--seeds", "1", "--rows", "fast100-cpu", "--set", "data.val_per_class=2",
              "--set", "train.eval_every=2", "--set", "train.batch_size=64"]
    first = subprocess.run([*common, "--budget", "3"], capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    finished = out / "runs" / "fast100-cpu-3s-seed0"  # stands in for a long run: any finished run will do
    result = subprocess.run([*common, "--budget", "4,3", "--long", str(finished), "--curve", str(tmp_path / "c.png")],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "results.json").read_text())
    assert sorted(r["budget"] for r in record["runs"]) == [3.0, 4.0]  # the 3-second run was not run again
    rows = [line for line in result.stdout.splitlines() if line.startswith("| `fast100-cpu")]
    assert re.fullmatch(r"\| `fast100-cpu` \| 0\.05 min \| \d+\.\d\d% \| 1 \|", rows[0])  # shortest first
    assert re.fullmatch(r"\| `fast100-cpu` \| 0\.0666667 min \| \d+\.\d\d% \| 1 \|", rows[1])
    assert re.fullmatch(r"\| `fast100-cpu \(\d+ epochs\)`, long run \| 0\.0 h \| \d+\.\d\d% \| 1 \|", rows[2])
    assert (tmp_path / "c.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rendered = subprocess.run([*common, "--budget", "4,3", "--seeds", "2", "--render-only", "--curve",
                               str(tmp_path / "r.png")], capture_output=True, text=True, timeout=600)
    assert rendered.returncode == 0, rendered.stderr[-3000:]
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 2  # nothing trained
    assert "not run (--render-only), left out of the figures: fast100-cpu seed 1 at 3s; fast100-cpu seed 1 at 4s" \
        in rendered.stdout and (tmp_path / "r.png").is_file()
    for bad, message in ((["--budget", "ten"], "is not seconds"), (["--budget", "-5"], "positive seconds"),
                         (["--long", str(tmp_path)], "has no results.json"), (["--rows", "fast200"], "unknown row")):
        refused = subprocess.run([*common, *bad], capture_output=True, text=True, timeout=600)
        assert refused.returncode != 0 and message in refused.stderr and "Traceback" not in refused.stderr


def test_weight_averages_measures_each_candidate_on_validation(trained_run, fake_root):
    """A model averaged with itself is the model: the same validation figures as it alone; recomputing its BatchNorm
    statistics is measured beside."""
    import os

    data_dir = os.environ.get("CIFARKIT_TEST_CIFAR10") or str(fake_root)
    result = subprocess.run([sys.executable, str(BENCHMARKS / "weight_averages.py"), "--data-dir", data_dir,
                             "--bn-images", "40", str(trained_run), f"{trained_run},{trained_run}"],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [line for line in result.stdout.splitlines() if "validation top-1" in line]
    assert len(lines) == 4 and "recomputed" in lines[1] and "as averaged" in lines[2]

    def figures(line):
        return line.split("validation top-1 ")[1].split(" |")[0]

    assert figures(lines[0]) == figures(lines[2])
    missing = subprocess.run([sys.executable, str(BENCHMARKS / "weight_averages.py"), "--data-dir", data_dir,
                              f"{trained_run},no-such-run"], capture_output=True, text=True, timeout=600)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "no-such-run" in missing.stderr
