"""Which data a run trains on (`DataConfig`) and its seeded, stratified train/validation split of the training set.
The test set is never touched here."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cifarkit.data.specs import DATASETS
from cifarkit.errors import ConfigError
from cifarkit.settings import KEPT, at_least, optional, setting


def _known_dataset(name: str) -> str | None:
    return None if name in DATASETS else f"must be one of {', '.join(DATASETS)}"


@dataclass(frozen=True)
class DataConfig:
    dataset: str = setting("cifar100", check=_known_dataset)  # "cifar100" | "cifar10"
    # extracted folder or .tar.gz; else $CIFARKIT_DATA_DIR, the cache, a download
    data_dir: str | None = setting(None, role=KEPT)
    download: bool = setting(True, role=KEPT)
    # held-out validation images per class; None: 50 (CIFAR-100), 500 (CIFAR-10)
    val_per_class: int | None = setting(None, check=optional(at_least(0)))
    split_seed: int = setting(0, check=at_least(0))
    # use only the first N training images (quick experiments, tests)
    train_subset: int | None = setting(None, check=optional(at_least(1)))


# What decides which pictures a model was trained and validated on (where the files lie does not).
SPLIT_SETTINGS = ("dataset", "val_per_class", "split_seed", "train_subset")


def split_differences(ours: DataConfig, theirs: DataConfig) -> list[str]:
    """The settings of SPLIT_SETTINGS in which two data configs differ: none, and they pick the same pictures."""
    return [key for key in SPLIT_SETTINGS if getattr(ours, key) != getattr(theirs, key)]


@dataclass(frozen=True)
class Split:
    train: np.ndarray  # indices into the official training set, sorted
    val: np.ndarray


def stratified_split(labels: np.ndarray, val_per_class: int, seed: int = 0) -> Split:
    """Hold out `val_per_class` images of every class, chosen by a seeded permutation within each class."""
    if val_per_class < 0:
        raise ConfigError(f"val_per_class must be >= 0, got {val_per_class}")
    rng = np.random.default_rng(seed)
    val_parts = []
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        if val_per_class >= len(members):
            raise ConfigError(
                f"class {cls} has {len(members)} training images; cannot hold out {val_per_class} for "
                "validation; set data.val_per_class lower"
            )
        val_parts.append(rng.permutation(members)[:val_per_class])
    val = np.sort(np.concatenate(val_parts)) if val_parts else np.empty(0, dtype=np.int64)
    mask = np.ones(len(labels), dtype=bool)
    mask[val] = False
    return Split(train=np.flatnonzero(mask), val=val)


def _used_and_held_out(spec, c: DataConfig, available: int) -> tuple[int, int]:
    """(training images the run uses of the `available` ones, validation images held out per class): the one
    rule."""
    used = available if c.train_subset is None else min(c.train_subset, available)
    if c.val_per_class is not None:
        return used, c.val_per_class
    if c.train_subset is not None:  # keep the official proportion (10% held out) when training on a subset
        return used, max(1, used // (10 * spec.num_classes))
    return used, spec.default_val_per_class


def split_sizes(spec, c: DataConfig) -> tuple[int, int]:
    """(training split, validation split) sizes that `split_for` gives a data config, without the data: what a
    projection plans epochs with."""
    used, val_per_class = _used_and_held_out(spec, c, spec.train_size)
    val = val_per_class * spec.num_classes
    return used - val, val


def split_for(data, c: DataConfig) -> Split:
    """The train/validation split a run's data config (`c`) asks of `data` (a CifarData). Deterministic, so
    evaluation recomputes a run's validation split from its checkpoint."""
    labels = data.train_labels
    used, val_per_class = _used_and_held_out(data.spec, c, len(labels))
    subset = np.arange(used)
    split = stratified_split(labels[subset], val_per_class, c.split_seed)
    return Split(train=subset[split.train], val=subset[split.val])
