"""Never lose a run: atomic checkpoints, exact resume after SIGKILL, SIGINT handling, corrupt checkpoints,
non-finite losses, disk checks, and a fuzzed checkpoint loader."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cifarkit.config import load_config
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.train import resume, train
from cifarkit.train.checkpoint import CheckpointStore, load_checkpoint
from cifarkit.train.stopping import TrainingStopped

STEPS = 60


def run_args(fake_root, out, name, *extra):
    """A small deterministic CPU run with dropout, augmentation and weight averaging: every random
    generator matters for the final weights."""
    return ["--recipe", "elu-seed", "--dataset", "cifar10", "--data-dir", str(fake_root), "--out-dir", str(out),
            "--run-name", name, "--device", "cpu", "--steps", str(STEPS),
            "--set", "model.kwargs.width=0.05", "--set", "train.batch_size=50", "--set", "data.val_per_class=10",
            "--set", "train.eval_every=20", "--set", "train.checkpoint_every=3", "--set", "train.keep_checkpoints=2",
            "--set", "train.deterministic=true", "--set", "train.ema_decay=0.9", "--set", "optim.lr=0.05",
            "--set", "schedule.dropout_events=[{step=30, set=[0,0.1,0.2,0.3,0.4,0.5,0]}]", *extra]


def cli(*args, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cifarkit", "train", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


def newest_step(run_dir: Path) -> int:
    files = sorted((run_dir / "checkpoints").glob("step-*.pt.sha256"))
    return int(files[-1].name[5:13]) if files else 0


def wait_for_step(process, run_dir: Path, step: int, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while newest_step(run_dir) < step:
        if process.poll() is not None:
            raise AssertionError(f"the run ended before step {step}: {process.stderr.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for a checkpoint")
        time.sleep(0.005)


def final_state(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "last.pt")


def assert_bitwise_equal(a: dict, b: dict) -> None:
    for key in ("model", "train_model"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name} differs"
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values(), strict=True):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, fake_root):
    out = tmp_path_factory.mktemp("reference")
    process = cli(*run_args(fake_root, out, "ref"))
    _, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out / "ref"


def test_sigkill_then_resume_is_bitwise_identical(reference_run, fake_root, tmp_path):
    seed = os.getpid()
    kill_after = random.Random(seed).randint(4, STEPS - 12)
    print(f"SIGKILL after step {kill_after} (random seed {seed}); to reproduce, set kill_after to it")
    process = cli(*run_args(fake_root, tmp_path, "killed"))
    wait_for_step(process, tmp_path / "killed", kill_after)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (tmp_path / "killed" / "results.json").exists()

    resumed = cli("--resume", str(tmp_path / "killed"))
    _, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err
    assert final_state(tmp_path / "killed")["step"] == STEPS
    assert_bitwise_equal(final_state(reference_run), final_state(tmp_path / "killed"))

    # The metrics file and the TensorBoard run continue without duplicated steps.
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [20, 40, 60]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "killed" / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val/loss")] == [20, 40, 60]
    reference = json.loads((reference_run / "results.json").read_text())
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["test"] == reference["test"]


def test_sigint_saves_and_says_how_to_resume(fake_root, tmp_path):
    process = cli(*run_args(fake_root, tmp_path, "stopped"))
    wait_for_step(process, tmp_path / "stopped", 6)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err
    assert "SIGINT received" in err and f"cifarkit train --resume {tmp_path / 'stopped'}" in err
    stopped_at = final_state(tmp_path / "stopped")["step"]
    assert 6 <= stopped_at < STEPS and newest_step(tmp_path / "stopped") == stopped_at
    resumed = cli("--resume", str(tmp_path / "stopped"))
    assert resumed.wait(timeout=600) == 0
    assert final_state(tmp_path / "stopped")["step"] == STEPS


def test_second_sigint_exits_at_once(fake_root, tmp_path):
    process = cli(*run_args(fake_root, tmp_path, "twice", "--steps", "100000"))
    wait_for_step(process, tmp_path / "twice", 3)
    process.send_signal(signal.SIGINT)
    time.sleep(0.5)  # two separate signals (back to back, the OS may deliver them as one)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=60)
    # The second Ctrl-C is Python's KeyboardInterrupt: exit 130 ("interrupted"), or 130 after the first had
    # already finished its step and saved ("SIGINT received"), or death by SIGINT if it lands as the process
    # is exiting -- never a traceback, never a run that goes on
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err


def test_corrupt_latest_checkpoint_falls_back_to_the_previous(fake_root, tmp_path):
    config = load_config("elu-seed", [
        "data.dataset=cifar10", f"data.data_dir={json.dumps(str(fake_root))}", "data.val_per_class=10",
        "model.kwargs.width=0.05", "train.batch_size=50", "train.steps=12", "train.eval_every=6",
        "train.checkpoint_every=2", f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=r"])
    train(config, log=lambda _: None)
    store = CheckpointStore(tmp_path / "r")
    newest, previous = store.step_files()[:2]
    newest.write_bytes(newest.read_bytes()[:1000])  # truncated in place: the checksum no longer matches
    warnings = []
    state = store.load_latest(warnings.append)
    assert state["step"] == int(previous.name[5:13]) and "corrupt or truncated" in warnings[0]


def test_a_checkpoint_is_usable_at_every_instant_of_its_save(tmp_path, monkeypatch):
    """A save killed at any point leaves a resumable run: the digest is written before the step file, and a
    step file whose sidecar is missing (an older cifarkit killed between the two) is proven whole by its zip
    CRCs instead of being called 'not intact'."""
    import cifarkit.train.checkpoint as checkpoint

    store = CheckpointStore(tmp_path)
    store.save({"step": 1, "model": {"w": torch.ones(3)}}, step=1)
    (tmp_path / "checkpoints" / "step-00000001.pt.sha256").unlink()  # killed between rename and digest
    assert store.load_latest(print)["step"] == 1

    written = []
    real_write = checkpoint.atomic_write_bytes

    def killed_at_the_step_file(path, data):
        if path.suffix == ".pt":
            raise KeyboardInterrupt  # the kill lands just before the step file is renamed into place
        written.append(path.name)
        real_write(path, data)

    monkeypatch.setattr(checkpoint, "atomic_write_bytes", killed_at_the_step_file)
    with pytest.raises(KeyboardInterrupt):
        store.save({"step": 2, "model": {"w": torch.zeros(3)}}, step=2)
    monkeypatch.undo()
    assert written == ["step-00000002.pt.sha256"]
    assert store.load_latest(print)["step"] == 1  # the orphan digest names no file: the previous one is used
    store.save({"step": 3, "model": {"w": torch.zeros(3)}}, step=3)
    assert not (tmp_path / "checkpoints" / "step-00000002.pt.sha256").exists()  # orphans are swept


def test_a_step_file_without_digest_that_is_damaged_is_refused(tmp_path):
    store = CheckpointStore(tmp_path)
    path = store.save({"step": 1, "model": {"w": torch.ones(1000)}}, step=1)
    path.with_suffix(".pt.sha256").unlink()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="no checkpoint .* is intact"):
        store.load_latest(lambda _: None)


def test_nothing_to_resume(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoints"):
        CheckpointStore(tmp_path).load_latest(print)
    with pytest.raises(CheckpointError, match="not a run directory"):
        resume(tmp_path / "missing")


def _exploding(fake_root, tmp_path, *extra):
    return load_config("elu-seed", [
        "data.dataset=cifar10", f"data.data_dir={json.dumps(str(fake_root))}", "data.val_per_class=10",
        "model.kwargs.width=0.05", "model.kwargs.dropout=0.0", "train.batch_size=50", "train.steps=12",
        "train.eval_every=6", "optim.lr=1e12", f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=nan",
        *extra])


def test_nonfinite_loss_stops_and_names_the_step(fake_root, tmp_path):
    with pytest.raises(TrainingStopped, match=r"not finite at step \d+; stopped without applying that update") as e:
        train(_exploding(fake_root, tmp_path), log=lambda _: None)
    assert "skip_nonfinite" in str(e.value)
    state = CheckpointStore(tmp_path / "nan").load_latest(print)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_the_guard_undoes_a_step_bitwise_without_asking_the_host():
    from cifarkit.models import create_model
    from cifarkit.train.guard import UpdateGuard, ensure_momentum_buffers

    model = create_model("airbench", 10, widths=[8, 16, 16]).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    ensure_momentum_buffers(optimizer)

    def tensors():
        return [*model.parameters(), *model.buffers(), *(s["momentum_buffer"] for s in optimizer.state.values())]

    guard = UpdateGuard(tensors, torch.device("cpu"))
    for step, finite in enumerate([True, False, True, False]):
        before = [t.clone() for t in tensors()]
        guard.snapshot()
        model(torch.randn(4, 3, 32, 32)).sum().backward()  # the forward pass moves BatchNorm statistics too
        optimizer.step()
        guard.settle(torch.tensor(finite), step)
        changed = any(not torch.equal(a, b) for a, b in zip(before, tensors(), strict=True))
        assert changed == finite, step  # a bad step leaves every tensor bitwise as it was
    assert guard.read() == (2, 1)


def test_nonfinite_steps_can_be_skipped(fake_root, tmp_path):
    results = train(_exploding(fake_root, tmp_path, "train.skip_nonfinite=true"), log=lambda _: None)
    assert results["skipped_steps"] > 0 and results["steps"] == 12


def test_full_disk_is_reported_at_start(fake_root, tmp_path):
    config = _exploding(fake_root, tmp_path, "train.keep_checkpoints=1000000000")
    with pytest.raises(ConfigError, match="MiB free"):
        train(config, log=lambda _: None)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(max_size=2048))
def test_any_bytes_give_a_checkpoint_error(tmp_path, raw):
    path = tmp_path / "fuzz.pt"
    path.write_bytes(raw)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 10_000), st.binary(min_size=1, max_size=64))
def test_damaged_real_checkpoint_gives_a_checkpoint_error(tmp_path, cut, junk):
    import io

    buffer = io.BytesIO()
    torch.save({"format": "cifarkit-checkpoint", "model": {"w": torch.ones(3)}}, buffer)
    raw = buffer.getvalue()
    path = tmp_path / "damaged.pt"
    path.write_bytes(raw[: cut % len(raw)] + junk)
    try:
        state = load_checkpoint(path)
    except CheckpointError:
        return
    # a damaged file may only load if what it yields is exactly what was saved
    assert torch.equal(state["model"]["w"], torch.ones(3))


def test_resumed_budget_run_finishes_within_its_budget(fake_root, tmp_path):
    """A budget run stopped before its planner had measured a step (at step 1) and resumed: the resumed process
    plans against what is left of the budget, instead of running the recipe's whole uncalibrated length."""
    from cifarkit.train.loop import Trainer

    budget = 10.0
    config = load_config("elu-seed", ["preprocess.normalize=\"meanstd\"",
        "data.dataset=\"cifar10\"", f"data.data_dir={json.dumps(str(fake_root))}", "data.val_per_class=10",
        f"train.out_dir={json.dumps(str(tmp_path))}", "train.run_name=\"budget\"", "train.device=\"cpu\"",
        "model.kwargs.width=0.05", "train.batch_size=50", f"train.budget_seconds={budget}", "train.eval_every=50"])
    first = Trainer(config, log=lambda _: None)
    first.clock.start()
    first.train_step()
    first.save()
    first.claim.release()  # as the first process's end would
    assert first.total_steps == config.train.steps  # the uncalibrated plan: 165,000 steps
    time.sleep(1.0)  # spent, as far as the budget is concerned, like any time before the stop
    started = time.monotonic()
    resume(tmp_path / "budget", log=lambda _: None, evaluate_test=False)
    state = final_state(tmp_path / "budget")
    assert state["step"] < config.train.steps
    # the first process's time counts; the planner stops between steps, so a step and a validation pass may
    # pass the budget's end (seconds each on a loaded 2-core machine)
    assert state["budget_spent_seconds"] <= budget + 5
    assert time.monotonic() - started < budget + 60  # set-up besides


def test_two_processes_never_train_one_run(fake_root, tmp_path):
    """A run is claimed by one process at a time: a second `--resume` of a run in training is refused before
    it writes anything, and a killed process leaves no claim behind."""
    process = cli(*run_args(fake_root, tmp_path, "claimed", "--steps", "100000"))
    wait_for_step(process, tmp_path / "claimed", 3)
    second = cli("--resume", str(tmp_path / "claimed"))
    _, err = second.communicate(timeout=300)
    assert second.returncode != 0 and "another process is training" in err and "Traceback" not in err
    assert len(list((tmp_path / "claimed" / "tensorboard").iterdir())) == 1  # no second event file
    process.kill()
    process.wait(timeout=60)
    again = cli("--resume", str(tmp_path / "claimed"))  # the killed process's claim went with it
    wait_for_step(again, tmp_path / "claimed", newest_step(tmp_path / "claimed") + 1)
    again.kill()
    again.wait(timeout=60)
