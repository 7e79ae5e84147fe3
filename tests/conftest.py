from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import pytest

from cifarkit.data import specs
from tests.fakecifar import make_archive, write_folder

# The real datasets, built by .ci/run from the shared folder beside the project (tests skip without them):
# CIFAR-100 exact, CIFAR-10 near-exact, and the older all-JPEG CIFAR-10 copy on which the shipped CIFAR-10
# model's card figures were measured.
REAL_CIFAR10_ENV = "CIFARKIT_TEST_CIFAR10"
REAL_CIFAR100_ENV = "CIFARKIT_TEST_CIFAR100"
REAL_CIFAR10_JPEG_ENV = "CIFARKIT_TEST_CIFAR10_JPEG"


@pytest.fixture(autouse=True)
def isolated_environment(tmp_path_factory, monkeypatch):
    """No test reads the user's cache or data variables, or writes outside its temporary folders."""
    monkeypatch.setenv("CIFARKIT_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("CIFARKIT_DATA_DIR", raising=False)


@pytest.fixture(scope="session")
def fake_root(tmp_path_factory) -> Path:
    """A folder holding fake cifar-100-python/ and cifar-10-batches-py/ folders."""
    root = tmp_path_factory.mktemp("fake")
    write_folder(root, "cifar100", per_class_train=6, per_class_test=2)
    write_folder(root, "cifar10", per_class_train=60, per_class_test=20)
    return root


@pytest.fixture
def fake_archive(tmp_path, monkeypatch):
    """Factory: a fake .tar.gz of dataset `name`; the registry's md5 is set to match it (as the real one does)."""

    def make(name: str = "cifar100", **kwargs) -> Path:
        spec = specs.DATASETS[name]
        src = write_folder(tmp_path / "src", name)
        archive = tmp_path / "archives" / spec.archive_name
        archive.parent.mkdir(exist_ok=True)
        md5 = make_archive(src, archive, **kwargs)
        monkeypatch.setitem(specs.DATASETS, name, dataclasses.replace(spec, md5=md5))
        return archive

    return make


def _real(env: str, what: str) -> Path:
    path = os.environ.get(env)
    if not path or not Path(path).exists():
        pytest.skip(f"{what} not available (set {env} to its folder)")
    return Path(path)


@pytest.fixture(scope="session")
def real_cifar10() -> Path:
    return _real(REAL_CIFAR10_ENV, "the near-exact CIFAR-10 copy")


@pytest.fixture(scope="session")
def real_cifar100() -> Path:
    return _real(REAL_CIFAR100_ENV, "the real CIFAR-100")


@pytest.fixture(scope="session")
def real_cifar10_jpeg() -> Path:
    return _real(REAL_CIFAR10_JPEG_ENV, "the older JPEG CIFAR-10 copy")


QUICK = ["model.name=airbench", "model.kwargs={widths=[16,32,32]}", "preprocess.normalize=meanstd",
         "optim.lr=0.2", "optim.l2=0", "optim.l2_first_layer=0.0", "optim.momentum=0.9", "schedule.dropout_events=[]",
         "schedule.milestones=[]", "train.batch_size=64", "train.eval_every=40", "train.steps=40", "train.run_name=run",
         "train.amp=off"]  # fp32, so that tests can recompute its figures exactly


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, fake_root):
    """A small model trained inside the tests: on the real CIFAR-10 copy when present, else on fake data."""
    from cifarkit.config import load_config
    from cifarkit.train import train

    out = tmp_path_factory.mktemp("use")
    real = os.environ.get("CIFARKIT_TEST_CIFAR10")
    data = ["data.dataset=cifar10", f"data.data_dir={json.dumps(real or str(fake_root))}"]
    data += ["data.train_subset=5000"] if real else ["data.val_per_class=10"]
    train(load_config("elu-seed", [*QUICK, *data, f"train.out_dir={json.dumps(str(out))}"]), log=lambda _: None)
    return out / "run"
