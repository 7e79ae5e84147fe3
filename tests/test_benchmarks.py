"""The benchmark scripts run end to end on the CPU with tiny budgets (their figures are not checked here:
figures come from full runs, see the README)."""

from __future__ import annotations

import json
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
         "--set", "train.batch_size=64", "--set", "train.eval_every=2", "--set", "data.val_per_class=10",
         "--max-seeds", "2", "--elu-steps", "1", "--elu-width", "0.05", "--elu-set", "model.kwargs.width=0.05",
         "--elu-set", "train.batch_size=50", "--elu-set", "data.val_per_class=10"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    assert report["machine"]["device"] == "cpu" and "train_seconds" in report["fast10_warmup"]
    for recipe in ("fast10", "fast10-muon"):
        assert report[recipe]["test_top1"]["n"] >= 1 and report[recipe]["steps"] == 2
        assert "train_seconds" in report[f"{recipe}_warmup"]
    assert set(report["elu_throughput"]) == {"elu-seed", "elu-paper"}
    assert report["elu_throughput"]["elu-seed"]["projected_165k_hours"] > 0
    assert report["elu_seed_cifar10"]["steps"] >= 1 and 0 <= report["elu_seed_cifar10"]["test"]["top1"] <= 1
    assert "suite done" in (out / "gpu_suite.log").read_text()


def test_typescript_throughput_runs_both_sides():
    package = BENCHMARKS.parent / "web" / "packages" / "classify"
    if shutil.which("node") is None or not (package / "dist" / "node.js").is_file():
        pytest.skip("needs node and the built library (cd web && npm ci && npm run build)")
    result = subprocess.run([sys.executable, str(BENCHMARKS / "typescript_throughput.py"), "--images", "64",
                             "--batch-size", "32", "--repeats", "1"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "from prepared pixels" in result.stdout and "Node/Python" in result.stdout
