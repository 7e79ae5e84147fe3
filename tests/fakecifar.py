"""Tiny fake CIFAR archives in the official "python version" layout, written by the tests themselves.

Pickles are written the way the official (Python 2) files were: protocol 2, bytes keys as BINSTRING,
numpy arrays by `_reconstruct`. Images carry a class-dependent colour so that a model can learn them.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np

from cifarkit.data.specs import DATASETS, DatasetSpec


class Py2Pickler(pickle._Pickler):
    def save_bytes(self, obj):
        n = len(obj)
        self.write((pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + n.to_bytes(4, "little"))
                   + obj)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes


def dumps(obj) -> bytes:
    buffer = io.BytesIO()
    Py2Pickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def fake_images(labels: np.ndarray, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (N, 3072) channel-planar rows: noise around a colour that depends on the class."""
    palette = rng.integers(30, 225, size=(num_classes, 3))
    base = palette[labels][:, :, None].repeat(1024, axis=2)  # N, 3, 1024
    noise = rng.normal(0, 25, size=base.shape)
    return np.clip(base + noise, 0, 255).astype(np.uint8).reshape(len(labels), 3072)


def classes(spec: DatasetSpec) -> list[bytes]:
    return [f"class{i:02d}".encode() for i in range(spec.num_classes)]


def write_folder(root: Path, name: str, per_class_train: int = 6, per_class_test: int = 2, seed: int = 0) -> Path:
    """Write ROOT/<official folder>/ with every file of dataset `name`; returns that folder."""
    spec = DATASETS[name]
    rng = np.random.default_rng(seed)
    folder = root / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    coarse_of = np.arange(spec.num_classes) % max(spec.num_coarse, 1)

    def batch(labels, label):
        record = {b"batch_label": label, b"filenames": [f"img{i}.png".encode() for i in range(len(labels))],
                  b"data": fake_images(labels, spec.num_classes, rng)}
        record[spec.label_key] = labels.tolist()
        if spec.coarse_label_key:
            record[spec.coarse_label_key] = coarse_of[labels].tolist()
        return record

    train_labels = rng.permutation(np.repeat(np.arange(spec.num_classes), per_class_train))
    parts = np.array_split(train_labels, len(spec.train_files))
    for file, labels in zip(spec.train_files, parts, strict=True):
        (folder / file).write_bytes(dumps(batch(labels, b"training batch")))
    test_labels = rng.permutation(np.repeat(np.arange(spec.num_classes), per_class_test))
    (folder / spec.test_file).write_bytes(dumps(batch(test_labels, b"testing batch")))
    meta = {spec.names_key: classes(spec)}
    if spec.superclasses_key:
        meta[spec.superclasses_key] = [f"super{i:02d}".encode() for i in range(spec.num_coarse)]
    (folder / spec.meta_file).write_bytes(dumps(meta))
    return folder


def make_archive(folder: Path, archive: Path, extra: list[tarfile.TarInfo] | None = None,
                 extra_data: bytes = b"") -> str:
    """Pack `folder` as a .tar.gz (plus crafted `extra` members); returns its md5."""
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname=folder.name)
        for info in extra or []:
            tar.addfile(info, io.BytesIO(extra_data) if info.isfile() else None)
    return hashlib.md5(archive.read_bytes()).hexdigest()
