"""Teach a shipped (or trained) model new classes: a linear head on its frozen features (the Teachable Machine
pattern), fitted the same way here and in @cifarkit/classify's `teach` (src/teach.ts), so both give one head.

The fit, in full (both sides implement exactly this):
- the features of every example (the export's `features` output, the penultimate layer), standardised by their
  own mean and standard deviation (the deviation floored at 1e-6);
- with at least MIN_PER_CLASS_FOR_SOFTMAX examples in every class, a softmax regression (multinomial logistic
  regression) with an L2 penalty on the weights, each example weighted so that every class counts the same,
  minimised from zero weights by full-batch L-BFGS (deterministic: the same head on every run). The penalty is
  picked from REGULARIZATIONS by the log-loss on a held-out part (every HOLD_OUT_EVERY-th example of each class,
  in the order given) when every class has at least MIN_PER_CLASS_TO_HOLD_OUT examples; the held-out part then
  also fits a temperature and gives the reported accuracy, and the final head is fitted on every example;
- with fewer examples in some class (1 or 2 pictures), the nearest class mean: weight_k = mean_k,
  bias_k = -|mean_k|^2 / 2 (the same linear form, so classifying is one code path).

A head is JSON (HEAD_FORMAT, version 1): the labels, the standardisation, the weights and bias, the temperature,
and the fingerprint of the features it was taught on, so a head taught on one model is refused by another.
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from cifarkit.errors import CifarkitError

HEAD_FORMAT = "cifarkit-head"
HEAD_VERSION = 1
MAX_CLASSES = 100
MAX_LABEL_LENGTH = 100
MIN_PER_CLASS_FOR_SOFTMAX = 3
MIN_PER_CLASS_TO_HOLD_OUT = 5
HOLD_OUT_EVERY = 5
REGULARIZATIONS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
DEFAULT_REGULARIZATION = 1e-2  # when there are too few examples to hold any out
MAX_ITERATIONS = 500
# the fit stops when no gradient entry exceeds this, or the objective moves by less than CHANGE_TOLERANCE
GRADIENT_TOLERANCE = 1e-6
CHANGE_TOLERANCE = 1e-10
SCALE_FLOOR = 1e-6


class TeachError(CifarkitError):
    """Examples that cannot teach a head, or a head file that cannot be used."""


def check_labels(labels: list[str]) -> None:
    names = sorted(set(labels))
    if len(names) < 2:
        raise TeachError(f"teaching needs at least 2 classes, got {len(names)}; add a folder (a class) with pictures")
    if len(names) > MAX_CLASSES:
        raise TeachError(f"teaching takes at most {MAX_CLASSES} classes, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or not name.strip() or len(name) > MAX_LABEL_LENGTH:
            raise TeachError(f"class names must be non-empty text of at most {MAX_LABEL_LENGTH} characters, "
                             f"got {name!r}")


def _standardise(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = features.mean(axis=0)
    scale = np.maximum(features.std(axis=0), SCALE_FLOOR)
    return mean, scale


def _softmax_fit(z: np.ndarray, y: np.ndarray, classes: int, regularization: float) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced, L2-penalised softmax regression by full-batch L-BFGS from zero (float64)."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    weights = torch.from_numpy(len(y) / (classes * counts[y]))
    x, target = torch.from_numpy(z.astype(np.float64)), torch.from_numpy(y).long()
    w = torch.zeros(classes, z.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1, max_iter=MAX_ITERATIONS, history_size=10,
                                  tolerance_grad=GRADIENT_TOLERANCE, tolerance_change=CHANGE_TOLERANCE,
                                  line_search_fn="strong_wolfe")

    def objective():
        optimizer.zero_grad()
        loss = objective_value(x, target, weights, w, b, regularization)
        loss.backward()
        return loss

    optimizer.step(objective)
    return w.detach().numpy(), b.detach().numpy()


def objective_value(x, target, weights, w, b, regularization):
    """The minimised objective: the class-balanced mean log-loss plus regularization/2 * |W|^2."""
    losses = torch.nn.functional.cross_entropy(x @ w.T + b, target, reduction="none")
    return (weights * losses).sum() / weights.sum() + 0.5 * regularization * (w * w).sum()


def _log_loss(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    scaled = logits / temperature
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def _fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature in [0.05, 20] minimising the held-out log-loss: golden-section search on its logarithm."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = _log_loss(logits, y, math.exp(a)), _log_loss(logits, y, math.exp(b))
    for _ in range(60):
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = _log_loss(logits, y, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = _log_loss(logits, y, math.exp(b))
    return math.exp((lo + hi) / 2)


def held_out_mask(y: np.ndarray) -> np.ndarray:
    """Every HOLD_OUT_EVERY-th example of each class (the 5th, 10th, ... in the order given)."""
    mask = np.zeros(len(y), dtype=bool)
    seen: Counter = Counter()
    for i, label in enumerate(y.tolist()):
        seen[label] += 1
        mask[i] = seen[label] % HOLD_OUT_EVERY == 0
    return mask


def fit_head(features: np.ndarray, labels: list[str], fingerprint: str, progress=None) -> dict:
    """A head (its JSON-ready dict) for `labels` from their `features` (N x D), as described above."""
    check_labels(labels)
    names = sorted(set(labels))
    index = {name: k for k, name in enumerate(names)}
    y = np.array([index[name] for name in labels])
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(labels):
        raise TeachError("features and labels differ in number")
    if not np.isfinite(features).all():
        raise TeachError("the model gave non-finite features; it cannot be taught")
    counts = np.bincount(y, minlength=len(names))
    mean, scale = _standardise(features)
    z = (features - mean) / scale
    head = {"format": HEAD_FORMAT, "version": HEAD_VERSION,
            "model": {"fingerprint": fingerprint, "feature_dim": int(features.shape[1])}, "labels": names,
            "examples": {name: int(c) for name, c in zip(names, counts, strict=True)},
            "standardize": {"mean": mean.tolist(), "scale": scale.tolist()}}
    if counts.min() < MIN_PER_CLASS_FOR_SOFTMAX:
        means = np.stack([z[y == k].mean(axis=0) for k in range(len(names))])
        return {**head, "method": "nearest-class-mean", "weights": means.tolist(),
                "bias": (-0.5 * (means * means).sum(axis=1)).tolist(), "temperature": 1.0,
                "regularization": None, "held_out": None}
    regularization, temperature, held_out = DEFAULT_REGULARIZATION, 1.0, None
    if counts.min() >= MIN_PER_CLASS_TO_HOLD_OUT:
        mask = held_out_mask(y)
        fit_z, fit_y, check_z, check_y = z[~mask], y[~mask], z[mask], y[mask]
        scores = []
        for i, candidate in enumerate(REGULARIZATIONS):
            w, b = _softmax_fit(fit_z, fit_y, len(names), candidate)
            scores.append(_log_loss(check_z @ w.T + b, check_y))
            if progress:
                progress(i + 1, len(REGULARIZATIONS) + 1)
        best = min(range(len(scores)), key=lambda i: (scores[i], -i))  # ties: the stronger penalty
        regularization = REGULARIZATIONS[best]
        w, b = _softmax_fit(fit_z, fit_y, len(names), regularization)
        logits = check_z @ w.T + b
        temperature = _fit_temperature(logits, check_y)
        held_out = {"images": int(mask.sum()), "accuracy": float((logits.argmax(1) == check_y).mean()),
                    "log_loss": _log_loss(logits, check_y, temperature)}
    w, b = _softmax_fit(z, y, len(names), regularization)
    if progress:
        progress(len(REGULARIZATIONS) + 1, len(REGULARIZATIONS) + 1)
    return {**head, "method": "softmax", "weights": w.tolist(), "bias": b.tolist(), "temperature": temperature,
            "regularization": regularization, "held_out": held_out}


def head_problem(head, fingerprint: str | None = None) -> str | None:
    """Why `head` cannot be used (with the model whose features have `fingerprint`), or None."""
    if not isinstance(head, dict) or head.get("format") != HEAD_FORMAT:
        return f"it is not a cifarkit head (no \"format\": \"{HEAD_FORMAT}\"); make one with `cifarkit teach`"
    if head.get("version") != HEAD_VERSION:
        return f"its version is {head.get('version')!r} and this cifarkit reads version {HEAD_VERSION}"
    model = head.get("model")
    labels = head.get("labels")
    if not isinstance(model, dict) or not isinstance(model.get("feature_dim"), int):
        return "it does not say which model it was taught on"
    if fingerprint is not None and model.get("fingerprint") != fingerprint:
        return "it was taught on another model's features (its fingerprint differs); teach it again on this model"
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        return "its labels are not a list of names"
    try:
        check_labels(labels)
    except TeachError as e:
        return str(e)
    if len(set(labels)) != len(labels):
        return "its labels repeat a name"
    d, k = model["feature_dim"], len(labels)
    standardize = head.get("standardize") or {}
    shapes = {"weights": (head.get("weights"), (k, d)), "bias": (head.get("bias"), (k,)),
              "standardize.mean": (standardize.get("mean"), (d,)),
              "standardize.scale": (standardize.get("scale"), (d,))}
    for name, (value, shape) in shapes.items():
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            return f"its {name} are not numbers"
        if array.shape != shape:
            return f"its {name} have shape {array.shape}, expected {shape} for {k} labels and {d} features"
        if not np.isfinite(array).all():
            return f"its {name} are not all finite numbers"
    if not (np.asarray(standardize["scale"], dtype=np.float64) > 0).all():
        return "its standardize.scale must be positive"
    t = head.get("temperature")
    if not isinstance(t, (int, float)) or isinstance(t, bool) or not 0.05 <= t <= 20:
        return "its temperature must be a number in [0.05, 20]"
    return None


def head_probabilities(head: dict, features: np.ndarray) -> np.ndarray:
    """softmax((standardised features @ W^T + b) / temperature), float64."""
    s = head["standardize"]
    z = (np.asarray(features, dtype=np.float64) - np.asarray(s["mean"])) / np.asarray(s["scale"])
    logits = (z @ np.asarray(head["weights"]).T + np.asarray(head["bias"])) / head["temperature"]
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return p / p.sum(axis=1, keepdims=True)


MAX_HEAD_BYTES = 64 << 20


def load_head(path: str | Path, fingerprint: str | None = None) -> dict:
    from cifarkit.files import read_json

    head = read_json(Path(path), MAX_HEAD_BYTES, TeachError, "head file")
    if (problem := head_problem(head, fingerprint)) is not None:
        raise TeachError(f"{path}: {problem}")
    return head


def folder_examples(folder: str | Path) -> list[tuple[Path, str]]:
    """(picture, label) for an ImageFolder: one sub-folder per class, its name the label; sorted."""

    root = Path(folder)
    if not root.is_dir():
        raise TeachError(f"{folder} is not a folder; give a folder with one sub-folder of pictures per class")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    examples = []
    for class_dir in classes:
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and not p.name.startswith("."))
        if not files:
            raise TeachError(f"class {class_dir.name!r} ({class_dir}) has no pictures; add some or remove the folder")
        examples += [(p, class_dir.name) for p in files]
    if len(classes) < 2:
        raise TeachError(f"{folder} has {len(classes)} class folder(s); teaching needs at least 2 (one sub-folder of "
                         "pictures per class)")
    return examples


def teach_folder(folder: str | Path, out: str | Path, model=None, fit: str | None = None, log=print) -> dict:
    """`cifarkit teach`: fit a head on the pictures of an ImageFolder and write it to `out` (atomically). Files
    that are not pictures are skipped with a line each; a class left without pictures is an error."""
    import time

    from cifarkit.files import atomic_write_bytes, json_text
    from cifarkit.images import DEFAULT_FIT, ImageError, load_image
    from cifarkit.loading import load_model
    from cifarkit.text import printable

    start = time.perf_counter()
    out = Path(out)
    if out.suffix != ".json":
        raise TeachError(f"{out}: the head file should end in .json")
    examples = folder_examples(folder)
    check_labels([label for _, label in examples])
    trained = load_model(model, "cpu")
    pictures, labels = [], []
    for path, label in examples:
        try:
            pictures.append(load_image(path, fit=fit or DEFAULT_FIT))
            labels.append(label)
        except ImageError as e:
            log(f"skipped {printable(str(e))}")
    missing = sorted(set(label for _, label in examples) - set(labels))
    if missing:
        raise TeachError(f"class {missing[0]!r} has no picture that could be read; add some or remove its folder")
    features = trained.features(torch.from_numpy(np.stack(pictures)).permute(0, 3, 1, 2)).numpy()
    head = fit_head(features, labels, trained.feature_fingerprint)
    atomic_write_bytes(out, (json_text(head) + "\n").encode())
    seconds = time.perf_counter() - start
    counts = ", ".join(f"{printable(name)} {n}" for name, n in head["examples"].items())
    held = head["held_out"]
    verdict = (f"held-out accuracy {held['accuracy']:.1%} on {held['images']} pictures" if held else
               f"no held-out check (fewer than {MIN_PER_CLASS_TO_HOLD_OUT} pictures in some class)")
    log(f"taught {len(head['labels'])} classes ({counts}) with {head['method']} on {trained.name}'s features: "
        f"{verdict}; {seconds:.1f}s | wrote {out}")
    return head
