"""The data layer: find (or download) the official archives, verify them, parse them safely, split them."""

from __future__ import annotations

from pathlib import Path

from cifarkit.data.cifar import CifarData, read_folder
from cifarkit.data.locate import DATA_DIR_ENV, Located, default_cache_dir, locate
from cifarkit.data.specs import DATASETS, DatasetSpec, get_spec
from cifarkit.data.split import Split, split_for, stratified_split


def load_dataset(
    name: str, data_dir: str | Path | None = None, download: bool = True, cache_dir: Path | None = None
) -> CifarData:
    """Find, verify and read a whole dataset (`cifar100` or `cifar10`) into memory."""
    spec = get_spec(name)
    located = locate(spec, data_dir, download_ok=download, cache_dir=cache_dir)
    data = read_folder(located.folder, spec)
    data.source_description = located.how
    return data


__all__ = [
    "CifarData", "DatasetSpec", "DATASETS", "DATA_DIR_ENV", "Located", "Split",
    "default_cache_dir", "get_spec", "load_dataset", "locate", "read_folder", "split_for", "stratified_split",
]
