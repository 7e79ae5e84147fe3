"""Read the official CIFAR "python version" files into uint8 arrays, validating everything on the way."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cifarkit.data.safe_pickle import safe_loads
from cifarkit.data.specs import DatasetSpec
from cifarkit.errors import DatasetError
from cifarkit.files import read_bounded

IMAGE_SHAPE = (32, 32, 3)
ROW_LENGTH = 32 * 32 * 3


@dataclass
class CifarData:
    """A whole dataset in memory. Images are uint8 NHWC (N, 32, 32, 3); labels are int64."""

    spec: DatasetSpec
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    classes: list[str]
    source: Path
    source_description: str = ""
    superclasses: list[str] = field(default_factory=list)
    train_coarse: np.ndarray | None = None
    test_coarse: np.ndarray | None = None

    @property
    def fine_to_coarse(self) -> np.ndarray | None:
        """For CIFAR-100: the superclass of each of the 100 classes (every image of a class agrees)."""
        if self.train_coarse is None:
            return None
        mapping = np.full(self.spec.num_classes, -1, dtype=np.int64)
        mapping[self.train_labels] = self.train_coarse
        return mapping


def _read_pickle(path: Path, limit: int) -> dict:
    raw = read_bounded(path, limit, DatasetError, "dataset file")
    obj = safe_loads(raw, str(path))
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a dict as in the official files, found {type(obj).__name__}")
    return obj


def _labels(batch: dict, key: bytes, count: int, num_classes: int, path: Path) -> np.ndarray:
    if key not in batch:
        raise DatasetError(f"{path}: no {key.decode()!r} entry; is this a file of the other CIFAR dataset?")
    values = batch[key]
    if not isinstance(values, (list, np.ndarray)) or len(values) != count:
        raise DatasetError(f"{path}: {key.decode()!r} should list {count} labels")
    # integers only: a float (42.7) would be truncated to another class, a string parsed as a number
    if isinstance(values, np.ndarray):
        integral = values.dtype.kind in "iu"
    else:
        integral = all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values)
    if not integral:
        raise DatasetError(f"{path}: {key.decode()!r} holds values that are not integer class indices (the official "
                           "files hold integers 0..{}); the file is not an official CIFAR file".format(num_classes - 1))
    try:
        labels = np.asarray(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise DatasetError(f"{path}: {key.decode()!r} holds integers too large to be class indices") from None
    if labels.ndim != 1 or (count and (labels.min() < 0 or labels.max() >= num_classes)):
        raise DatasetError(f"{path}: {key.decode()!r} has labels outside 0..{num_classes - 1}")
    return labels


def _read_batch(path: Path, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    batch = _read_pickle(path, spec.max_file_bytes(path.name))
    data = batch.get(b"data")
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != ROW_LENGTH:
        shape = getattr(data, "shape", None)
        raise DatasetError(f"{path}: 'data' should be a uint8 array of shape (N, {ROW_LENGTH}), found {shape}")
    count = data.shape[0]
    labels = _labels(batch, spec.label_key, count, spec.num_classes, path)
    coarse = None
    if spec.coarse_label_key is not None:
        coarse = _labels(batch, spec.coarse_label_key, count, spec.num_coarse, path)
    # Rows are channel-planar (1024 red, 1024 green, 1024 blue); NHWC is what images and PIL expect.
    images = data.reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels, coarse


def _names(meta: dict, key: bytes, count: int, path: Path) -> list[str]:
    names = meta.get(key)
    if not isinstance(names, list) or len(names) != count:
        raise DatasetError(f"{path}: {key.decode()!r} should list {count} names; is this the other CIFAR dataset?")
    return [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]


def read_folder(folder: Path, spec: DatasetSpec) -> CifarData:
    """Parse an extracted `cifar-100-python` / `cifar-10-batches-py` folder."""
    parts = [_read_batch(folder / name, spec) for name in spec.train_files]
    train_images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    train_labels = np.concatenate([p[1] for p in parts])
    test_images, test_labels, test_coarse = _read_batch(folder / spec.test_file, spec)
    meta_path = folder / spec.meta_file
    meta = _read_pickle(meta_path, spec.max_file_bytes(spec.meta_file))
    data = CifarData(
        spec=spec,
        train_images=train_images,
        train_labels=train_labels,
        test_images=np.ascontiguousarray(test_images),
        test_labels=test_labels,
        classes=_names(meta, spec.names_key, spec.num_classes, meta_path),
        source=folder,
    )
    if spec.coarse_label_key is not None:
        data.train_coarse = np.concatenate([p[2] for p in parts])
        data.test_coarse = test_coarse
        data.superclasses = _names(meta, spec.superclasses_key, spec.num_coarse, meta_path)
        _check_coarse_consistent(data)
    return data


def _check_coarse_consistent(data: CifarData) -> None:
    missing = sorted(set(range(data.spec.num_classes)) - set(np.unique(data.train_labels).tolist()))
    if missing:
        names = ", ".join(data.classes[i] for i in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DatasetError(f"{data.source}: the training files hold no image of {len(missing)} of the "
                           f"{data.spec.num_classes} classes ({names}); the official files hold 500 of each. "
                           "Use the complete official files")
    mapping = data.fine_to_coarse
    for labels, coarse in ((data.train_labels, data.train_coarse), (data.test_labels, data.test_coarse)):
        if len(labels) and not np.array_equal(mapping[labels], coarse):
            raise DatasetError(f"{data.source}: a fine class appears under two superclasses; the files are corrupt")
