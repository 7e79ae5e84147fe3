"""Misuse, round 3: each test holds a class of problem -- reads without a bound, NaN that looks like an answer,
output that could run as a spreadsheet formula or is not JSON, a resumed budget that is forgotten, labels that
are not labels."""

from __future__ import annotations

import json
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

from cifarkit.config import load_config
from cifarkit.data import read_folder
from cifarkit.data.archive import verify_md5
from cifarkit.data.specs import DATASETS
from cifarkit.errors import ConfigError, DatasetError, NonFiniteModelError
from cifarkit.files import json_text
from cifarkit.text import csv_row, csv_text
from tests.fakecifar import dumps, write_folder
from tests.test_train import tiny_config

SRC = Path(__file__).resolve().parents[1] / "src" / "cifarkit"


def sparse(path: Path, size: int) -> Path:
    """A file that claims `size` bytes and takes none on disk (what a hostile or broken copy can be)."""
    with open(path, "wb") as f:
        f.truncate(size)
    return path


# -- 1. every read has a bound ------------------------------------------------------------------------------------

def test_a_huge_dataset_file_is_refused_before_it_is_read(tmp_path):
    folder = write_folder(tmp_path, "cifar10", per_class_train=1, per_class_test=1)
    sparse(folder / "data_batch_3", 6 << 30)
    with pytest.raises(DatasetError, match=r"data_batch_3 is 6,144.0 MiB, more than .* refused before reading it"):
        read_folder(folder, DATASETS["cifar10"])


def test_the_limits_admit_the_official_files():
    for spec in DATASETS.values():
        per_file = spec.train_size // len(spec.train_files)
        assert spec.max_file_bytes(spec.train_files[0]) > per_file * 3072 + 200_000
        assert spec.max_file_bytes(spec.test_file) > spec.test_size * 3072 + 50_000
        assert spec.max_file_bytes(spec.meta_file) < 2 << 20


def test_a_huge_meta_file_is_refused(tmp_path):
    folder = write_folder(tmp_path, "cifar100", per_class_train=1, per_class_test=1)
    sparse(folder / "meta", 50 << 20)
    with pytest.raises(DatasetError, match="meta is 50.0 MiB"):
        read_folder(folder, DATASETS["cifar100"])


def test_a_huge_archive_is_refused_before_its_md5(tmp_path):
    with pytest.raises(DatasetError, match="refused before reading it"):
        verify_md5(sparse(tmp_path / "cifar-100-python.tar.gz", 3 << 30), DATASETS["cifar100"].md5)


@pytest.mark.parametrize("kind", ["huge", "fifo", "folder", "loop"])
def test_a_recipe_that_is_not_a_recipe_file_is_named_for_what_it_is(tmp_path, kind):
    path = tmp_path / "r.toml"
    expected = {"huge": "is 3,072.0 MiB, more than the 1 MiB", "fifo": "is a FIFO", "folder": "is a folder",
                "loop": "is a loop of symbolic links"}[kind]
    if kind == "huge":
        sparse(path, 3 << 30)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    else:
        path.symlink_to(path)
    with pytest.raises(ConfigError, match=re.escape(f"recipe {path} {expected}")):
        load_config(str(path))


def test_a_recipe_path_that_is_not_there_is_not_called_an_unknown_recipe(tmp_path):
    loop, text = tmp_path / "loop", tmp_path / "recipe.txt"
    loop.symlink_to(loop)
    text.write_text("extends = 'fast10'\n")
    for given, expected in ((tmp_path / "missing.toml", "does not exist"), (loop, "is a loop of symbolic links"),
                            (text, "is not a .toml file")):
        with pytest.raises(ConfigError, match=re.escape(f"recipe file {given} {expected}")):
            load_config(str(given))
    with pytest.raises(ConfigError, match="unknown recipe fast10x; did you mean fast10[?]"):
        load_config("fast10x")


# -- 13. labels that are not labels --------------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [42.7, "7", True])
def test_labels_that_are_not_integer_class_indices_are_refused(tmp_path, bad):
    folder = write_folder(tmp_path, "cifar10", per_class_train=1, per_class_test=1)
    batch = pickle.loads((folder / "test_batch").read_bytes(), encoding="bytes")
    batch[b"labels"] = [bad, *batch[b"labels"][1:]]
    (folder / "test_batch").write_bytes(dumps(batch))
    with pytest.raises(DatasetError, match="not integer class indices"):
        read_folder(folder, DATASETS["cifar10"])


def test_a_training_file_without_some_classes_says_so(tmp_path):
    folder = write_folder(tmp_path, "cifar100", per_class_train=2, per_class_test=1)
    batch = pickle.loads((folder / "train").read_bytes(), encoding="bytes")
    keep = [i for i, label in enumerate(batch[b"fine_labels"]) if label not in (3, 4)]
    batch = {**batch, b"data": batch[b"data"][keep], b"filenames": [batch[b"filenames"][i] for i in keep],
             b"fine_labels": [batch[b"fine_labels"][i] for i in keep],
             b"coarse_labels": [batch[b"coarse_labels"][i] for i in keep]}
    (folder / "train").write_bytes(dumps(batch))
    with pytest.raises(DatasetError, match=r"hold no image of 2 of the 100 classes \(class03, class04\)"):
        read_folder(folder, DATASETS["cifar100"])


# -- 3. a model whose outputs are not finite is refused everywhere ------------------------------------------------

@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory, fake_root):
    """A run trained into numbers that overflow (a huge learning rate, non-finite steps skipped): what a
    diverged model is, made with the toolkit itself."""
    from cifarkit.train import train

    out = tmp_path_factory.mktemp("diverged")
    train(tiny_config(out, fake_root, "optim.lr=1e30", "train.steps=6", "train.skip_nonfinite=true",
                      "train.amp=off"), log=lambda _: None)
    return out / "run"


def strict_json(text: str):
    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_writes_strict_json(diverged_run):
    results = strict_json((diverged_run / "results.json").read_text())
    assert results["test"]["loss"] is None  # NaN, written as null
    for line in (diverged_run / "metrics.jsonl").read_text().splitlines():
        strict_json(line)


def test_predict_refuses_a_diverged_model(diverged_run, tmp_path):
    from PIL import Image

    from cifarkit.predict import predict_files

    Image.new("RGB", (32, 32), (200, 10, 10)).save(tmp_path / "red.png")
    with pytest.raises(NonFiniteModelError, match="not finite numbers .* for 1 of 1 pictures"):
        predict_files(diverged_run, [tmp_path / "red.png"])


def test_evaluate_refuses_a_diverged_model(diverged_run, tmp_path, fake_root):
    from cifarkit.evaluate import evaluate_checkpoint

    with pytest.raises(NonFiniteModelError):
        evaluate_checkpoint(diverged_run, out_dir=tmp_path / "report", data_dir=str(fake_root))
    assert not (tmp_path / "report").exists()


def test_export_refuses_a_diverged_model(diverged_run, tmp_path):
    pytest.importorskip("onnxruntime")
    from cifarkit.export import ExportError, export_onnx

    with pytest.raises(ExportError, match="not finite numbers .*nothing was written"):
        export_onnx(diverged_run, tmp_path / "model.onnx")
    assert not list(tmp_path.iterdir())


def test_serve_web_refuses_an_export_whose_parity_was_nan(tmp_path):
    from cifarkit.serve import ServeError, check_model_json
    from tests.test_serve import export_metadata

    metadata = export_metadata(classes=["a", "b"], parity={"max_abs_difference": float("nan")})
    with pytest.raises(ServeError, match="not finite numbers"):
        check_model_json(metadata, tmp_path / "model.json")
    check_model_json({**metadata, "parity": {"max_abs_difference": 1e-6}}, tmp_path / "model.json")


def test_json_text_is_strict():
    assert strict_json(json_text({"a": float("nan"), "b": [float("inf"), -float("inf"), 1.5]})) == {
        "a": None, "b": [None, None, 1.5]}


def test_no_json_file_is_written_past_the_strict_writer():
    """Every JSON text cifarkit writes goes through files.json_text (json.dumps alone writes NaN)."""
    writers = re.compile(r"json\.dumps\([^)]*indent")
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "files.py" and writers.search(p.read_text())]
    assert not offenders, offenders


# -- 4. one CSV writer ------------------------------------------------------------------------------------------

def test_csv_text_cells_cannot_run_as_formulas():
    import csv

    line = csv_row(["=HYPERLINK(\"http://x\")", "+1", "-cmd", "@SUM(A1)", "\tx", "plain", -3, 0.25, None])
    assert next(csv.reader([line])) == ["'=HYPERLINK(\"http://x\")", "'+1", "'-cmd", "'@SUM(A1)", "'\tx", "plain",
                                        "-3", "0.25", ""]
    assert csv_text([["a", 1], ["=b", 2]]) == "a,1\n'=b,2\n"


def test_confusion_csv_neutralises_classes(tmp_path):
    from cifarkit.evaluate import write_confusion_csv

    write_confusion_csv(np.array([[1, 0], [0, 1]]), ["=cmd|' /C calc'!A0", "cat"], tmp_path / "c.csv")
    text = (tmp_path / "c.csv").read_text()
    assert "\n'=cmd|" in text and "\n=cmd" not in text


def test_every_csv_goes_through_the_one_writer():
    offenders = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py")
                 if p.name != "text.py" and "csv.writer(" in p.read_text()]
    assert not offenders, offenders


# -- 9. a closed pipe is not a traceback ----------------------------------------------------------------------------

def test_predict_into_a_closed_pipe_stops_quietly(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    for i in range(300):
        Image.new("RGB", (8, 8), (i % 256, 40, 90)).save(tmp_path / f"p{i:03d}.png")
    shell = f"{sys.executable} -m cifarkit predict {tmp_path} | head -1"
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=300)
    assert len(result.stdout.splitlines()) == 1
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr


# -- 12. no statistics of nonsense ------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["1e308", "-1", "2", "NaN", "9" * 400])
def test_report_leaves_out_a_trial_whose_figures_no_run_writes(tmp_path, value, capsys):
    from cifarkit.experiments.report import report_sweep

    folder = tmp_path / "sweep"
    names = ["v0-lr-0.1"]
    folder.mkdir()
    (folder / "sweep.json").write_text(json.dumps({"name": "s", "recipe": "elu-seed", "set": [], "seeds": [0, 1],
                                                   "variants": [{"name": names[0], "overrides": ["optim.lr=0.1"]}]}))
    for seed, top1 in ((0, value), (1, "0.5")):
        run = folder / "trials" / names[0] / f"seed{seed}"
        run.mkdir(parents=True)
        figures = '{"val": {"top1": 0.5, "loss": 1.0}, "test": {"top1": TOP1, "loss": 1.0}}'
        (run / "results.json").write_text(figures.replace("TOP1", top1))  # written as text: NaN and 400 digits
    report = report_sweep(folder)
    row = report["rows"][0]["test_top1"]
    assert row["n"] == 1 and row["mean"] == pytest.approx(0.5)
    warnings = capsys.readouterr().out
    assert "seed0" in warnings and "left out" in warnings, warnings
    text = (folder / "report" / "summary.md").read_text()
    assert "inf" not in text and "nan" not in text.lower()


# -- 14. every argument checked before any work -------------------------------------------------------------------

def test_then_project_is_checked_before_training(tmp_path, fake_root, capsys):
    from cifarkit.cli import main

    code = main(["train", "--recipe", "elu-seed", "--dataset", "cifar10", "--data-dir", str(fake_root),
                 "--out-dir", str(tmp_path), "--run-name", "never", "--then-project", "no-such-recipe"])
    assert code == 1 and "unknown recipe no-such-recipe;" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()  # nothing trained, nothing written


def test_rerunning_a_sweep_whose_trials_all_failed_says_so(tmp_path, fake_root, capsys):
    from cifarkit.cli import main
    from tests.test_experiments import quick_args

    # a learning rate that makes every step non-finite: each trial stops, and so fails
    args = ["sweep", *quick_args(fake_root), "--vary", "optim.lr=1e29,1e30", "--seeds", "1", "--out-dir", str(tmp_path),
            "--name", "doomed"]
    assert main(args) == 1
    capsys.readouterr()
    assert main(args) == 1  # nothing left to run, but the failures are not forgotten
    err = capsys.readouterr().err
    assert "2 cell(s) of this sweep failed" in err and "--retry-failed" in err


# -- 15. no piece of a password through a driver's message --------------------------------------------------------

def test_a_password_with_an_unescaped_at_sign_is_scrubbed_piece_by_piece():
    from cifarkit.experiments.study import _scrub, masked

    url = "postgresql://bob:Zq7@kX9w@host/db"
    # what a driver says after splitting at the first '@': the rest of the password reads as the host's name
    driver = 'could not translate host name "kX9w@host" to address; password "Zq7" rejected'
    text = _scrub(driver, url)
    assert "Zq7" not in text and "kX9w" not in text and "bob" in masked(url)
    assert "kX9w" not in masked(url) and "Zq7" not in masked(url)


def test_a_real_driver_error_for_such_a_url_shows_no_piece_of_it(tmp_path):
    pytest.importorskip("psycopg")
    from cifarkit.experiments.study import ExperimentError, open_storage

    with pytest.raises(ExperimentError) as e:
        open_storage("postgresql://bob:Zq7@kX9w@127.0.0.1:1/db")
    assert "Zq7" not in str(e.value) and "kX9w" not in str(e.value), str(e.value)


# -- 8. a failed write never breaks what worked -----------------------------------------------------------------------

def test_an_export_that_fails_midway_leaves_the_previous_pair_whole(trained_run, tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    import errno

    import cifarkit.export as export

    out = tmp_path / "model.onnx"
    export.export_onnx(trained_run, out)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_write = Path.write_bytes

    def full_disk(self, data):  # the disk fills while the new metadata is written
        if self.name == "metadata.json":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_disk)
    with pytest.raises(OSError):
        export.export_onnx(trained_run, out)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before  # the old pair, whole; no work folder


def test_work_folders_of_killed_writers_are_removed_by_the_next_writer(tmp_path):
    import subprocess
    import sys

    from cifarkit.files import make_staging_folder, remove_stale_work_folders

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for name in (f".export-{dead}-abc123", f".report.staging-{dead}-xyz", f".report.old-{dead}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "half-written").write_bytes(b"x")
    alive = tmp_path / f".export-{os.getpid()}-mine"
    alive.mkdir()
    kept = [tmp_path / ".export-notapid", tmp_path / "report"]
    for folder in kept:
        folder.mkdir()
    staging = make_staging_folder(tmp_path, "report", "evaluation report")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, staging.name, *(p.name for p in kept)])
    remove_stale_work_folders(tmp_path)
    assert alive.exists() and staging.exists()


# -- long work shows progress, also when the output is not a terminal ---------------------------------------------

def test_progress_is_a_line_every_few_seconds_when_output_is_not_a_terminal():
    from cifarkit.train.setup import Progress

    lines = []
    progress = Progress(1290, initial=200, log=lines.append, every=0.0)  # pytest's output is not a terminal
    for _ in range(3):
        progress.update(10)
    progress.close()
    assert len(lines) == 3 and lines[-1].startswith("train: step 230/1,290 (18%), ")
    assert "left" in lines[-1]


def test_the_test_pass_after_training_says_what_it_does(tmp_path, fake_root):
    from cifarkit.train import train

    lines = []
    train(tiny_config(tmp_path, fake_root, "train.tta=true"), log=lines.append)
    said = [line for line in lines if line.startswith("testing the weights of step")]
    assert len(said) == 1 and "test-time augmentation" in said[0] and "test images" in said[0]


# -- resume: this run's checkpoint, its settings, and nothing to do once finished --------------------------------------

@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, fake_root):
    from cifarkit.train import train

    out = tmp_path_factory.mktemp("finished")
    train(tiny_config(out, fake_root), log=lambda _: None)
    return out / "run"


def test_resuming_a_finished_run_trains_nothing_and_keeps_its_figures(finished_run):
    from cifarkit.train import resume

    before = json.loads((finished_run / "results.json").read_text())
    lines = []
    results = resume(finished_run, log=lines.append)
    assert any("nothing to train" in line for line in lines)
    assert results["steps"] == before["steps"] and results["test"] == before["test"]  # tested again, same weights
    # the loop's time across resumes (as of the last checkpoint), never 0.0
    assert results["wall_seconds"] == pytest.approx(before["wall_seconds"], rel=0.5) and results["wall_seconds"] > 0


def test_resume_refuses_another_runs_checkpoint_and_keeps_an_edited_config(finished_run, tmp_path):
    import shutil

    from cifarkit.errors import CheckpointError
    from cifarkit.train import resume

    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "results.json").unlink()
    config = json.loads((run / "config.json").read_text())
    edited = {**config, "optim": {**config["optim"], "lr": 0.5}}
    (run / "config.json").write_text(json.dumps(edited))
    lines = []
    resume(run, log=lines.append, evaluate_test=False)  # the checkpoint's settings; the edit kept aside
    assert json.loads((run / "config.edited.json").read_text())["optim"]["lr"] == 0.5
    assert any("was edited" in line for line in lines)
    foreign = {**config, "data": {**config["data"], "dataset": "cifar100"}}
    (run / "config.json").write_text(json.dumps(foreign))
    with pytest.raises(CheckpointError, match="not this run's: its data.dataset is \"cifar10\""):
        resume(run, log=lambda _: None)
