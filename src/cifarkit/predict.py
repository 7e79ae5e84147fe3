"""`cifarkit predict`: classify picture files with a trained checkpoint.

Every file is loaded and resized (cifarkit.images), preprocessed by the checkpoint's own Preprocess and
classified in batches. A file that cannot be used gets its own error line while the others are still
classified.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cifarkit.errors import ImageError
from cifarkit.images import display_path, expand_paths, load_image
from cifarkit.inference import TrainedModel, load_model


@dataclass
class Prediction:
    path: str
    classes: list[tuple[str, float]] = field(default_factory=list)  # top-k (name, probability)
    superclass: str | None = None
    error: str | None = None


def predict_arrays(trained: TrainedModel, images_nhwc: np.ndarray, top_k: int = 5, tta: bool = False):
    """Top-k (class index, probability) per image, plus the full probability matrix."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2)
    probabilities = trained.probabilities(x, tta=tta)
    k = min(top_k, probabilities.shape[1])
    top = probabilities.topk(k, dim=1)
    return top.indices.numpy(), top.values.numpy(), probabilities.numpy()


def predict_files(model: str | Path | None, paths: list[str | Path], top_k: int = 5, tta: bool = False,
                  device: str = "cpu", trained: TrainedModel | None = None) -> list[Prediction]:
    """`model`: a pretrained name (None: the default), a run directory or a checkpoint file."""
    trained = trained or load_model(model, device)
    files = expand_paths(paths)
    results = [Prediction(display_path(path), error=problem) for path, problem in files]
    images, ok = [], []
    for i, (path, problem) in enumerate(files):
        if problem:
            continue
        try:
            images.append(load_image(path))
            ok.append(i)
        except ImageError as e:
            results[i].error = str(e)
    if images:
        indices, values, _ = predict_arrays(trained, np.stack(images), top_k, tta)
        for row, i in enumerate(ok):
            results[i].classes = [(trained.class_names[c], float(p)) for c, p in zip(indices[row], values[row],
                                                                                      strict=True)]
            if trained.fine_to_coarse is not None and trained.coarse_names:
                results[i].superclass = trained.coarse_names[trained.fine_to_coarse[indices[row][0]]]
    return results


def format_predictions(results: list[Prediction], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([{"path": r.path, "error": r.error, "superclass": r.superclass,
                            "top": [{"class": c, "probability": p} for c, p in r.classes]} for r in results],
                          indent=2)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["path", "rank", "class", "probability", "superclass", "error"])
        for r in results:
            if r.error:
                writer.writerow([r.path, "", "", "", "", r.error])
            for rank, (name, p) in enumerate(r.classes, 1):
                writer.writerow([r.path, rank, name, f"{p:.6f}", r.superclass or "", ""])
        return buffer.getvalue().rstrip("\n")
    lines = []
    for r in results:
        if r.error:
            lines.append(f"{r.path}: ERROR {r.error}")
            continue
        top = ", ".join(f"{name} {p:.1%}" for name, p in r.classes)
        lines.append(f"{r.path}: {top}" + (f"  [superclass: {r.superclass}]" if r.superclass else ""))
    return "\n".join(lines)


FORMATS = ("table", "json", "csv")


