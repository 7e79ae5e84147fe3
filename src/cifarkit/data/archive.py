"""Download, verify and safely extract the official archives.

Everything written here is written atomically: a download goes to a temporary file in the target folder and
is renamed into place only once its md5 matches; an archive is extracted into a temporary folder that is
renamed into place only once every member was extracted. An interruption leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path, PurePosixPath

from cifarkit.errors import DatasetError
from cifarkit.files import CHUNK, check_regular_file, file_digest

# The official archives are 161-163 MiB; anything past this is not one of them (refused before hashing it).
MAX_ARCHIVE_BYTES = 400 << 20


def verify_md5(path: Path, expected: str) -> None:
    check_regular_file(path, MAX_ARCHIVE_BYTES, DatasetError, "archive")
    actual = file_digest(path, "md5")
    if actual != expected:
        raise DatasetError(
            f"{path}: md5 {actual} does not match the official {expected}; the file is corrupt, truncated "
            "or not the official archive. Delete it and download it again."
        )


def _progress(total: int | None, desc: str):
    """A byte progress bar on a terminal; silent in logs and CI."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, disable=not sys.stderr.isatty())
    return bar


def download(url: str, dest: Path, md5: str, timeout: float = 30.0) -> Path:
    """Download `url` to `dest` atomically and verify its md5; raise DatasetError (with advice) on failure."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                response = urllib.request.urlopen(url, timeout=timeout)
            except (urllib.error.URLError, OSError, ValueError) as e:
                reason = getattr(e, "reason", e)
                raise DatasetError(
                    f"could not download {url} ({reason}).\n"
                    f"If this machine is offline, download {dest.name} elsewhere and either put it (or its "
                    f"extracted folder) in {dest.parent}, pass --data-dir PATH, or set CIFARKIT_DATA_DIR=PATH."
                ) from None
            with response:
                length = response.headers.get("Content-Length")
                bar = _progress(int(length) if length else None, dest.name)
                try:
                    received = 0
                    while block := response.read(CHUNK):
                        received += len(block)
                        if received > MAX_ARCHIVE_BYTES:
                            raise DatasetError(f"{url} sent more than {MAX_ARCHIVE_BYTES >> 20} MiB, more than the "
                                               "official archive is; stopped and deleted the partial file")
                        out.write(block)
                        bar.update(len(block))
                except OSError as e:
                    raise DatasetError(f"download of {url} was interrupted ({e}); run the command again") from None
                finally:
                    bar.close()
            out.flush()
            os.fsync(out.fileno())
        verify_md5(tmp, md5)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def _check_member(member: tarfile.TarInfo, root: PurePosixPath) -> PurePosixPath | None:
    """The member's path if it is a plain file or folder inside the archive's root; refuse anything else."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts:
        raise DatasetError(f"archive member {member.name!r} would be written outside the target folder; refused")
    if member.issym() or member.islnk():
        raise DatasetError(f"archive member {member.name!r} is a link; the official archives hold none; refused")
    if not (member.isfile() or member.isdir()):
        raise DatasetError(f"archive member {member.name!r} is not a regular file; refused")
    if path.parts[:1] != root.parts:
        return None  # extra files beside the dataset folder are ignored, not written
    return path


def safe_extract(archive: Path, dest_root: Path, folder: str, required: tuple[str, ...]) -> Path:
    """Extract `folder/` of a .tar.gz into `dest_root/folder`, refusing links and paths that escape it."""
    target = dest_root / folder
    dest_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".extract-", dir=dest_root))
    root = PurePosixPath(folder)
    try:
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member in tar:
                    path = _check_member(member, root)
                    if path is None:
                        continue
                    out_path = staging.joinpath(*path.parts)
                    if member.isdir():
                        out_path.mkdir(parents=True, exist_ok=True)
                        continue
                    out_path.parent.mkdir(parents=True, exist_ok=True)
                    source = tar.extractfile(member)
                    with source, open(out_path, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            raise DatasetError(
                f"{archive}: truncated or corrupt archive ({type(e).__name__}: {e}); delete it and download again"
            ) from None
        missing = [name for name in required if not (staging / folder / name).is_file()]
        if missing:
            raise DatasetError(
                f"{archive}: the archive lacks {', '.join(f'{folder}/{m}' for m in missing)}; "
                "it is not the official archive of this dataset"
            )
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging / folder, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
