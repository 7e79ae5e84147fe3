"""File helpers shared by every writer and reader: atomic writes and chunked digests."""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

from cifarkit.errors import OutputError

CHUNK = 1 << 20


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, flush and fsync it, then rename it over `path`: a crash
    mid-write never leaves a truncated file where a good one was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a written file gets the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def file_digest(path: Path, algorithm: str) -> str:
    """Hex digest of a file read in chunks (archives and checkpoints can be hundreds of MB)."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def check_writable_folder(folder: Path, what: str) -> None:
    """Create `folder` if needed and prove that a file can be written in it -- before any long computation."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {what} in {folder}: {e.strerror or e}; choose another place") from None


def replace_folder(staged: Path, target: Path) -> None:
    """Put the complete folder `staged` at `target` (same file system), replacing a previous one as a whole:
    readers see the old set or the new set of files, never a mix."""
    staged, target = Path(staged), Path(target)
    if not target.exists():
        os.replace(staged, target)
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, retired)
    os.replace(staged, target)
    shutil.rmtree(retired, ignore_errors=True)
