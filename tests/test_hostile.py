"""The hostile-input suite: FIFOs, device files, links, torn and crafted files, odd names and races where a
file belongs. Each case once hung, exhausted memory, printed a traceback, lost work or forged output; each
must now be a one-line error (or a per-file one) with nothing lost and nothing half-written."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cifarkit.cli import main
from cifarkit.errors import CheckpointError, ConfigError, ImageError, OutputError

# Every call that once hung gets a deadline: a regression fails the test instead of stalling the suite.
DEADLINE = 120


def fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def cifarkit(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cifarkit", *args], capture_output=True, text=True,
                          timeout=DEADLINE, cwd=cwd, env={**os.environ, "PYTHONIOENCODING": "utf-8"})


# -- reading: only regular files, with bounds ------------------------------------------------------------------

def test_predict_reports_a_fifo_and_a_device_per_file_and_classifies_the_rest(trained_run, tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), (200, 0, 0)).save(tmp_path / "red.png")
    fifo(tmp_path / "pipe.png")
    (tmp_path / "zero.png").symlink_to("/dev/zero")
    result = cifarkit("predict", "--model", str(trained_run), str(tmp_path))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = {line.split(":")[0].rsplit("/", 1)[-1]: line for line in result.stdout.splitlines()}
    assert "ERROR" not in lines["red.png"]
    assert "FIFO" in lines["pipe.png"] and "device" in lines["zero.png"]
    assert "2 of 3 files could not be classified" in result.stderr


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "folder"])
def test_a_checkpoint_that_is_not_a_regular_file_is_refused_at_once(tmp_path, kind):
    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.train.checkpoint import CheckpointStore

    folder = tmp_path / "checkpoints"
    folder.mkdir()
    path = folder / "step-00000010.pt"
    {"fifo": fifo, "dev-zero": lambda p: p.symlink_to("/dev/zero"), "folder": Path.mkdir}[kind](path)
    (folder / "step-00000010.pt.sha256").write_text("0" * 64 + "\n")
    with pytest.raises(CheckpointError, match="only regular files|run directory"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="is intact"):
        CheckpointStore(tmp_path).load_latest(lambda _: None)


def test_resume_from_a_fifo_checkpoint_is_an_error_not_a_hang(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.json").write_text("{}")
    fifo(run / "checkpoints" / "step-00000002.pt")
    (run / "checkpoints" / "step-00000002.pt.sha256").write_text("0" * 64 + "\n")
    result = cifarkit("train", "--resume", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr


def test_shipped_weights_replaced_by_a_fifo_or_dev_zero_are_refused(tmp_path):
    from cifarkit.errors import CifarkitError
    from cifarkit.pretrained import _verified_bytes

    for path in (fifo(tmp_path / "weights.safetensors"), tmp_path / "zero.safetensors"):
        if not path.exists():
            path.symlink_to("/dev/zero")
        with pytest.raises(CifarkitError, match="only regular files"):
            _verified_bytes(path, "0" * 64, "weights")


def test_read_bounded_refuses_what_is_too_large_before_reading(tmp_path):
    from cifarkit.files import read_bounded, read_json

    big = tmp_path / "big.json"
    with open(big, "wb") as f:
        f.truncate(10 << 20)  # sparse: 10 MB declared, nothing written
    with pytest.raises(OutputError, match="more than the 1 MiB"):
        read_bounded(big, 1 << 20)
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(OutputError, match="nested too deeply|not valid JSON"):
        read_json(tmp_path / "deep.json", 1 << 20)
    (tmp_path / "int.json").write_text("1" * 10_000)
    with pytest.raises(OutputError, match="not valid JSON"):
        read_json(tmp_path / "int.json", 1 << 20)


def test_predict_walks_a_very_deep_tree_without_recursion(tmp_path):
    from PIL import Image

    from cifarkit.images import expand_paths

    deep = tmp_path
    for _ in range(1200):  # os.walk recursed once per level: RecursionError past about 1,000
        deep = deep / "d"
        os.mkdir(deep)  # one level at a time (Path.mkdir(parents=True) recurses too)
    Image.new("RGB", (4, 4)).save(deep / "bottom.png")
    try:
        assert [path.name for path, _ in expand_paths([tmp_path])] == ["bottom.png"]
    finally:  # removed bottom-up here: shutil.rmtree (pytest's clean-up) recurses too
        (deep / "bottom.png").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_predictions_stream_a_batch_at_a_time(trained_run, tmp_path, monkeypatch):
    from PIL import Image

    import cifarkit.predict as predict

    for i in range(10):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(tmp_path / f"{i:02d}.png")
    loaded = []
    real_load = predict.load_image
    monkeypatch.setattr(predict, "load_image", lambda path, **kw: loaded.append(path) or real_load(path, **kw))
    stream = predict.iter_predictions(trained_run, [tmp_path], batch_size=3)
    first = next(stream)
    assert first.path.endswith("00.png") and len(loaded) == 3  # the first result after one batch, not ten
    assert len([first, *stream]) == 10


# -- output: escaped for people, neutralised for spreadsheets, exact in JSON --------------------------------------

def test_odd_file_names_cannot_forge_lines_or_formulas(trained_run, tmp_path):
    import csv
    import io

    from PIL import Image

    names = ["evil\nairplane.png: cat 99.9%.png", "\x1b[31mred.png", "=HYPERLINK(1).png"]
    for name in names:
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    table = cifarkit("predict", "--model", str(trained_run), str(tmp_path))
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.splitlines()) == 3 and "\x1b" not in table.stdout
    assert "evil\\nairplane.png" in table.stdout
    rows = list(csv.reader(io.StringIO(cifarkit("predict", "--model", str(trained_run), *names, "--format", "csv",
                                                cwd=tmp_path).stdout)))
    assert all(not row[0].startswith(("=", "+", "-", "@")) for row in rows[1:])
    assert any(row[0].startswith("'=") for row in rows[1:])
    exact = json.loads(cifarkit("predict", "--model", str(trained_run), str(tmp_path), "--format", "json").stdout)
    assert sorted(Path(r["path"]).name for r in exact) == sorted(names)  # JSON keeps the names exactly


# -- writing: never destroy what cifarkit did not create -----------------------------------------------------------

def test_export_never_overwrites_a_file_that_is_not_its_own(trained_run, tmp_path):
    pytest.importorskip("onnxruntime")
    config = trained_run / "config.json"
    before = config.read_bytes()
    result = cifarkit("export", "--model", str(trained_run), "--onnx", str(trained_run / "config.onnx"))
    assert result.returncode == 1 and "never overwritten" in result.stderr, result.stderr
    assert config.read_bytes() == before and not (trained_run / "config.onnx").exists()
    picture = tmp_path / "holiday.onnx"
    picture.write_bytes(b"not a model")
    result = cifarkit("export", "--model", str(trained_run), "--onnx", str(picture))
    assert result.returncode == 1 and picture.read_bytes() == b"not a model"
    again = tmp_path / "model.onnx"  # an export replaces its own earlier export
    assert cifarkit("export", "--model", str(trained_run), "--onnx", str(again)).returncode == 0
    assert cifarkit("export", "--model", str(trained_run), "--onnx", str(again)).returncode == 0


def test_a_torn_last_metrics_line_is_dropped_with_a_warning(tmp_path):
    from cifarkit.runlog import read_metrics

    (tmp_path / "metrics.jsonl").write_text('{"step": 10, "val_loss": 2.0}\n{"step": 20, "val_lo')
    warnings = []
    assert read_metrics(tmp_path, warnings.append) == [{"step": 10, "val_loss": 2.0}]
    assert "torn line" in warnings[0]
    (tmp_path / "metrics.jsonl").write_text('{"step": 10}\nnot json\n{"step": 30}\n')
    with pytest.raises(OutputError, match="line 2"):
        read_metrics(tmp_path)


def test_a_full_disk_during_a_run_is_one_line_that_says_resume(fake_root, tmp_path, monkeypatch, capsys):
    from cifarkit import runlog

    def full(self, step, scalars):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "r" / "metrics.jsonl"))

    monkeypatch.setattr(runlog.MetricsLog, "log", full)
    code = main(["train", "--recipe", "elu-seed", "--dataset", "cifar10", "--data-dir", str(fake_root),
                 "--out-dir", str(tmp_path), "--run-name", "r", "--device", "cpu", "--steps", "4",
                 "--set", "model.kwargs.width=0.05", "--set", "train.batch_size=50",
                 "--set", "data.val_per_class=10", "--set", "train.eval_every=2"])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err
    assert "No space left on device" in err and f"--resume {tmp_path / 'r'}" in err
    assert len(err.strip().splitlines()) == 1


def test_two_runs_claiming_one_folder_at_once_never_share_it(tmp_path):
    from cifarkit.config import load_config
    from cifarkit.train.setup import make_run_dir

    for trial in range(20):
        name = f"same-{trial}"
        if trial % 2:
            (tmp_path / name).mkdir()  # the empty folder a user made: the fallback that raced
        config = load_config("elu-seed", [f"train.out_dir={json.dumps(str(tmp_path))}", f"train.run_name={name}"])
        outcomes, start = [], threading.Barrier(4)

        def claim(config=config, outcomes=outcomes, start=start):
            start.wait()
            try:
                outcomes.append(make_run_dir(config))
            except ConfigError:
                outcomes.append(None)

        threads = [threading.Thread(target=claim) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(o is not None for o in outcomes) == 1, (trial, outcomes)


def test_a_picture_error_names_the_file_once(tmp_path):
    from cifarkit.images import load_image

    with pytest.raises(ImageError, match=r"^.*pipe\.png: is a FIFO"):
        load_image(fifo(tmp_path / "pipe.png"))


def test_loading_a_checkpoint_fifo_times_out_never(tmp_path):
    """The whole set of readers on one FIFO, in one process with a deadline: none may block."""
    from cifarkit.checkpoints import resolve_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    fifo(run / "best.pt")
    errors = []

    def resolve():
        try:
            resolve_checkpoint(run)
        except CheckpointError as e:
            errors.append(str(e))

    worker = threading.Thread(target=resolve, daemon=True)
    worker.start()
    worker.join(DEADLINE)
    assert errors and "FIFO" in errors[0], "resolve_checkpoint blocked on a FIFO, or accepted it"


# -- crafted checkpoints: one schema ---------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, message", [
    ("step", "12", "'step' should be a whole number"),
    ("step", None, "'step' should be a whole number"),
    ("val", "good", "'val' should be a table of numbers"),
    ("classes", [1, 2], "'classes' should be a list of names"),
    ("fine_to_coarse", [0, 5], "fine-to-coarse map does not fit"),
])
def test_crafted_checkpoint_fields_are_refused_by_name(trained_run, tmp_path, field, value, message):
    import torch

    from cifarkit.checkpoints import load_checkpoint
    from cifarkit.loading import load_model

    state = load_checkpoint(trained_run / "best.pt")
    state[field] = value
    if field == "fine_to_coarse":
        state["classes"], state["superclasses"] = ["a", "b"], ["only"]
    crafted = tmp_path / "crafted.pt"
    torch.save(state, crafted)
    with pytest.raises(CheckpointError, match=message):
        load_model(crafted)


def test_a_checkpoint_without_step_cannot_be_resumed(trained_run, tmp_path):
    import shutil

    import torch

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    for path in (run / "checkpoints").glob("step-*.pt"):
        state = torch.load(path, weights_only=True)
        del state["step"]
        torch.save(state, path)
        path.with_suffix(".pt.sha256").unlink()  # proven whole by its zip CRCs instead
    result = cifarkit("train", "--resume", str(run))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "lacks step" in result.stdout + result.stderr  # each checkpoint is named with why it was skipped


# -- pictures both sides refuse rather than convert differently -------------------------------------------------

def _unconvertible_pictures(folder: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image

    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    paths = {"cmyk": folder / "cmyk.jpg", "lab": folder / "lab.tif", "float": folder / "float.tif"}
    rgb.convert("CMYK").save(paths["cmyk"], quality=95)
    rgb.convert("LAB").save(paths["lab"])
    Image.fromarray(np.random.default_rng(1).random((40, 40), dtype=np.float32) * 255, "F").save(paths["float"])
    return paths


def test_python_refuses_cmyk_lab_and_float_pictures(tmp_path):
    from cifarkit.images import load_image

    for kind, path in _unconvertible_pictures(tmp_path).items():
        with pytest.raises(ImageError, match="not converted") as e:
            load_image(path)
        assert path.name in str(e.value), kind


# -- the TypeScript command line: the same guarantees --------------------------------------------------------------

WEB = Path(__file__).resolve().parents[1] / "web"
NODE_CLI = WEB / "packages" / "classify" / "dist" / "cli.js"
needs_node = pytest.mark.skipif(
    not NODE_CLI.is_file() or not (WEB / "node_modules" / "sharp").is_dir() or not any(
        (Path(p) / "node").is_file() for p in os.environ.get("PATH", "").split(os.pathsep)),
    reason="needs node and the built library (cd web && npm ci && npm run build)")


def node_classify(*args, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["node", str(NODE_CLI), *map(str, args)], capture_output=True, timeout=DEADLINE, cwd=cwd)


@needs_node
def test_node_cli_refuses_fifos_devices_and_huge_reads_per_file(tmp_path):
    from PIL import Image

    Image.new("RGB", (20, 20), (0, 0, 200)).save(tmp_path / "blue.png")
    fifo(tmp_path / "pipe.png")
    result = node_classify("/dev/zero", tmp_path / "pipe.png", tmp_path / "blue.png")  # read without end before
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1 and "2 of 3 files could not be classified" in err, err
    lines = out.splitlines()
    assert "/dev/zero: ERROR" in lines[0] and "a device" in lines[0]
    assert "FIFO" in lines[1] and "ERROR" not in lines[2]


@needs_node
def test_node_cli_finds_non_utf8_names_and_escapes_what_it_prints(tmp_path):
    import csv
    import io

    from PIL import Image

    odd = os.fsencode(tmp_path) + b"/caf\xe9.png"
    Image.new("RGB", (8, 8)).save(os.fsdecode(odd))
    for name in ("line\nbreak.png", "=SUM(1).png", "\x1b[2Jclear.png"):
        Image.new("RGB", (8, 8)).save(tmp_path / name)
    table = node_classify(tmp_path)
    text = table.stdout.decode()
    assert table.returncode == 0, table.stderr.decode()
    assert "caf\\xe9.png:" in text and "no such file" not in text  # found, shown as Python shows it
    assert "line\\nbreak.png" in text and "\x1b" not in text and len(text.splitlines()) == 4
    as_file = node_classify(os.fsdecode(odd))  # a non-UTF-8 name given as an argument (bytes on the command line)
    assert as_file.returncode == 0, as_file.stderr.decode()
    rows = list(csv.reader(io.StringIO(node_classify("=SUM(1).png", "--format", "csv", cwd=tmp_path).stdout.decode())))
    assert rows[1][0] == "'=SUM(1).png"


@needs_node
def test_node_and_python_refuse_the_same_unconvertible_pictures(tmp_path):
    paths = _unconvertible_pictures(tmp_path)
    result = node_classify(*paths.values())
    lines = result.stdout.decode().splitlines()
    assert result.returncode == 1 and len(lines) == 3
    assert all("ERROR" in line and "not converted" in line for line in lines), lines


# -- bounded work and meaningful values ----------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--seeds", "100000000"], "--seeds must be between 1 and 1000"),
    (["--vary", "optim.lr=" + ",".join(f"0.{i:04d}1" for i in range(1, 120)),
      "--vary", "optim.momentum=" + ",".join(f"0.{i:02d}" for i in range(1, 99))], "more than --max-cells"),
])
def test_a_sweep_typo_is_refused_at_once(tmp_path, capsys, args, message):
    import time

    started = time.monotonic()
    base = ["sweep", "--recipe", "elu-seed", "--out-dir", str(tmp_path), "--dry-run"]
    if "--vary" not in args:
        base += ["--vary", "optim.lr=0.1,0.2"]
    assert main([*base, *args]) == 1
    assert message in capsys.readouterr().err and time.monotonic() - started < 30


def test_the_cell_limit_can_be_raised_on_purpose(tmp_path, capsys):
    args = ["sweep", "--recipe", "elu-seed", "--out-dir", str(tmp_path), "--dry-run", "--vary", "optim.lr=0.1,0.2",
            "--seeds", "6"]
    assert main([*args, "--max-cells", "10"]) == 1
    assert main([*args, "--max-cells", "12"]) == 0
    assert "2 variants x 6 seeds (0..5)" in capsys.readouterr().out


@pytest.mark.parametrize("override, message", [
    ("optim.lr=1e300", "optim.lr must be > 0 and at most"),
    ("optim.weight_decay=5", "optim.weight_decay must be >= 0 and < 1"),
    ("train.batch_size=100000000", "train.batch_size must be >= 1 and < 1e+06"),
    ("schedule.dropout_events=[{step=10, set=[0.1, 0.2]}]", "has 7 dropout layers"),
])
def test_absurd_values_are_refused_before_a_run_folder_exists(tmp_path, capsys, override, message):
    assert main(["train", "--recipe", "elu-seed", "--out-dir", str(tmp_path), "--set", override]) == 1
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # no run folder left behind


def test_a_cache_dir_that_cannot_hold_a_download_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    for where, message in ((tmp_path / "file", "is a file, not a folder"), (Path("/proc/self"), "cannot write")):
        result = subprocess.run([sys.executable, "-m", "cifarkit", "info", "--dataset", "cifar10"], capture_output=True,
                                text=True, timeout=DEADLINE, env={**os.environ, "CIFARKIT_CACHE_DIR": str(where),
                                                                  "CIFARKIT_DATA_DIR": ""})
        assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr, result.stderr


# -- experiments: tuning, storage, secrets ---------------------------------------------------------------------

def test_a_key_both_set_and_tuned_is_tuned_and_named_once(tmp_path):
    """--set optim.lr=0.1 --space optim.lr=...: the trials and best.toml see the tuned value only (both at once
    made best.toml invalid TOML after every trial had run)."""
    from cifarkit.experiments.spec import recipe_text
    from cifarkit.experiments.tune import plan_tuning

    tuning = plan_tuning("elu-seed", ["optim.lr=0.1", "optim.momentum=0.8"], ["optim.lr=log:0.01:1"], 3,
                         out_dir=str(tmp_path))
    assert "optim.lr=0.1" not in tuning.base and "optim.momentum=0.8" in tuning.base
    text = recipe_text("elu-seed", [*[b for b in tuning.base if b != "train.seeds=1"], "optim.lr=0.05"], "best")
    path = tmp_path / "best.toml"
    path.write_text(text)
    from cifarkit.config import load_config

    assert load_config(str(path)).optim.lr == 0.05


def test_workers_sharing_a_study_sample_different_points():
    import optuna

    from cifarkit.experiments.tune import trial_seeded_tpe

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=trial_seeded_tpe(0))
    other = optuna.load_study(study_name=study.study_name, storage=study._storage, sampler=trial_seeded_tpe(0))
    a, b = study.ask(), other.ask()  # two workers with the same --sampler-seed, at the same moment
    assert a.suggest_float("lr", 0.01, 1.0, log=True) != b.suggest_float("lr", 0.01, 1.0, log=True)
    again = optuna.create_study(sampler=trial_seeded_tpe(0)).ask()
    assert again.suggest_float("lr", 0.01, 1.0, log=True) == optuna.create_study(
        sampler=trial_seeded_tpe(0)).ask().suggest_float("lr", 0.01, 1.0, log=True)  # one worker: reproducible


def test_a_trial_beyond_the_quota_is_not_run():
    import optuna

    from cifarkit.experiments.tune import _within_quota

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study()
    first, second = study.ask(), study.ask()  # two workers each took a trial of a 1-trial study
    assert _within_quota(study, first, 1) and not _within_quota(study, second, 1)


def test_another_programs_database_is_never_written(tmp_path, capsys):
    import sqlite3

    from cifarkit.experiments.study import ExperimentError, open_storage

    db = tmp_path / "accounts.db"
    with sqlite3.connect(db) as connection:
        connection.execute("create table customers (id integer, name text)")
    before = db.read_bytes()
    with pytest.raises(ExperimentError, match="tables of another program .customers"):
        open_storage(f"sqlite:///{db}")
    assert db.read_bytes() == before


def test_a_read_only_study_is_one_line(tmp_path, fake_root, capsys, monkeypatch):
    import sqlite3

    from cifarkit.experiments.study import ExperimentError, open_storage

    monkeypatch.chdir(tmp_path)  # the storage makes the URL's "file:..." parent folders relative to here
    db = tmp_path / "study.db"
    open_storage(f"sqlite:///{db}")  # a real, empty Optuna study database
    url = f"sqlite:///file:{db}?mode=ro&uri=true"
    with pytest.raises(ExperimentError, match="read-only") as e:
        import optuna

        storage = open_storage(url)
        from cifarkit.experiments.study import storage_errors

        with storage_errors(url):
            optuna.create_study(storage=storage, study_name="x")
    assert "\n" not in str(e.value) and sqlite3  # one line


@pytest.mark.parametrize("url, secret", [
    ("postgresql://alice:Pa@ssw0rd@db.example/x", "ssw0rd"),
    ("postgresql://alice@db.example/x?password=hunter2&sslmode=require", "hunter2"),
    ("postgresql://alice:s3cret@db.example/x?sslpassword=k3y", "k3y"),
])
def test_no_secret_of_a_database_url_is_ever_shown(url, secret):
    from cifarkit.experiments.study import _scrub, masked

    assert secret not in masked(url) and "alice" in masked(url)
    assert secret not in _scrub(f"could not connect to {url} (password={secret})", url)


def test_a_worker_in_another_pid_namespace_is_never_judged_by_its_pid():
    import socket

    from cifarkit.experiments.study import _process_is_gone, worker_name

    host = socket.gethostname()
    dead_pid = 2**22 + 12345  # above any PID in use
    assert not _process_is_gone(f"{host}:{dead_pid}")  # an older name without a namespace: heartbeats only
    assert not _process_is_gone(f"{host}:{dead_pid}:0123456789ab")  # another container with our host name
    ours = worker_name().split(":")[2]
    assert _process_is_gone(f"{host}:{dead_pid}:{ours}")  # our own namespace: the PID means what it says


# -- report: the sweep folder is untrusted ---------------------------------------------------------------------

def _sweep_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "sweep"
    run = folder / "trials" / "v0-lr-0.1" / "seed0"
    run.mkdir(parents=True)
    (folder / "sweep.json").write_text(json.dumps({
        "name": "s", "recipe": "elu-seed", "set": [], "seeds": [0],
        "variants": [{"name": "v0-lr-0.1", "overrides": ["optim.lr=0.1"]}]}))
    (run / "results.json").write_text(json.dumps({"val": {"top1": 0.5, "loss": 1.0},
                                                  "test": {"top1": float("nan"), "loss": 1.0}}))
    return folder


def test_report_writes_json_with_null_for_nan_and_no_warning(tmp_path, recwarn):
    from cifarkit.experiments.report import report_sweep

    folder = _sweep_folder(tmp_path)
    report_sweep(folder)
    text = (folder / "report" / "summary.json").read_text()
    json.loads(text)  # strict JSON: no NaN tokens
    assert "NaN" not in text
    assert not [w for w in recwarn.list if "matplotlib" in str(w.filename) or "Matplotlib" in str(w.message)]


@pytest.mark.parametrize("tamper", ["traversal", "deep", "huge-int", "wrong-type", "link-out", "report-link"])
def test_report_treats_a_tampered_sweep_folder_as_data(tmp_path, tamper):
    from cifarkit.errors import CifarkitError
    from cifarkit.experiments.report import report_sweep

    folder = _sweep_folder(tmp_path)
    record = json.loads((folder / "sweep.json").read_text())
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    results = folder / "trials" / "v0-lr-0.1" / "seed0" / "results.json"
    if tamper == "traversal":
        record["variants"][0]["name"] = "../../../elsewhere"
    elif tamper == "deep":
        record["variants"] = [[[[[[[[[[[]]]]]]]]]]] * 3
    elif tamper == "huge-int":
        (folder / "sweep.json").write_text(json.dumps(record).replace('"seeds": [0]', '"seeds": [' + "9" * 5000 + "]"))
    elif tamper == "wrong-type":
        record["seeds"] = "all of them"
    elif tamper == "link-out":
        results.unlink()
        results.symlink_to("/etc/passwd")
    elif tamper == "report-link":
        (folder / "report").symlink_to(outside)
    if tamper not in ("huge-int", "link-out", "report-link"):
        (folder / "sweep.json").write_text(json.dumps(record))
    try:
        report = report_sweep(folder)
        assert tamper == "link-out" and report["rows"][0]["test_top1"]["n"] == 0  # the linked file is not read
    except CifarkitError as e:
        assert "\n" not in str(e)
    assert not any(outside.iterdir())  # nothing written outside the sweep folder


def test_a_crafted_results_file_in_a_cell_is_not_believed(tmp_path, fake_root):
    """A cell whose trial is run again (requeued after its worker died) finds a results.json: its figures are
    computed again from the cell's verified checkpoint, never read from the file."""
    from cifarkit.experiments.sweep import PreparedCache, plan_sweep, run_cell
    from tests.conftest import QUICK

    sets = [s for s in QUICK if not s.startswith(("train.run_name", "train.steps"))]
    sweep = plan_sweep("elu-seed", [*sets, "train.steps=20", "train.eval_every=10", "data.dataset=cifar10",
                                    f"data.data_dir={json.dumps(str(fake_root))}", "data.val_per_class=10"],
                       ["optim.lr=0.1"], 1, out_dir=str(tmp_path))
    variant, cache = sweep.variants[0], PreparedCache()
    honest = run_cell(sweep, variant, 0, cache, lambda _: None)
    crafted = {**honest, "val": {"top1": 0.99, "loss": 0.01}, "test": {"top1": 0.99, "loss": 0.01}}
    (sweep.run_dir(variant, 0) / "results.json").write_text(json.dumps(crafted))
    again = run_cell(sweep, variant, 0, cache, lambda _: None)
    assert again["val"] == honest["val"] and again["test"] == honest["test"]


def test_report_on_a_tune_folder_never_opens_the_url_it_names(tmp_path, capsys):
    folder = tmp_path / "tune"
    folder.mkdir()
    elsewhere = tmp_path / "elsewhere" / "made-by-report"
    (folder / "tune.json").write_text(json.dumps({"name": "t", "storage": f"sqlite:///{elsewhere / 'study.db'}"}))
    assert main(["report", str(folder)]) == 1
    assert "no study database" in capsys.readouterr().err
    assert not (tmp_path / "elsewhere").exists() and not (folder / "study.db").exists()
