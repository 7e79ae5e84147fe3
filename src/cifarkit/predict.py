"""`cifarkit predict`: classify picture files with a trained checkpoint.

Every file is loaded and resized (cifarkit.images), preprocessed by the checkpoint's own Preprocess and
classified in batches. A file that cannot be used gets its own error line while the others are still
classified.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cifarkit.errors import ImageError
from cifarkit.files import json_text
from cifarkit.images import DEFAULT_FIT, display_path, expand_paths, load_image
from cifarkit.text import Numeral, csv_row, printable

if TYPE_CHECKING:
    from cifarkit.inference import TrainedModel


@dataclass
class Prediction:
    path: str
    classes: list[tuple[str, float]] = field(default_factory=list)  # top-k (name, probability)
    superclass: str | None = None
    error: str | None = None
    # cifarkit.outlier: higher = less likely one of the classes; known = at or below the model's threshold.
    # None for a model without an outlier record.
    outlier_score: float | None = None
    known: bool | None = None
    classes_count: int = 0  # how many classes the model has ("none of the 100 classes")


BATCH = 256  # pictures decoded and classified at a time: results stream out batch by batch


def _reason(message: str | None, path: Path) -> str | None:
    """An error without the file name it starts with: every output line names the file once, beside it."""
    prefix = f"{display_path(path)}: "
    return message[len(prefix):] if message and message.startswith(prefix) else message


def iter_predictions(model: str | Path | None, paths: list[str | Path], top_k: int = 5, tta: bool = False,
                     device: str = "cpu", trained: TrainedModel | None = None, batch_size: int = BATCH,
                     fit: str = DEFAULT_FIT, head: str | Path | None = None):
    """Predictions in file order, yielded a batch at a time: the first results arrive after one batch, and
    memory stays that of one batch however many files there are.
    `model`: a pretrained name (None: the default), a run directory or a checkpoint file. `head`: a head file
    (`cifarkit teach`) taught on that model's features: its classes instead of the model's."""
    from cifarkit.inference import predict_arrays  # here: the command line lists FORMATS without torch
    from cifarkit.loading import load_model

    trained = trained or load_model(model, device)
    taught = None
    if head is not None:
        from cifarkit.teach import load_head

        taught = load_head(head, trained.feature_fingerprint)  # refused before any picture is read
    files = expand_paths(paths)
    for start in range(0, len(files), batch_size):
        batch = files[start : start + batch_size]
        results = [Prediction(display_path(path), error=_reason(problem, path)) for path, problem in batch]
        images, ok = [], []
        for i, (path, problem) in enumerate(batch):
            if problem:
                continue
            try:
                images.append(load_image(path, fit=fit))
                ok.append(i)
            except ImageError as e:
                results[i].error = _reason(str(e), path)
        if images and taught is not None:
            _classify_with_head(taught, trained, np.stack(images), top_k, [results[i] for i in ok])
        elif images:
            indices, values, _, outlier = predict_arrays(trained, np.stack(images), top_k, tta, with_outlier=True)
            for row, i in enumerate(ok):
                results[i].classes = [(trained.classes[c], float(p))
                                      for c, p in zip(indices[row], values[row], strict=True)]
                results[i].superclass = trained.superclass_of(indices[row][0])
                results[i].classes_count = len(trained.classes)
                if outlier is not None:
                    results[i].outlier_score = float(outlier[row])
                    results[i].known = bool(outlier[row] <= trained.outlier["threshold"])
        yield from results


def _classify_with_head(head: dict, trained: TrainedModel, images: np.ndarray, top_k: int,
                        results: list[Prediction]) -> None:
    import torch

    from cifarkit.teach import head_probabilities

    features = trained.features(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    probabilities = head_probabilities(head, features)
    for result, row in zip(results, probabilities, strict=True):
        order = sorted(range(len(row)), key=lambda k: (-row[k], k))[:top_k]  # best first, ties by index
        result.classes = [(head["labels"][k], float(row[k])) for k in order]
        result.classes_count = len(row)


def predict_files(model: str | Path | None, paths: list[str | Path], top_k: int = 5, tta: bool = False,
                  device: str = "cpu", trained: TrainedModel | None = None, fit: str = DEFAULT_FIT,
                  head: str | Path | None = None) -> list[Prediction]:
    """Every prediction as a list (`iter_predictions` streams them)."""
    return list(iter_predictions(model, paths, top_k, tta, device, trained, fit=fit, head=head))


def _as_json(r: Prediction) -> dict:
    return {"path": r.path, "error": r.error, "superclass": r.superclass,
            "top": [{"class": c, "probability": p} for c, p in r.classes], "known": r.known,
            "outlier_score": r.outlier_score}


CSV_HEADER = ["path", "rank", "class", "probability", "superclass", "error", "known", "outlier_score"]


def _csv_rows(r: Prediction) -> list[list]:
    if r.error:
        return [[r.path, "", "", "", "", r.error, "", ""]]
    known = "" if r.known is None else str(r.known).lower()
    score = "" if r.outlier_score is None else Numeral(f"{r.outlier_score:.6f}")
    return [[r.path, rank, name, f"{p:.6f}", r.superclass or "", "", known, score]
            for rank, (name, p) in enumerate(r.classes, 1)]


def _table_line(r: Prediction) -> str:
    if r.error:
        return f"{printable(r.path)}: ERROR {printable(r.error)}"
    top = ", ".join(f"{printable(name)} {p:.1%}" for name, p in r.classes)
    if r.known is False:  # an honest answer: the picture does not look like any class the model knows
        return f"{printable(r.path)}: none of the {r.classes_count} classes (closest: {top})"
    return f"{printable(r.path)}: {top}" + (f"  [superclass: {printable(r.superclass)}]" if r.superclass else "")


def _json_lines(results: Iterable[Prediction]) -> Iterator[str]:
    """The text json_text(list) gives, an element at a time (JSON's own escaping)."""
    held = None
    yield "["
    for r in results:
        if held is not None:
            yield held + ","
        held = "\n".join("  " + line for line in json_text(_as_json(r)).splitlines())
    if held is not None:
        yield held
    yield "]"


def _csv_lines(results: Iterable[Prediction]) -> Iterator[str]:
    yield csv_row(CSV_HEADER)
    for r in results:
        yield "\n".join(csv_row(row) for row in _csv_rows(r))


def _table_lines(results: Iterable[Prediction]) -> Iterator[str]:
    for r in results:
        yield _table_line(r)


# output format -> its lines; table and CSV escape what could forge a line or run as a spreadsheet formula
FORMATS: dict[str, Callable[[Iterable[Prediction]], Iterator[str]]] = {
    "table": _table_lines, "json": _json_lines, "csv": _csv_lines}


def stream_lines(results: Iterable[Prediction], fmt: str) -> Iterator[str]:
    """Output lines for `results` (any iterable) in format `fmt` (one of FORMATS), each as soon as its
    prediction is known."""
    return FORMATS[fmt](results)


def format_predictions(results: list[Prediction], fmt: str) -> str:
    return "\n".join(line for line in stream_lines(results, fmt) if line)
