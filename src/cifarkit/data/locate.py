"""Where a dataset comes from, in this order: `--data-dir`, $CIFARKIT_DATA_DIR, the cache folder, a download.

Each place may hold the extracted folder, a folder containing it, or the official .tar.gz. A place that was
named explicitly (flag or variable) but does not hold the data is an error, never silently skipped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cifarkit.data.archive import download, safe_extract, verify_md5
from cifarkit.data.specs import DATASETS, DatasetSpec
from cifarkit.errors import DatasetError

DATA_DIR_ENV = "CIFARKIT_DATA_DIR"
CACHE_DIR_ENV = "CIFARKIT_CACHE_DIR"


@dataclass(frozen=True)
class Located:
    folder: Path  # the extracted dataset folder
    how: str  # where it was found, in words, for `cifarkit info`


def default_cache_dir() -> Path:
    if os.environ.get(CACHE_DIR_ENV):
        return Path(os.environ[CACHE_DIR_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cifarkit"


def _missing_files(folder: Path, spec: DatasetSpec) -> list[str]:
    return [name for name in spec.files if not (folder / name).is_file()]


def _other_dataset_in(path: Path, spec: DatasetSpec) -> DatasetSpec | None:
    for other in DATASETS.values():
        if other.name == spec.name:
            continue
        if (
            (path / other.folder).is_dir()
            or (path / other.archive_name).is_file()
            or (path.name == other.folder)
            or (path / other.meta_file).is_file()
            or path.name == other.archive_name
        ):
            return other
    return None


def _from_archive(archive: Path, spec: DatasetSpec, extract_root: Path) -> Path:
    """Use the already-extracted copy in `extract_root` when complete, else verify and extract `archive`."""
    target = extract_root / spec.folder
    if target.is_dir() and not _missing_files(target, spec):
        return target
    verify_md5(archive, spec.md5)
    return safe_extract(archive, extract_root, spec.folder, spec.files)


def _check_complete(folder: Path, spec: DatasetSpec) -> Path:
    missing = _missing_files(folder, spec)
    if missing:
        other = _other_dataset_in(folder, spec)
        if other is not None:
            raise _wrong_dataset(folder, spec, other)
        raise DatasetError(
            f"{folder} is missing {', '.join(missing)}; the folder is incomplete. "
            f"Extract {spec.archive_name} again, or delete the folder to download it afresh."
        )
    return folder


def _wrong_dataset(path: Path, spec: DatasetSpec, other: DatasetSpec) -> DatasetError:
    return DatasetError(
        f"{path} holds {other.name} files, not {spec.name}; point --data-dir at the {spec.folder} folder or "
        f"{spec.archive_name} (a new run may instead choose --dataset {other.name}; a resumed one keeps its dataset)"
    )


def resolve_local(path: Path, spec: DatasetSpec, cache_dir: Path) -> Path | None:
    """The extracted folder that `path` leads to; None if `path` holds nothing of this dataset."""
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz")):
            other = _other_dataset_in(path, spec)
            if other is not None:
                raise _wrong_dataset(path, spec, other)
            return _from_archive(path, spec, cache_dir)
        raise DatasetError(f"{path} is a file but not a .tar.gz archive; pass the archive or its extracted folder")
    if (path / spec.folder).is_dir():
        return _check_complete(path / spec.folder, spec)
    if path.name == spec.folder or (path / spec.meta_file).is_file():
        return _check_complete(path, spec)
    if (path / spec.archive_name).is_file():
        return _from_archive(path / spec.archive_name, spec, path if os.access(path, os.W_OK) else cache_dir)
    other = _other_dataset_in(path, spec)
    if other is not None:
        raise _wrong_dataset(path, spec, other)
    return None


def _check_cache_dir(cache_dir: Path) -> None:
    from cifarkit.errors import OutputError
    from cifarkit.files import check_writable_folder

    where = f"${CACHE_DIR_ENV}" if os.environ.get(CACHE_DIR_ENV) else "the cache folder"
    if cache_dir.exists() and not cache_dir.is_dir():
        raise DatasetError(f"{where} {cache_dir} is a file, not a folder: set {CACHE_DIR_ENV} to a folder "
                           "(or pass --data-dir PATH)")
    try:
        check_writable_folder(cache_dir, "the downloaded dataset")
    except OutputError as e:
        raise DatasetError(f"{where}: {e} (set {CACHE_DIR_ENV}=FOLDER, or pass --data-dir PATH)") from None


def locate(
    spec: DatasetSpec, data_dir: str | Path | None = None, download_ok: bool = True, cache_dir: Path | None = None
) -> Located:
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    named = [(data_dir, "--data-dir"), (os.environ.get(DATA_DIR_ENV), f"${DATA_DIR_ENV}")]
    for value, origin in named:
        if not value:
            continue
        path = Path(value).expanduser()
        if not path.exists():
            raise DatasetError(f"{origin} {path} does not exist")
        folder = resolve_local(path, spec, cache_dir)
        if folder is None:
            raise DatasetError(
                f"{origin} {path} holds no {spec.name} data: expected {path}/{spec.folder}/ "
                f"({', '.join(spec.files)}) or {path}/{spec.archive_name}"
            )
        return Located(folder, f"{origin} ({path})")
    if cache_dir.is_dir():
        folder = resolve_local(cache_dir, spec, cache_dir)
        if folder is not None:
            return Located(folder, f"cache ({cache_dir})")
    if not download_ok:
        raise DatasetError(
            f"no local copy of {spec.name}: put {spec.archive_name} or its extracted {spec.folder}/ folder in "
            f"{cache_dir}, pass --data-dir PATH, or set {DATA_DIR_ENV}=PATH (downloading was turned off)"
        )
    _check_cache_dir(cache_dir)  # before the download, not after 161 MB of it
    archive = download(spec.url, cache_dir / spec.archive_name, spec.md5)
    folder = safe_extract(archive, cache_dir, spec.folder, spec.files)
    return Located(folder, f"downloaded to cache ({cache_dir})")
