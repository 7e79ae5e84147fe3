"""Checkpoints, writing side: written atomically with a sha256 beside each, the newest few kept.

Writing goes to a temporary file in the same folder, is flushed and fsynced, then renamed over the target,
so a crash mid-write never leaves a truncated file where a good one was. The format and its safe loading
are in cifarkit.checkpoints (re-exported here).
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

from cifarkit.checkpoints import (  # noqa: F401  (re-exported: the training side's one import)
    FORMAT,
    MAX_CHECKPOINT_BYTES,
    VERSION,
    check_sizes,
    checkpoint_bytes,
    file_sha256,
    load_checkpoint,
    resolve_checkpoint,
)
from cifarkit.errors import CheckpointError
from cifarkit.files import atomic_write_bytes, check_regular_file, read_bounded


class CheckpointStore:
    """A run's checkpoints: RUN_DIR/checkpoints/step-NNNNNNNN.pt, each with a .sha256 file beside it; the newest
    `keep` are kept. `last.pt` and `best.pt` are hard links to the step files (no second copy is written)."""

    def __init__(self, run_dir: Path, keep: int = 3):
        self.run_dir, self.keep = Path(run_dir), max(1, keep)
        self.folder = self.run_dir / "checkpoints"

    def step_files(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt"), reverse=True)  # newest first (zero-padded step numbers)

    def save(self, payload: dict, step: int, best: bool = False) -> Path:
        data = checkpoint_bytes(payload)
        path = self.folder / f"step-{step:08d}.pt"
        # The digest goes in first: a step file is never in place without the sidecar that vouches for it, so
        # a process killed at any instant leaves a resumable run (at worst an orphan sidecar, ignored).
        atomic_write_bytes(path.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest().encode() + b"\n")
        atomic_write_bytes(path, data)
        self._link("last.pt", path)
        if best:
            self._link("best.pt", path)
        for old in self.step_files()[self.keep :]:
            old.unlink(missing_ok=True)
            old.with_suffix(".pt.sha256").unlink(missing_ok=True)
        for orphan in self.folder.glob("step-*.pt.sha256"):  # left by a save killed before its rename
            if not orphan.with_suffix("").exists():
                orphan.unlink(missing_ok=True)
        return path

    def _link(self, name: str, target: Path) -> None:
        tmp = self.run_dir / f".{name}.link"
        tmp.unlink(missing_ok=True)
        try:
            os.link(target, tmp)
        except OSError:  # file systems without hard links: copy
            import shutil

            shutil.copyfile(target, tmp)
        os.replace(tmp, self.run_dir / name)

    @staticmethod
    def verify(path: Path) -> None:
        """Raise CheckpointError if the file's sha256 does not match the one written beside it."""
        sidecar = path.with_suffix(".pt.sha256")
        if not sidecar.exists():
            # Written by an older cifarkit (digest after the file) and killed in between, or the sidecar was
            # lost: the zip's own CRC-32 of every entry still proves the file whole.
            _check_zip_crcs(path)
            return
        check_regular_file(path, MAX_CHECKPOINT_BYTES, CheckpointError, "checkpoint")
        expected = read_bounded(sidecar, 1024, CheckpointError, "checksum file").decode(errors="replace").strip()
        if file_sha256(path) != expected:
            raise CheckpointError(f"{path} is corrupt or truncated (its sha256 does not match {sidecar.name})")

    def load_latest(self, warn) -> dict:
        """The newest checkpoint that verifies and loads; corrupt ones are skipped with a warning."""
        candidates = self.step_files()
        if not candidates:
            raise CheckpointError(f"{self.run_dir} has no checkpoints to resume from (checkpoints/step-*.pt)")
        for path in candidates:
            try:
                self.verify(path)
                return load_checkpoint(path)
            except CheckpointError as e:
                warn(f"warning: {e}; trying the previous checkpoint")
        raise CheckpointError(f"no checkpoint in {self.folder} is intact; the run cannot be resumed")


def _check_zip_crcs(path: Path) -> None:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise CheckpointError(f"{path} has no checksum file beside it and is not a whole zip file ({e})") from None
    if bad is not None:
        raise CheckpointError(f"{path} has no checksum file beside it and its entry {bad} fails its CRC check")


class CheckpointCadence:
    """When a run writes a checkpoint besides its validation passes: every `every` steps and/or every
    `minutes` minutes (train.checkpoint_every / train.checkpoint_minutes), counted from the last one written."""

    def __init__(self, every: int | None, minutes: float | None):
        self.every, self.minutes = every, minutes
        self.last_saved = time.monotonic()

    def due(self, step: int) -> bool:
        return bool((self.every and step % self.every == 0) or (
            self.minutes and time.monotonic() - self.last_saved > 60 * self.minutes))

    def saved(self) -> None:
        self.last_saved = time.monotonic()
