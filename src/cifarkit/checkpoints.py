"""The checkpoint format, reading side: plain dicts of tensors and plain data, loaded with weights_only=True.

Loading never unpickles arbitrary objects (a crafted file that would run code is refused with a
CheckpointError) and never reads a file whose zip declares far more than the file holds. Evaluation,
prediction and export read checkpoints through this module alone, so using a model never imports the
training loop; writing (`CheckpointStore`) lives with the loop in cifarkit.train.checkpoint.
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path

import torch

from cifarkit.errors import CheckpointError
from cifarkit.files import check_regular_file, file_digest

FORMAT = "cifarkit-checkpoint"
VERSION = 3  # 2: the fields spelled as the export and TypeScript spell them (classes, superclasses), the model's spec;
# 3: the best validation figure is best_score, by the run's train.select (before, always the loss: best_val_loss)
# Fields a version-1 checkpoint (or a card packaged before version 2) spells otherwise, and their names today: a file
# is read under today's names here, once, and nothing past this module knows the old ones.
LEGACY_NAMES = {"class_names": "classes", "coarse_names": "superclasses", "best_val_loss": "best_score"}


def current_names(payload: dict) -> dict:
    """`payload` with the fields an older file spells otherwise (LEGACY_NAMES) under today's names."""
    renamed = {LEGACY_NAMES.get(key, key): value for key, value in payload.items() if key not in LEGACY_NAMES}
    renamed.update({new: payload[old] for old, new in LEGACY_NAMES.items() if old in payload and new not in payload})
    return renamed


def checkpoint_bytes(payload: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, "version": VERSION, **payload}, buffer)
    return buffer.getvalue()


def file_sha256(path: Path) -> str:
    return file_digest(path, "sha256")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run directory (its best checkpoint, else its last)."""
    path = Path(path)
    if path.is_dir():
        chosen = next((path / name for name in ("best.pt", "last.pt") if (path / name).exists()), None)
        if chosen is None:
            raise CheckpointError(f"{path} holds no best.pt or last.pt; is it a cifarkit run directory?")
        path = chosen
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.suffix.lower() in (".onnx", ".json"):  # an export: what reads it is elsewhere
        raise CheckpointError(f"{path} is an ONNX export, not a checkpoint: classify with it through the TypeScript "
                              f"library (cifarkit-classify --model {path.with_suffix('.onnx')} PICTURES) or the page "
                              f"(cifarkit serve-web --onnx {path.with_suffix('.onnx')}); cifarkit predict, evaluate "
                              "and export read run folders and .pt checkpoints")
    check_regular_file(path, MAX_CHECKPOINT_BYTES, CheckpointError, "checkpoint")
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


# The largest checkpoint cifarkit writes (the seed's 42.6M-parameter network with momentum and averaged
# weights) is about 0.5 GB; anything past this is not one of them.
MAX_CHECKPOINT_BYTES = 8 << 30


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    path = resolve_checkpoint(path)  # a regular file of bounded size (a FIFO would hang torch.load)
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
    return check_payload(current_names(payload), path)


# -- the payload's structure: one schema, checked where a payload is used ------------------------------------------
# A crafted or damaged checkpoint with a field of the wrong type ("step": "12", a fine-to-coarse map that points
# past the superclasses) is refused here with the field's name, never later as a TypeError deep in the loop.

def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _names(value) -> bool:
    return isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)


FIELDS = {  # field: (what it must be, check)
    "step": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "total_steps": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "model": ("a state dict of tensors", lambda v: isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(t, torch.Tensor) for k, t in v.items())),
    "train_model": ("a state dict of tensors, or null", lambda v: v is None or FIELDS["model"][1](v)),
    "config": ("a table of settings", lambda v: isinstance(v, dict)),
    "preprocess": ("a table", lambda v: isinstance(v, dict)),
    "optimizer": ("a table", lambda v: isinstance(v, dict)),
    "loader": ("a table", lambda v: isinstance(v, dict)),
    "rng": ("a table", lambda v: isinstance(v, dict)),
    "train_accumulator": ("a table", lambda v: isinstance(v, dict)),
    "classes": ("a list of names", lambda v: _names(v) and len(v) > 0),
    "model_spec": ("a table with the model's name and options", lambda v: isinstance(v, dict) and isinstance(
        v.get("name"), str) and isinstance(v.get("kwargs", {}), dict)),
    "superclasses": ("a list of names, or null", lambda v: v is None or _names(v)),
    "fine_to_coarse": ("a list of superclass indices, or null", lambda v: v is None or (
        isinstance(v, (list, tuple)) and all(_is_int(i) for i in v))),
    "val": ("a table of numbers, or null", lambda v: v is None or (
        isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()))),
    "best_score": ("a number, or null", lambda v: v is None or _is_number(v)),
    "best_step": ("a whole number, or null", lambda v: v is None or _is_int(v)),
    "skipped_steps": ("a whole number >= 0", lambda v: _is_int(v) and v >= 0),
    "train_seconds": ("a number >= 0", lambda v: _is_number(v) and v >= 0),
    "temperature": ("a number in [0.05, 20]", lambda v: _is_number(v) and 0.05 <= v <= 20),
    "outlier": ("null or an outlier record (cifarkit.outlier)", lambda v: v is None or _outlier_problem(v) is None),
}
FOR_USE = ("step", "model", "config", "preprocess", "classes")  # what evaluate / predict / export need
FOR_RESUME = (*FOR_USE, "total_steps", "optimizer", "loader", "rng", "train_accumulator", "best_score",
              "best_step", "skipped_steps", "train_seconds")
# the bulk of a checkpoint that only continuing its training reads: a model to use goes without them
TRAINING_ONLY = ("train_model", "optimizer", "loader", "rng", "train_accumulator")


def check_payload(payload: dict, source, required: tuple[str, ...] = ("step", "model")) -> dict:
    """Raise CheckpointError unless every `required` field is present and every known field present has the
    type it must have (and the fine-to-coarse map fits the class and superclass lists); returns `payload`."""
    missing = [name for name in required if name not in payload]
    if missing:
        raise CheckpointError(f"{source} lacks {', '.join(missing)}; it is not a complete cifarkit checkpoint")
    for name, (what, check) in FIELDS.items():
        if name in payload and not check(payload[name]):
            value = payload[name]
            got = f"{float(value):g}" if _is_number(value) else f"a {type(value).__name__}"  # never the value's repr
            raise CheckpointError(f"{source}: its field {name!r} should be {what}, got {got}; the file is damaged "
                                  "or crafted")
    mapping, classes = payload.get("fine_to_coarse"), payload.get("classes")
    if mapping is not None:
        coarse = payload.get("superclasses") or []
        if (classes is not None and len(mapping) != len(classes)) or any(not 0 <= i < len(coarse) for i in mapping):
            raise CheckpointError(f"{source}: its fine-to-coarse map does not fit its {len(classes or [])} classes "
                                  f"and {len(coarse)} superclasses; the file is damaged or crafted")
    return payload


def _outlier_problem(record) -> str | None:
    from cifarkit.outlier import record_problem  # here: cifarkit.outlier imports torch

    return record_problem(record)
