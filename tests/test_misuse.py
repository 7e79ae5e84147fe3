"""A careless or hostile user: every bad input is refused where it enters, with one line that says what is
wrong, and no run, report or export is ever lost or half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit.cli import main
from cifarkit.config import list_recipes, load_config
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.train import train
from cifarkit.train.checkpoint import load_checkpoint
from tests.test_train import tiny_config

# -- config: validated as a whole when it is loaded ------------------------------------------------------------

BAD_OVERRIDES = [
    ("train.batch_size=0", "train.batch_size must be >= 1"),
    ("train.batch_size=-5", "train.batch_size must be >= 1"),
    ("train.steps=0", "train.steps must be >= 1"),
    ("train.epochs=-1", "train.epochs must be >= 0"),
    ("optim.lr=nan", "optim.lr must be a finite number"),
    ("optim.lr=inf", "optim.lr must be a finite number"),
    ("optim.lr=0", "optim.lr must be > 0"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1)"),
    ("augment.pad_mode=refelct", "augment.pad_mode must be one of 'zeros', 'reflect'"),
    ("augment.flip_mode=sometimes", "augment.flip_mode must be one of 'random', 'alternate'"),
    ("preprocess.normalize=zac", "preprocess.normalize must be one of"),
    ("train.amp=fp8", "train.amp must be one of 'auto', 'bf16', 'off'"),
    ("optim.lr_scaling=cubic", "optim.lr_scaling must be one of"),
    ("schedule.name=zigzag", "schedule.name must be one of step, constant, cosine, linear"),
    ("optim.name=adamw", "optim.name must be one of sgd"),
    ("data.dataset=mnist", "data.dataset must be one of cifar100, cifar10"),
    ("model.name=vgg", "unknown model 'vgg'"),
    ("model.kwargs={depth=3}", "model 'elu_net_seed' has no option 'depth'"),
    ("train.device=foo", "unknown device 'foo'"),
    ("train.device=cuda:x", "unknown device 'cuda:x'"),
    ("train.seeds=0", "train.seeds must be in [1, 1001)"),
    ("train.eval_batch_size=0", "train.eval_batch_size must be >= 1"),
    ("train.ema_decay=1", "train.ema_decay must be in [0, 1)"),
    ("schedule.milestones=[-3]", "schedule.milestones must be a list of step numbers"),
    ("schedule.dropout_events=[{step=1}]", "dropout event"),
    ("data.val_per_class=-1", "data.val_per_class must be >= 0"),
    ("train.seed=-1", "train.seed must be in [0, 4294967296)"),
    ("optim.nesterov=true", None),  # fine with momentum 0.9
]


@pytest.mark.parametrize(("override", "message"), BAD_OVERRIDES)
def test_bad_values_are_refused_when_the_config_is_loaded(override, message):
    if message is None:
        load_config("elu-seed", [override])
        return
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        load_config("elu-seed", [override])


def test_every_recipe_parses_and_resolves():
    from cifarkit.models.registry import model_options

    for name in list_recipes():
        config = load_config(name)
        assert set(config.model.kwargs) <= set(model_options(config.model.name)), name
        json.loads(json.dumps(config.to_dict(), allow_nan=False))  # printable as strict JSON


def test_print_config_never_prints_invalid_json(capsys):
    assert main(["train", "--print-config", "--set", "optim.lr=nan"]) == 1
    captured = capsys.readouterr()
    assert "optim.lr must be a finite number" in captured.err and "NaN" not in captured.out


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def test_recipe_file_errors_are_one_line(tmp_path):
    cases = [
        (write(tmp_path / "five.toml", "extends = 5\n"), "`extends` must name a recipe"),
        (write(tmp_path / "latin1.toml", b"description = \"caf\xe9\"\n"), "is not UTF-8 text"),
        (write(tmp_path / "deep.toml", "a = " + "[" * 50_000 + "]" * 50_000 + "\n"), "nested too deeply|not valid"),
        (write(tmp_path / "bad.toml", "[train\nsteps = 3\n"), "is not valid TOML"),
        (write(tmp_path / "loop.toml", 'extends = "loop.toml"\n'), "extends itself"),
        (write(tmp_path / "unknown.toml", "[train]\nstepz = 3\n"),
         "unknown setting train.stepz; did you mean train.steps?"),
    ]
    for path, message in cases:
        with pytest.raises(ConfigError, match=message):
            load_config(str(path))


def test_extends_is_relative_to_the_recipe_file(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes" / "base.toml", 'extends = "fast10"\n[train]\nbatch_size = 256\n')
    write(tmp_path / "recipes" / "child.toml", 'extends = "base.toml"\n[optim]\nlr = 0.5\n')
    monkeypatch.chdir(tmp_path)  # not the recipes folder
    config = load_config("recipes/child.toml")
    assert (config.train.batch_size, config.optim.lr, config.model.name) == (256, 0.5, "airbench")


KEYS = ["train.steps", "train.batch_size", "optim.lr", "optim.momentum", "augment.pad_mode", "augment.pad",
        "train.amp", "train.device", "model.kwargs", "schedule.milestones", "data.val_per_class", "train.run_name",
        "schedule.dropout_events", "train.seeds", "preprocess.normalize", "nope.key", "train", "model.kwargs.width"]
TOML_VALUES = st.one_of(
    st.integers(-10**12, 10**12).map(str), st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["true", "false", "nan", "inf", "-inf", "[]", "[1, 2]", "{}", "{width = 0.1}", '"zeros"',
                     "reflect", "auto", "bf16", "cpu", "cuda:7", "[{step = 1, set = [0.1]}]", "[[[]]]", "1e400"]),
    st.text(max_size=20),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(KEYS), TOML_VALUES), max_size=4))
def test_fuzzed_overrides_give_a_valid_config_or_a_config_error(pairs):
    try:
        config = load_config("fast10", [f"{key}={value}" for key, value in pairs])
    except ConfigError:
        return
    json.loads(json.dumps(config.to_dict(), allow_nan=False))
    assert config.train.batch_size >= 1 and config.optim.lr > 0 and config.train.steps >= 1


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300).map(str.encode),
                 st.sampled_from([b"[train]\nbatch_size = 0\n", b"extends = 5", b"extends = \"fast10\"\n[model]\n"
                                  b"kwargs = {widths = [1]}\n", b"[augment]\npad = 1e9\n", b"[train\n", b"\xff\xfe"])))
def test_fuzzed_recipe_files_give_a_valid_config_or_a_config_error(tmp_path, raw):
    path = write(tmp_path / "fuzz.toml", raw)
    try:
        load_config(str(path))
    except ConfigError:
        pass


# -- runs are never overwritten; nothing is created before the config and the data are known to be good ----------

def test_reusing_a_run_name_is_refused_and_the_first_run_survives(tmp_path, fake_root):
    train(tiny_config(tmp_path, fake_root, "train.steps=2", "train.eval_every=2"), log=lambda _: None)
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ConfigError, match="already exists and holds files.*--resume"):
        train(tiny_config(tmp_path, fake_root, "train.steps=3", "train.eval_every=3"), log=lambda _: None)
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_default_run_names_never_collide(tmp_path, fake_root):
    from cifarkit.train.setup import make_run_dir

    config = load_config("elu-seed", [f"train.out_dir={json.dumps(str(tmp_path))}"])
    first, second = make_run_dir(config), make_run_dir(config)
    assert first != second and second.name.startswith(first.name)


def test_nothing_is_created_when_the_data_is_missing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["train", "--no-download", "--data-dir", str(tmp_path / "nowhere"), "--out-dir", str(out)]) == 1
    assert "error" in capsys.readouterr().err
    assert not out.exists()


def test_device_loader_errors_are_config_errors(tmp_path, fake_root):
    with pytest.raises(ConfigError, match="train.batch_size 100000 exceeds"):
        train(tiny_config(tmp_path, fake_root, "train.batch_size=100000"), log=lambda _: None)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_what_it_would_ignore(tmp_path, fake_root, capsys):
    train(tiny_config(tmp_path, fake_root, "train.steps=2", "train.eval_every=2"), log=lambda _: None)
    run = str(tmp_path / "run")
    config_before = (tmp_path / "run" / "config.json").read_text()
    for extra, message in ((["--steps", "5"], "--steps cannot be used with --resume"),
                           (["--out-dir", "elsewhere"], "--out-dir cannot be used with --resume"),
                           (["--recipe", "fast10"], "--recipe cannot be used with --resume"),
                           (["--set", "train.batch_size=7"], "--set train.batch_size cannot change when resuming"),
                           (["--set", "model.name=airbench"], "--set model.name cannot change when resuming")):
        assert main(["train", "--resume", run, *extra]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "run" / "config.json").read_text() == config_before
    # --device says how the run goes on, as --set train.device does: both are accepted
    assert main(["train", "--resume", run, "--device", "cpu"]) == 0
    assert main(["train", "--resume", run, "--set", "train.device=\"cpu\""]) == 0


# -- checkpoints ------------------------------------------------------------------------------------------------

def test_a_checkpoint_saved_before_any_validation_is_usable(tmp_path, fake_root, capsys):
    train(tiny_config(tmp_path, fake_root, "train.steps=3", "train.eval_every=100", "train.checkpoint_every=1"),
          log=lambda _: None)
    early = sorted((tmp_path / "run" / "checkpoints").glob("step-*.pt"))[0]
    assert load_checkpoint(early)["val"] is None
    picture = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (40, 30), (200, 10, 10)).save(picture)
    assert main(["predict", str(early), str(picture), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"]
    assert main(["export", str(early), "--onnx", str(tmp_path / "early.onnx")]) == 0
    assert json.loads((tmp_path / "early.json").read_text())["val"] == {}


def test_a_nonfinite_stop_never_saves_nonfinite_weights(tmp_path, fake_root):
    from cifarkit.train.stopping import TrainingStopped

    # a learning rate this large makes the first update overflow the weights; the next loss is NaN
    config = tiny_config(tmp_path, fake_root, "optim.lr=1e30", "train.steps=5", "train.eval_every=100",
                         "train.checkpoint_every=1", "train.amp=off")
    with pytest.raises(TrainingStopped) as stopped:
        train(config, log=lambda _: None)
    for path in (tmp_path / "run" / "checkpoints").glob("step-*.pt"):
        state = load_checkpoint(path)
        assert all(torch.isfinite(t).all() for t in state["model"].values() if t.is_floating_point()), path
    assert "no longer finite; nothing was saved" in str(stopped.value) or "last good state" in str(stopped.value)


def test_a_crafted_checkpoint_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "bomb.pt"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        with archive.open("archive/data/0", "w", force_zip64=True) as entry:
            block = bytes(1 << 20)
            for _ in range(256):  # 256 MiB of zeros, a few hundred KiB compressed
                entry.write(block)
    assert path.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="declares 256 MiB of contents"):
        load_checkpoint(path)


# -- the command line ---------------------------------------------------------------------------------------------

def test_command_line_values_are_checked_first(trained_run, tmp_path, capsys):
    picture = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(picture)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", str(trained_run), str(picture), "-k", "-1"])
    assert exit_info.value.code == 2 and "expected a whole number >= 1" in capsys.readouterr().err
    assert main(["predict", str(trained_run), str(picture), "--device", "foo"]) == 1
    assert "unknown device 'foo'" in capsys.readouterr().err
    existing = write(tmp_path / "report.txt", "keep me")
    assert main(["evaluate", str(trained_run), "--out", str(existing)]) == 1
    assert "is a file" in capsys.readouterr().err and existing.read_text() == "keep me"
    blocked = write(tmp_path / "blocker", "a file where a folder should be")
    assert main(["export", str(trained_run), "--onnx", str(blocked / "m.onnx")]) == 1
    err = capsys.readouterr().err
    assert "cannot write the ONNX model" in err and len(err.strip().splitlines()) == 1


def test_two_exports_in_one_folder_keep_their_own_metadata(trained_run, tmp_path):
    assert main(["export", str(trained_run), "--onnx", str(tmp_path / "a.onnx")]) == 0
    assert main(["export", str(trained_run), "--onnx", str(tmp_path / "b.onnx")]) == 0
    import hashlib

    for name in ("a", "b"):
        metadata = json.loads((tmp_path / f"{name}.json").read_text())
        assert metadata["model_file"] == f"{name}.onnx"
        assert metadata["model_sha256"] == hashlib.sha256((tmp_path / f"{name}.onnx").read_bytes()).hexdigest()
    assert not list(tmp_path.glob(".export-*"))


def test_evaluate_replaces_its_report_as_a_whole(trained_run, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(out)]) == 0
    write(out / "stale.txt", "from an older report")
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert "stale.txt" not in names and {"report.json", "confusion.csv"} <= names
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()  # the usual permissions, not mkdtemp's 0700


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_evaluate_never_deletes_a_folder_it_did_not_write(trained_run, tmp_path, capsys, monkeypatch):
    users = tmp_path / "mine"
    users.mkdir()
    write(users / "thesis.tex", "months of work")
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(users)]) == 1
    assert (users / "thesis.tex").read_text() == "months of work"
    assert "never replaced" in capsys.readouterr().err
    checkpoints_before = sorted(p.name for p in (trained_run / "checkpoints").iterdir())
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(trained_run)]) == 1  # --out RUN
    assert sorted(p.name for p in (trained_run / "checkpoints").iterdir()) == checkpoints_before
    monkeypatch.chdir(users)
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", "."]) == 1  # a traceback before
    err = capsys.readouterr().err
    assert "never replaced" in err and "Traceback" not in err
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o750)
    assert main(["evaluate", str(trained_run), "--split", "val", "--out", str(empty)]) == 0  # filled, kept
    assert (empty / "report.json").is_file() and empty.stat().st_mode & 0o777 == 0o750


# -- predict ------------------------------------------------------------------------------------------------------

def test_predict_survives_odd_file_names_loops_and_unreadable_things(trained_run, tmp_path):
    from PIL import Image

    folder = tmp_path / "pictures"
    folder.mkdir()
    odd = os.fsdecode(bytes(folder) + b"/caf\xe9-\xff.png")  # not UTF-8
    Image.new("RGB", (20, 20), (0, 120, 0)).save(odd)
    (folder / "loop.png").symlink_to(folder / "loop.png")
    Image.new("RGB", (20, 20)).save(folder / "plain.png")
    result = subprocess.run([sys.executable, "-m", "cifarkit", "predict", str(trained_run), str(folder)],
                            capture_output=True, env={**os.environ, "PYTHONIOENCODING": "utf-8"})
    out, err = result.stdout.decode(), result.stderr.decode()
    assert result.returncode == 1 and "Traceback" not in err, err
    lines = out.splitlines()
    assert any("caf\\xe9-\\xff.png:" in line and "ERROR" not in line for line in lines), out
    assert any("plain.png:" in line and "ERROR" not in line for line in lines), out
    assert any("loop.png: ERROR" in line and "loop of symbolic links" in line for line in lines), out


@pytest.mark.skipif(os.geteuid() == 0, reason="permissions do not bind the root user")
def test_predict_reports_permission_errors_and_unreadable_folders(trained_run, tmp_path):
    from cifarkit.predict import predict_files

    (tmp_path / "locked").mkdir()
    (tmp_path / "locked" / "a.png").write_bytes(b"x")
    locked_file = write(tmp_path / "secret.png", b"x")
    locked_file.chmod(0)
    (tmp_path / "locked").chmod(0)
    try:
        results = {Path(r.path).name: r for r in predict_files(trained_run, [tmp_path])}
    finally:
        (tmp_path / "locked").chmod(0o755)
    assert "permission denied" in results["secret.png"].error
    assert "cannot read this folder" in results["locked"].error

