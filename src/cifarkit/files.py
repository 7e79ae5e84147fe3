"""File helpers shared by every writer and reader: atomic writes and chunked digests."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import stat
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


def give_usual_permissions(path: Path) -> None:
    """A file made by mkstemp (0600) gets the permissions a plainly written file would have."""
    os.chmod(path, 0o666 & ~_umask())


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


# A folder cifarkit writes as a whole (an evaluation report) carries this file, naming what it is. Only a
# folder that carries it is ever replaced: a user's folder, a run folder or the current folder is never
# deleted, whatever --out names.
OWNER_MARK = ".cifarkit"


# What a report folder held before folders were marked: such a folder (these names only) is still a report.
UNMARKED_KINDS = {"evaluation report": {"confusion.csv", "confusion.png", "reliability.png", "misclassified.png",
                                        "report.json"}}


def check_replaceable_folder(target: Path, kind: str, flag: str = "--out") -> None:
    """Raise OutputError unless `target` is absent, an empty folder, or a folder cifarkit wrote as `kind`."""
    target = Path(target)
    if not target.exists() and not target.is_symlink():
        return
    if target.is_symlink() or not target.is_dir():
        raise OutputError(f"{flag} {target} is {'a link' if target.is_symlink() else 'a file'}; name a new folder "
                          f"for the {kind}")
    if folder_kind(target) == kind or not any(target.iterdir()):
        return
    raise OutputError(f"{flag} {target} already holds files that cifarkit did not write as a {kind}; it is never "
                      f"replaced: name a new folder (or remove that one yourself)")


def folder_kind(folder: Path) -> str | None:
    mark = Path(folder) / OWNER_MARK
    try:
        if mark.is_file() and not mark.is_symlink() and mark.stat().st_size < 256:
            return mark.read_text(errors="replace").strip()
        names = {entry.name for entry in Path(folder).iterdir()}
    except OSError:
        return None
    for kind, known in UNMARKED_KINDS.items():
        if "report.json" in names and names <= known:
            return kind
    return None


# Work folders beside a target carry the writing process's PID (".NAME.staging-PID-xxxx", ".export-PID-xxxx",
# ".NAME.old-PID"): a process killed with SIGKILL cannot remove its own, so the next writer in that folder removes
# those whose process is gone.
_WORK_FOLDER = re.compile(r"\.(?:.+\.staging|export)-(\d+)-.+|\..+\.old-(\d+)")


def _process_is_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's process: alive
        return False
    return False


def remove_stale_work_folders(parent: Path) -> None:
    """Remove the work folders in `parent` left by writers that were killed (their process is gone)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        match = _WORK_FOLDER.fullmatch(entry.name)
        if match and entry.is_dir(follow_symlinks=False) and _process_is_gone(int(match.group(1) or match.group(2))):
            shutil.rmtree(entry.path, ignore_errors=True)


def work_folder_prefix(tag: str) -> str:
    """The prefix of a work folder this process makes beside a target (see remove_stale_work_folders)."""
    return f".{tag}-{os.getpid()}-"


def make_staging_folder(parent: Path, name: str, kind: str) -> Path:
    """A private folder beside the target to write into, marked as `kind` and with the usual permissions
    (mkdtemp makes 0700). Work folders of killed writers in `parent` are removed first."""
    remove_stale_work_folders(parent)
    staging = Path(tempfile.mkdtemp(dir=parent, prefix=work_folder_prefix(f"{name}.staging")))
    os.chmod(staging, 0o777 & ~_umask())
    (staging / OWNER_MARK).write_text(kind + "\n")
    return staging


def replace_folder(staged: Path, target: Path, kind: str) -> None:
    """Put the complete folder `staged` at `target` (same file system), replacing a previous `kind` folder as a
    whole: readers see the old set or the new set of files, never a mix. An existing empty folder that is not
    marked is filled instead of replaced (it may be the current folder, or have permissions of its own)."""
    staged, target = Path(staged), Path(target)
    check_replaceable_folder(target, kind)
    if not target.exists():
        os.replace(staged, target)
        return
    if folder_kind(target) != kind:  # empty and unmarked: move the files in, keep the folder itself
        for item in staged.iterdir():
            os.replace(item, target / item.name)
        staged.rmdir()
        return
    retired = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, retired)
    os.replace(staged, target)
    shutil.rmtree(retired, ignore_errors=True)


# Reading. Every file cifarkit reads (pictures, checkpoints, weights, metadata, results) goes through
# read_bounded or check_regular_file: a FIFO, a device (/dev/zero), a folder or a socket named where a file
# belongs is refused at once instead of hanging or reading without end, and a file larger than what its kind
# can be is refused before it is read into memory.
MiB = 1 << 20
# errno -> what to tell the user when a file cannot be opened
# (each completes "WHAT PATH ..." and "NAME: ...")
OPEN_ERRORS = {errno.ELOOP: "is a loop of symbolic links", errno.EACCES: "cannot be read: permission denied",
               errno.ENAMETOOLONG: "has a file name too long", errno.EIO: "cannot be read: input/output error"}


def read_bounded(path: str | Path, limit: int, error: type[Exception] = OutputError, what: str = "file",
                 name: str | None = None) -> bytes:
    """The bytes of the regular file `path`, at most `limit` of them; else `error` with a one-line message
    ("WHAT PATH is a FIFO..."; or "NAME: is a FIFO..." when `name` is given)."""
    path = Path(path)

    def fail(reason: str) -> Exception:
        return error(f"{name}: {reason}" if name is not None else f"{what} {path} {reason}")

    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once (a plain open would wait for one forever)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise fail("no such file" if name is not None else "does not exist") from None
    except IsADirectoryError:
        raise fail("is a folder, not a file") from None
    except OSError as e:
        raise fail(OPEN_ERRORS.get(e.errno) or f"cannot be read: {e.strerror or e}") from None
    try:
        if (reason := _not_readable(os.fstat(fd), limit)) is not None:
            raise fail(reason)
        chunks, total = [], 0
        while total <= limit and (block := os.read(fd, min(CHUNK, limit + 1 - total))):
            chunks.append(block)
            total += len(block)
        if total > limit:  # it grew while being read
            raise fail(f"grew past {limit / MiB:,.0f} MiB while being read; refused")
        return b"".join(chunks)
    except OSError as e:
        raise fail(f"cannot be read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def check_regular_file(path: str | Path, limit: int, error: type[Exception] = OutputError, what: str = "file") -> int:
    """Raise `error` unless `path` (links followed) is a regular file of at most `limit` bytes; its size. For
    readers that open the file themselves (torch.load, zipfile)."""
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist") from None
    except OSError as e:
        raise error(f"{what} {path} cannot be read: {e.strerror or e}") from None
    if (reason := _not_readable(info, limit)) is not None:
        raise error(f"{what} {path} {reason}")
    return info.st_size


def _not_readable(info: os.stat_result, limit: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else "not a regular file")
        return f"is {kind}; only regular files are read"
    if info.st_size > limit:
        return (f"is {info.st_size / MiB:,.1f} MiB, more than the {limit / MiB:,.0f} MiB such a file can be; "
                "refused before reading it")
    return None


def read_json(path: str | Path, limit: int, error: type[Exception] = OutputError, what: str = "file"):
    """Parse a bounded regular file as JSON; malformed, deeply nested or non-UTF-8 text is `error`."""
    data = read_bounded(path, limit, error, what)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # ValueError: also digits past int's limit
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).splitlines()[0][:120]
        raise error(f"{what} {path} is not valid JSON ({reason})") from None


def json_text(value, indent: int | None = 2) -> str:
    """Strict JSON for every file and line cifarkit writes: NaN and infinities become null (json.dumps would
    write NaN / Infinity, which JSON parsers refuse)."""
    return json.dumps(finite(value), indent=indent, allow_nan=False, default=str)


def finite(value):
    """`value` with every NaN and infinity replaced by None, for JSON that every reader can parse (json.dumps
    writes them as NaN / Infinity, which is not JSON)."""
    import math

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value
