"""A run that starts from a trained model's weights (`train.init_from`): it starts from exactly them, refuses a
source that is another network or was trained on another split or preprocessing before it writes anything, and a
resumed run takes its weights from its own checkpoint, not from the source again."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from cifarkit.config import load_config
from cifarkit.errors import CheckpointError, ConfigError
from cifarkit.train import resume, train
from cifarkit.train.loop import Trainer

TINY = ["model.kwargs.width=0.05", "train.batch_size=20", "train.eval_batch_size=50", "data.dataset=cifar10",
        "data.val_per_class=10", "train.amp=off"]


def config(tmp_path, fake_root, name, *extra):
    return load_config("elu-seed", [*TINY, f"data.data_dir={json.dumps(str(fake_root))}",
                                     f"train.out_dir={json.dumps(str(tmp_path))}", f"train.run_name={name}",
                                     "train.steps=8", "train.eval_every=4", *extra])


@pytest.fixture(scope="module")
def source_run(tmp_path_factory, fake_root):
    out = tmp_path_factory.mktemp("source")
    train(config(out, fake_root, "source"), log=lambda _: None)
    return out / "source"


@pytest.fixture
def source(source_run, tmp_path):
    """The trained source, copied: one test deletes it."""
    return shutil.copytree(source_run, tmp_path / "source")


def _weights(run_or_checkpoint) -> dict:
    from cifarkit.loading import load_model

    return load_model(run_or_checkpoint).model.state_dict()


def test_a_run_starts_from_the_sources_weights(tmp_path, fake_root, source):
    lines = []
    trainer = Trainer(config(tmp_path, fake_root, "more", f"train.init_from={json.dumps(str(source))}"), lines.append)
    expected = _weights(source)
    got = trainer.run.model.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key].cpu(), expected[key]) for key in expected)  # the running BN statistics too
    assert any(line.startswith(f"starting from {source}") for line in lines)
    trainer.claim.release()


def test_a_fresh_start_differs(tmp_path, fake_root, source):
    trainer = Trainer(config(tmp_path, fake_root, "fresh"), log=lambda _: None)
    expected = _weights(source)
    assert not all(torch.equal(value.cpu(), expected[key]) for key, value in trainer.run.model.state_dict().items())
    trainer.claim.release()


@pytest.mark.parametrize("change, message", [
    ("model.kwargs.width=0.1", "this run trains elu_net_seed"),
    ("data.split_seed=1", "trained on another split (data.split_seed = 0)"),
    ("data.val_per_class=20", "have seen pictures this run would validate on"),
    ("preprocess.normalize=none", "other preprocessing"),
])
def test_another_network_split_or_preprocessing_is_refused_before_anything_is_written(tmp_path, fake_root, source,
                                                                                       change, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Trainer(config(tmp_path, fake_root, "more", f"train.init_from={json.dumps(str(source))}", change),
                log=lambda _: None)
    assert not (tmp_path / "more").exists()


def test_a_missing_source_is_one_clear_error(tmp_path, fake_root):
    with pytest.raises(CheckpointError, match="^train.init_from: .*neither a shipped model"):
        Trainer(config(tmp_path, fake_root, "more", "train.init_from=no-such-model"), log=lambda _: None)
    assert not (tmp_path / "more").exists()


def test_a_resumed_run_does_not_need_its_source(tmp_path, fake_root, source):
    """The source is read once, at the start: a resumed run continues from its own checkpoint even if the source
    has gone since (moved, deleted, or a shipped model replaced by a newer cifarkit)."""
    from cifarkit.train.checkpoint import CheckpointStore, load_checkpoint

    more = config(tmp_path, fake_root, "more", f"train.init_from={json.dumps(str(source))}",
                  "train.checkpoint_every=2")
    train(more, log=lambda _: None)
    run = tmp_path / "more"
    steps = sorted((run / "checkpoints").glob("step-*.pt"))
    for path in steps[1:]:  # back to its first checkpoint, as a run interrupted there would be
        path.unlink()
        path.with_name(path.name + ".sha256").unlink(missing_ok=True)
    assert CheckpointStore(run).load_latest(lambda _: None)["step"] < 8
    shutil.rmtree(source)
    lines = []
    resume(run, log=lines.append)
    assert load_checkpoint(run / "last.pt")["step"] == 8
    assert not any(line.startswith("starting from") for line in lines)
