"""Checkpoints: plain dicts of tensors and plain data, written atomically, loaded with weights_only=True.

Writing goes to a temporary file in the same folder, is flushed and fsynced, then renamed over the target,
so a crash mid-write never leaves a truncated file where a good one was. Loading never unpickles arbitrary
objects: a crafted file that would run code is refused with a CheckpointError.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import zipfile
from pathlib import Path

import torch

from cifarkit.errors import CheckpointError
from cifarkit.files import atomic_write_bytes, file_digest

FORMAT = "cifarkit-checkpoint"
VERSION = 1


def checkpoint_bytes(payload: dict) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return buffer.getvalue()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path} holds no best.pt or last.pt; is it a cifarkit run directory?")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    return path


# A checkpoint's zip holds its tensors uncompressed (torch.save stores them), so what it declares it holds
# cannot be much more than the file's own size. A crafted file that declares more (a compressed bomb, a lying
# directory) is refused before anything is read into memory.
MAX_EXPANSION = 1.05
EXPANSION_SLACK = 1 << 20


def check_sizes(path: Path) -> None:
    """Refuse a checkpoint whose zip entries would expand far beyond the file's size when read."""
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not a readable checkpoint (not a PyTorch zip file: {e})") from None
    declared = sum(entry.file_size for entry in entries)
    actual = path.stat().st_size
    if declared > MAX_EXPANSION * actual + EXPANSION_SLACK:
        raise CheckpointError(f"{path} declares {declared / 2**20:,.0f} MiB of contents in a {actual / 2**20:,.1f} MiB "
                              "file (a compressed or crafted archive, not one written by cifarkit); refused "
                              "before reading it")


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = resolve_checkpoint(path)
    check_sizes(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} was refused: it holds objects that could run code when loaded ({str(e).splitlines()[0]}). "
            "Only load checkpoints written by cifarkit."
        ) from None
    except Exception as e:  # truncated zip, random bytes, ...
        raise CheckpointError(f"{path} is not a readable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is a PyTorch file but not a cifarkit checkpoint")
    return payload


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
        atomic_write_bytes(path, data)
        atomic_write_bytes(path.with_suffix(".pt.sha256"), hashlib.sha256(data).hexdigest().encode() + b"\n")
        self._link("last.pt", path)
        if best:
            self._link("best.pt", path)
        for old in self.step_files()[self.keep :]:
            old.unlink(missing_ok=True)
            old.with_suffix(".pt.sha256").unlink(missing_ok=True)
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
        if not sidecar.is_file():
            raise CheckpointError(f"{path} has no checksum file beside it")
        expected = sidecar.read_text().strip()
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
